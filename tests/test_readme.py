"""The README's quick-start commands are what CI runs, and they stay runnable as written."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
CI_RUN = REPO / ".ci" / "run"
EXTRACTOR = REPO / ".ci" / "readme_command.py"


def _load_extractor():
    spec = importlib.util.spec_from_file_location("readme_command", EXTRACTOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


rc = _load_extractor()


@pytest.fixture(scope="module")
def readme() -> str:
    return README.read_text(encoding="utf-8")


def test_readme_has_exactly_two_marked_commands(readme):
    markers = re.findall(r"<!--\s*([\w-]+)-command\s*-->", readme)
    assert sorted(markers) == ["main", "test"], markers
    for name in ("main", "test"):
        command = rc.extract(readme, name)
        assert "\n" not in command and command == command.strip()


def test_marked_commands_are_on_the_first_screen(readme):
    quick_start = readme.index("## Quick start")
    assert quick_start < readme.index("<!-- main-command -->") < readme.index("<!-- test-command -->")
    # Nothing but the title and one paragraph before the quick start.
    assert readme[:quick_start].count("\n## ") == 0


def test_main_command_installs_then_submits_a_job(readme):
    command = rc.extract(readme, "main")
    assert command.startswith("python3 -m venv .venv && . .venv/bin/activate && ")
    assert "pip install -e ." in command
    assert re.search(r"spark-submit( \S+)* jobs/\w+\.py", command), command
    script = re.search(r"jobs/\w+\.py", command).group(0)
    assert (REPO / script).is_file(), f"{script} named in the README does not exist"


def test_test_command_installs_cpu_torch_first_and_runs_pytest(readme):
    command = rc.extract(readme, "test")
    assert command.startswith("python3 -m venv .venv && . .venv/bin/activate && ")
    assert "python -m pytest" in command
    # torch==2.13.0 (the local CPU wheel) strictly before anything that may pull torch in.
    torch_at = command.index("pip install torch==2.13.0")
    extras_at = command.index('pip install -e ".[test,ifru]"')
    assert torch_at < extras_at


def test_ci_runs_the_readme_commands_through_the_extractor():
    ci = CI_RUN.read_text(encoding="utf-8")
    assert ci.startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in ci
    assert ".ci/readme_command.py main" in ci and ".ci/readme_command.py test" in ci
    assert 'bash -c "$MAIN_CMD"' in ci and 'bash -c "$TEST_CMD"' in ci
    # Main command first, then the tests.
    assert ci.index('bash -c "$MAIN_CMD"') < ci.index('bash -c "$TEST_CMD"')
    assert CI_RUN.stat().st_mode & 0o111, ".ci/run must be executable"


@pytest.mark.parametrize("name", ["main", "test"])
def test_extractor_cli_prints_the_command(name, readme):
    out = subprocess.run(
        [sys.executable, str(EXTRACTOR), name, str(README)], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == rc.extract(readme, name)


@pytest.mark.parametrize(
    "text, message",
    [
        ("no markers here\n", "exactly once"),
        ("<!-- main-command -->\n```bash\nls\n```\n<!-- main-command -->\n```bash\nls\n```\n", "exactly once"),
        ("<!-- main-command -->\nls\n", "fenced code block"),
        ("<!-- main-command -->\n```bash\nls\npwd\n```\n", "exactly one command line"),
        ("<!-- main-command -->\n```bash\n```\n", "exactly one command line"),
        ("<!-- main-command -->\n```bash\nls\n", "not closed"),
        ("<!-- main-command -->\n```bash\n$ ls\n```\n", "prompt"),
        ("<!-- main-command -->\n```bash\nls \\\n```\n", "single line"),
    ],
)
def test_extractor_rejects_malformed_markers(text, message):
    with pytest.raises(rc.ReadmeCommandError, match=message):
        rc.extract(text, "main")


def test_extractor_accepts_blank_lines_and_other_fences():
    text = "x\n<!-- test-command -->\n\n~~~sh\n\n  python -m pytest -q  \n\n~~~\n"
    assert rc.extract(text, "test") == "python -m pytest -q"


def test_extractor_cli_fails_on_bad_readme(tmp_path):
    bad = tmp_path / "README.md"
    bad.write_text("# nothing\n")
    out = subprocess.run([sys.executable, str(EXTRACTOR), "main", str(bad)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "exactly once" in out.stderr


def test_readme_links_exist(readme):
    for target in re.findall(r"\]\(([^)#:]+)\)", readme):
        assert (REPO / target).exists(), f"README links to missing {target}"

"""Every job's --help ends with examples (no Spark is started for --help)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOBS = sorted(n[:-3] for n in os.listdir(os.path.join(REPO, "jobs")) if n.endswith(".py") and not n.startswith("_"))


@pytest.mark.parametrize("job", JOBS)
def test_help_ends_with_examples(job):
    proc = subprocess.run([sys.executable, os.path.join(REPO, "jobs", f"{job}.py"), "--help"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    tail = proc.stdout[proc.stdout.rindex("examples:"):]
    assert f"jobs/{job}.py" in tail, tail

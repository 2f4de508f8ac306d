"""What the jobs print, as spark-submit runs them: the summary on stderr, the JSON on stdout only with --json.

Under spark-submit the Python driver's stderr is merged into its stdout by Spark's PythonRunner, so these run
real ``spark-submit`` subprocesses (plain ``python`` where spark-submit is not installed): the pipe
``spark-submit jobs/unlearn.py ... --json | python -m json.tool`` must work, and the README's main command
(``spark-submit jobs/demo.py``) must print at most 40 lines in all.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from job_helpers import REPO, run_job, subprocess_env
from spark_unlearn.reporting import MAX_SUMMARY_LINES


def _launcher() -> list[str]:
    """``spark-submit`` of this environment (beside its Python, else on PATH), or this Python."""
    here = os.path.join(os.path.dirname(sys.executable), "spark-submit")
    found = here if os.access(here, os.X_OK) else shutil.which("spark-submit")
    return [found] if found else [sys.executable]


def _env():
    # spark-submit starts the driver with PYSPARK_PYTHON (else python3 on PATH): this interpreter.
    return subprocess_env(PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)


@pytest.mark.slow
def test_unlearn_json_pipes_into_json_tool_and_the_summary_goes_to_stderr(store_copy, tmp_path):
    delete = tmp_path / "delete.csv"
    delete.write_text("user\n3\n")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[unlearn]\nmeasure = false\n[spark]\n"spark.ui.enabled" = "false"\n'
                   '"spark.sql.shuffle.partitions" = "4"\n')
    saved = tmp_path / "report.json"
    cmd = [*_launcher(), str(REPO / "jobs" / "unlearn.py"), "--model", store_copy, "--delete", str(delete),
           "--config", str(cfg), "--tol", "0.05", "--report", str(saved), "--json"]
    pipe = 'set -o pipefail; "$@" | "$PY" -m json.tool'
    proc = subprocess.run(["bash", "-c", pipe, "bash", *cmd], env={**_env(), "PY": sys.executable},
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["status"] == "applied" and report["version"] == "v000002"
    assert json.loads(saved.read_text()) == report  # --report holds the same report
    err = proc.stderr
    assert "1 of 1 requests applied" in err and "rows re-solved" in err and "certificate:" in err
    assert "published v000002" in err
    # the store records its training's end-to-end time: the speed-up is end to end, the solve ratio labelled
    assert report["seconds"]["end_to_end"] > 0 and report["speedup_end_to_end"] > 0
    assert f"speed-up end to end: {report['speedup_end_to_end']:.2f}x" in err and "solve only" in err
    assert "spark_unlearn" in err  # our INFO logs went to stderr, with Spark's warnings
    assert '"status"' not in err


def test_without_json_stdout_is_empty(spark, store_copy, tmp_path):
    delete = tmp_path / "delete.csv"
    delete.write_text("user\n3\n")
    code, out, err = run_job(spark, "unlearn", ["--model", store_copy, "--delete", str(delete), "--tol", "0.05"])
    assert code == 0 and out == "", err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith(("batch ", "deleted:", "unknown:", "changed:",
                                                                    "certificate:", "time:", "speed-up"))]
    assert 6 <= len(lines) <= MAX_SUMMARY_LINES, err[-3000:]


@pytest.mark.slow
def test_the_demo_prints_at_most_40_lines(tmp_path):
    proc = subprocess.run([*_launcher(), str(REPO / "jobs" / "demo.py")], env=_env(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.splitlines() + proc.stderr.splitlines()
    assert len(lines) <= 40, "\n".join(lines)
    assert proc.stdout == ""  # the JSON only with --json / --report
    assert "requests applied" in proc.stderr and "speed-up end to end" in proc.stderr
    assert "ratings trained the model" in proc.stderr


def test_the_shipped_log4j2_configuration_logs_to_stderr():
    """Spark's console appender in conf/log4j2.properties writes to stderr, never into a job's stdout report."""
    props = dict(line.split("=", 1) for line in (REPO / "conf" / "log4j2.properties").read_text().splitlines()
                 if "=" in line and not line.lstrip().startswith("#"))
    props = {k.strip(): v.strip() for k, v in props.items()}
    consoles = [k.rsplit(".", 1)[0] for k, v in props.items() if k.endswith(".type") and v == "Console"]
    assert consoles and all(props[f"{c}.target"] == "SYSTEM_ERR" for c in consoles)

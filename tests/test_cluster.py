"""End to end on a real Spark standalone cluster: tools/standalone_cluster.sh smoke.

Starts a Master and two Workers on 127.0.0.1, submits jobs/train.py with the
package shipped as a --py-files zip, checks that the model store got a
version Spark's ``ALSModel.load`` reads and that tasks ran on both executors,
and always stops the cluster.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from job_helpers import FAST_JVM_OPTS, subprocess_env

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "standalone_cluster.sh"
# One to three minutes on an idle 2-core machine; much more when the machine is loaded.
TIMEOUT_S = int(os.environ.get("SPARK_UNLEARN_CLUSTER_TIMEOUT", "600"))

pytestmark = pytest.mark.cluster


def _state(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


def _run(args, env, timeout):
    """Run the script; on time-out TERM it (its trap stops the job and the cluster), then KILL."""
    proc = subprocess.Popen(
        ["bash", str(SCRIPT), *args],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        pytest.fail(f"standalone_cluster.sh {' '.join(args)} timed out after {timeout}s:\n{out[-6000:]}")


@pytest.mark.skipif(shutil.which("java") is None, reason="java not on PATH: Spark standalone needs Java 17")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the cluster script uses Linux process tools")
def test_standalone_cluster_smoke(tmp_path):
    work = tmp_path / "cluster"
    env = subprocess_env(
        PYTHON=sys.executable,  # driver and executors: this interpreter (has numpy, pyspark, ...)
        SPARK_UNLEARN_CLUSTER_DIR=str(work),
        SMOKE_TIMEOUT_SECONDS=str(TIMEOUT_S - 120),  # the script's own limit fires first, with logs
        CLUSTER_WAIT_SECONDS="90",
        SMOKE_TRAIN_ARGS="--iterations 3",  # the cluster path is what is tested, not convergence (default 10)
    )
    # Master and Workers (spark-class) take theirs from SPARK_DAEMON_JAVA_OPTS; the driver and the executors
    # from SPARK_SUBMIT_OPTS (set by subprocess_env).
    env.setdefault("SPARK_DAEMON_JAVA_OPTS", FAST_JVM_OPTS)
    # A driver started by pytest's Spark fixture must not leak into the job.
    for var in ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET", "SPARK_HOME", "PYSPARK_SUBMIT_ARGS"):
        env.pop(var, None)
    rc, out = _run(["smoke"], env, TIMEOUT_S)
    assert rc == 0, f"smoke failed (exit {rc}):\n{out[-8000:]}"
    assert "smoke OK" in out, out[-4000:]
    # The cluster was stopped: the pid file is gone and every recorded daemon exited.
    assert not (work / "pids").exists(), "pid file left behind: cluster not stopped"
    started = re.findall(r"started (\S+) \(pid (\d+)\)", out)
    assert len(started) == 3, out[-4000:]  # master + 2 workers
    for name, pid in started:
        assert not Path(f"/proc/{pid}").exists() or "Z" in _state(pid), f"{name} (pid {pid}) still running"
    store = work / "model_store"
    version = (store / "CURRENT").read_text().strip()
    assert (store / "versions" / version / "metadata").is_dir()
    for i in (1, 2):
        assert "Asked to launch executor" in (work / f"worker-{i}.log").read_text()


def test_usage_without_command_fails():
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "smoke" in proc.stderr


def test_stop_without_cluster_is_a_no_op(tmp_path):
    if shutil.which("java") is None:
        pytest.skip("java not on PATH")
    env = dict(os.environ, PYTHON=sys.executable, SPARK_UNLEARN_CLUSTER_DIR=str(tmp_path / "none"))
    proc = subprocess.run(["bash", str(SCRIPT), "stop"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "nothing to stop" in proc.stderr

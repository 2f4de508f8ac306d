"""End to end on a real Spark standalone cluster: tools/standalone_cluster.sh smoke.

Starts a Master and two Workers on 127.0.0.1, submits jobs/train.py with the
package shipped as a --py-files zip, checks that the model store got a
version Spark's ``ALSModel.load`` reads and that tasks ran on both executors,
and always stops the cluster.  In a whole-suite run the smoke is started in
the background when the session begins and this test, run last, collects it
(see ``cluster_smoke.py``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cluster_smoke
from cluster_smoke import REPO, SCRIPT

pytestmark = pytest.mark.cluster


def _state(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


@pytest.mark.skipif(cluster_smoke.skip_reason() is not None, reason=str(cluster_smoke.skip_reason()))
def test_standalone_cluster_smoke(spark, tmp_path):
    smoke = cluster_smoke.current() or cluster_smoke.start(tmp_path / "cluster")  # usually started by conftest
    work = smoke.work
    try:
        rc, out = smoke.result()
    except TimeoutError as exc:
        pytest.fail(str(exc))
    assert rc == 0, f"smoke failed (exit {rc}):\n{out[-8000:]}"
    assert "smoke OK" in out, out[-4000:]
    # The cluster was stopped: the pid file is gone and every recorded daemon exited.
    assert not (work / "pids").exists(), "pid file left behind: cluster not stopped"
    started = re.findall(r"started (\S+) \(pid (\d+)\)", out)
    assert len(started) == 3, out[-4000:]  # master + 2 workers
    for name, pid in started:
        assert not Path(f"/proc/{pid}").exists() or "Z" in _state(pid), f"{name} (pid {pid}) still running"
    store = work / "model_store"
    # Spark's own ALSModel.load reads both versions (trained, then unlearned on the cluster); the erased user 1
    # has a factor row only in the first.
    from pyspark.ml.recommendation import ALSModel

    versions = sorted(p.name for p in (store / "versions").iterdir())
    assert len(versions) == 2 and (store / "CURRENT").read_text().strip() == versions[1], versions
    trained, unlearned = (ALSModel.load(str(store / "versions" / v)) for v in versions)
    assert trained.rank == unlearned.rank == 10
    assert trained.userFactors.filter("id = 1").count() == 1
    assert unlearned.userFactors.filter("id = 1").count() == 0
    assert unlearned.userFactors.count() == trained.userFactors.count() - 1
    # The smoke's config keeps every neighbour in Spark (driver_rows 0): the targeted engine's passes ran on the
    # executors, and the certificate they gave holds.
    manifest = json.loads((store / "versions" / versions[1] / "manifest.json").read_text())
    assert manifest["unlearning"]["engine"] == "targeted" and manifest["unlearning"]["driver_rows_limit"] == 0
    assert sum(manifest["certificate"]["spark_rows"].values()) > 0 and manifest["certificate"]["holds"]
    # ...and the independent verifier, run on the cluster by the smoke, recomputed it from the files.
    assert '"status": "verified"' in (work / "verify.out").read_text()
    for i in (1, 2):
        assert "Asked to launch executor" in (work / f"worker-{i}.log").read_text()
    smoke.remove_work_dir()  # a started-in-the-background smoke's own temp dir (kept for its logs on failure)


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

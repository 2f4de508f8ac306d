"""Crash safety for real: the unlearning job is SIGKILLed at each fail point in a subprocess.

After every kill before CURRENT moves the previous version stays current,
loadable, checksum-clean and consistent with the ledger; after a kill once it
moved the new version is complete and only the ledger entry is missing;
rerunning the batch then completes it exactly once.  The kills run in two
chains, each on its own copy of the trained store, side by side.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from job_helpers import as_marker_store, subprocess_env
from spark_unlearn.faults import ENV, POINTS
from spark_unlearn.store import fsutil
from spark_unlearn.store.model_store import ModelStore
from verify_helpers import assert_verified

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow

# The fail points, split between the two chains of runs.  "after_solve" is covered by "during_solve" (nothing
# written either way); one kill fewer keeps the test short.
BEFORE_SWITCH = ("during_solve", "after_factors_written", "after_ratings_written")
AROUND_SWITCH = ("after_version_renamed", "after_current_switched")


def _tmpdir(store, point):
    """The run's own TMPDIR (beside the store), to see what the job leaves in it."""
    path = f"{store}.tmp.{point or 'done'}"
    os.makedirs(path, exist_ok=True)
    return path


def _run(store, delete, cfg, batch_id, point=None):
    env = subprocess_env(TMPDIR=_tmpdir(_local(store), point))  # the lock settings come with os.environ
    env.pop(ENV, None)
    if point:
        env[ENV] = point
    cmd = [sys.executable, os.path.join(REPO, "jobs", "unlearn.py"), "--model", store, "--delete", delete,
           "--config", cfg, "--batch-id", batch_id, "--tol", "0.05", "--json"]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def _local(store):
    return store[len("file://"):] if store.startswith("file://") else store


def _consistent(ms: ModelStore, current: str, applied: list[str]):
    """CURRENT, checksums, ledger and lineage agree, without Spark."""
    assert ms.current() == current
    ms.verify(current)
    assert [e["batch_id"] for e in ms.ledger()] == applied
    for entry in ms.ledger():
        assert ms.read_manifest(entry["version_after"])["request"]["batch_id"] == entry["batch_id"]


def _kill(store, delete, cfg, point):
    proc = _run(store, delete, cfg, "REQ-A", point)
    assert proc.returncode == -signal.SIGKILL, (point, proc.returncode, proc.stderr[-3000:])
    assert f"fail point {point} reached" in proc.stderr
    return proc


def _kills_before_the_switch_then_rerun(store, delete, cfg):
    """Killed before anything is published, three times: v000001 stays current; the rerun applies the batch."""
    ms = ModelStore(store)
    for point in BEFORE_SWITCH:
        _kill(store, delete, cfg, point)
        _consistent(ms, "v000001", [])
    proc = _run(store, delete, cfg, "REQ-A")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '"status": "applied"' in proc.stdout
    # A job that ends removes the checkpoint directory it made in TMPDIR; a killed one cannot.
    def checkpoint_dirs(point):
        return [n for n in os.listdir(_tmpdir(_local(store), point)) if n.startswith("spark_unlearn_ckpt_")]

    assert checkpoint_dirs(BEFORE_SWITCH[0]) and not checkpoint_dirs(None)
    applied = ms.current()
    assert applied != "v000001"
    _consistent(ms, applied, ["REQ-A"])
    assert "recovered" not in ms.ledger()[0]
    return applied


def _kills_around_the_switch_then_rerun(store, delete, cfg):
    """Killed after the rename (an orphan version), then after CURRENT moved: the rerun only repairs the ledger."""
    ms = ModelStore(store)
    _kill(store, delete, cfg, AROUND_SWITCH[0])
    _consistent(ms, "v000001", [])
    # The kill after the rename left a complete version that never became current.
    if ms.commit_protocol == "markers":  # a reserved version, not listed until the next job removes it
        orphans = [n for n in os.listdir(os.path.join(_local(store), "versions")) if n != "v000001"]
        assert len(orphans) == 1 and ms.versions() == ["v000001"]
    else:
        orphans = [v for v in ms.versions() if v != "v000001"]
        assert len(orphans) == 1 and "request" in ms.read_manifest(orphans[0])
    # The next run does the work but dies after CURRENT moved and before its ledger entry (the last fail point):
    # the new version is current and complete, the ledger lags.
    _kill(store, delete, cfg, AROUND_SWITCH[1])
    applied = ms.current()
    assert applied not in ("v000001", orphans[0])
    assert ms.read_manifest(applied)["request"]["batch_id"] == "REQ-A"
    ms.verify(applied)
    assert ms.ledger() == []
    # Rerunning the batch completes it exactly once: nothing recomputed, the ledger repaired.
    proc = _run(store, delete, cfg, "REQ-A")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert '"status": "already_applied"' in proc.stdout
    _consistent(ms, applied, ["REQ-A"])
    assert ms.ledger()[0].get("recovered") is True
    return applied


# A file:// store: every file operation of the jobs through Hadoop's FileSystem, locked by flock (its default,
# the markers case) or by the lease an hdfs:// store uses (the lease case), a killed holder's lease or reservation
# going stale after 5 s.
LEASE = {fsutil.LOCK_MODE_ENV: "lease", fsutil.LEASE_ENV: "5"}


@pytest.mark.parametrize("through", ["plain_path_flock", "file_uri_lease", "file_uri_markers"])
def test_kill_at_every_point_then_rerun_completes_exactly_once(spark, trained_store, tmp_path, through, monkeypatch):
    """Each fail point in turn on one of two copies of the session's trained store; the two copies run at once.

    The jobs spend much of their time waiting (JVM start, Python workers), so two chains of runs side by side
    take little longer than one.
    """
    if through != "plain_path_flock":
        for key, value in (LEASE if through == "file_uri_lease" else {fsutil.LEASE_ENV: "5"}).items():
            monkeypatch.setenv(key, value)
    assert POINTS[-1] == AROUND_SWITCH[-1] == "after_current_switched"
    # A new fail point needs a kill here; "before_commit_check" is killed in tests/test_concurrency.py.
    assert set(BEFORE_SWITCH + AROUND_SWITCH) == set(POINTS) - {"after_solve", "before_commit_check"}
    cfg = tmp_path / "c.toml"
    cfg.write_text('[logging]\nlevel = "INFO"\n[unlearn]\nmeasure = false\n[spark]\n"spark.ui.enabled" = "false"\n"spark.sql.shuffle.partitions" = "4"\n')
    first = tmp_path / "first.csv"
    first.write_text("user,item\n3,\n1,10\n")
    chains = (_kills_before_the_switch_then_rerun, _kills_around_the_switch_then_rerun)
    stores = [str(shutil.copytree(trained_store, tmp_path / f"store{k}")) for k in range(len(chains))]
    if through == "file_uri_markers":
        for s in stores:
            as_marker_store(s)
    if through != "plain_path_flock":
        stores = ["file://" + s for s in stores]
    with ThreadPoolExecutor(len(chains)) as pool:
        futures = [pool.submit(chain, store, str(first), str(cfg)) for chain, store in zip(chains, stores)]
        results = [f.result() for f in futures]

    if through != "plain_path_flock":  # a killed job's staging is debris once its lease is stale (flock tells at once)
        time.sleep(float(LEASE[fsutil.LEASE_ENV]) + 0.5)
    for store, applied in zip(stores, results):
        staging = os.path.join(_local(store), ".staging")
        ModelStore(store).reconcile()  # what the next job does first: removes debris no live job holds
        # Debris gone (a marker store keeps its dead version's number taken: vNNNNNN.abandoned).
        assert not [n for n in os.listdir(staging) if not n.endswith((".lock", ".lease", ".abandoned"))]
        assert sorted(os.listdir(os.path.join(_local(store), "versions"))) == ModelStore(store).versions()
        loaded = ModelStore(store).load(spark)
        assert loaded.version == applied
        assert_verified(spark, store, applied)  # the certificate recomputed from the files; user 3 is gone from them

"""Concurrent submitters to one store, as real processes: no acknowledged erasure is lost.

Three ``jobs/unlearn.py`` processes start at the same moment, each erasing a different user; one of them is
SIGKILLed inside its publication with the store lock held (fail point ``before_commit_check``).  Publication is a
compare-and-swap on the version a job started from, so a job that finds the store moved re-applies its request on
the new current version.  Whatever the interleaving, every submitter that exited 0 with ``applied`` has its user
gone from the final current version (ratings, holdout and factors), the ledger's chain names real parents, and the
killed job left the lock free.  Checked on the files and with the independent verifier, not with the jobs'
own reports.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from job_helpers import as_marker_store, subprocess_env
from spark_unlearn.faults import ENV
from spark_unlearn.store import fsutil
from spark_unlearn.store.model_store import ModelStore
from verify_helpers import assert_verified

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.slow

SUBMITTERS = {"REQ-U1": 1, "REQ-U2": 2}
KILLED = ("REQ-U5", 5)


def _start(store, user, batch_id, cfg, tmp_path, point=None, **lock_env):
    delete = tmp_path / f"{batch_id}.csv"
    delete.write_text(f"user\n{user}\n")
    env = subprocess_env(**lock_env)
    env.pop(ENV, None)
    if point:
        env[ENV] = point
    cmd = [sys.executable, os.path.join(REPO, "jobs", "unlearn.py"), "--model", store, "--delete", str(delete),
           "--config", str(cfg), "--batch-id", batch_id, "--tol", "0.05", "--json"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _ids(version_dir, table, column):
    files = glob.glob(os.path.join(version_dir, table, "*.parquet"))
    return {v for f in files for v in pq.read_table(f, columns=[column]).column(column).to_pylist()}


# The file:// case: every file operation of the jobs goes through Hadoop's FileSystem, and they lock with the
# lease an hdfs:// store uses (exclusive create, renewal, a killed holder's lease broken once stale: 5 s here).
LEASE = {fsutil.LOCK_MODE_ENV: "lease", fsutil.LEASE_ENV: "5"}


@pytest.mark.parametrize("through", ["plain_path_flock", "file_uri_lease", "file_uri_markers"])
def test_three_concurrent_submitters_one_killed_in_publication_lose_no_erasure(spark, trained_store, tmp_path,
                                                                               through, monkeypatch):
    local = str(shutil.copytree(trained_store, tmp_path / "store"))
    # file:// locks with flock by default (the markers case); the lease case forces what hdfs:// uses.
    store, lock_env = {"plain_path_flock": (local, {}), "file_uri_lease": ("file://" + local, LEASE),
                       "file_uri_markers": ("file://" + local, {fsutil.LEASE_ENV: "5"})}[through]
    os.remove(os.path.join(local, ".lock"))  # left by the training; flock creates it again, the lease does not
    if through == "file_uri_markers":
        as_marker_store(local)
    for key, value in lock_env.items():
        monkeypatch.setenv(key, value)
    cfg = tmp_path / "c.toml"
    cfg.write_text('[logging]\nlevel = "INFO"\n[unlearn]\nmeasure = false\nmax_rebases = 5\n'
                   '[spark]\n"spark.ui.enabled" = "false"\n"spark.sql.shuffle.partitions" = "4"\n')
    procs = {bid: _start(store, user, bid, cfg, tmp_path, **lock_env) for bid, user in SUBMITTERS.items()}
    procs[KILLED[0]] = _start(store, KILLED[1], KILLED[0], cfg, tmp_path, point="before_commit_check", **lock_env)
    results = {bid: (p.wait(timeout=900), p.stdout.read(), p.stderr.read()) for bid, p in procs.items()}

    code, _, err = results[KILLED[0]]
    assert code == -9 and "fail point before_commit_check reached" in err, err[-3000:]
    # flock locks STORE/.lock; the lease never creates it (its file, STORE/.lock.lease, is gone once released).
    assert os.path.exists(os.path.join(local, ".lock")) == (through != "file_uri_lease")
    ms = ModelStore(store)
    ms.reconcile()  # what the next job does first; the kill left the lock free (or its lease breakable), or this hangs
    current = ms.current()
    final = os.path.join(local, "versions", current)
    users_left = _ids(final, "userFactors", "id") | _ids(final, "ratings", "user") | _ids(final, "holdout", "user")
    acknowledged = []
    for bid, user in SUBMITTERS.items():
        code, out, err = results[bid]
        assert code in (0, 4), (bid, code, err[-3000:])  # 4: the store kept moving, nothing published, resubmit
        # Spark's driver logs start at WARN (spark.log.level): a handful of start-up lines, not thousands.
        spark_info = [line for line in err.splitlines() if " INFO " in line and "spark_unlearn" not in line]
        assert len(spark_info) <= 5, spark_info[:20]
        if code == 0:
            assert json.loads(out)["status"] == "applied", out
            acknowledged.append(bid)
            assert user not in users_left, f"{bid} was told 'applied' but user {user} is still in {current}"
    assert acknowledged, "no submitter succeeded"
    # The ledger's chain: each entry's version_before is the parent of its version, and the chain ends at CURRENT.
    entries = ms.ledger()
    assert {e["batch_id"] for e in entries} >= set(acknowledged)
    for entry in entries:
        assert ms.read_manifest(entry["version_after"])["parent"] == entry["version_before"]
    chain = [e for e in entries if e["batch_id"] in acknowledged]
    assert chain[-1]["version_after"] == current
    assert [e["version_before"] for e in chain[1:]] == [e["version_after"] for e in chain[:-1]]
    for entry in chain:  # every acknowledged version's certificate, recomputed from its files
        assert_verified(spark, store, entry["version_after"])

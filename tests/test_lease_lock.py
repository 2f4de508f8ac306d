"""The store lock without flock (a lease file): mutual exclusion between processes, and a dead holder's lease broken.

No Spark here: the lock is plain file-system work.  Four processes each add 1 to a counter file 25 times, reading
and rewriting it non-atomically (with a pause) inside the lock; only mutual exclusion gives 100.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from spark_unlearn.store import fsutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORKER = r"""
import os, sys, time
sys.path.insert(0, {repo!r})
os.environ["SPARK_UNLEARN_STORE_LOCK"] = "lease"
from spark_unlearn.store.fsutil import exclusive_lock
lock, counter = sys.argv[1], sys.argv[2]
for _ in range(25):
    with exclusive_lock(lock):
        n = int(open(counter).read())
        time.sleep(0.002)
        with open(counter, "w") as fh:
            fh.write(str(n + 1))
"""


def test_lease_lock_excludes_other_processes(tmp_path):
    counter = tmp_path / "counter"
    counter.write_text("0")
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(repo=REPO))
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / ".lock"), str(counter)]) for _ in range(4)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    assert counter.read_text() == "100"
    assert not (tmp_path / ".lock.lease").exists()  # released


def test_a_dead_holders_lease_is_broken_and_a_live_one_is_not(tmp_path, monkeypatch):
    lease = tmp_path / ".lock.lease"
    lease.write_text("token-of-a-killed-process")
    monkeypatch.setenv(fsutil.LOCK_MODE_ENV, "lease")
    # A fresh lease (a live holder) is respected: acquiring times out in the worker below.
    script = tmp_path / "try.py"
    script.write_text(WORKER.format(repo=REPO).split("lock, counter")[0] + "with exclusive_lock(sys.argv[1]):\n    pass\n")
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / ".lock")])
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=2)
    proc.kill()
    proc.wait()
    assert lease.read_text() == "token-of-a-killed-process"
    # Once it is older than the lease, it is broken and the lock taken.
    old = time.time() - fsutil.LEASE_SECONDS - 5
    os.utime(lease, (old, old))
    with fsutil.exclusive_lock(str(tmp_path / ".lock")):
        assert lease.read_text() != "token-of-a-killed-process"
    assert not lease.exists()
    assert not list(tmp_path.glob(".lock.lease.broken-*"))
    # A staging directory marked by a live lease is not abandoned; by a stale one it is.
    marker = tmp_path / "work.lock"
    with fsutil.held_lock(str(marker)):
        assert not fsutil.is_abandoned(str(marker))
    (tmp_path / "work.lock.lease").write_text("dead")
    os.utime(tmp_path / "work.lock.lease", (old, old))
    assert fsutil.is_abandoned(str(marker))

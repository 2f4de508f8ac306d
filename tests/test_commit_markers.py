"""The commit-marker protocol (spark_unlearn.store.commit.MarkerCommit) on a plain path, without Spark.

CURRENT is the highest marker; numbers are reserved by an exclusive create and never reused; a reserved version is
not listed, and is removed only once its publisher is gone (lock free and reservation older than a lease), unless a
marker committed it; a publisher that lost its reservation commits nothing.
"""

from __future__ import annotations

import os
import time

import pytest

from spark_unlearn.errors import StoreError
from spark_unlearn.store import fsutil
from spark_unlearn.store.commit import MarkerCommit, commit_protocol


def _write_version(work, name):
    with open(os.path.join(work, "manifest.json"), "w") as fh:
        fh.write(f'{{"version": "{name}"}}\n')


def _dead_reservation(root, name, *, old=True):
    """A version ``name`` written in place by a publisher that died (no lock held), its reservation ``old`` or not."""
    os.makedirs(os.path.join(root, "versions", name))
    _write_version(os.path.join(root, "versions", name), name)
    path = os.path.join(root, ".staging", name + ".reserved")
    open(path, "w").close()
    if old:
        stale = time.time() - fsutil.LEASE_SECONDS - 5
        os.utime(path, (stale, stale))


def test_reserve_write_commit_and_roll_back(tmp_path):
    root = str(tmp_path / "s")
    proto = MarkerCommit(root)
    assert proto.current() is None
    for expected in ("v000001", "v000002"):
        with proto.workspace() as (work, name):
            assert name == expected and work == os.path.join(root, "versions", name)
            assert proto.is_live(name) and name in proto.hidden()  # being written: not a version yet
            _write_version(work, name)
            proto.place(work, name)
            proto.switch(name)
        assert proto.current() == expected and not proto.hidden()
    proto.switch("v000001")  # a rollback is one more marker
    assert proto.current() == "v000001"
    assert sorted(os.listdir(os.path.join(root, "commits"))) == [f"{k:012d}" for k in (1, 2, 3)]
    assert commit_protocol(root).name == "markers"  # the store keeps its protocol
    assert os.listdir(os.path.join(root, ".staging")) == []
    with pytest.raises(StoreError, match="not a version name"):
        proto.switch("../v1")


def test_a_failed_write_leaves_nothing_and_a_dead_publishers_version_goes_without_reusing_its_number(tmp_path):
    root = str(tmp_path / "s")
    proto = MarkerCommit(root)
    with pytest.raises(RuntimeError, match="boom"):
        with proto.workspace() as (work, name):
            _write_version(work, name)
            raise RuntimeError("boom")
    assert not os.path.exists(os.path.join(root, "versions", "v000001"))

    _dead_reservation(root, "v000002")
    assert proto.abandoned() == ["v000002"]
    assert not os.path.exists(os.path.join(root, "versions", "v000002"))
    assert proto.current() is None
    with proto.workspace() as (work, name):
        assert name == "v000003"  # v000002 is never handed out again: a paused publisher may still write there
        _write_version(work, name)
        proto.switch(name)
    assert proto.current() == "v000003"
    proto.abandoned()
    assert os.listdir(os.path.join(root, ".staging")) == ["v000002.abandoned"]


def test_live_reservations_and_committed_versions_are_never_removed(tmp_path):
    root = str(tmp_path / "s")
    proto = MarkerCommit(root)
    os.makedirs(os.path.join(root, ".staging"))
    os.makedirs(os.path.join(root, "commits"))
    _dead_reservation(root, "v000001", old=False)  # just reserved: its lock is not taken yet
    _dead_reservation(root, "v000002")  # old, but its lock is held
    _dead_reservation(root, "v000003")  # old, lock free, but a marker committed it before its publisher died
    with open(os.path.join(root, "commits", f"{1:012d}"), "w") as fh:
        fh.write("v000003\n")
    _dead_reservation(root, "v000004")  # the only one to go
    with fsutil.exclusive_lock(os.path.join(root, ".staging", "v000002.lock")):
        assert proto.abandoned() == ["v000004"]
    assert sorted(os.listdir(os.path.join(root, "versions"))) == ["v000001", "v000002", "v000003"]
    assert proto.current() == "v000003"
    assert proto.hidden() == {"v000001", "v000002"}  # v000003's reservation went, the version stays


def test_a_publisher_that_lost_its_reservation_commits_nothing(tmp_path):
    root = str(tmp_path / "s")
    proto = MarkerCommit(root)
    with pytest.raises(StoreError, match="lost its reservation"):
        with proto.workspace() as (work, name):
            _write_version(work, name)
            # Paused past its lease, its version was removed as abandoned by another job:
            os.remove(os.path.join(root, ".staging", name + ".reserved"))
            proto.switch(name)
    assert proto.current() is None and not os.path.exists(os.path.join(root, "versions", "v000001"))

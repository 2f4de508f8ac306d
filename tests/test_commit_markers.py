"""The commit-marker protocol (spark_unlearn.store.commit.MarkerCommit) on a plain path, without Spark.

CURRENT is the highest marker; numbers are reserved by an exclusive create and never reused; a version whose
publisher died is removed only once its lock is free; a publisher that lost its reservation commits nothing.
"""

from __future__ import annotations

import os

import pytest

from spark_unlearn.errors import StoreError
from spark_unlearn.store.commit import MarkerCommit, commit_protocol


def _write_version(work, name):
    with open(os.path.join(work, "manifest.json"), "w") as fh:
        fh.write(f'{{"version": "{name}"}}\n')


def test_reserve_write_commit_and_roll_back(tmp_path):
    root = str(tmp_path / "s")
    proto = MarkerCommit(root)
    assert proto.current() is None
    for expected in ("v000001", "v000002"):
        with proto.workspace() as (work, name):
            assert name == expected and work == os.path.join(root, "versions", name)
            assert name in proto.live()  # being written: purge leaves it alone
            _write_version(work, name)
            proto.place(work, name)
            proto.switch(name)
        assert proto.current() == expected and not proto.live()
    proto.switch("v000001")  # a rollback is one more marker
    assert proto.current() == "v000001"
    assert sorted(os.listdir(os.path.join(root, "commits"))) == [f"{k:012d}" for k in (1, 2, 3)]
    assert commit_protocol(root).name == "markers"  # the store keeps its protocol
    assert os.listdir(os.path.join(root, ".staging")) == []


def test_a_failed_write_leaves_nothing_and_a_dead_publishers_version_goes_without_reusing_its_number(tmp_path):
    root = str(tmp_path / "s")
    proto = MarkerCommit(root)
    with pytest.raises(RuntimeError, match="boom"):
        with proto.workspace() as (work, name):
            _write_version(work, name)
            raise RuntimeError("boom")
    assert not os.path.exists(os.path.join(root, "versions", "v000001"))

    # A publisher killed after writing v000002 in place: its reservation stays, its lock is free.
    os.makedirs(os.path.join(root, "versions", "v000002"))
    _write_version(os.path.join(root, "versions", "v000002"), "v000002")
    open(os.path.join(root, ".staging", "v000002.reserved"), "w").close()
    assert proto.abandoned() == ["v000002"]
    assert not os.path.exists(os.path.join(root, "versions", "v000002"))
    assert proto.current() is None
    with proto.workspace() as (work, name):
        assert name == "v000003"  # v000002 is never handed out again (a tombstone keeps it)
        _write_version(work, name)
        proto.switch(name)
    assert proto.current() == "v000003"
    proto.abandoned()  # a higher version exists now: the tombstone goes
    assert os.listdir(os.path.join(root, ".staging")) == []


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

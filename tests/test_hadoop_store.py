"""A model store at a ``file://`` URI: every file operation through Hadoop's FileSystem in Spark's JVM.

The jobs run end to end on a store named by URI (train, unlearn, audit with the independent verifier, purge),
while the operating-system back end is forbidden to touch the store's directory: what they read and write goes
through :class:`~spark_unlearn.store.hadoop_files.HadoopFiles`.  The result is the same store on disk: opened by
its plain path, it verifies and names the same versions.  The lease lock (what ``hdfs://`` uses) is exercised
by the concurrent submitters of ``tests/test_concurrency.py`` on a ``file://`` store.
"""

from __future__ import annotations

import json
import os

import pytest

from job_helpers import run_job
from spark_unlearn.store import fsutil
from spark_unlearn.store.model_store import ModelStore


class _Guard:
    """The operating-system back end, refusing any path inside ``root``."""

    def __init__(self, inner, root):
        self._inner, self._root = inner, root

    def __getattr__(self, name):
        method = getattr(self._inner, name)

        def checked(*args, **kwargs):
            for a in args:
                if isinstance(a, str) and os.path.abspath(a).startswith(self._root):
                    raise AssertionError(f"PosixFiles.{name}({a!r}) on the URI store")
            return method(*args, **kwargs)

        return checked


def test_a_store_at_a_file_uri_trains_unlearns_audits_and_purges_through_hadoop(spark, tmp_path, monkeypatch,
                                                                                sample_ratings_path):
    root = str(tmp_path / "store")
    uri = "file://" + root
    monkeypatch.setattr(fsutil, "_POSIX", _Guard(fsutil._POSIX, root))

    code, out, err = run_job(spark, "train", ["--ratings", sample_ratings_path, "--model", uri, "--rank", "4",
                                              "--maxIter", "3", "--json"])
    assert code == 0, err[-3000:]
    assert json.loads(out)["version"] == "v000001"
    hadoop = [f for f in fsutil._HADOOP.values() if f.scheme == "file"]
    assert hadoop and os.path.isdir(os.path.join(root, "versions", "v000001", "userFactors"))

    delete = tmp_path / "d.csv"
    delete.write_text("user,item\n12,\n6,\n")
    code, out, err = run_job(spark, "unlearn", ["--model", uri, "--delete", str(delete), "--batch-id", "HDP-1",
                                                "--json"])
    assert code == 0, err[-3000:]
    report = json.loads(out)
    assert report["status"] == "applied" and report["version"] == "v000002", report

    # Spark's own reader loads the version by its URI; the erased users are gone.
    from pyspark.ml.recommendation import ALSModel

    model = ALSModel.load(uri + "/versions/v000002")
    assert not {r.id for r in model.userFactors.collect()} & {6, 12}

    code, out, err = run_job(spark, "audit", ["--model", uri, "--verify-certificate", "--json"])
    assert code == 0, err[-3000:]
    code, out, err = run_job(spark, "audit", ["--model", uri, "--delete", str(delete), "--batch-id", "HDP-1", "--json"])
    assert code == 0 and json.loads(out)["status"] == "applied", err[-3000:]
    assert {r["version"] for r in json.loads(out)["retained_in_other_versions"]} == {"v000001"}

    code, out, err = run_job(spark, "purge", ["--model", uri, "--json"])
    assert code == 0, err[-3000:]
    assert json.loads(out)["purged"] == ["v000001"], out
    assert os.listdir(os.path.join(root, "versions", "v000001")) == ["manifest.json"]  # a training version
    code, out, err = run_job(spark, "audit", ["--model", uri, "--delete", str(delete), "--batch-id", "HDP-1",
                                              "--require-purged", "--json"])
    assert code == 0 and json.loads(out)["purged"], err[-3000:]

    # The same bytes as a store written through a plain path: opened that way it verifies and agrees.
    monkeypatch.undo()
    plain = ModelStore(root)
    assert plain.current() == "v000002" == ModelStore(uri).current()
    plain.verify("v000002", cached=False)
    assert [e["batch_id"] for e in plain.ledger()] == ["HDP-1"]
    assert not [n for n in os.listdir(root) if n.endswith(".lease")]  # file:// locks with flock by default


def test_file_systems_without_a_connector_and_relative_uris_are_refused_before_any_work(spark, tmp_path):
    from spark_unlearn.errors import OutputPathError

    for bad, why in (("s3a://bucket/store", "no file system for s3a"), ("gs://bucket/store", "no file system for gs"),
                     ("file:store", "absolute path")):
        with pytest.raises(OutputPathError, match=why):
            ModelStore(bad).versions()


def test_a_store_committed_by_markers_never_renames_a_version_or_current(spark, tmp_path, monkeypatch,
                                                                          sample_ratings_path):
    """The protocol of file systems without an atomic rename, forced on file://: versions are reserved and written in
    place, and CURRENT is the highest commit marker (an exclusive create); a rollback is one more marker."""
    from spark_unlearn.store import commit
    from spark_unlearn.store.hadoop_files import HadoopFiles

    root = str(tmp_path / "store")
    uri = "file://" + root
    monkeypatch.setenv(commit.COMMIT_ENV, "markers")
    renames, replaces = [], []
    real_rename, real_replace = HadoopFiles.rename, HadoopFiles.replace

    def rename(self, src, dst):
        renames.append(dst)
        assert os.path.basename(os.path.dirname(dst)) != "versions", f"renamed a version into place: {dst}"
        return real_rename(self, src, dst)

    def replace(self, src, dst):
        replaces.append(os.path.basename(dst))
        return real_replace(self, src, dst)

    monkeypatch.setattr(HadoopFiles, "rename", rename)
    monkeypatch.setattr(HadoopFiles, "replace", replace)
    code, out, err = run_job(spark, "train", ["--ratings", sample_ratings_path, "--model", uri, "--rank", "4",
                                              "--maxIter", "3", "--json"])
    assert code == 0, err[-3000:]
    delete = tmp_path / "d.csv"
    delete.write_text("user\n12\n")
    code, out, err = run_job(spark, "unlearn", ["--model", uri, "--delete", str(delete), "--json"])
    assert code == 0 and json.loads(out)["status"] == "applied", err[-3000:]
    assert "CURRENT" not in replaces and set(replaces) <= {"ledger.jsonl"}, replaces

    ms = ModelStore(uri)
    assert ms.commit_protocol == "markers" and ms.current() == "v000002"
    assert not os.path.exists(os.path.join(root, "CURRENT"))
    markers = sorted(os.listdir(os.path.join(root, "commits")))
    assert [open(os.path.join(root, "commits", m)).read().strip() for m in markers] == ["v000001", "v000002"]
    assert not os.listdir(os.path.join(root, ".staging"))  # reservations released
    from pyspark.ml.recommendation import ALSModel

    assert 12 not in {r.id for r in ALSModel.load(uri + "/versions/v000002").userFactors.collect()}
    ms.verify("v000002", cached=False)
    assert [e["version_after"] for e in ms.ledger()] == ["v000002"]

    # A rollback is a third marker; a store opened by its plain path keeps the protocol it was created with.
    ms.set_current("v000001")
    monkeypatch.delenv(commit.COMMIT_ENV)
    plain = ModelStore(root)
    assert plain.commit_protocol == "markers" and plain.current() == "v000001"
    assert len(os.listdir(os.path.join(root, "commits"))) == 3

"""Blocked model versions: a request's factor and offsets blocks are written copy-on-write, and the result is
exactly the version a full rewrite publishes.

A store is trained with small blocks (so the fixture has several per side),
then the same user is erased from two copies: one publishes copy-on-write,
the other with the deltas withheld (the full Spark write).  The four tables
must hold the same rows; the untouched files must be hard links of the
parent's with its checksums; Spark's ``ALSModel.load`` and the independent
verifier must accept the version.
"""

from __future__ import annotations

import os
import shutil

import pyarrow.parquet as pq
import pytest
from pyspark.ml.recommendation import ALSModel

from spark_unlearn import unlearn_model
from spark_unlearn.als.options import UnlearnOptions
from spark_unlearn.als.params import ALSParams
from spark_unlearn.store import blocked
from spark_unlearn.store.model_store import ModelStore
from spark_unlearn.store.side_tables import SIDE_OF
from spark_unlearn.train_model import run_training
from spark_unlearn.unlearn_model import UnlearnRequest, run_unlearning
from verify_helpers import assert_verified


@pytest.fixture(scope="module")
def small_block_store(spark, tmp_path_factory, sample_ratings_path):
    mp = pytest.MonkeyPatch()
    mp.setattr(blocked, "BLOCK_ROWS", 8)  # 30 users -> 4 blocks, 100 items -> 13 blocks
    try:
        root = str(tmp_path_factory.mktemp("blocks") / "store")
        run_training(spark, ratings_path=sample_ratings_path, store_path=root,
                     params=ALSParams(rank=4, reg=0.1, iterations=5, seed=1, num_blocks=2), test_fraction=0.0)
    finally:
        mp.undo()
    return root


def _rows(spark, path):
    """``{id: row}`` of a Parquet table directory (read with pyarrow: no Spark job per file)."""
    table = pq.read_table(path).to_pydict()
    ids = table.pop("id")
    return {i: {k: (tuple(v[n]) if isinstance(v[n], list) else v[n]) for k, v in table.items()} for n, i in enumerate(ids)}


def _erase(spark, root, user):
    batch = spark.createDataFrame([(user, None, "user")], "user int, item int, kind string")
    return run_unlearning(spark, UnlearnRequest(model_path=root, batch=batch, measure=False,
                                                options=UnlearnOptions(engine="targeted")))


def test_a_blocked_training_version_loads_in_spark_and_records_whole_blocks(spark, small_block_store):
    ms = ModelStore(small_block_store)
    manifest = ms.read_manifest()
    blocks = manifest["blocks"]
    assert blocks["n_blocks"] == {"user": 4, "item": 13}
    for table, files in blocks["files"].items():
        n_blocks = blocks["n_blocks"][SIDE_OF.get(table, "user")]  # ratings: the user side's blocks
        key = "id" if table in SIDE_OF else "user"
        held = [b for info in files.values() for b in info["blocks"]]
        assert len(held) == len(set(held))  # a block lives in one file
        for name, info in files.items():
            ids = pq.read_table(os.path.join(ms.version_path(), table, name)).column(key).to_numpy()
            assert len(ids) == info["rows"] and set((ids % n_blocks).tolist()) <= set(info["blocks"])
    model = ALSModel.load(ms.version_path())
    assert model.userFactors.count() == manifest["counts"]["n_users"]


def test_an_erasure_writes_only_the_touched_blocks_and_equals_a_full_rewrite(spark, small_block_store, tmp_path,
                                                                              monkeypatch):
    cow, full = str(tmp_path / "cow"), str(tmp_path / "full")
    shutil.copytree(small_block_store, cow)
    shutil.copytree(small_block_store, full)
    parent = ModelStore(cow).current()
    report = _erase(spark, cow, 7)
    assert report["status"] == "applied" and report["engine"] == "targeted"
    monkeypatch.setattr(unlearn_model, "table_deltas", lambda changes: None)
    assert _erase(spark, full, 7)["status"] == "applied"

    a, b = ModelStore(cow), ModelStore(full)
    io = a.read_manifest()["blocks"]["io"]
    for table in ("userFactors", "itemFactors", "offsets/users", "offsets/items"):
        assert _rows(spark, os.path.join(a.version_path(), table)) == _rows(spark, os.path.join(b.version_path(), table)), table
    # Explicit feedback: both sides' factors and offsets were patched; a parent file was rewritten exactly when
    # one of its blocks holds a row that changed or left, and hard-linked otherwise.
    assert set(io) == {"userFactors", "itemFactors", "offsets/users", "offsets/items", "ratings"}
    child, parent_dir = a.version_path(), a.version_path(parent)
    manifest_before, manifest_after = a.read_manifest(parent)["blocks"], a.read_manifest()["blocks"]
    n_linked = 0
    for table, files in manifest_before["files"].items():
        if table == "ratings":
            continue
        before = _rows(spark, os.path.join(parent_dir, table))
        after = _rows(spark, os.path.join(child, table))
        changed = {i for i in before if after.get(i) != before[i]}
        hit = {i % manifest_before["n_blocks"][SIDE_OF[table]] for i in changed}
        for name, info in files.items():
            kept = os.path.exists(os.path.join(child, table, name))
            assert kept != bool(hit & set(info["blocks"])), (table, name)
            if kept:
                n_linked += 1
                assert os.path.samefile(os.path.join(child, table, name), os.path.join(parent_dir, table, name))
                assert manifest_after["files"][table][name] == info
        assert io[table]["files_linked"] == sum(os.path.exists(os.path.join(child, table, n)) for n in files)
    assert n_linked > 0
    # The ratings are blocked by user: only user 7's block was filtered (on the driver), every other file is linked.
    ratings_before = pq.read_table(os.path.join(parent_dir, "ratings")).to_pylist()
    ratings_after = pq.read_table(os.path.join(child, "ratings")).to_pylist()
    assert sorted(map(tuple, map(dict.values, ratings_after))) == sorted(
        tuple(r.values()) for r in ratings_before if r["user"] != 7)
    b_user = manifest_before["n_blocks"]["user"]
    for name, info in manifest_before["files"]["ratings"].items():
        assert os.path.exists(os.path.join(child, "ratings", name)) == (7 % b_user not in info["blocks"])
    assert io["ratings"]["files_written"] == 1
    a.verify()  # every checksum, the reused ones included
    model = ALSModel.load(child)  # Spark reads the pyarrow-written files beside its own
    assert 7 not in {r.id for r in model.userFactors.collect()}
    pairs = spark.createDataFrame([(3, 1), (11, 2)], "user int, item int")
    assert model.setUserCol("user").setItemCol("item").transform(pairs).where("prediction IS NOT NULL").count() == 2
    # A second request patches the patched version; the verifier checks the result from its files.
    assert _erase(spark, cow, 11)["status"] == "applied"
    assert_verified(spark, cow)

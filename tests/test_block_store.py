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

import numpy as np
import pyarrow.parquet as pq
import pytest
from pyspark.ml.recommendation import ALSModel

from spark_unlearn import unlearn_model
from spark_unlearn.als import held_sweeps
from spark_unlearn.als.options import UnlearnOptions
from spark_unlearn.als.params import ALSParams
from spark_unlearn.store import blocked
from spark_unlearn.store.model_store import ModelStore
from spark_unlearn.store.block_reader import TABLE_KEYS
from spark_unlearn.store.side_tables import SIDE_OF
from spark_unlearn.train_model import run_training
from spark_unlearn.unlearn_model import UnlearnRequest, run_unlearning
from verify_helpers import assert_verified


@pytest.fixture(scope="module")
def small_block_store(spark, tmp_path_factory, sample_ratings_path):
    mp = pytest.MonkeyPatch()
    mp.setattr(blocked, "BLOCK_ROWS", 8)  # 30 users -> 4 blocks, 100 items -> 13 blocks
    mp.setattr(blocked, "DATA_BLOCK_ROWS", 100)  # 1,501 ratings -> 16 blocks in each copy, finer than the sides
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


def _erase(spark, root, user, sweeps: bool = False):
    """Erase ``user`` with the frontier (the planner's sweeps off, ``sweep_driver_mb = 0``), or as the planner
    chooses (``sweeps``)."""
    batch = spark.createDataFrame([(user, None, "user")], "user int, item int, kind string")
    return run_unlearning(spark, UnlearnRequest(model_path=root, batch=batch, measure=False, options=UnlearnOptions(
        engine="targeted", **({} if sweeps else {"sweep_driver_mb": 0}))))


def test_a_blocked_training_version_loads_in_spark_and_records_whole_blocks(spark, small_block_store):
    ms = ModelStore(small_block_store)
    manifest = ms.read_manifest()
    blocks = manifest["blocks"]
    assert blocks["n_blocks"] == {"user": 4, "item": 13}
    assert blocks["table_blocks"] == {"ratings": 16, "ratings_by_item": 16}  # ratings: their own, finer blocks
    assert set(blocks["files"]) == set(TABLE_KEYS) - {"holdout"}
    for table, files in blocks["files"].items():
        side, key = TABLE_KEYS[table]  # ratings: by user, and a copy by item
        n_blocks = blocks["table_blocks"].get(table, blocks["n_blocks"][side])
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
    assert report["spark_jobs"] == 0  # the engine read every row from the files of its blocks, on the driver
    # The reference: rows read by Spark scans (no block reader) and every table written in full.
    monkeypatch.setattr(unlearn_model, "table_deltas", lambda changes: None)
    monkeypatch.setattr(unlearn_model.BlockReader, "of", classmethod(lambda cls, *a, **k: None))
    reference = _erase(spark, full, 7)
    assert reference["status"] == "applied" and reference["spark_jobs"] > 0
    monkeypatch.undo()

    a, b = ModelStore(cow), ModelStore(full)
    io = a.read_manifest()["blocks"]["io"]
    for table in ("userFactors", "itemFactors", "offsets/users", "offsets/items"):
        assert _rows(spark, os.path.join(a.version_path(), table)) == _rows(spark, os.path.join(b.version_path(), table)), table
    # Explicit feedback: both sides' factors and offsets were patched; a parent file was rewritten exactly when
    # one of its blocks holds a row that changed or left, and hard-linked otherwise.
    assert set(io) == {"userFactors", "itemFactors", "offsets/users", "offsets/items", "ratings", "ratings_by_item"}
    child, parent_dir = a.version_path(), a.version_path(parent)
    manifest_before, manifest_after = a.read_manifest(parent)["blocks"], a.read_manifest()["blocks"]
    n_linked = 0
    for table, files in manifest_before["files"].items():
        if table.startswith("ratings"):
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
    b_user = manifest_before["table_blocks"]["ratings"]
    assert b_user > manifest_before["n_blocks"]["user"]
    for name, info in manifest_before["files"]["ratings"].items():
        assert os.path.exists(os.path.join(child, "ratings", name)) == (7 % b_user not in info["blocks"])
    assert io["ratings"]["files_written"] == 1
    # The item copy holds the same rows; only the files of the blocks of the items user 7 rated were rewritten.
    by_item = pq.read_table(os.path.join(child, "ratings_by_item")).select(["user", "item", "rating"]).to_pylist()
    assert sorted(tuple(r.values()) for r in by_item) == sorted(map(tuple, map(dict.values, ratings_after)))
    b_item = manifest_before["table_blocks"]["ratings_by_item"]
    assert manifest_after["table_blocks"] == manifest_before["table_blocks"]  # kept for the lineage
    hit = {r["item"] % b_item for r in ratings_before if r["user"] == 7}
    for name, info in manifest_before["files"]["ratings_by_item"].items():
        assert os.path.exists(os.path.join(child, "ratings_by_item", name)) == (not hit & set(info["blocks"]))
    a.verify()  # every checksum, the reused ones included
    model = ALSModel.load(child)  # Spark reads the pyarrow-written files beside its own
    assert 7 not in {r.id for r in model.userFactors.collect()}
    pairs = spark.createDataFrame([(3, 1), (11, 2)], "user int, item int")
    assert model.setUserCol("user").setItemCol("item").transform(pairs).where("prediction IS NOT NULL").count() == 2
    # A second request patches the patched version; the verifier checks the result from its files.
    assert _erase(spark, cow, 11)["status"] == "applied"
    assert_verified(spark, cow)


def test_a_withdrawn_item_is_found_in_its_blocks_and_leaves_both_copies(spark, small_block_store, tmp_path):
    root = str(tmp_path / "store")
    shutil.copytree(small_block_store, root)
    ms = ModelStore(root)
    before = pq.read_table(os.path.join(ms.version_path(), "ratings")).to_pylist()
    item = 2
    batch = spark.createDataFrame([(None, item, "item"), (5, 9, "interaction")], "user int, item int, kind string")
    report = run_unlearning(spark, UnlearnRequest(model_path=root, batch=batch, measure=False,
                                                  options=UnlearnOptions(engine="targeted", sweep_driver_mb=0)))
    assert report["status"] == "applied" and report["deletion"]["deleted_ratings"] == sum(
        r["item"] == item or (r["user"], r["item"]) == (5, 9) for r in before) > 1
    expected = sorted((r["user"], r["item"], r["rating"]) for r in before
                      if r["item"] != item and (r["user"], r["item"]) != (5, 9))
    for table in ("ratings", "ratings_by_item"):
        got = pq.read_table(os.path.join(ms.version_path(), table)).select(["user", "item", "rating"]).to_pylist()
        assert sorted(tuple(r.values()) for r in got) == expected, table
    # Filtered on the driver in the blocks of the removed rows (no Spark rewrite: the tables keep their block map).
    blocks = ms.read_manifest()["blocks"]
    assert {"ratings", "ratings_by_item"} <= set(blocks["io"]) and blocks["io"]["ratings_by_item"]["files_linked"] > 0
    assert_verified(spark, root)


@pytest.fixture(scope="module")
def implicit_block_store(spark, tmp_path_factory, sample_ratings_path):
    mp = pytest.MonkeyPatch()
    mp.setattr(blocked, "BLOCK_ROWS", 8)
    mp.setattr(blocked, "DATA_BLOCK_ROWS", 100)
    try:
        root = str(tmp_path_factory.mktemp("implicit_blocks") / "store")
        run_training(spark, ratings_path=sample_ratings_path, store_path=root, test_fraction=0.0,
                     params=ALSParams(rank=4, reg=0.1, iterations=5, seed=1, num_blocks=2, implicit=True, alpha=1.0))
    finally:
        mp.undo()
    return root


def _close_rows(a: dict, b: dict, rtol: float = 1e-9) -> bool:
    """Whether two ``{id: row}`` tables hold the same ids and the same values up to float rounding."""
    import numpy as np

    if set(a) != set(b):
        return False
    for i in a:
        for col, va in a[i].items():
            if not np.allclose(np.asarray(va, float), np.asarray(b[i][col], float), rtol=rtol, atol=1e-12):
                return False
    return True


@pytest.mark.parametrize("held_sides", [("user", "item"), ("item",)])
def test_an_implicit_request_holds_small_sides_on_the_driver_and_equals_the_spark_passes(
        spark, implicit_block_store, tmp_path, monkeypatch, held_sides):
    """Implicit feedback moves every row's drift by ``ΔG x``.  A blocked version's sides that fit the driver are read
    whole from their files: the Gram checks over all rows and the new offsets of every row are computed there, with
    no Spark job, and the version equals the one the Spark passes and the full offsets write publish."""
    from spark_unlearn.als.block_source import BlockRowSource
    from spark_unlearn.als.spark_source import BoundedGramSource

    held, spark_ref = str(tmp_path / "held"), str(tmp_path / "spark")
    shutil.copytree(implicit_block_store, held)
    shutil.copytree(implicit_block_store, spark_ref)

    def erase(root):
        return _erase(spark, root, 7)

    # Every Gram check passes over all of a side's rows (no bound spares it): on the driver, or in Spark.
    monkeypatch.setattr(BoundedGramSource, "gram_needs_pass", lambda self, side, delta_gram, tol: True)
    hold = BlockRowSource.hold_side
    # A side not held (too large for the driver) keeps its Gram checks and its offsets write in Spark.
    monkeypatch.setattr(BlockRowSource, "hold_side",
                        lambda self, side, max_bytes=0: side in held_sides and hold(self, side))
    report = erase(held)
    assert report["status"] == "applied" and report["held_sides"] == list(held_sides)
    io = ModelStore(held).read_manifest()["blocks"]["io"]
    # Held sides' offsets are patched on the driver, block by block (their io counts what was read); the others
    # are written by Spark in full (counted as written only).
    for s in ("user", "item"):
        assert ("bytes_read" in io[f"offsets/{s}s"]) == (s in held_sides), (s, io[f"offsets/{s}s"])
    if len(held_sides) == 2:
        assert report["spark_jobs"] == 0
    # The reference: no side held ([unlearn] hold_side_mb = 0), so the Gram checks run as Spark passes and the
    # offsets are written by Spark.
    monkeypatch.setattr(BlockRowSource, "hold_side", hold)
    batch = spark.createDataFrame([(7, None, "user")], "user int, item int, kind string")
    reference = run_unlearning(spark, UnlearnRequest(model_path=spark_ref, batch=batch, measure=False,
                                                     options=UnlearnOptions(engine="targeted", hold_side_mb=0,
                                                                            sweep_driver_mb=0)))
    monkeypatch.undo()
    assert reference["spark_jobs"] > 0
    assert reference["status"] == "applied" and reference["held_sides"] == []
    assert reference["rows_solved"] == report["rows_solved"]
    a, b = ModelStore(held), ModelStore(spark_ref)
    for table in ("userFactors", "itemFactors", "offsets/users", "offsets/items"):
        assert _close_rows(_rows(spark, os.path.join(a.version_path(), table)),
                           _rows(spark, os.path.join(b.version_path(), table))), table
    # Not every untouched row kept its drift: the Gram change moved them all.
    before = _rows(spark, os.path.join(a.version_path(a.versions()[0]), "offsets/items"))
    after = _rows(spark, os.path.join(a.version_path(), "offsets/items"))
    assert sum(before[i]["drift"] != after[i]["drift"] for i in after) > len(after) // 2
    assert report["certificate"]["max_relative_residual"] == pytest.approx(
        reference["certificate"]["max_relative_residual"], rel=1e-9)
    assert_verified(spark, held)


def test_a_large_frontier_holds_its_sides_within_the_sweeps_budget_and_equals_the_spark_passes(
        spark, implicit_block_store, tmp_path, monkeypatch):
    """A frontier expected to reach more than ``driver_rows`` neighbours would keep a side that ``hold_side_mb`` does
    not hold in Spark (a pass per round).  When the whole version fits ``sweep_driver_mb`` the sides are held within
    that budget instead: no Spark job, and the version the Spark passes publish."""
    from spark_unlearn.als.block_source import BlockRowSource
    from spark_unlearn.als.spark_source import BoundedGramSource

    held, spark_ref = str(tmp_path / "held"), str(tmp_path / "spark")
    shutil.copytree(implicit_block_store, held)
    shutil.copytree(implicit_block_store, spark_ref)
    # Every Gram check passes over all of a side's rows (no bound spares it), so both ways store every row's drift.
    monkeypatch.setattr(BoundedGramSource, "gram_needs_pass", lambda self, side, delta_gram, tol: True)
    rated = pq.read_table(os.path.join(ModelStore(held).version_path(), "ratings")).to_pylist()
    pair = next((r["user"], r["item"]) for r in rated if r["user"] == 7)
    hold = BlockRowSource.hold_side
    # Sides "too large" for hold_side_mb (256 MiB) but within the sweeps' budget (2048 MiB).
    monkeypatch.setattr(BlockRowSource, "hold_side",
                        lambda self, side, max_bytes=0: max_bytes > (1 << 30) and hold(self, side, max_bytes))

    def delete(root, **options):
        batch = spark.createDataFrame([(*pair, "interaction")], "user int, item int, kind string")
        return run_unlearning(spark, UnlearnRequest(model_path=root, batch=batch, measure=False, options=UnlearnOptions(
            engine="targeted", driver_rows=1, **options)))

    report = delete(held, sweep_driver_mb=2048)
    assert report["planner"]["choice"] == "frontier" and report["planner"]["sweeps_possible"], report["planner"]
    assert report["held_sides"] == ["user", "item"] and report["spark_jobs"] == 0
    reference = delete(spark_ref, hold_side_mb=0, sweep_driver_mb=0)
    monkeypatch.undo()
    assert reference["held_sides"] == [] and reference["spark_jobs"] > 0
    assert reference["rows_solved"] == report["rows_solved"]
    a, b = ModelStore(held), ModelStore(spark_ref)
    for table in ("userFactors", "itemFactors"):
        assert _close_rows(_rows(spark, os.path.join(a.version_path(), table)),
                           _rows(spark, os.path.join(b.version_path(), table))), table
    for table in ("offsets/users", "offsets/items"):
        got, want = (_rows(spark, os.path.join(m.version_path(), table)) for m in (a, b))
        assert set(got) == set(want), table
        for i in want:  # targets and drifts equal; |b| of a row that only drifted: the held side keeps the stored
            # value, the Spark pass stores a lower bound of it (bnorm_exact), never above
            assert np.allclose(got[i]["residual"], want[i]["residual"], atol=1e-12), (table, i)
            assert np.allclose(got[i]["drift"], want[i]["drift"], rtol=1e-9, atol=1e-12), (table, i)
            assert want[i]["bnorm"] <= got[i]["bnorm"] * (1 + 1e-12) and got[i]["bnorm"] <= want[i]["bnorm"] * 1.01
    assert_verified(spark, held)


def test_the_forgetting_measure_from_the_block_files_equals_the_spark_measure(spark, small_block_store, tmp_path,
                                                                                monkeypatch):
    """A request that ran on a blocked version measures how far its deleted pairs fell on the driver (the parent's
    item factors read whole, the request's row changes applied); the numbers equal Spark's blocked scoring."""
    from spark_unlearn import forgetting_measure

    driver, reference = str(tmp_path / "driver"), str(tmp_path / "spark")
    shutil.copytree(small_block_store, driver)
    shutil.copytree(small_block_store, reference)
    rated = pq.read_table(os.path.join(ModelStore(driver).version_path(), "ratings")).to_pylist()
    pairs = [(r["user"], r["item"]) for r in rated if r["user"] in (3, 11)][:8] + [(r["user"], r["item"]) for r in rated
                                                                                 if r["user"] == 7][:2]

    def delete(root):
        batch = spark.createDataFrame([(u, i, "interaction") for u, i in pairs] + [(7, None, "user")],
                                      "user int, item int, kind string")
        return run_unlearning(spark, UnlearnRequest(model_path=root, batch=batch, measure=True,
                                                    options=UnlearnOptions(engine="targeted")))

    got = delete(driver)["forgetting"]
    monkeypatch.setattr(forgetting_measure, "DRIVER_ITEM_BYTES", 0)
    want = delete(reference)["forgetting"]
    assert got["computed"].startswith("driver") and want["computed"] == "spark"
    assert got["pairs"] == want["pairs"] == 8  # user 7 was erased: its two pairs have no user row left to rank
    for key in ("rank_percentile_before", "rank_percentile_after"):
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    assert got["rank_percentile_after"] > got["rank_percentile_before"]


@pytest.mark.parametrize("store", ["small_block_store", "implicit_block_store"])
def test_full_sweeps_on_the_driver_equal_the_block_layout_sweeps_and_certify_exactly(spark, store, tmp_path, request,
                                                                                     monkeypatch):
    """``mode = "full"`` on a blocked version that fits the driver sweeps its stored blocks there (no layout, no
    Spark job in the solve): the same sweeps, factors and offsets as the Spark layout engine's full sweeps (forced by
    ``sweep_driver_mb = 0``), an exact certificate, and a version the independent verifier accepts."""
    root = request.getfixturevalue(store)
    driver, layout = str(tmp_path / "driver"), str(tmp_path / "layout")
    shutil.copytree(root, driver)
    shutil.copytree(root, layout)
    rated = pq.read_table(os.path.join(ModelStore(driver).version_path(), "ratings")).to_pylist()
    rows = [(r["user"], r["item"], "interaction") for r in rated if r["user"] in (2, 5)][:6] + [(7, None, "user")]

    def run(path, **options):
        batch = spark.createDataFrame(rows, "user int, item int, kind string")
        return run_unlearning(spark, UnlearnRequest(model_path=path, batch=batch, measure=False,
                                                    options=UnlearnOptions(mode="full", **options)))

    # The same algorithm on both: the layout's Spark sweeps do not solve the changed rows first, nor watch the
    # deleted pairs' scores.
    monkeypatch.setattr(held_sweeps, "SOLVE_CHANGED_FIRST", False)
    got, want = run(driver, forgetting_share=0.0), run(layout, sweep_driver_mb=0, forgetting_share=0.0)
    assert got["presolved_rows"] == 0
    assert got["strategy"] == "sweeps" and got["mode"] == "full" and got["planner"]["choice"] == "sweeps"
    assert got["planner"]["why"] == "requested (mode full)"
    assert got["certificate"]["method"] == "sweeps" and got["certificate"]["max_kind"] == "exact"
    assert got["certificate"]["holds"] and want["certificate"]["holds"]
    assert "strategy" not in want and want["sweeps"] == got["sweeps"] >= 1
    assert got["certificate"]["max_relative_residual"] == pytest.approx(
        want["certificate"]["max_relative_residual"], rel=1e-3)
    a, b = ModelStore(driver), ModelStore(layout)
    for table in ("userFactors", "itemFactors", "offsets/users", "offsets/items"):
        assert _close_rows(_rows(spark, os.path.join(a.version_path(), table)),
                           _rows(spark, os.path.join(b.version_path(), table)), rtol=1e-3), table
    assert_verified(spark, driver)
    ALSModel.load(a.version_path())


def test_min_sweeps_reach_the_driver_sweeps_and_the_version_still_certifies(spark, implicit_block_store, tmp_path):
    """``min_sweeps`` (forgetting keeps moving after the certificate first holds) reaches the driver's sweeps through
    the request options: exactly that many sweeps when the certificate holds earlier, the first ones unchecked, the
    version certified exactly and accepted by the independent verifier."""
    path = str(tmp_path / "store")
    shutil.copytree(implicit_block_store, path)
    rated = pq.read_table(os.path.join(ModelStore(path).version_path(), "ratings")).to_pylist()
    rows = [(r["user"], r["item"], "interaction") for r in rated if r["user"] == 2][:2]
    batch = spark.createDataFrame(rows, "user int, item int, kind string")
    rep = run_unlearning(spark, UnlearnRequest(model_path=path, batch=batch, measure=False,
                                               options=UnlearnOptions(mode="full", min_sweeps=3,
                                                                      forgetting_share=0.0)))
    assert rep["strategy"] == "sweeps" and rep["sweeps"] == 3 and rep["planner"]["min_sweeps"] == 3
    assert [h.get("checked", True) for h in rep["sweep_history"]] == [False, False, True]
    assert rep["certificate"]["holds"] and rep["certificate"]["max_kind"] == "exact"
    assert_verified(spark, path)


def test_a_batch_deleting_a_large_share_is_retrained_on_the_driver_as_train_als_would(spark, implicit_block_store,
                                                                                      tmp_path):
    """A batch erasing users that hold at least ``retrain_share`` of the ratings is retrained on the driver: the
    published factors are ``train_als``'s on the remaining ratings (the model's seed and iterations; the oracle), every
    row's target is its new training residual (certificate 0), the version's training residual is the new model's,
    the independent verifier accepts it, and the next request is certified against it."""
    from spark_unlearn.als.train import train_als

    path = str(tmp_path / "store")
    shutil.copytree(implicit_block_store, path)
    store = ModelStore(path)
    parent = store.read_manifest(store.current())
    rated = pq.read_table(os.path.join(store.version_path(), "ratings")).to_pylist()
    by_user: dict[int, int] = {}
    for r in rated:
        by_user[r["user"]] = by_user.get(r["user"], 0) + 1
    erased, share = [], 0.0
    for u in sorted(by_user):  # users until they hold 10 % of the ratings
        if share >= 0.10:
            break
        erased.append(u)
        share += by_user[u] / len(rated)
    batch = spark.createDataFrame([(u, None, "user") for u in erased], "user int, item int, kind string")
    rep = run_unlearning(spark, UnlearnRequest(model_path=path, batch=batch, measure=False))
    assert rep["strategy"] == "retrain" and rep["mode"] == "retrain" and rep["planner"]["choice"] == "retrain"
    assert rep["planner"]["deleted_share"] == pytest.approx(share) and rep["iterations"] == 5
    assert rep["certificate"]["holds"] and rep["certificate"]["max_relative_residual"] == 0.0
    params = ALSParams(rank=4, reg=0.1, iterations=5, seed=1, num_blocks=2, implicit=True, alpha=1.0)
    left = [(r["user"], r["item"], r["rating"]) for r in rated if r["user"] not in set(erased)]
    want = train_als(spark.createDataFrame(left, "user int, item int, rating float"), params).model
    got = ALSModel.load(store.version_path())
    for mine, theirs in ((got.userFactors, want.user_factors), (got.itemFactors, want.item_factors)):
        a = {r["id"]: np.array(r["features"]) for r in mine.collect()}
        b = {r["id"]: np.array(r["features"]) for r in theirs.collect()}
        assert set(a) == set(b)
        np.testing.assert_allclose(np.array([a[i] for i in sorted(a)]), np.array([b[i] for i in sorted(b)]),
                                   rtol=1e-3, atol=1e-5)
    manifest = store.read_manifest(store.current())
    assert manifest["training_residual"] == rep["training_residual"] != parent["training_residual"]
    assert_verified(spark, path)
    one = [(r["user"], r["item"], "interaction") for r in rated if r["user"] not in set(erased)][:1]
    nxt = run_unlearning(spark, UnlearnRequest(model_path=path, batch=spark.createDataFrame(
        one, "user int, item int, kind string"), measure=False))
    assert nxt["status"] == "applied" and nxt["certificate"]["holds"] and nxt["strategy"] != "retrain"
    assert_verified(spark, path)


def test_the_forgetting_stop_keeps_the_driver_sweeps_going_until_the_deleted_pairs_settle(spark, implicit_block_store,
                                                                                           tmp_path):
    """By default the sweeps also wait for the deleted pairs' scores (``forgetting_share``): the report gives the
    scores after each step (trained, rows solved first, each sweep) as the pairs' mean recomputed from the published
    factors, the estimate and its target; the version certifies and verifies.  With the stop off the same request
    stops at the certificate, after fewer sweeps."""
    from pyspark.ml.recommendation import ALSModel

    rated = pq.read_table(os.path.join(ModelStore(implicit_block_store).version_path(), "ratings")).to_pylist()
    rows = [(r["user"], r["item"], "interaction") for r in rated if r["user"] in (2, 5, 9)][:8]
    reps = {}
    for share in (0.95, 0.0):
        path = str(tmp_path / f"store{share}")
        shutil.copytree(implicit_block_store, path)
        batch = spark.createDataFrame(rows, "user int, item int, kind string")
        reps[share] = run_unlearning(spark, UnlearnRequest(model_path=path, batch=batch, measure=False,
                                                           options=UnlearnOptions(mode="full", forgetting_share=share)))
    rep, off = reps[0.95], reps[0.0]
    f = rep["forgetting_stop"]
    assert f["pairs"] == len(rows) and f["target_share"] == 0.95 and rep["planner"]["forgetting_share"] == 0.95
    assert len(f["scores"]) == rep["sweeps"] + 2 and rep["presolved_rows"] > 0
    assert f["holds"] == (f["share"] >= 0.95) and (f["holds"] or rep["sweeps"] == 10)
    assert rep["sweeps"] > off["sweeps"] and rep["certificate"]["holds"]
    model = ALSModel.load(ModelStore(str(tmp_path / "store0.95")).version_path())
    U = {r["id"]: np.array(r["features"], np.float64) for r in model.userFactors.collect()}
    V = {r["id"]: np.array(r["features"], np.float64) for r in model.itemFactors.collect()}
    assert np.mean([U[u] @ V[i] for u, i, _ in rows]) == pytest.approx(f["scores"][-1], rel=1e-6)
    assert_verified(spark, str(tmp_path / "store0.95"))


def test_the_planner_sweeps_when_the_frontier_would_cost_more_and_keeps_the_frontier_when_the_driver_is_too_small(
        spark, implicit_block_store, tmp_path, monkeypatch):
    """In the default frontier mode the planner picks sweeps on the driver when the rows whose data changed alone
    cost more than the sweeps (here: a frontier row priced out of reach), and says why; with no driver memory for
    sweeps it keeps the frontier."""
    from spark_unlearn.als import strategy_cost

    swept, frontier = str(tmp_path / "swept"), str(tmp_path / "frontier")
    shutil.copytree(implicit_block_store, swept)
    shutil.copytree(implicit_block_store, frontier)
    monkeypatch.setattr(strategy_cost, "FRONTIER_ROW_COST", 1e12)
    got = _erase(spark, swept, 7, sweeps=True)
    assert got["status"] == "applied" and got["strategy"] == "sweeps" and got["requested_mode"] == "frontier"
    plan = got["planner"]
    assert plan["choice"] == "sweeps" and plan["direct_rows_limit"] == 0 and "cost more" in plan["why"]
    assert plan["actual_sweeps"] == got["sweeps"] and plan["actual_row_solves"] == got["rows_solved"]
    # Sweeps started from the version solve the rows whose own data changed first.
    assert got["presolved_rows"] > 0
    assert got["rows_solved"] == got["sweeps"] * got["rows_total"] + got["presolved_rows"] + got["repaired_rows"]
    assert {"plan", "solve", "certificate"} <= set(got["seconds"])
    # The strict policy's figure is reported under training-precision too, and the sweeps' deviation quantiles.
    cert = got["certificate"]
    strict = cert["strict"]
    assert strict["tolerance"] == pytest.approx(got["training_residual"]["p90"])
    assert strict["max_ratio"] == pytest.approx(cert["max_relative_residual"] / strict["tolerance"])
    assert strict["holds"] == (strict["max_ratio"] <= 1.0)
    for s in ("user", "item"):
        q = cert["deviation_quantiles"][s]
        assert q["p50"] <= q["p90"] <= q["p99"] <= q["max"] == cert["per_side"][s]
    assert_verified(spark, swept)
    batch = spark.createDataFrame([(7, None, "user")], "user int, item int, kind string")
    kept = run_unlearning(spark, UnlearnRequest(model_path=frontier, batch=batch, measure=False,
                                                options=UnlearnOptions(engine="targeted", sweep_driver_mb=0)))
    assert kept["strategy"] == "frontier" and not kept["planner"]["sweeps_possible"]
    assert "sweep_driver_mb = 0" in kept["planner"]["why"]
    assert kept["rows_solved"] < got["rows_solved"]
    # A frontier (priced as nearly free, so the planner starts it) capped below its first round stops before
    # solving anything; the planner then sweeps from the version.
    monkeypatch.setattr(strategy_cost, "FRONTIER_ROW_COST", 1e-9)
    capped = str(tmp_path / "capped")
    shutil.copytree(implicit_block_store, capped)
    late = run_unlearning(spark, UnlearnRequest(model_path=capped, batch=batch, measure=False,
                                                options=UnlearnOptions(engine="targeted", full_fallback_fraction=1e-6)))
    assert late["strategy"] == "sweeps" and "stopped at max_rows" in late["planner"]["why"]
    assert late["planner"]["frontier_rows_before"] == 0 and late["certificate"]["holds"]
    assert late["presolved_rows"] > 0  # the frontier solved nothing: the sweeps solve the changed rows first
    assert_verified(spark, capped)

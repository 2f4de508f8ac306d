"""Unlearn-ALS through Spark and the model store, on the embedded sample (small, real data)."""

from __future__ import annotations

import numpy as np
import pytest

from als_helpers import factors_dict, load_sample
from spark_unlearn.errors import ConfigError, UnknownIdError
from spark_unlearn.request_caches import persistent_rdd_ids
from spark_unlearn.store.model_store import ModelStore
from spark_unlearn.als.options import UnlearnOptions
from spark_unlearn.unlearn_model import UnlearnRequest, run_unlearning
from verify_helpers import assert_verified


def copy_store(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return str(dst)


def batch(spark, rows):
    return spark.createDataFrame(rows, "user int, item int, kind string")


def test_an_empty_batch_publishes_nothing_and_says_so(spark, trained_store, tmp_path):
    from job_helpers import tree_digest

    store = copy_store(trained_store, tmp_path / "s")
    before = tree_digest(store)
    report = run_unlearning(spark, UnlearnRequest(model_path=store, batch=batch(spark, []), measure=False))
    assert report["status"] == "nothing_to_delete" and report["version"] == "v000001"
    assert "holds no request" in report["note"]
    # A batch whose requests match nothing in the data publishes nothing either.
    report = run_unlearning(spark, UnlearnRequest(model_path=store, batch=batch(spark, [(1, 987654, "interaction")]), measure=False))
    assert report["status"] == "nothing_to_delete" and report["deletion"]["deleted_ratings"] == 0
    assert tree_digest(store) == before


def test_erasing_users_removes_their_rows_and_their_ratings(spark, trained_store, tmp_path):
    store = copy_store(trained_store, tmp_path / "s")
    data = ModelStore(store).load(spark).ratings
    raters: dict[int, set[int]] = {}
    for r in data.select("user", "item").collect():
        raters.setdefault(r["item"], set()).add(r["user"])
    # No item of the sample has a single rater: erase every rater of the least-rated item, so that one is left
    # without ratings.
    erased = min(raters.values(), key=lambda us: (len(us), sorted(us)))
    orphan = sorted(i for i, us in raters.items() if us <= erased)
    assert orphan
    rows = [(u, None, "user") for u in sorted(erased)]
    # Most items lose a rating: let the frontier solve them rather than fall back to full sweeps.
    report = run_unlearning(spark, UnlearnRequest(model_path=store, batch=batch(spark, rows), measure=False, options=UnlearnOptions(full_fallback_fraction=1.0, sweep_driver_mb=0)))
    assert report["mode"] == "frontier"
    after = ModelStore(store).load(spark)
    assert not erased & set(factors_dict(after.model.user_factors))
    where = f"user in ({', '.join(map(str, sorted(erased)))})"
    assert after.ratings.filter(where).count() == 0
    assert after.holdout.filter(where).count() == 0
    items_after = factors_dict(after.model.item_factors)
    assert all(i not in items_after for i in orphan)  # items left without ratings leave the model
    assert set(items_after) == set(raters) - set(orphan)
    assert report["deletion"]["deleted_ratings"] == sum(len(us & erased) for us in raters.values())
    # The certificate, recomputed from the published files by the independent verifier.
    assert_verified(spark, store)


def test_forgetting_interactions_reports_missing_pairs_and_strict_rejects_them(spark, trained_store, tmp_path):
    store = copy_store(trained_store, tmp_path / "s")
    data = ModelStore(store).load(spark).ratings
    present = [(r["user"], r["item"]) for r in data.orderBy("user", "item").limit(3).collect()]
    rows = [(u, i, "interaction") for u, i in present] + [(1, 987654, "interaction")]
    with pytest.raises(UnknownIdError, match="987654"):
        run_unlearning(spark, UnlearnRequest(model_path=store, batch=batch(spark, rows), measure=False, options=UnlearnOptions(strict=True)))
    assert ModelStore(store).versions() == ["v000001"]  # a failed run publishes nothing
    report = run_unlearning(spark, UnlearnRequest(model_path=store, batch=batch(spark, rows), measure=False))
    assert report["deletion"]["deleted_ratings"] == 3
    assert report["deletion"]["not_found_interactions"] == 1
    assert report["not_found"]["interactions"] == [(1, 987654)]
    after = ModelStore(store).load(spark).ratings
    assert after.join(spark.createDataFrame(present, "user int, item int"), ["user", "item"]).count() == 0


def test_full_mode_and_frontier_meet_the_same_certificate(spark, trained_store, tmp_path):
    rows, tol = [(3, None, "user")], 5e-2
    store_f = copy_store(trained_store, tmp_path / "f")
    store_s = copy_store(trained_store, tmp_path / "s")
    before = persistent_rdd_ids(spark)
    # The frontier with the planner's sweeps off (on this dense sample it would sweep a user's erasure).
    f = run_unlearning(spark, UnlearnRequest(model_path=store_f, batch=batch(spark, rows), measure=False, options=UnlearnOptions(tol=tol, sweep_driver_mb=0)))
    s = run_unlearning(spark, UnlearnRequest(model_path=store_s, batch=batch(spark, rows), measure=False, options=UnlearnOptions(mode="full", tol=tol)))
    assert f["mode"] == "frontier" and s["mode"] == "full"
    for report, store in ((f, store_f), (s, store_s)):
        assert report["tolerance"] == tol
        assert report["certificate"]["max_relative_residual"] <= tol and report["certificate"]["holds"]
        assert ModelStore(store).read_manifest(report["version"])["certificate"]["holds"]
    # Full sweeps re-solve every row at least once (plus the item half-sweep that checks the last one).
    assert s["sweeps"] >= 1 and s["rows_solved"] >= s["rows_total"]
    assert f["rows_solved"] < s["rows_solved"]
    # Neither request leaves a persisted table behind (the full sweeps used to keep ~11 per request).
    assert persistent_rdd_ids(spark) == before


def test_spark_mllib_model_unlearns_and_loads_with_alsmodel(spark, tmp_path):
    from pyspark.ml.recommendation import ALS, ALSModel

    ratings = load_sample(spark)
    src = str(tmp_path / "mllib")
    ALS(rank=4, maxIter=5, regParam=0.1, seed=2).fit(ratings).save(src)
    csv = tmp_path / "ratings.csv"
    ratings.toPandas().to_csv(csv, index=False)
    out = str(tmp_path / "out")
    with pytest.raises(ConfigError, match="output-store"):
        run_unlearning(spark, UnlearnRequest(model_path=src, batch=batch(spark, [(5, None, "user")]), ratings_path=str(csv), measure=False))
    report = run_unlearning(spark, UnlearnRequest(model_path=src, batch=batch(spark, [(5, None, "user")]), ratings_path=str(csv), ratings_format="csv", output_store=out, measure=False, expected_params={"implicit": False, "reg": 0.1}, options=UnlearnOptions(tol=5e-2)))
    assert report["objective_check"]["holds"] and not report["objective_check"]["forced"]
    loaded = ALSModel.load(report["path"])
    assert loaded.userFactors.filter("id = 5").count() == 0
    assert loaded.userFactors.count() == ratings.select("user").distinct().count() - 1
    # The same command for the next request applies it on the store's lineage, not on the MLlib model again
    # (which would bring user 5 back).
    again = run_unlearning(spark, UnlearnRequest(model_path=src, batch=batch(spark, [(6, None, "user")]), ratings_path=str(csv), ratings_format="csv", output_store=out, measure=False, expected_params={"implicit": False, "reg": 0.1}, options=UnlearnOptions(tol=5e-2)))
    assert again["status"] == "applied" and again["parent"] == report["version"]
    users = {r["id"] for r in ALSModel.load(again["path"]).userFactors.select("id").collect()}
    assert not {5, 6} & users and len(users) == ratings.select("user").distinct().count() - 2

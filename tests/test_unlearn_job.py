"""jobs/unlearn.py end to end on the kinds of request users bring: whole items, mixed batches, empty files.

Each result is checked on the published files (ratings, holdout and factor tables read back), not with the
numbers the job reports about itself.
"""

from __future__ import annotations

import json

from job_helpers import run_job, tree_digest
from spark_unlearn.store.model_store import ModelStore
from verify_helpers import assert_verified


def _published(spark, store):
    loaded = ModelStore(store).load(spark)
    return loaded, {
        "users": {r[0] for r in loaded.model.user_factors.select("id").collect()},
        "items": {r[0] for r in loaded.model.item_factors.select("id").collect()},
        "pairs": {(r[0], r[1]) for r in loaded.ratings.select("user", "item").collect()},
        "holdout": {(r[0], r[1]) for r in loaded.holdout.select("user", "item").collect()},
    }


def _unlearn(spark, store, tmp_path, name, text, *extra):
    path = tmp_path / name
    path.write_text(text)
    code, out, err = run_job(spark, "unlearn", ["--model", store, "--delete", str(path), "--tol", "0.05", "--json", *extra])
    assert code == 0, err[-3000:]
    return json.loads(out)


def test_withdrawing_an_item_through_the_job_removes_it_everywhere_and_says_the_measure_is_undefined(
        spark, store_copy, tmp_path):
    _, before = _published(spark, store_copy)
    item = 5
    assert any(i == item for _, i in before["pairs"])
    report = _unlearn(spark, store_copy, tmp_path, "item.csv", f"item\n{item}\n")
    assert report["status"] == "applied"
    # The one deleted kind here leaves no pair to rank: said in words, and no NaN anywhere in the report.
    assert report["forgetting"]["defined"] is False and "undefined" in report["forgetting"]["note"]
    assert "NaN" not in json.dumps(report)
    loaded, after = _published(spark, store_copy)
    assert loaded.version == report["version"] != "v000001"
    assert item not in after["items"]
    assert not any(i == item for _, i in after["pairs"] | after["holdout"])
    assert after["pairs"] == {p for p in before["pairs"] if p[1] != item}
    assert after["users"] == {u for u, _ in after["pairs"]}
    full = assert_verified(spark, store_copy)
    sampled = assert_verified(spark, store_copy, sample=3)
    assert sampled["recomputed"]["max"] <= full["recomputed"]["max"]


def test_a_mixed_batch_of_a_user_an_item_and_an_interaction_runs_through_the_job(spark, store_copy, tmp_path):
    _, before = _published(spark, store_copy)
    pair = sorted(p for p in before["pairs"] if p[0] not in (3,) and p[1] != 7)[0]
    report = _unlearn(spark, store_copy, tmp_path, "mixed.csv", f"user,item\n3,\n,7\n{pair[0]},{pair[1]}\n")
    assert report["status"] == "applied"
    assert "NaN" not in json.dumps(report)
    _, after = _published(spark, store_copy)
    gone = {p for p in before["pairs"] if p[0] == 3 or p[1] == 7 or p == pair}
    assert gone and after["pairs"] == before["pairs"] - gone
    assert 3 not in after["users"] and 7 not in after["items"]
    assert not any(u == 3 or i == 7 for u, i in after["holdout"])
    # The one interaction keeps both its user and its item (they have other ratings), so that pair can be ranked.
    assert pair[0] in after["users"] and pair[1] in after["items"]
    assert report["forgetting"]["defined"] is True and report["forgetting"]["pairs"] >= 1
    assert_verified(spark, store_copy)["data"]["erased_requests"] == 3


def test_a_header_only_deletion_file_is_a_no_op_that_says_so(spark, store_copy, tmp_path):
    before = tree_digest(store_copy)
    report = _unlearn(spark, store_copy, tmp_path, "empty.csv", "user,item\n")
    assert report["status"] == "nothing_to_delete" and report["version"] == "v000001"
    assert tree_digest(store_copy) == before


def test_a_production_model_trained_on_every_rating_unlearns_and_verifies(spark, tmp_path, sample_ratings_path):
    store = str(tmp_path / "prod")
    code, out, err = run_job(spark, "train", ["--ratings", sample_ratings_path, "--model", store, "--test-fraction", "0",
                                              "--rank", "4", "--maxIter", "5", "--regParam", "0.1", "--json"])
    assert code == 0, err[-3000:]
    report = json.loads(out)
    assert report["n_test"] == 0 and report["trained_on"] == "every rating given"
    loaded = ModelStore(store).load(spark)
    assert loaded.holdout is None and loaded.ratings.count() == 1501 == report["n_train"]
    assert loaded.model.params.iterations == 5 and loaded.model.params.reg == 0.1
    report = _unlearn(spark, store, tmp_path, "u.csv", "user\n4\n")
    assert report["status"] == "applied" and "metrics_after" not in report
    assert_verified(spark, store)


def test_a_pair_found_only_in_the_holdout_is_still_removed_and_published(spark, store_copy, tmp_path):
    loaded, before = _published(spark, store_copy)
    user, item = sorted(before["holdout"])[0]
    assert (user, item) not in before["pairs"]
    report = _unlearn(spark, store_copy, tmp_path, "held.csv", f"user,item\n{user},{item}\n")
    assert report["status"] == "applied" and report["deletion"]["deleted_ratings"] == 0
    _, after = _published(spark, store_copy)
    assert after["holdout"] == before["holdout"] - {(user, item)} and after["pairs"] == before["pairs"]
    assert_verified(spark, store_copy)


def test_metrics_before_are_the_parents_recorded_metrics_and_equal_a_fresh_measurement(spark, store_copy, tmp_path):
    """The "before" test metrics are not measured again: the parent recorded them, on the same holdout."""
    from spark_unlearn.train_model import evaluate_model

    loaded, _ = _published(spark, store_copy)
    first = _unlearn(spark, store_copy, tmp_path, "one.csv", "user\n3\n")
    fresh = evaluate_model(loaded.model, loaded.ratings, loaded.holdout, loaded.model.params.implicit, 20)
    assert first["metrics_before_source"].startswith("recorded")
    assert set(first["metrics_before"]) == set(fresh)
    for key, value in fresh.items():
        assert abs(first["metrics_before"][key] - value) <= 1e-9 * max(1.0, abs(value)), key
    second = _unlearn(spark, store_copy, tmp_path, "two.csv", "user\n5\n")
    assert second["metrics_before"] == first["metrics_after"]

"""The independent verifier (jobs/audit.py --verify-certificate): it passes what is right and names what is not.

A version is published by the unlearning path; the verifier recomputes its certificate from the files.  Then the
files are damaged the way a buggy publication would: one factor row scaled by 1.5 (its checksum updated, as a
publisher that wrote the wrong row would have), or only the recorded certificate edited.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from job_helpers import run_job
from spark_unlearn.store.model_store import ModelStore
from spark_unlearn.als.options import UnlearnOptions
from spark_unlearn.unlearn_model import UnlearnRequest, run_unlearning
from spark_unlearn.verify import verify_version
from spark_unlearn.verify.certificate import AGREEMENT


def _batch(spark, rows):
    return spark.createDataFrame(rows, "user int, item int, kind string")


@pytest.fixture(scope="module")
def unlearned(spark, trained_store, tmp_path_factory):
    """A copy of the explicit sample store with user 3 erased and one interaction of user 8 forgotten (v000002)."""
    store = str(shutil.copytree(trained_store, tmp_path_factory.mktemp("verify") / "store"))
    data = ModelStore(store).load(spark).ratings
    item = data.filter("user = 8").orderBy("item").first()["item"]
    run_unlearning(spark, UnlearnRequest(model_path=store, batch=_batch(spark, [(3, None, "user"), (8, item, "interaction")]), measure=False,
                                         # The forgetting stop would sweep on until every row moved: keep some as
                                         # they were, so that a sample checks fewer rows than the whole.
                                         options=UnlearnOptions(tol=5e-2, forgetting_share=0.0)))
    return store


def _rehash(version_dir, rel):
    """Update the manifest's checksum of ``rel`` (what a publisher that wrote this file would have recorded)."""
    path = os.path.join(version_dir, "manifest.json")
    manifest = json.load(open(path))
    with open(os.path.join(version_dir, rel), "rb") as fh:
        manifest["files"][rel] = hashlib.sha256(fh.read()).hexdigest()
    manifest["files"].pop(os.path.join(os.path.dirname(rel), f".{os.path.basename(rel)}.crc"), None)
    with open(path, "w") as fh:
        json.dump(manifest, fh, indent=2)


def test_untampered_training_and_unlearned_versions_verify_and_a_sample_agrees(spark, unlearned):
    trained = verify_version(spark, unlearned, "v000001")
    assert trained["status"] == "verified", trained["reasons"]
    assert trained["targets"]["source"] == "recorded" and trained["recomputed"]["max"] <= 1e-5
    full = verify_version(spark, unlearned)
    assert full["status"] == "verified", full["reasons"]
    assert full["version"] == "v000002" and full["targets"]["source"] == "derived"
    assert full["targets"]["mismatched_rows"] == 0 and full["data"]["erased_requests"] == 2 and full["data"]["clean"]
    # The targeted engine records the exact maximum (explicit feedback, a version with a drift watch).
    assert full["recorded"]["kind"] == "exact", full["recorded"]
    assert abs(full["recomputed"]["max"] - full["recorded"]["max"]) <= AGREEMENT
    sampled = verify_version(spark, unlearned, sample=5)
    assert sampled["status"] == "verified", sampled["reasons"]
    assert sampled["recomputed"]["rows"] < full["recomputed"]["rows"]
    assert sampled["recomputed"]["max"] <= full["recomputed"]["max"] + 1e-12


def test_a_request_on_the_parents_worst_row_still_records_the_exact_maximum(spark, unlearned, tmp_path):
    """The parent's worst row is touched by the next request: the untouched rows' term comes from the rest of the
    drift watch, and the record is still exact; an upper-bound record is held only to not fall below."""
    store = str(shutil.copytree(unlearned, tmp_path / "s"))
    parent = verify_version(spark, store)
    worst = parent["worst_rows"][0]
    data = ModelStore(store).load(spark).ratings
    col, other = ("user", "item") if worst["side"] == "user" else ("item", "user")
    pair = data.filter(f"{col} = {worst['id']}").orderBy(other).first()
    run_unlearning(spark, UnlearnRequest(model_path=store, batch=_batch(spark, [(pair["user"], pair["item"], "interaction")]),
                                         measure=False, options=UnlearnOptions(tol=5e-2)))
    before = ModelStore(store).read_manifest("v000002")["drift_watch"][worst["side"]]
    assert before["ids"][0] == worst["id"] and before["exact"][0]  # the parent's watch listed its worst row, exactly
    manifest = ModelStore(store).read_manifest("v000003")
    cert = manifest["certificate"]
    assert cert["method"] == "incremental" and cert["max_kind"] == "exact", cert
    after = manifest["drift_watch"][worst["side"]]
    listed = dict(zip(after["ids"], after["exact"]))
    assert listed.get(worst["id"], True)  # re-solved now: listed again with its new, exact term (or below the rest)
    report = verify_version(spark, store)
    assert report["status"] == "verified", report["reasons"]
    assert report["recorded"]["kind"] == "exact"
    assert abs(report["recomputed"]["max"] - report["recorded"]["max"]) <= AGREEMENT
    # The same record marked an upper bound: accepted above the recomputation, refused below it.
    path = os.path.join(ModelStore(store).version_path("v000003"), "manifest.json")
    for scale, status in ((1.01, "verified"), (0.9, "failed")):
        edited = json.load(open(path))
        edited["certificate"].update(max_kind="upper bound", max_relative_residual=scale * cert["max_relative_residual"])
        with open(path, "w") as fh:
            json.dump(edited, fh, indent=2)
        got = verify_version(spark, store)
        assert got["status"] == status and got["recorded"]["kind"] == "upper bound", got["reasons"]
        if status == "verified":
            assert got["recorded"]["overstates_by"] == pytest.approx(0.01 * cert["max_relative_residual"], abs=AGREEMENT)


def test_a_factor_row_scaled_by_one_and_a_half_fails_and_is_named(spark, unlearned, tmp_path):
    store = str(shutil.copytree(unlearned, tmp_path / "s"))
    vdir = ModelStore(store).version_path("v000002")
    victim = None
    for part in sorted(glob.glob(os.path.join(vdir, "userFactors", "*.parquet"))):
        table = pq.read_table(part)
        ids = table.column("id").to_pylist()
        if ids:
            victim = ids[0]
            feats = table.column("features").to_pylist()
            feats[0] = [1.5 * v for v in feats[0]]
            scaled = pa.table({"id": table.column("id"), "features": pa.array(feats, type=table.schema.field("features").type)},
                              schema=table.schema)
            pq.write_table(scaled, part)
            crc = os.path.join(os.path.dirname(part), f".{os.path.basename(part)}.crc")
            if os.path.exists(crc):
                os.remove(crc)
            _rehash(vdir, os.path.relpath(part, vdir))
            break
    code, out, err = run_job(spark, "audit", ["--model", store, "--verify-certificate", "--json"])
    assert code == 3, err[-3000:]
    report = json.loads(out)["verification"]
    assert report["status"] == "failed"
    worst = report["worst_rows"][0]
    assert (worst["side"], worst["id"]) == ("user", victim) and worst["bound_ratio"] > 1.0
    assert any(f"user {victim} (" in r for r in report["reasons"]), report["reasons"]


def test_an_edited_recorded_certificate_is_reported_as_a_disagreement(spark, unlearned, tmp_path):
    store = str(shutil.copytree(unlearned, tmp_path / "s"))
    path = os.path.join(ModelStore(store).version_path("v000002"), "manifest.json")
    manifest = json.load(open(path))
    true_max = manifest["certificate"]["max_relative_residual"]
    manifest["certificate"]["max_relative_residual"] = true_max / 10
    with open(path, "w") as fh:
        json.dump(manifest, fh, indent=2)
    code, out, err = run_job(spark, "audit", ["--model", store, "--verify-certificate", "--json"])
    assert code == 3, err[-3000:]
    report = json.loads(out)["verification"]
    assert any("disagrees with the recorded" in r for r in report["reasons"]), report["reasons"]
    assert abs(report["recomputed"]["max"] - true_max) <= AGREEMENT  # the record was exact


def test_an_implicit_store_verifies_after_an_item_withdrawal(spark, tmp_path, sample_ratings_path):
    from spark_unlearn.als.params import ALSParams
    from spark_unlearn.train_model import run_training

    store = str(tmp_path / "implicit")
    run_training(spark, ratings_path=sample_ratings_path, store_path=store,
                 params=ALSParams(rank=4, reg=0.1, alpha=2.0, implicit=True, iterations=5, seed=1, num_blocks=3))
    run_unlearning(spark, UnlearnRequest(model_path=store, batch=_batch(spark, [(None, 5, "item"), (2, None, "user")]), measure=False, options=UnlearnOptions(tol=5e-2)))
    for version in ("v000001", "v000002"):
        report = verify_version(spark, store, version)
        assert report["status"] == "verified", (version, report["reasons"])
    # Whatever kind the implicit record states, the verifier holds it to that kind.
    cert = ModelStore(store).read_manifest("v000002")["certificate"]
    assert cert["max_kind"] in ("exact", "upper bound") and (cert["max_kind"] == "exact") == (cert["max_kind_why"] is None)
    assert report["recorded"]["kind"] == cert["max_kind"]
    if cert["max_kind"] == "exact":
        assert abs(report["recomputed"]["max"] - report["recorded"]["max"]) <= AGREEMENT
    else:
        assert report["recomputed"]["max"] <= report["recorded"]["max"] + AGREEMENT
    code, out, err = run_job(spark, "audit", ["--model", store, "--verify-certificate", "--sample", "4"])
    assert code == 0, err[-3000:]


def test_the_training_precision_policy_holds_each_row_to_its_own_bound_and_the_verifier_reads_it(spark, trained_store,
                                                                                                 tmp_path):
    """Full sweeps under both policies at one floor (5e-3, below most rows' training residual): training-precision
    stops no later than strict, both verify, and the
    verifier holds each row to the bound the manifest records (a record edited to drop the own-residual term fails
    on the rows that needed it)."""
    reports = {}
    for policy in ("strict", "training-precision"):
        store = str(shutil.copytree(trained_store, tmp_path / policy))
        request = UnlearnRequest(model_path=store, batch=_batch(spark, [(3, None, "user"), (11, None, "user")]),
                                 measure=False, options=UnlearnOptions(mode="full", certificate_policy=policy, tol=5e-3))
        reports[policy] = run_unlearning(spark, request)
        verdict = verify_version(spark, store)
        assert verdict["status"] == "verified", (policy, verdict["reasons"])
        assert verdict["recorded"]["policy"] == policy and verdict["recomputed"]["max_bound_ratio"] <= 1.0
        reports[policy]["verdict"] = verdict
    strict, tp = reports["strict"], reports["training-precision"]
    assert tp["sweeps"] <= strict["sweeps"], (tp["sweeps"], strict["sweeps"])
    assert tp["certificate"]["policy"]["own_residual_weight"] == 1.0 and strict["certificate"]["policy"]["own_residual_weight"] == 0.0
    # Some row is above the floor and within its own training residual: the row-wise bound was used ...
    floor = tp["certificate"]["policy"]["floor"]
    assert tp["verdict"]["recomputed"]["max"] > floor, (tp["verdict"]["recomputed"], floor)
    # ... and a record that drops it (strict at the same floor) fails on those rows.
    path = os.path.join(ModelStore(str(tmp_path / "training-precision")).version_path("v000002"), "manifest.json")
    manifest = json.load(open(path))
    manifest["certificate"]["policy"]["own_residual_weight"] = 0.0
    with open(path, "w") as fh:
        json.dump(manifest, fh, indent=2)
    edited = verify_version(spark, str(tmp_path / "training-precision"))
    assert edited["status"] == "failed" and any("x its bound" in r for r in edited["reasons"]), edited["reasons"]


def test_a_frontier_past_its_budget_falls_back_to_a_retrain_equal_to_training_on_the_remaining_data(spark, trained_store,
                                                                                                    tmp_path):
    """The retrain strategy publishes what jobs/train.py would train on the remaining data (same seed), its own
    residual becomes the targets, the verifier accepts it, and the next request starts from it."""
    import numpy as np

    from spark_unlearn.als.train import train_als

    store = str(shutil.copytree(trained_store, tmp_path / "s"))
    batch = _batch(spark, [(3, None, "user"), (8, None, "user")])
    before = ModelStore(store).load(spark)
    report = run_unlearning(spark, UnlearnRequest(model_path=store, batch=batch, measure=False,
                                                  options=UnlearnOptions(full_fallback_fraction=1e-6,
                                                                         sweep_driver_mb=0)))
    assert (report["mode"], report["requested_mode"]) == ("retrain", "frontier") and report["certificate"]["holds"]
    after = ModelStore(store).load(spark)
    remaining = before.ratings.filter("user not in (3, 8)")
    assert after.ratings.count() == remaining.count() == before.ratings.count() - report["deletion"]["deleted_ratings"]
    want = train_als(remaining, before.model.params).model
    for side in ("user_factors", "item_factors"):
        got = {r["id"]: np.array(r["features"]) for r in getattr(after.model, side).collect()}
        ref = {r["id"]: np.array(r["features"]) for r in getattr(want, side).collect()}
        assert got.keys() == ref.keys()
        assert max(np.abs(got[i] - ref[i]).max() for i in ref) <= 1e-5
    assert 3 not in {r["id"] for r in after.model.user_factors.collect()}
    verdict = verify_version(spark, store)
    assert verdict["status"] == "verified", verdict["reasons"]
    assert verdict["targets"]["source"] == "recorded" and verdict["recomputed"]["max"] <= 1e-5
    # The next request's tolerance comes from the retrained model's own residual, recorded in its manifest.
    manifest = ModelStore(store).read_manifest()
    assert manifest["training_residual"] == report["training_residual"] != before.manifest.get("training_residual")
    nxt = run_unlearning(spark, UnlearnRequest(model_path=store, batch=_batch(spark, [(12, None, "user")]), measure=False,
                                               options=UnlearnOptions(sweep_driver_mb=0)))
    assert nxt["mode"] == "frontier" and nxt["certificate"]["holds"]
    assert verify_version(spark, store)["status"] == "verified"

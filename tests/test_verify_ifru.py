"""The IFRU verifier recomputes a request's certificate with its own numpy objective, and catches tampering."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from spark_unlearn.errors import StoreError
from spark_unlearn.ifru.config import IFRUConfig
from spark_unlearn.verify.ifru import check_ifru_claims
from test_ifru_job import SMALL, ratings_frame


@pytest.fixture(scope="module")
def prepared(spark):
    from spark_unlearn.ifru.data import prepare

    df = spark.createDataFrame(ratings_frame(seed=3).astype({"user": "int32", "item": "int32", "rating": "float32"}),
                               "user int, item int, rating float")
    return prepare(df, threshold=4.0, k=3, fractions=(0.6, 0.2, 0.2), seed=0)


def unlearn(prepared, cfg):
    from pyspark.sql import functions as F

    from spark_unlearn.ifru.data import sorted_terms, to_tensors
    from spark_unlearn.ifru.unlearn import apply_unlearning, compute_unlearning, train_model

    model, _ = train_model(prepared, cfg)
    train = prepared.train.withColumn("removed", (F.xxhash64("u", "i") % 5) == 0).localCheckpoint()
    validation = to_tensors(prepared.val, ["u", "i", "label"])
    plan = compute_unlearning(train.select("u", "i", "label", "removed"), model, cfg, validation)
    child = apply_unlearning(model, plan)
    t = sorted_terms(prepared.train)
    labelled = {"u": t["u"].long().numpy(), "i": t["i"].long().numpy(), "label": t["label"].double().numpy()}
    return model, child, labelled


@pytest.mark.parametrize("model_type,prune,loss", [("mf", None, "bce"), ("lightgcn", 0.5, "bce"), ("mf", None, "bpr")])
def test_recomputed_certificate_agrees_and_tampering_is_caught(prepared, model_type, prune, loss):
    cfg = IFRUConfig(model_type=model_type, prune_quantile=prune, loss=loss, **SMALL)
    parent, child, labelled = unlearn(prepared, cfg)
    res = check_ifru_claims(parent, child, labelled if loss == "bce" else None)
    assert res["holds"], res["problems"]
    rec = res["retained_objective_change"]
    assert rec["recomputed"] < 0 and abs(rec["recomputed"] - rec["recorded"]) <= rec["tolerance"]
    assert res["changed_rows"] == res["updated_rows_recorded"] > 0
    after = res["merit_gradient_after"]
    assert after["recomputed"] < res["merit_gradient_before"]["recomputed"]

    # a published table that is not the one certified: one updated row moved by 1 %
    moved = copy.copy(child)
    row = int(np.flatnonzero((child.e0 != parent.e0).any(1).numpy())[0])
    moved.e0 = child.e0.clone()
    moved.e0[row] *= 1.01
    bad = check_ifru_claims(parent, moved, labelled if loss == "bce" else None)
    assert not bad["holds"] and any("retained-objective change" in p or "merit_gradient" in p for p in bad["problems"])

    # a record that claims more than was done
    edited = copy.copy(child)
    edited.history = copy.deepcopy(child.history)
    edited.history[-1]["certificate"]["retained_objective_change"] = 2 * rec["recorded"]
    assert not check_ifru_claims(parent, edited, labelled if loss == "bce" else None)["holds"]

    # an erased pair left in the version's graph
    leaky = copy.copy(child)
    leaky.pos_u = torch.cat([child.pos_u, child.removed_u[:1]])
    leaky.pos_i = torch.cat([child.pos_i, child.removed_i[:1]])
    if child.neg_j is not None:
        leaky.neg_j = torch.cat([child.neg_j, child.neg_j[:1]])
    problems = check_ifru_claims(parent, leaky, labelled if loss == "bce" else None)["problems"]
    assert any("still edges" in p for p in problems)


def test_a_training_version_has_nothing_to_verify(prepared):
    from spark_unlearn.ifru.unlearn import train_model

    model, _ = train_model(prepared, IFRUConfig(**SMALL))
    with pytest.raises(StoreError, match="no IFRU request"):
        check_ifru_claims(model, model, None)


def test_verify_a_saved_version_from_its_files(spark, tmp_path):
    """run_ifru saves a trained and an unlearned version; the verifier re-reads both and the ratings."""
    from spark_unlearn.ifru.run import run_ifru
    from spark_unlearn.verify.ifru import verify_ifru_version

    df = ratings_frame(seed=5)
    csv = tmp_path / "ratings.csv"
    df.to_csv(csv, index=False)
    dele = tmp_path / "delete.csv"
    df.iloc[[1, 7, 19, 33, 50]][["user", "item"]].to_csv(dele, index=False)
    model_dir = str(tmp_path / "model")
    conf = {k: v for k, v in SMALL.items()} | {"model_type": "lightgcn"}
    run_ifru(spark, ratings_path=str(csv), model_dir=model_dir, ifru_conf=conf)
    with pytest.raises(StoreError, match="no parent"):
        verify_ifru_version(spark, model_dir, str(csv))
    report = run_ifru(spark, ratings_path=str(csv), model_dir=model_dir, ifru_conf=conf, delete_path=str(dele))
    assert report["deletions"]["in_training"] > 0
    res = verify_ifru_version(spark, model_dir, str(csv))
    assert res["holds"], res["problems"]
    assert res["retained_objective_change"]["recomputed"] <= 0
    # the audit job: exit 0 and "verified"; then a meta.json whose recorded change was edited: exit 3, named
    import json as _json
    import os as _os

    from job_helpers import run_job

    argv = ["--model", model_dir, "--verify-certificate", "--ratings", str(csv), "--json"]
    code, out, err = run_job(spark, "audit", argv)
    assert code == 0, err[-2000:]
    assert _json.loads(out)["verification"]["status"] == "verified"
    assert "IFRU certificate of" in err
    meta_path = _os.path.join(model_dir, res["version"], "meta.json")
    meta = _json.load(open(meta_path))
    meta["history"][-1]["certificate"]["retained_objective_change"] *= 3
    with open(meta_path, "w") as f:
        _json.dump(meta, f)
    code, out, err = run_job(spark, "audit", argv)
    assert code == 3 and "retained-objective change recomputed" in err
    # other ratings than the model's: refused, not "verified"
    df.iloc[:-3].to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(StoreError, match="training split"):
        verify_ifru_version(spark, model_dir, str(tmp_path / "other.csv"))

"""IFRU end to end: Spark prep + driver training + unlearning, persistence, and the job as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from job_helpers import run_job, subprocess_env
from spark_unlearn.errors import ConfigError, OutputPathError, StoreError
from spark_unlearn.ifru import persist
from spark_unlearn.ifru.config import IFRUConfig
from spark_unlearn.ifru.problem import assemble_problem, graphs_before_after
from spark_unlearn.ifru.influence import compute_update
from spark_unlearn.ifru.pruning import subgraph_torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def ratings_frame(n_users=25, n_items=20, per_user=12, seed=0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    taste = rng.normal(size=(n_users, 2)) @ rng.normal(size=(2, n_items))
    rows = []
    for u in range(n_users):
        for i in rng.choice(n_items, size=per_user, replace=False):
            r = float(np.clip(np.round(3 + taste[u, i] + rng.normal(scale=0.7)), 1, 5))
            rows.append((10 + u, 100 + int(i), r))
    return pd.DataFrame(rows, columns=["user", "item", "rating"])


# a briefly trained tiny model is not at an optimum: damp enough for a positive definite system
SMALL = dict(kcore=3, dim=6, epochs=60, lr=0.05, reg=1e-3, cg_tol=1e-8, damping=1e-2, influence_dtype="float64", precondition=True)


@pytest.fixture(scope="module")
def prepared(spark):
    from spark_unlearn.ifru.data import prepare

    df = spark.createDataFrame(ratings_frame().astype({"user": "int32", "item": "int32", "rating": "float32"}),
                               "user int, item int, rating float")
    return prepare(df, threshold=4.0, k=3, fractions=(0.6, 0.2, 0.2), seed=0)


@pytest.mark.parametrize("model_type,prune", [("mf", None), ("lightgcn", 0.5)])
def test_spark_unlearning_equals_driver_reference(spark, prepared, model_type, prune):
    """compute_unlearning (Spark subgraph) gives the same update as the torch reference subgraph."""
    from pyspark.sql import functions as F

    from spark_unlearn.ifru.data import sorted_terms
    from spark_unlearn.ifru.pruning import kept_from_scores, node_scores_torch
    from spark_unlearn.ifru.unlearn import apply_unlearning, compute_unlearning, train_model

    cfg = IFRUConfig(model_type=model_type, prune_quantile=prune, **SMALL)
    model, _ = train_model(prepared, cfg)
    train = prepared.train.withColumn("removed", (F.xxhash64("u", "i") % 7) == 0).localCheckpoint()
    plan = compute_unlearning(train.select("u", "i", "label", "removed"), model, cfg)
    new = apply_unlearning(model, plan)

    t = sorted_terms(train, ("removed",))
    u, i, label, removed = t["u"].long(), t["i"].long(), t["label"].double(), t["removed"].bool()
    nu, ni = model.n_users, model.n_items
    kept = None
    if prune is not None:
        s = node_scores_torch(u, i, removed, nu, ni, cfg.prune_hops)
        has = torch.bincount(torch.cat([u, i + nu]), minlength=nu + ni) > 0
        kept = kept_from_scores(s, has, prune)
        assert plan.subgraph.kept.tolist() == kept.tolist()
    sub = subgraph_torch(u, i, label, removed, nu, ni, model.layers, kept)
    g, gp = graphs_before_after(model.pos_u, model.pos_i, u[removed], i[removed], nu, ni)
    prob = assemble_problem(sub, model.e0, g if model.layers else None, gp if model.layers else None,
                            n_users=nu, n_items=ni, layers=model.layers, reg=cfg.reg, n=model.n_terms)
    ref = compute_update(prob, damping=cfg.damping, tol=cfg.cg_tol, max_iter=cfg.cg_max_iter, precondition=True)
    got = torch.zeros(nu + ni, cfg.dim, dtype=torch.float64).index_add(0, plan.update.nodes, plan.update.delta)
    want = torch.zeros(nu + ni, cfg.dim, dtype=torch.float64).index_add(0, ref.nodes, ref.delta)
    assert torch.allclose(got, want, atol=1e-6 * float(want.abs().max()) + 1e-12)
    if prune is not None:
        untouched = torch.ones(nu + ni, dtype=torch.bool)
        untouched[kept] = False
        assert torch.equal(new.e0[untouched], model.e0[untouched])
    assert new.n_terms == model.n_terms - int(removed.sum())
    assert new.pos_u.numel() == model.pos_u.numel() - int((removed & (label > 0)).sum())
    assert plan.update.cg.converged


def _model(cfg=None):
    from spark_unlearn.ifru.state import IFRUModel

    cfg = cfg or IFRUConfig(dim=3)
    return IFRUModel(cfg, torch.randn(5, 3, dtype=torch.float32), np.array([1, 2]), np.array([7, 8, 9]), torch.tensor([0, 1]), torch.tensor([2, 0]),
                     torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 4, "4:1")


def test_persist_roundtrip_and_failed_save_keeps_old(tmp_path, monkeypatch):
    d = str(tmp_path / "m")
    m = _model()
    persist.save_model(m, d)
    back = persist.load_model(d)
    assert torch.equal(back.e0, m.e0) and back.config == m.config and back.n_terms == 4
    before = sorted(os.listdir(d))
    m2 = _model()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(RuntimeError):
        persist.save_model(m2, d)
    monkeypatch.undo()
    assert sorted(os.listdir(d)) == before
    assert torch.equal(persist.load_model(d).e0, m.e0)
    persist.save_model(m2, d)
    assert torch.equal(persist.load_model(d).e0, m2.e0)


def test_persist_rejects_tampering_and_foreign_dirs(tmp_path):
    d = str(tmp_path / "m")
    persist.save_model(_model(), d)
    version = open(os.path.join(d, "CURRENT")).read().strip()
    with open(os.path.join(d, version, "weights.pt"), "ab") as f:
        f.write(b"x")
    with pytest.raises(StoreError, match="checksum"):
        persist.load_model(d)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "data.txt").write_text("keep me")
    with pytest.raises(OutputPathError):
        persist.save_model(_model(), str(foreign))
    with pytest.raises(StoreError):
        persist.load_model(str(tmp_path / "nothing"))


def test_config_validation():
    with pytest.raises(ConfigError, match="unknown"):
        IFRUConfig.from_dict({"dimm": 3})
    with pytest.raises(ConfigError):
        IFRUConfig(model_type="gcn")
    with pytest.raises(ConfigError):
        IFRUConfig(prune_quantile=1.5)
    with pytest.raises(ConfigError, match="hessian_terms must be one of .*'kept'.*got 'all'"):
        IFRUConfig(hessian_terms="all")
    with pytest.raises(ConfigError):
        IFRUConfig(fractions=(0.5, 0.2, 0.2))
    assert IFRUConfig.from_dict(IFRUConfig(model_type="lightgcn").to_dict()).model_layers == 1


def test_job_end_to_end(spark, tmp_path):
    """jobs/ifru.py: train + unlearn, a second deletion on the saved model, and a failing run that leaves it untouched.

    The two successful runs call the job's ``main(argv)`` in this process, on the test session (a cold JVM per
    run made this test take minutes); the failing run is a real subprocess, so the script itself (bootstrap, its
    own Spark session, exit code, message on stderr) is still run as spark-submit would.
    """
    csv = tmp_path / "ratings.csv"
    df = ratings_frame()
    df.to_csv(csv, index=False)
    dele = tmp_path / "delete.csv"
    df.iloc[[0, 5, 17, 40]][["user", "item"]].to_csv(dele, index=False)
    conf = tmp_path / "ifru.toml"
    conf.write_text(
        "[ifru]\nkcore = 3\ndim = 6\nepochs = 40\nlr = 0.05\nreg = 0.001\nprune_quantile = 0.5\ndamping = 0.01\n\n"
        "[spark]\n\"spark.sql.shuffle.partitions\" = \"2\"\n\"spark.ui.enabled\" = \"false\"\n"
    )
    model_dir = tmp_path / "model"
    argv = ["--ratings", str(csv), "--model", str(model_dir), "--delete", str(dele), "--model-type", "lightgcn",
            "--config", str(conf), "--master", "local[2]", "--json"]
    code, stdout, stderr = run_job(spark, "ifru", argv + ["--ratings-out", str(tmp_path / "remaining")])
    assert code == 0, stderr[-3000:]
    report = json.loads(stdout)
    assert report["trained"] and report["model_type"] == "lightgcn"
    assert report["deletions"]["requested"] == 4
    n_train = report["deletions"]["in_training"]
    assert n_train > 0  # the deletion hits training pairs, so the model is really unlearned
    assert report["unlearning"]["removed_terms"] == n_train
    assert report["unlearning"]["cg_converged"]
    model = persist.load_model(str(model_dir))
    assert model.removed_u.numel() == n_train
    # the safeguard's certificate is in the report and in the saved model's history (its ledger)
    cert = report["unlearning"]["certificate"]
    assert model.history[-1]["certificate"] == cert
    assert cert["retained_objective_change"] <= 0 and cert["merit_change"] <= 0
    assert cert["validation_auc_after"] >= cert["validation_auc_before"] - cert["validation_auc_tolerance"]
    assert cert["merit_gradient_after"] < cert["merit_gradient_before"]
    # ... and recomputed from the saved files by the independent verifier, not taken from the report
    from spark_unlearn.verify.ifru import verify_ifru_version

    checked = verify_ifru_version(spark, str(model_dir), str(csv))
    assert checked["holds"], checked["problems"]
    assert checked["retained_objective_change"]["recomputed"] <= 0
    remaining = pd.read_parquet(tmp_path / "remaining")
    assert len(remaining) == len(df) - 4
    # a second deletion on the saved model: loaded, checked against the ratings, earlier removals kept out
    dele2 = tmp_path / "delete2.csv"
    df.iloc[[0, 60, 61, 62, 90]][["user", "item"]].to_csv(dele2, index=False)
    argv2 = list(argv)
    argv2[argv2.index(str(dele))] = str(dele2)
    mlruns = (tmp_path / "mlruns").as_uri()
    code, stdout, stderr = run_job(spark, "ifru", argv2 + ["--mlflow-tracking-uri", mlruns])
    assert code == 0, stderr[-3000:]
    report2 = json.loads(stdout)
    assert not report2["trained"]
    # the run is in MLflow (optional extra, installed with [test]) with the update's certificate
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlruns)
    (run,) = client.search_runs([client.get_experiment_by_name("spark_unlearn").experiment_id])
    assert run.info.run_id == report2["mlflow"]["run_id"] and run.data.tags["spark_unlearn.kind"] == "ifru"
    cert2 = report2["unlearning"]["certificate"]
    assert run.data.metrics["unlearning.certificate.retained_objective_change"] == cert2["retained_objective_change"]
    assert run.data.metrics["test_auc_after"] == report2["test_auc_after"]
    assert run.data.params["config.model_type"] == "lightgcn"
    n_train2 = report2["deletions"]["in_training"]
    model = persist.load_model(str(model_dir))
    assert model.removed_u.numel() == n_train + n_train2
    pairs = set(zip(model.removed_u.tolist(), model.removed_i.tolist()))
    assert len(pairs) == n_train + n_train2  # the pair deleted twice (row 0) is not unlearned twice
    # a run that fails (a clashing setting) must leave the saved model as it was: the script as a subprocess
    files = {p: open(os.path.join(root, p), "rb").read() for root, _, fs in os.walk(model_dir) for p in fs}
    bad = tmp_path / "bad.toml"
    bad.write_text("[ifru]\ndim = 7\n")
    env = subprocess_env(PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, os.path.join(REPO, "jobs", "ifru.py"), *argv, "--config", str(bad)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 2 and out.stdout == "", (out.returncode, out.stderr[-3000:])
    assert "ConfigError" in out.stderr and "dim" in out.stderr
    files2 = {p: open(os.path.join(root, p), "rb").read() for root, _, fs in os.walk(model_dir) for p in fs}
    assert files2 == files

"""IFRU job: train an MF / LightGCN model and unlearn training interactions from it.

    spark-submit jobs/ifru.py --ratings PATH --model DIR [--delete PATH]
                              [--model-type mf|lightgcn] [--config conf/ifru.toml]
                              [--ratings-out PATH]

* No model in ``DIR`` yet: Spark prepares the data (binarise, k-core,
  60/20/20 split, dense ids) and the driver trains a model, saved in ``DIR``.
* ``--delete PATH`` (a ratings file or a CSV with ``user,item`` columns, raw
  ids): the listed training interactions are unlearned with the influence
  update (pruned if ``prune_quantile`` is set), LightGCN switches to the graph
  without them, and the new version replaces the old one atomically.  A failed
  run leaves the saved model untouched.
* ``--ratings-out PATH`` writes the ratings without the deleted pairs
  (Parquet), so that no later retrain brings them back.

The TOML config may hold an ``[ifru]`` table (keys of
:class:`spark_unlearn.ifru.config.IFRUConfig`) and a ``[spark]`` table (Spark
properties).  For an existing model only the unlearning keys (``damping``,
``cg_tol``, ``cg_max_iter``, ``precondition``, ``influence_dtype``,
``prune_quantile``, ``prune_hops``, ``spillover``) may differ from the saved
ones.  The report is printed as JSON on stdout; logs go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import _bootstrap  # noqa: F401,E402  (source checkout without installation: puts the repo on sys.path)

from spark_unlearn.errors import ConfigError, SparkUnlearnError  # noqa: E402
from spark_unlearn.logs import configure_logging  # noqa: E402

log = logging.getLogger("spark_unlearn.jobs.ifru")

UNLEARNING_KEYS = {
    "damping", "cg_tol", "cg_max_iter", "precondition", "influence_dtype", "prune_quantile", "prune_hops", "spillover", "hessian", "newton_steps",
}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratings", required=True, help="ratings the model is (to be) trained on")
    ap.add_argument("--model", required=True, help="model directory")
    ap.add_argument("--delete", help="interactions (user, item) to unlearn")
    ap.add_argument("--model-type", choices=("mf", "lightgcn"), help="for a new model (default from config, else mf)")
    ap.add_argument("--config", help="TOML file with [ifru] and [spark] tables")
    ap.add_argument("--ratings-out", help="write the ratings without the deleted pairs here (Parquet)")
    ap.add_argument("--master", help="Spark master (default: spark-submit's, else local[*])")
    ap.add_argument("--log-level", default="INFO")
    return ap.parse_args(argv)


def read_config(path: str | None) -> tuple[dict, dict]:
    """The ``[ifru]`` and ``[spark]`` tables of a config file, checked by the shared schema."""
    from spark_unlearn.config import load_config

    cfg = load_config(path)
    return dict(cfg["ifru"]), dict(cfg["spark"])


def read_deletions(spark, path: str):
    from spark_unlearn.data.readers import read_ratings
    from spark_unlearn.errors import SchemaError

    try:
        return read_ratings(spark, path, duplicates="max")
    except SchemaError:
        return read_ratings(spark, path, format="csv", columns={"rating": None}, duplicates="max")


def fingerprint(train) -> str:
    from pyspark.sql import functions as F

    row = train.agg(F.count("*").alias("n"), F.expr("bit_xor(xxhash64(user, item, label))").alias("x")).first()
    return f"{row['n']}:{row['x'] or 0}"


def run(args: argparse.Namespace) -> dict:
    import numpy as np
    from spark_unlearn.data.readers import read_ratings
    from spark_unlearn.errors import StoreError
    from spark_unlearn.ifru import persist
    from spark_unlearn.ifru.config import IFRUConfig
    from spark_unlearn.ifru.data import mark_removed, prepare, to_tensors
    from spark_unlearn.ifru.evaluate import auc
    from spark_unlearn.ifru.unlearn import apply_unlearning, compute_unlearning, train_model
    from spark_unlearn.session import get_session

    t_start = time.perf_counter()
    ifru_conf, spark_conf = read_config(args.config)
    if args.model_type:
        ifru_conf["model_type"] = args.model_type
    report: dict = {"job": "ifru", "ratings": args.ratings, "model": args.model}

    if persist.exists(args.model):
        model = persist.load_model(args.model)
        saved = model.config.to_dict()
        clash = sorted(k for k, v in IFRUConfig.from_dict({**saved, **ifru_conf}).to_dict().items()
                       if k not in UNLEARNING_KEYS and saved[k] != v)
        if clash:
            raise ConfigError(f"settings {clash} differ from those of the saved model in {args.model}; "
                              "only unlearning settings may change (train a new model for the others)")
        cfg = IFRUConfig.from_dict({**saved, **{k: v for k, v in ifru_conf.items() if k in UNLEARNING_KEYS}})
        trained_now = False
    else:
        cfg = IFRUConfig.from_dict(ifru_conf)
        model = None
        trained_now = True

    spark = get_session("spark_unlearn-ifru", master=args.master, conf=spark_conf)
    ratings = read_ratings(spark, args.ratings).cache()
    prepared = prepare(ratings, threshold=cfg.threshold, k=cfg.kcore, fractions=cfg.fractions, seed=cfg.split_seed)
    if model is None:
        model, res = train_model(prepared, cfg, fingerprint=fingerprint(prepared.train))
        report["training"] = {"epochs": res.epochs, "objective": res.final_loss, "grad_norm": res.grad_norm, "wall_s": res.wall_s}
    else:
        if not (np.array_equal(model.user_ids, prepared.user_ids) and np.array_equal(model.item_ids, prepared.item_ids)):
            raise StoreError(f"--ratings {args.ratings} does not give the users/items the model in {args.model} was "
                             "trained on; pass the original ratings file")
        if model.fingerprint and fingerprint(prepared.train) != model.fingerprint:
            raise StoreError(f"--ratings {args.ratings} does not give the training split the model was trained on")
    report.update({"model_type": cfg.model_type, "n_users": model.n_users, "n_items": model.n_items, "trained": trained_now})

    test = to_tensors(prepared.test, ["u", "i", "label"])
    auc_before = auc(model.score(test["u"], test["i"]), test["label"])
    report["test_auc"] = auc_before

    if args.delete:
        deletions = read_deletions(spark, args.delete).select("user", "item").distinct().cache()
        train = prepared.train
        if model.removed_u.numel():
            gone = spark.createDataFrame(
                [(int(a), int(b)) for a, b in zip(model.removed_u.tolist(), model.removed_i.tolist())], "u int, i int"
            )
            train = train.join(gone, ["u", "i"], "left_anti")
        train = mark_removed(train, deletions).localCheckpoint()
        known = prepared.train.unionByName(prepared.val).unionByName(prepared.test).select("user", "item")
        counts = {
            "requested": deletions.count(),
            "in_training": train.where("removed").count(),
            "in_val_or_test": deletions.join(prepared.val.unionByName(prepared.test), ["user", "item"], "left_semi").count(),
            "unknown": deletions.join(known, ["user", "item"], "left_anti").count(),
        }
        report["deletions"] = counts
        if counts["in_training"] == 0:
            log.warning("none of the %d requested pairs is a (remaining) training pair; the model is unchanged", counts["requested"])
        else:
            plan = compute_unlearning(train.select("u", "i", "label", "removed"), model, cfg)
            model = apply_unlearning(model, plan)
            report["unlearning"] = plan.report()
            report["test_auc_after"] = auc(model.score(test["u"], test["i"]), test["label"])
        if args.ratings_out:
            write_remaining(ratings, deletions, args.ratings_out)
            report["ratings_out"] = args.ratings_out
    if trained_now or "unlearning" in report:
        report["saved_version"] = persist.save_model(model, args.model)
    report["wall_s"] = time.perf_counter() - t_start
    return report


def write_remaining(ratings, deletions, path: str) -> None:
    """Ratings without the deleted pairs, as Parquet at ``path`` (written beside it, then renamed)."""
    import shutil
    import uuid

    from spark_unlearn.errors import OutputPathError

    if os.path.exists(path):
        raise OutputPathError(f"--ratings-out {path!r} exists; choose a new path")
    tmp = f"{path.rstrip('/')}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        ratings.join(deletions, ["user", "item"], "left_anti").write.parquet(tmp)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level)
    try:
        report = run(args)
    except SparkUnlearnError as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        return 2
    print(json.dumps(report, indent=2, sort_keys=True, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())

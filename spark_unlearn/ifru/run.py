"""What the IFRU job does, as one call: :func:`run_ifru` (train a model, or unlearn pairs from a saved one).

``jobs/ifru.py`` only parses its arguments, reads the config file, builds the
Spark session and calls :func:`run_ifru`; everything else lives here so that it
can be tested and re-used without ``spark-submit``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
import uuid
from typing import Any

import numpy as np

from spark_unlearn.errors import ConfigError, OutputPathError, SchemaError, StoreError
from spark_unlearn.ifru import persist
from spark_unlearn.ifru.config import IFRUConfig
from spark_unlearn.ifru.state import IFRUModel
from spark_unlearn.request_caches import releases_caches

log = logging.getLogger(__name__)

#: Settings that may differ from those of a saved model (they only affect how it is unlearned).
UNLEARNING_KEYS = frozenset({
    "damping", "cg_tol", "cg_max_iter", "precondition", "influence_dtype", "prune_quantile", "prune_hops", "hessian_terms", "spillover",
    "hessian", "newton_steps", "normaliser", "fallback_steps", "validation_guard",
})


def resolve_config(model_dir: str, ifru_conf: dict[str, Any]) -> tuple[IFRUConfig, IFRUModel | None]:
    """The settings to use and the saved model in ``model_dir`` (``None`` if there is none yet).

    Parameters
    ----------
    model_dir
        Model directory (:mod:`spark_unlearn.ifru.persist` layout).
    ifru_conf
        Plain ``[ifru]`` values (already merged with command-line overrides).

    Returns
    -------
    (IFRUConfig, IFRUModel or None)
        For a new model, ``ifru_conf`` validated; for a saved one, its settings
        with only the :data:`UNLEARNING_KEYS` of ``ifru_conf`` applied.

    Raises
    ------
    ConfigError
        ``ifru_conf`` is invalid, or changes a non-unlearning setting of a saved model.
    """
    if not persist.exists(model_dir):
        return IFRUConfig.from_dict(ifru_conf), None
    model = persist.load_model(model_dir)
    saved = model.config.to_dict()
    merged = IFRUConfig.from_dict({**saved, **ifru_conf}).to_dict()
    clash = sorted(k for k, v in merged.items() if k not in UNLEARNING_KEYS and saved[k] != v)
    if clash:
        raise ConfigError(f"settings {clash} differ from those of the saved model in {model_dir}; "
                          "only unlearning settings may change (train a new model for the others)")
    cfg = IFRUConfig.from_dict({**saved, **{k: v for k, v in ifru_conf.items() if k in UNLEARNING_KEYS}})
    return cfg, model


def read_pair_requests(spark, path: str):
    """Deletion requests (raw ``user``, ``item``): a ratings file in any known format, else a CSV ``user,item``."""
    from spark_unlearn.data.readers import read_ratings

    try:
        return read_ratings(spark, path, duplicates="max")
    except SchemaError:
        return read_ratings(spark, path, format="csv", columns={"rating": None}, duplicates="max")


def fingerprint(train) -> str:
    """Order-independent fingerprint ``count:xor-of-hashes`` of a training split (``user``, ``item``, ``label``)."""
    from pyspark.sql import functions as F

    row = train.agg(F.count("*").alias("n"), F.expr("bit_xor(xxhash64(user, item, label))").alias("x")).first()
    return f"{row['n']}:{row['x'] or 0}"


def write_remaining(ratings, deletions, path: str) -> None:
    """Ratings without the deleted pairs, as Parquet at ``path`` (written beside it, then renamed).

    Raises
    ------
    OutputPathError
        ``path`` exists already.
    """
    if os.path.exists(path):
        raise OutputPathError(f"--ratings-out {path!r} exists; choose a new path")
    tmp = f"{path.rstrip('/')}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        ratings.join(deletions, ["user", "item"], "left_anti").write.parquet(tmp)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_same_data(model: IFRUModel, prepared, ratings_path: str, model_dir: str) -> None:
    if not (np.array_equal(model.user_ids, prepared.user_ids) and np.array_equal(model.item_ids, prepared.item_ids)):
        raise StoreError(f"--ratings {ratings_path} does not give the users/items the model in {model_dir} was "
                         "trained on; pass the original ratings file")
    if model.fingerprint and fingerprint(prepared.train) != model.fingerprint:
        raise StoreError(f"--ratings {ratings_path} does not give the training split the model was trained on")


def _unlearn_requests(spark, model: IFRUModel, prepared, deletions, cfg: IFRUConfig, report: dict) -> IFRUModel:
    """Mark the requested pairs in the (remaining) training split, count them, and unlearn them."""
    from spark_unlearn.ifru.data import mark_removed
    from spark_unlearn.ifru.unlearn import apply_unlearning, compute_unlearning

    train = prepared.train
    if model.removed_u.numel():
        gone = spark.createDataFrame(
            [(int(a), int(b)) for a, b in zip(model.removed_u.tolist(), model.removed_i.tolist())], "u int, i int"
        )
        train = train.join(gone, ["u", "i"], "left_anti")
    train = mark_removed(train, deletions).localCheckpoint()
    heldout = prepared.val.unionByName(prepared.test)
    known = prepared.train.unionByName(heldout).select("user", "item")
    counts = {
        "requested": deletions.count(),
        "in_training": train.where("removed").count(),
        "in_val_or_test": deletions.join(heldout, ["user", "item"], "left_semi").count(),
        "unknown": deletions.join(known, ["user", "item"], "left_anti").count(),
    }
    if cfg.loss == "bpr":  # only positive pairs are BPR terms (their triples); a disliked pair has none
        counts["in_training_positive"] = train.where("removed AND label > 0").count()
    report["deletions"] = counts
    if counts["in_training"] == 0:
        log.warning("none of the %d requested pairs is a (remaining) training pair; the model is unchanged", counts["requested"])
        return model
    if counts.get("in_training_positive") == 0:
        log.warning("none of the %d requested pairs is a positive training pair, so no BPR triple is removed; "
                    "the model is unchanged", counts["requested"])
        return model
    from spark_unlearn.ifru.data import to_tensors

    # the validation AUC guard scores the validation pairs that are not themselves being erased
    validation = to_tensors(prepared.val.join(deletions, ["user", "item"], "left_anti"), ["u", "i", "label"])
    plan = compute_unlearning(train.select("u", "i", "label", "removed"), model, cfg, validation)
    report["unlearning"] = plan.report()
    return apply_unlearning(model, plan)


@releases_caches("IFRU request")
def run_ifru(
    spark,
    *,
    ratings_path: str,
    model_dir: str,
    ifru_conf: dict[str, Any] | None = None,
    delete_path: str | None = None,
    ratings_out: str | None = None,
) -> dict[str, Any]:
    """Train a new model in ``model_dir``, or unlearn ``delete_path`` from the one saved there.

    Parameters
    ----------
    spark
        Active SparkSession.
    ratings_path
        Ratings the model is (to be) trained on; for a saved model they must
        give the same users, items and training split.
    model_dir
        Model directory; a new version is saved there atomically after
        training or unlearning (a failed run leaves it untouched).
    ifru_conf
        Plain ``[ifru]`` settings (:class:`~spark_unlearn.ifru.config.IFRUConfig`
        keys); for a saved model only the unlearning keys may change.
    delete_path
        Interactions (raw ``user``, ``item``) to unlearn; pairs not in the
        remaining training split are counted and ignored.
    ratings_out
        Where to write the ratings without the deleted pairs (Parquet).

    Returns
    -------
    dict
        The job's report: counts, training or unlearning figures, test AUC
        before (and after), the saved version, ``wall_s``.

    Raises
    ------
    ConfigError, StoreError, OutputPathError, EmptyInputError
        Bad settings, a model that does not match the ratings, an unusable
        output path, nothing to train on.
    """
    from spark_unlearn.data.readers import read_ratings
    from spark_unlearn.ifru.data import prepare, to_tensors
    from spark_unlearn.ifru.evaluate import auc
    from spark_unlearn.ifru.unlearn import train_model

    t_start = time.perf_counter()
    cfg, model = resolve_config(model_dir, dict(ifru_conf or {}))
    if ratings_out and os.path.exists(ratings_out):
        raise OutputPathError(f"--ratings-out {ratings_out!r} exists; choose a new path")
    report: dict[str, Any] = {"job": "ifru", "ratings": ratings_path, "model": model_dir, "trained": model is None}
    ratings = read_ratings(spark, ratings_path).cache()
    prepared = prepare(ratings, threshold=cfg.threshold, k=cfg.kcore, fractions=cfg.fractions, seed=cfg.split_seed)
    if model is None:
        model, res = train_model(prepared, cfg, fingerprint=fingerprint(prepared.train))
        report["training"] = {"epochs": res.epochs, "objective": res.final_loss, "grad_norm": res.grad_norm, "wall_s": res.wall_s}
        if delete_path:
            # the trained model is a version of its own, so the unlearned one has a parent to be verified against
            report["trained_version"] = persist.save_model(model, model_dir)
    else:
        _check_same_data(model, prepared, ratings_path, model_dir)
    report.update({"model_type": cfg.model_type, "n_users": model.n_users, "n_items": model.n_items,
                   "config": dataclasses.asdict(cfg)})

    test = to_tensors(prepared.test, ["u", "i", "label"])
    report["test_auc"] = auc(model.score(test["u"], test["i"]), test["label"])
    if delete_path:
        deletions = read_pair_requests(spark, delete_path).select("user", "item").distinct().cache()
        model = _unlearn_requests(spark, model, prepared, deletions, cfg, report)
        if "unlearning" in report:
            report["test_auc_after"] = auc(model.score(test["u"], test["i"]), test["label"])
        if ratings_out:
            write_remaining(ratings, deletions, ratings_out)
            report["ratings_out"] = ratings_out
    if "unlearning" in report or (report["trained"] and "trained_version" not in report):
        report["saved_version"] = persist.save_model(model, model_dir)
    elif "trained_version" in report:  # trained, then nothing to unlearn: the trained version is the result
        report["saved_version"] = report["trained_version"]
    report["wall_s"] = time.perf_counter() - t_start
    return report

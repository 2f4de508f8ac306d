"""Spark ``ALSModel`` compatibility: the saved-model layout and its metadata.

A directory written by Spark's ``ALSModel.save`` holds ``metadata/`` (one
compact JSON line in a part file plus ``_SUCCESS``), ``userFactors/`` and
``itemFactors/`` (Parquet: ``id int, features array<float>``).  Every
model-store version has this layout, so ``pyspark.ml.recommendation.ALSModel.load``
reads it.  This module writes and reads that metadata, loads such a directory
as a :class:`~spark_unlearn.als.model.FactorModel` and recovers the training
objective from it.

Spark's ``ALSModel`` metadata holds only the *model's* params (``userCol``,
``itemCol``, ``predictionCol``, ``coldStartStrategy``, ``blockSize``); Spark's
reader rejects any other name in ``paramMap`` (``Param regParam does not
exist``).  The training hyperparameters therefore go into an extra top-level
key, :data:`SPARK_UNLEARN_PARAM_KEY`, which Spark ignores.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

from pyspark.sql import SparkSession

from spark_unlearn.als.model import FactorModel
from spark_unlearn.als.params import ALSParams
from spark_unlearn.errors import ConfigError, StoreError
from spark_unlearn.schema import ITEM, USER
from spark_unlearn.store.fsutil import files_for, read_text, store_root, write_text_durable
from spark_unlearn.store.tables import read_factors

SPARK_ALS_MODEL_CLASS = "org.apache.spark.ml.recommendation.ALSModel"
SPARK_UNLEARN_PARAM_KEY = "sparkUnlearnParamMap"
"""Top-level key of our Spark metadata JSON holding ALS hyperparameters under Spark's names."""

USER_FACTORS, ITEM_FACTORS = "userFactors", "itemFactors"
METADATA_DIR = "metadata"

# Spark ALSModel's own params, exactly as ALS().fit(df).save(path) records them (Spark 4.3).
_SPARK_MODEL_PARAMS: dict[str, Any] = {
    "blockSize": 4096,
    "coldStartStrategy": "nan",
    "itemCol": ITEM,
    "predictionCol": "prediction",
    "userCol": USER,
}


def spark_als_metadata(params: ALSParams, *, spark_version: str, uid: str | None = None,
                       model_params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metadata JSON Spark's ``ALSModel`` writer produces, for ``params``.

    ``paramMap`` and ``defaultParamMap`` hold the model params Spark expects
    (``model_params``, e.g. a source model's ``userCol``, override Spark's
    defaults in ``paramMap``); the training hyperparameters (Spark names, from
    :meth:`ALSParams.spark_param_map`) go under :data:`SPARK_UNLEARN_PARAM_KEY`.
    """
    estimator = params.spark_param_map()
    if params.num_blocks is not None:
        estimator["numUserBlocks"] = params.num_blocks
        estimator["numItemBlocks"] = params.num_blocks
    return {
        "class": SPARK_ALS_MODEL_CLASS,
        "timestamp": int(time.time() * 1000),
        "sparkVersion": spark_version,
        "uid": uid or f"ALS_{uuid.uuid4().hex[:12]}",
        "paramMap": {**_SPARK_MODEL_PARAMS, **(model_params or {})},
        "defaultParamMap": dict(_SPARK_MODEL_PARAMS),
        "rank": params.rank,
        SPARK_UNLEARN_PARAM_KEY: estimator,
    }


def write_spark_metadata(meta_dir: str, meta: dict[str, Any]) -> None:
    """Create ``meta_dir`` holding ``meta`` the way Spark's metadata writer does (durably)."""
    # Spark's writer emits one compact JSON line in a part file plus _SUCCESS.
    files_for(meta_dir).makedirs(meta_dir, exist_ok=False)
    write_text_durable(os.path.join(meta_dir, "part-00000"), json.dumps(meta, separators=(",", ":")) + "\n")
    write_text_durable(os.path.join(meta_dir, "_SUCCESS"), "")


def read_spark_metadata(model_dir: str) -> dict[str, Any]:
    """Parse the ``metadata/`` JSON of a Spark ML model directory.

    Raises
    ------
    StoreError
        If there is no metadata or it is not a JSON object.
    """
    meta_dir = os.path.join(model_dir, METADATA_DIR)
    files = files_for(meta_dir)
    if not files.isdir(meta_dir):
        raise StoreError(f"{model_dir} is not a saved Spark ML model: no {METADATA_DIR}/ directory")
    parts = sorted(n for n in files.listdir(meta_dir) if n.startswith("part-"))
    for part in parts:
        line = next((ln for ln in read_text(os.path.join(meta_dir, part)).splitlines() if ln.strip()), None)
        if line is None:
            continue
        try:
            meta = json.loads(line)
        except ValueError as exc:
            raise StoreError(f"{os.path.join(meta_dir, part)} is not JSON: {exc}") from exc
        if not isinstance(meta, dict):
            raise StoreError(f"{os.path.join(meta_dir, part)} does not hold a JSON object")
        return meta
    raise StoreError(f"{meta_dir} holds no metadata part file with content")


def load_spark_als_model(spark: SparkSession, path: str, *, params: ALSParams | None = None,
                         stated: dict[str, Any] | None = None) -> FactorModel:
    """Read a model saved by Spark's ``ALSModel.save`` (or a version of a
    :class:`~spark_unlearn.store.model_store.ModelStore`).

    Spark's own ``ALSModel`` metadata records only ``rank`` and the model's
    column params; the objective (``regParam``, ``implicitPrefs``, and
    ``alpha`` for implicit feedback) is read from
    :data:`SPARK_UNLEARN_PARAM_KEY`, ``paramMap`` or ``defaultParamMap`` when
    a writer recorded it, or taken from ``stated``.  It is never guessed: a
    model whose objective is neither recorded nor stated is refused.

    Parameters
    ----------
    spark
        Session used to read the factor Parquet tables (lazily).
    path
        Model directory (plain path or ``file://`` URI).
    params
        Complete hyperparameters (overrides the metadata); its ``rank`` must
        equal the saved rank.
    stated
        Hyperparameters the caller states, under our names (``reg``,
        ``alpha``, ``implicit``, and optionally ``rank``, ``nonnegative``).
        A stated value that contradicts a recorded one is refused.

    Raises
    ------
    StoreError
        If ``path`` is not a saved ``ALSModel`` or ``params.rank`` disagrees.
    ObjectiveError
        If the objective is neither recorded nor stated, contradicts the
        record, or asks for ``nonnegative`` (not supported).
    """
    local = store_root(path)
    files = files_for(local)
    if not files.isdir(local):
        raise StoreError(f"{local} does not exist or is not a directory; expected a saved Spark ALSModel")
    meta = read_spark_metadata(local)
    cls = meta.get("class")
    if cls != SPARK_ALS_MODEL_CLASS:
        raise StoreError(f"{local} holds a {cls!r}, not a {SPARK_ALS_MODEL_CLASS}")
    rank = meta.get("rank")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise StoreError(f"{local}/{METADATA_DIR} has no valid top-level 'rank' (got {rank!r})")
    for sub in (USER_FACTORS, ITEM_FACTORS):
        if not files.isdir(os.path.join(local, sub)):
            raise StoreError(f"{local} is an incomplete ALSModel: no {sub}/ directory")
    if params is None:
        params = params_from_spark_metadata(meta, rank, local, stated or {})
    elif params.rank != rank:
        raise StoreError(f"params.rank={params.rank} but the model saved at {local} has rank {rank}")
    return FactorModel(
        user_factors=read_factors(spark, os.path.join(local, USER_FACTORS)),
        item_factors=read_factors(spark, os.path.join(local, ITEM_FACTORS)),
        params=params,
        model_params=spark_model_params(meta),
    )


def spark_model_params(meta: dict[str, Any]) -> dict[str, Any]:
    """The model's own params (``userCol``, ``itemCol``, ...) a Spark ALSModel metadata records (set over default)."""
    found = {}
    for key in ("defaultParamMap", "paramMap"):
        if isinstance(meta.get(key), dict):
            found.update(meta[key])
    return {k: found[k] for k in _SPARK_MODEL_PARAMS if k in found}


def model_params_of(model: FactorModel) -> dict[str, Any] | None:
    """``model.model_params`` (``None`` for models built before the field existed)."""
    return getattr(model, "model_params", None)


_SPARK_TO_OURS = {
    "regParam": "reg",
    "alpha": "alpha",
    "implicitPrefs": "implicit",
    "maxIter": "iterations",
    "seed": "seed",
    "checkpointInterval": "checkpoint_interval",
    "numUserBlocks": "num_blocks",
}

OBJECTIVE_FLAGS = "--implicit or --explicit (Spark's --implicitPrefs), --reg (--regParam) and, for implicit feedback, --alpha"
"""How the jobs let a person state a model's objective (named in every refusal)."""


def params_from_spark_metadata(meta: dict[str, Any], rank: int, where: str, stated: dict[str, Any]) -> ALSParams:
    """The hyperparameters of the saved model at ``where``: recorded in ``meta``, completed by ``stated``.

    Raises
    ------
    ObjectiveError
        ``nonnegative`` is stated, a stated value contradicts the record, or
        the objective is neither recorded nor stated.
    StoreError
        The recorded hyperparameters are invalid.
    """
    from spark_unlearn.errors import ObjectiveError

    if stated.get("nonnegative"):
        raise ObjectiveError(
            f"{where}: nonnegative ALS (Spark's nonnegative=True) is not supported yet: its row solves are "
            "non-negative least squares, which the unlearning solver and certificate do not implement; "
            "retrain with nonnegative=False to unlearn it"
        )
    sources = [meta.get(SPARK_UNLEARN_PARAM_KEY), meta.get("paramMap"), meta.get("defaultParamMap")]
    sources = [s for s in sources if isinstance(s, dict)]
    recorded: dict[str, Any] = {}
    for spark_name, ours in _SPARK_TO_OURS.items():
        found = next((s[spark_name] for s in sources if spark_name in s), None)
        if found is not None:
            recorded[ours] = found
    if "rank" in stated and stated["rank"] != rank:
        raise ObjectiveError(f"{where} has rank {rank}, but rank {stated['rank']} was stated")
    clash = {k: (v, recorded[k]) for k, v in stated.items() if k in recorded and recorded[k] != v}
    if clash:
        detail = ", ".join(f"{k}: stated {v!r}, recorded {r!r}" for k, (v, r) in sorted(clash.items()))
        raise ObjectiveError(f"{where} records other hyperparameters than were stated ({detail}); drop or fix the flags")
    values: dict[str, Any] = {"rank": rank, **recorded,
                              **{k: v for k, v in stated.items() if k in ("reg", "alpha", "implicit")}}
    needed = ["implicit", "reg"] + (["alpha"] if values.get("implicit") else [])
    missing = [k for k in needed if k not in values]
    if missing:
        raise ObjectiveError(
            f"{where} is a Spark MLlib ALSModel, whose saved metadata does not record {missing} "
            "(Spark keeps regParam, alpha and implicitPrefs on the estimator, not the model). Unlearning must "
            f"re-solve rows of the objective the model was trained with, so state it: {OBJECTIVE_FLAGS}, with the "
            "values given to ALS(...) at training"
        )
    try:
        return ALSParams.from_dict(values)
    except ConfigError as exc:
        raise StoreError(f"{where}: metadata hyperparameters are invalid: {exc}") from exc


__all__ = [
    "ITEM_FACTORS",
    "METADATA_DIR",
    "OBJECTIVE_FLAGS",
    "SPARK_ALS_MODEL_CLASS",
    "SPARK_UNLEARN_PARAM_KEY",
    "USER_FACTORS",
    "load_spark_als_model",
    "model_params_of",
    "params_from_spark_metadata",
    "read_spark_metadata",
    "spark_als_metadata",
    "spark_model_params",
    "write_spark_metadata",
]

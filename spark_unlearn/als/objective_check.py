"""Is a model stationary under the hyperparameters it is said to have been trained with?

Unlearn-ALS removes data by re-solving rows of the model's *own* objective
(:class:`~spark_unlearn.als.params.ALSParams`).  Spark MLlib's saved
``ALSModel`` does not record ``regParam``, ``alpha`` or ``implicitPrefs``, so a
model from elsewhere comes with hyperparameters a person states.  A wrong
statement would make every re-solved row follow another objective, and the
certificate's tolerance, derived from the training residual measured under
that same wrong objective, would still hold.  This module measures first.

For every row ``r`` of a side, the relative normal-equation residual

    rho_r = |A_r x_r - b_r| / |b_r|

(:func:`spark_unlearn.als.kernels.residuals`) is ``0`` at an exact ALS
fixed point and small for a trained model: ALS ends every iteration with an
exact solve of one side, so that side has ``rho ~ 1e-7`` (float32 factors),
and the other side what one iteration left.  A model is accepted when

* the worse side's 90th percentile is at most :data:`STATIONARITY_P90`, and
* the better side's 90th percentile is at most :data:`EXACT_SIDE_P90`
  (one side is at its fixed point under these hyperparameters).

Both thresholds come from ``docs/bench/objective_check_ml-latest-small.json``
(``benchmarks/measure_objective_check.py``: 16 MLlib models, explicit and
implicit, ``regParam`` 0.01-0.3, ``alpha`` 1-40).  Under the true
hyperparameters the worse side's p90 was at most 0.045 and the better side's
at most 7.6e-8: all 16 accepted.  All 30 wrong feedback types (worse side
p90 >= 0.31) and all 34 ``alpha`` off by 10x (>= 0.32) were refused, and 35
of 36 other ``regParam`` (x2 to x10, /3, /10; better side p90 >= 2.2e-3 in 33).
The one accepted, ``regParam`` 0.001 for a model trained with 0.01 at
``alpha`` 40, is stationary to 2.5e-4 under both: an objective the model
barely distinguishes (docs/UNLEARN_ALS.md, "The objective is never guessed").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_unlearn.als.kernels import SolveSpec, residuals
from spark_unlearn.als.model import FactorModel
from spark_unlearn.als.params import ALSParams
from spark_unlearn.errors import ObjectiveError
from spark_unlearn.schema import ITEM, RATING, USER

log = logging.getLogger(__name__)

STATIONARITY_P90 = 0.2
"""Refuse a model whose worse side has a 90th-percentile relative residual above this (see module docstring)."""

EXACT_SIDE_P90 = 1e-3
"""Refuse a model neither of whose sides has a 90th-percentile relative residual at or below this."""

SAMPLE_ROWS = 500
"""Rows per side the feedback-type comparison of a refusal message is measured on."""


@dataclass(frozen=True)
class Stationarity:
    """Per-side quantiles of ``rho_r`` and the verdict against :data:`STATIONARITY_P90`."""

    user: dict[str, float]
    item: dict[str, float]
    threshold: float = STATIONARITY_P90
    exact_threshold: float = EXACT_SIDE_P90

    @property
    def worst_p90(self) -> float:
        return max(float(self.user["p90"]), float(self.item["p90"]))

    @property
    def best_p90(self) -> float:
        return min(float(self.user["p90"]), float(self.item["p90"]))

    @property
    def holds(self) -> bool:
        return self.worst_p90 <= self.threshold and self.best_p90 <= self.exact_threshold

    def to_dict(self) -> dict[str, Any]:
        return {"user": self.user, "item": self.item, "worst_p90": self.worst_p90, "best_p90": self.best_p90,
                "thresholds": {"worst_p90": self.threshold, "best_p90": self.exact_threshold}, "holds": self.holds}


def side_quantiles(offsets: DataFrame) -> dict[str, float]:
    """``p50``, ``p90``, ``max`` of ``|e_r| / |b_r|`` over an offsets table (``residual``, ``bnorm``)."""
    rel = offsets.select(
        (F.sqrt(F.aggregate("residual", F.lit(0.0), lambda acc, x: acc + x * x))
         / F.greatest(F.col("bnorm"), F.lit(1e-300))).alias("rel")
    )
    q50, q90 = rel.approxQuantile("rel", [0.5, 0.9], 1e-3)
    mx = rel.agg(F.max("rel")).first()[0]
    return {"p50": float(q50), "p90": float(q90), "max": float(mx or 0.0)}


def stationarity_of(offsets: tuple[DataFrame, DataFrame]) -> Stationarity:
    """The model's stationarity from its training offsets (both sides, all rows)."""
    return Stationarity(user=side_quantiles(offsets[0]), item=side_quantiles(offsets[1]))


def sample_residuals(ratings: DataFrame, model: FactorModel, n: int = SAMPLE_ROWS, seed: int = 0,
                     params: ALSParams | None = None) -> dict[str, dict[str, float]]:
    """``rho_r`` quantiles on about ``n`` sampled rows of each side, under ``params`` (default the model's).

    Collects the sampled rows' ratings, the factors they touch and (implicit)
    the other side's Gram: bounded by the sample and its rows' degrees, not by
    the table.
    """
    params = params or model.params
    spec = SolveSpec(reg=float(params.reg), implicit=bool(params.implicit), alpha=float(params.alpha))
    out = {}
    for side, me, other, mine, theirs in (("user", USER, ITEM, model.user_factors, model.item_factors),
                                          ("item", ITEM, USER, model.item_factors, model.user_factors)):
        out[side] = _sampled_side(ratings, mine, theirs, me, other, spec, n, seed)
    return out


def _sampled_side(ratings, mine, theirs, me, other, spec, n, seed) -> dict[str, float]:
    total = mine.count()
    frac = min(1.0, 1.5 * n / max(total, 1))
    rows = mine.sample(fraction=frac, seed=seed).limit(n)
    picked = rows.select(F.col("id").alias(me), F.col("features").alias("x"))
    joined = (ratings.select(me, other, RATING).join(F.broadcast(picked), me)
              .join(theirs.select(F.col("id").alias(other), F.col("features").alias("y")), other))
    pdf = joined.select(me, RATING, "x", "y").toPandas()
    if pdf.empty:
        return {"p50": 0.0, "p90": 0.0, "rows": 0}
    pdf = pdf.sort_values(me, kind="stable")
    ids, starts = np.unique(pdf[me].to_numpy(), return_index=True)
    indptr = np.append(starts, len(pdf)).astype(np.int64)
    Y = np.stack(pdf["y"].to_numpy()).astype(np.float32)
    X = np.stack(pdf["x"].to_numpy()[starts]).astype(np.float32)
    gram = _gram(theirs) if spec.implicit else None
    R, bnorm = residuals(X, indptr, np.arange(len(pdf), dtype=np.int64), pdf[RATING].to_numpy(np.float32), Y, spec, gram)
    rho = np.linalg.norm(R, axis=1) / np.maximum(bnorm, 1e-300)
    return {"p50": float(np.quantile(rho, 0.5)), "p90": float(np.quantile(rho, 0.9)), "rows": int(ids.size)}


def _gram(factors: DataFrame) -> np.ndarray:
    """``Y^T Y`` (float64) of a whole factor table, summed in Spark (one job, ``k x k`` per partition)."""

    def partial(rows):
        acc = None
        for row in rows:
            y = np.asarray(row[0], dtype=np.float64)
            acc = np.outer(y, y) if acc is None else acc + np.outer(y, y)
        return [] if acc is None else [acc]

    parts = factors.select("features").rdd.mapPartitions(partial)
    return parts.reduce(lambda a, b: a + b)


def feedback_comparison(ratings: DataFrame, model: FactorModel, n: int = SAMPLE_ROWS) -> dict[str, dict]:
    """Sampled ``rho`` quantiles under the stated params and with ``implicitPrefs`` flipped."""
    stated = model.params
    flipped = replace(stated, implicit=not stated.implicit)
    return {("implicit" if p.implicit else "explicit"): _worst(sample_residuals(ratings, model, n, params=p))
            for p in (stated, flipped)}


def _worst(sides: dict[str, dict[str, float]]) -> dict[str, float]:
    return {"p50": max(s["p50"] for s in sides.values()), "p90": max(s["p90"] for s in sides.values())}


def require_stationary(found: Stationarity, ratings: DataFrame, model: FactorModel, where: str, force: bool) -> None:
    """Raise :class:`ObjectiveError` unless the model is stationary under its stated params (or ``force``).

    The message gives the measured quantiles and which feedback type fits a
    sample of rows better, and names the flags that state the hyperparameters.
    """
    if found.holds:
        return
    p = model.params
    stated = f"implicitPrefs={p.implicit}, regParam={p.reg}, alpha={p.alpha}"
    if force:
        log.warning("the model at %s is not stationary under %s (p90 %.3g / %.3g, users / items); going on because "
                    "of --force: the result follows these hyperparameters, not necessarily the model's", where, stated,
                    found.user["p90"], found.item["p90"])
        return
    comparison = feedback_comparison(ratings, model)
    better = min(comparison, key=lambda k: comparison[k]["p90"])
    detail = "; ".join(f"{k}: p50 {v['p50']:.3g}, p90 {v['p90']:.3g}" for k, v in comparison.items())
    raise ObjectiveError(
        f"the model at {where} is not a trained ALS model under the hyperparameters given ({stated}): its relative "
        f"normal-equation residual has p50 {found.user['p50']:.3g} / {found.item['p50']:.3g} and p90 "
        f"{found.user['p90']:.3g} / {found.item['p90']:.3g} (users / items), where a trained ALS model has one side "
        f"at p90 <= {found.exact_threshold:g} (its last exact solve) and the other at p90 <= {found.threshold:g}. "
        f"On a sample of rows, {detail}: {better} fits better. State the hyperparameters it "
        "was trained with (--implicit/--explicit, --reg/--regParam, --alpha), or pass --force to unlearn under "
        "these anyway (the report records the override)"
    )

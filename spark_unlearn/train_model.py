"""Train an ALS model end to end: read, validate, split, train, measure, publish.

This is what ``jobs/train.py`` runs; it takes plain values (the job parses
the config) and returns a JSON-serialisable report.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from pyspark.sql import SparkSession

from spark_unlearn.als.params import ALSParams
from spark_unlearn.als.ratio_watch import empty_drift_watches
from spark_unlearn.als.train import train_als
from spark_unlearn.request_caches import releases_caches
from spark_unlearn.store.model_store import ModelStore

log = logging.getLogger(__name__)


def evaluate_model(model, train, test, implicit: bool, k: int) -> dict[str, float]:
    """Test metrics of a factor model: RMSE for explicit feedback, Recall/NDCG@k for both."""
    from spark_unlearn.eval.metrics import ranking_metrics, rmse

    out: dict[str, float] = {}
    if not implicit:
        out["test_rmse"] = rmse(model, test)
    ranking = ranking_metrics(model.user_factors, model.item_factors, train, test, k=k)
    out[f"test_recall@{k}"] = ranking[f"recall@{k}"]
    out[f"test_ndcg@{k}"] = ranking[f"ndcg@{k}"]
    return out


def implicit_manifest_state(result, offsets) -> dict[str, dict[str, Any]]:
    """What an implicit version's manifest records for later unlearning: ``grams``, ``x_ratio``, ``x_watch`` per side.

    ``grams[side] = F^T F`` (two small reductions now save two passes per
    request), ``x_ratio[side] = max |x|/|b|``, which bounds how far a Gram
    change moves any row, and ``x_watch[side]``, the rows with the largest
    ratio and a bound for the others (:mod:`spark_unlearn.als.ratio_watch`).
    ``result``: a :class:`~spark_unlearn.als.train.TrainResult`; ``offsets``
    its ``(user, item)`` offsets tables.
    """
    from spark_unlearn.als.ratio_watch import ratio_watch

    watch = {s: ratio_watch(f, o) for s, f, o in (("user", result.model.user_factors, offsets[0]),
                                                  ("item", result.model.item_factors, offsets[1]))}
    return {
        "grams": {s: result.state.gram(b).tolist() for s, b in (("user", result.user_blocks), ("item", result.item_blocks))},
        "x_ratio": {s: w.max for s, w in watch.items()},
        "x_watch": {s: w.to_json() for s, w in watch.items()},
    }


@releases_caches("training request")
def run_training(
    spark: SparkSession,
    *,
    ratings_path: str,
    store_path: str,
    params: ALSParams,
    data_format: str = "auto",
    columns: dict[str, str | None] | None = None,
    duplicates: str = "error",
    test_fraction: float = 0.2,
    split_seed: int = 0,
    k: int = 20,
    started: float | None = None,
) -> dict[str, Any]:
    """Train on ``ratings_path`` and publish a new model version to ``store_path``.

    ``test_fraction`` of each user's ratings is held out to measure the model
    (and published as the version's holdout); ``0`` trains on every rating
    given and measures nothing: the choice for a production model.

    The store is opened (and its path checked) before any computation, so a
    bad output path fails fast; the version is published atomically at the
    end, so a failure anywhere leaves the store as it was.

    ``started``: the ``time.perf_counter()`` at which the job started (a
    job passes its own, so that the times include its session's start);
    default: when this call starts.  The manifest records the time from then
    until the version is ready to publish (``training.seconds_end_to_end``),
    against which unlearning reports its end-to-end speed-up.

    Returns
    -------
    dict
        The report: version, path, counts, timings and test metrics.
    """
    from spark_unlearn.data.readers import read_ratings
    from spark_unlearn.data.split import train_test_split

    t0 = time.perf_counter() if started is None else started
    store = ModelStore(store_path)
    ratings = read_ratings(spark, ratings_path, format=data_format, columns=columns, duplicates=duplicates)
    if test_fraction == 0:
        # A production model: trained on everything given, nothing held out, so no test metrics.
        train, test = ratings.cache(), None
        n_train, n_test = train.count(), 0
        log.info("ratings: %d, all used for training (test_fraction 0: nothing held out, no test metrics)", n_train)
    else:
        train, test = train_test_split(ratings, test_fraction=test_fraction, seed=split_seed)
        train, test = train.cache(), test.cache()
        n_train, n_test = train.count(), test.count()
        log.info("ratings: %d train, %d held out for test (%.0f %% per user, split seed %d); the model is trained on the "
                 "train part only (test_fraction 0 trains on everything)", n_train, n_test, 100 * test_fraction, split_seed)

    result = train_als(train, params)
    log.info("trained in %.1fs (%.2fs per iteration); computing training residuals", result.seconds, result.seconds_per_iteration)
    offsets = tuple(df.cache() for df in result.offsets())
    from spark_unlearn.als.certify import residual_summary

    training_residual = residual_summary(offsets)
    log.info("training residual |Ax-b|/|b|: %s", {k_: f"{v:.3g}" for k_, v in training_residual.items() if k_ != "by_side"})
    metrics = evaluate_model(result.model, train, test, params.implicit, k) if test is not None else {}
    log.info("test metrics: %s", metrics or "none (nothing held out)")
    implicit_state = implicit_manifest_state(result, offsets) if params.implicit else {}

    version = store.publish(
        result.model,
        offsets=offsets,
        ratings=train,
        holdout=test,
        manifest={
            # Offsets are computed right after training: every row's residual is its target.
            "drift_max": {"user": 0.0, "item": 0.0},
            # Nothing drifts yet (an empty drift watch) and every stored |b| is exact.
            "drift_watch": empty_drift_watches(),
            "bnorm_exact": {"user": True, "item": True},
            **implicit_state,
            "training": {
                "source": ratings_path,
                "format": data_format,
                "test_fraction": test_fraction,
                "split_seed": split_seed,
                "n_train": n_train,
                "n_test": n_test,
                "seconds": round(result.seconds, 3),
                "seconds_per_iteration": round(result.seconds_per_iteration, 4),
                # From the job's start to here (read, split, train, residuals, metrics): what a retrain costs.
                "seconds_end_to_end": round(time.perf_counter() - t0, 3),
            },
            "metrics": metrics,
            "training_residual": training_residual,
        },
    )
    result.state.unpersist()
    for df in (train, test, *offsets):  # drops their cache-manager entries; the RDD blocks go with the scope
        if df is not None:
            df.unpersist()
    report = {
        "version": version,
        "path": store.version_path(version),
        "n_train": n_train,
        "n_test": n_test,
        "trained_on": "every rating given" if test is None else
        f"{n_train} of {n_train + n_test} ratings ({n_test} held out for test; test_fraction 0 trains on all)",
        "params": params.to_dict(),
        "seconds_total": round(time.perf_counter() - t0, 2),
        "seconds_training": round(result.seconds, 2),
        "seconds_per_iteration": round(result.seconds_per_iteration, 3),
        "training_residual": training_residual,
        **metrics,
    }
    return report

"""Unlearn a deletion batch from a stored ALS model end to end: load, unlearn, measure, publish.

This is what ``jobs/unlearn.py`` runs.  The model comes either from our
model store (the current version, with its data version and training
offsets) or from a directory saved by Spark MLlib's ``ALSModel.save`` (then
the ratings it was trained on must be given, and the offsets are computed
here, once).  The new model and the remaining ratings are published together
as one new version, so the data forgets too.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from spark_unlearn.als.unlearn import remove_batch, residual_summary, unlearn_als
from spark_unlearn.errors import ConfigError, StoreError
from spark_unlearn.faults import failpoint
from spark_unlearn.request_caches import releases_caches
from spark_unlearn.store.model_store import HOLDOUT_DIR, RATINGS_DIR, ModelStore, fingerprint_ratings, load_spark_als_model

log = logging.getLogger(__name__)


def _is_spark_model_dir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "metadata")) and os.path.isdir(os.path.join(path, "userFactors"))


def load_source_model(spark: SparkSession, model_path: str, ratings: DataFrame | None):
    """Return ``(model, offsets, ratings, holdout, manifest, parent_version, store)`` for ``model_path``.

    ``model_path`` is a model store (current version) or a Spark-saved ALSModel directory.
    """
    if _is_spark_model_dir(model_path):
        if ratings is None:
            raise ConfigError(
                f"{model_path} is a model saved by Spark MLlib; pass --ratings with the data it was trained on "
                "(the unlearning needs the ratings to know what to remove and what remains)"
            )
        from spark_unlearn.als.train import ALSState, offsets_for

        model = load_spark_als_model(spark, model_path)
        state = ALSState.build(ratings, model.params.num_blocks)
        offsets = offsets_for(state, model)
        return model, offsets, ratings, None, {"source": "spark-mllib", "path": model_path}, None, state
    store = ModelStore(model_path)
    loaded = store.load(spark)
    if loaded.offsets is None:
        raise StoreError(f"model version {loaded.version} in {model_path} has no training offsets; retrain it with jobs/train.py")
    data = loaded.ratings
    if ratings is not None:
        if data is not None:
            given = fingerprint_ratings(ratings)
            if given != loaded.manifest.get("data_fingerprint"):
                raise StoreError(
                    f"the ratings given do not match the data version of {loaded.version} (fingerprint {given[:12]}... vs "
                    f"{str(loaded.manifest.get('data_fingerprint'))[:12]}...); omit --ratings to use the stored data version"
                )
        data = ratings
    if data is None:
        raise ConfigError(f"model version {loaded.version} has no data version; pass --ratings")
    return loaded.model, loaded.offsets, data, loaded.holdout, loaded.manifest, loaded.version, None


def _version_counts(manifest: dict) -> dict | None:
    """Rows of the version's tables as its manifest records them (``None`` for a Spark model dir).

    ``n_ratings`` is recorded only for a version that stores its ratings, and
    ratings given beside such a version were checked against its data
    fingerprint (:func:`load_source_model`), so the count is theirs too.
    """
    counts = manifest.get("counts") or {}
    out = {k: counts[k] for k in ("n_users", "n_items", "n_ratings") if isinstance(counts.get(k), int)}
    return out or None


@releases_caches("unlearning request")
def run_unlearning(
    spark: SparkSession,
    *,
    model_path: str,
    delete_path: str | None = None,
    batch: DataFrame | None = None,
    ratings_path: str | None = None,
    ratings_format: str = "auto",
    output_store: str | None = None,
    mode: str = "frontier",
    tol: float | None = None,
    tol_factor: float = 1.0,
    strict: bool = False,
    max_rounds: int = 50,
    full_fallback_fraction: float = 0.5,
    full_iterations: int = 10,
    k: int = 20,
    measure: bool = True,
    batch_id: str | None = None,
    expected_params: dict[str, Any] | None = None,
    engine: str = "auto",
    driver_rows: int | None = None,
) -> dict[str, Any]:
    """Apply a deletion batch to the model at ``model_path`` and publish the result.

    Returns the report (JSON-serialisable).  Nothing is written until the
    final atomic publish, so a failure leaves every store as it was.  The
    batch is applied exactly once: if the current model's lineage already
    holds it (same content, :mod:`spark_unlearn.store.ledger`), nothing is
    computed or written and the report says ``"status": "already_applied"``.

    Parameters
    ----------
    batch_id
        The request's id for the ledger (e.g. a ticket number); default:
        derived from the batch's content hash.
    engine
        Frontier mode: ``auto`` | ``targeted`` | ``layout``
        (:func:`spark_unlearn.als.unlearn.unlearn_als`).
    driver_rows
        Targeted engine: neighbours of a round's solves beyond this many stay
        in Spark (:mod:`spark_unlearn.als.neighbour_pass`; ``None``: its default).
    expected_params
        Hyperparameters the caller's configuration states explicitly
        (``rank``, ``reg``, ``alpha``, ``implicit``); a model trained with
        other values is refused (:class:`ConfigError`) instead of being
        unlearned under an objective the caller did not mean.
    """
    from spark_unlearn.data.deletions import read_deletions
    from spark_unlearn.data.readers import read_ratings
    from spark_unlearn.store.ledger import batch_identity, find_applied, request_record

    t0 = time.perf_counter()
    if batch is None:
        if delete_path is None:
            raise ConfigError("give a deletion batch: --delete PATH")
        batch = read_deletions(spark, delete_path)
    ratings = read_ratings(spark, ratings_path, format=ratings_format) if ratings_path else None
    if output_store is None:
        if _is_spark_model_dir(model_path):
            raise ConfigError(f"{model_path} is a Spark MLlib model directory; pass --output-store DIR for the unlearned versions")
        output_store = model_path
    store = ModelStore(output_store)  # checks the output path before any work
    store.reconcile()
    identity = batch_identity(batch, batch_id)
    applied = find_applied(store, identity) if store.current() is not None else None
    if applied is not None:
        log.info("batch %s (content %s...) is already applied in %s: nothing to do", identity.batch_id,
                 identity.content_hash[:16], applied["version"])
        return {
            "status": "already_applied",
            "batch": identity.to_dict(),
            "version": applied["version"],
            "applied_at": applied.get("applied_at"),
            "path": store.version_path(applied["version"]),
            "note": "this batch (same content) was applied before; nothing was recomputed or written",
        }

    model, offsets, data, holdout, manifest, parent, state = load_source_model(spark, model_path, ratings)
    if state is not None:
        state.unpersist()
    check_model_matches(model.params, expected_params, model_path)
    # Read only if some request matches nothing (the lineage may hold hundreds of versions).
    forgotten = (lambda: store.forgotten(spark)) if parent is not None and os.path.abspath(store.root) == os.path.abspath(model_path) else None
    training_residual = manifest.get("training_residual") or residual_summary(offsets)
    result = unlearn_als(
        data, model, offsets, batch, mode=mode, tol=tol, tol_factor=tol_factor, training_residual=training_residual,
        strict=strict, max_rounds=max_rounds, full_fallback_fraction=full_fallback_fraction, full_iterations=full_iterations,
        forgotten=forgotten, engine=engine, grams=manifest.get("grams"), driver_rows=driver_rows,
        # A Spark-trained model's offsets were just computed: no drift.
        drift_bound={"user": 0.0, "item": 0.0} if state is not None else manifest.get("drift_max"),
        counts=_version_counts(manifest),
        x_ratio=None if state is not None else manifest.get("x_ratio"),
        x_watch=None if state is not None else manifest.get("x_watch"),
    )
    failpoint("after_solve")
    report = {"status": "applied", "batch": identity.to_dict(), **result.report}
    new_holdout = None
    if holdout is not None:
        new_holdout = remove_batch(holdout, batch)
    t_measure = time.perf_counter()
    if measure:
        report["forgetting"] = forgetting_report(model, result.model, result.deleted)
        if holdout is not None:
            from spark_unlearn.train_model import evaluate_model

            report["metrics_before"] = evaluate_model(model, data, holdout, model.params.implicit, k)
            report["metrics_after"] = evaluate_model(result.model, result.remaining, new_holdout, model.params.implicit, k)
    train_s = (manifest.get("training") or {}).get("seconds")
    report["seconds"]["unlearning_total"] = round(time.perf_counter() - t0, 3)
    if train_s:
        report["training_seconds"] = train_s
        report["speedup_vs_training"] = round(train_s / max(report["seconds"]["solve"] + report["seconds"]["certificate"], 1e-9), 2)
    report["seconds"]["measure"] = round(time.perf_counter() - t_measure, 3)
    t_publish = time.perf_counter()
    out_ratings, out_holdout = result.remaining, new_holdout
    if parent is not None:
        # The data versions derive from the parent's files: only part files holding a deleted row are rewritten.
        from spark_unlearn.store.derived import DerivedTable

        parent_dir = ModelStore(model_path).version_path(parent)
        contents = manifest.get("contents") or {}
        if contents.get("ratings"):
            out_ratings = DerivedTable(os.path.join(parent_dir, RATINGS_DIR), batch)
        if contents.get("holdout") and new_holdout is not None:
            out_holdout = DerivedTable(os.path.join(parent_dir, HOLDOUT_DIR), batch)
    version = store.publish(
        result.model,
        offsets=result.offsets,
        ratings=out_ratings,
        holdout=out_holdout,
        manifest={
            "unlearning": {k_: v for k_, v in report.items() if k_ not in ("certificate",)},
            "certificate": report["certificate"],
            "training_residual": training_residual,
            "training": manifest.get("training"),
            **({"grams": result.grams} if result.grams else {}),
            "drift_max": result.report["drift_max"],
            # Implicit, targeted engine only: the bound max |x|/|b| the next request starts from.
            **({"x_ratio": result.report["x_ratio"]} if result.report.get("x_ratio") else {}),
            **({"x_watch": result.x_watch} if result.x_watch else {}),
        },
        parent=parent,
        forgotten=applied_requests(batch, result.deleted),
        request=request_record(identity, method=f"unlearn-als/{report['mode']}"),
    )
    report["seconds"]["publish"] = round(time.perf_counter() - t_publish, 3)
    result.release()
    for df in (result.remaining, result.deleted):  # their cache-manager entries; the blocks go with the scope
        df.unpersist()
    published = store.read_manifest(version)
    if report.get("remaining_ratings") is None:
        report["remaining_ratings"] = published["counts"].get("n_ratings")
    if published.get("copy_on_write"):
        report["copy_on_write"] = published["copy_on_write"]
    report["version"] = version
    report["path"] = store.version_path(version)
    report["seconds"]["end_to_end"] = round(time.perf_counter() - t0, 3)
    log.info("published %s: %d rows re-solved, certificate %.3g (tol %.3g)", version, report["rows_solved"],
             report["certificate"]["max_relative_residual"], report["tolerance"])
    return report


def check_model_matches(params, expected: dict[str, Any] | None, where: str) -> None:
    """Refuse a model whose objective differs from what the caller's configuration states."""
    if not expected:
        return
    have = params.to_dict()
    wrong = {k: (v, have.get(k)) for k, v in expected.items() if k in have and have.get(k) != v}
    if wrong:
        detail = ", ".join(f"{k}: config {v!r}, model {m!r}" for k, (v, m) in sorted(wrong.items()))
        raise ConfigError(
            f"the model at {where} was trained with other hyperparameters than the config states ({detail}); "
            "unlearning keeps the model's own objective, so fix the config (or drop those keys from it) or pick the right model"
        )


def applied_requests(batch: DataFrame, deleted: DataFrame) -> DataFrame:
    """The requests of ``batch`` that removed something (``user``, ``item``, ``kind``): what the ledger remembers."""
    from pyspark.sql import functions as F

    pairs = batch.filter(F.col("kind") == "interaction").join(deleted.select("user", "item"), ["user", "item"], "left_semi")
    users = batch.filter(F.col("kind") == "user").join(deleted.select("user").distinct(), ["user"], "left_semi")
    items = batch.filter(F.col("kind") == "item").join(deleted.select("item").distinct(), ["item"], "left_semi")
    return pairs.select("user", "item", "kind").unionByName(users.select("user", "item", "kind")).unionByName(
        items.select("user", "item", "kind")
    )


def forgetting_report(before, after, deleted: DataFrame) -> dict[str, Any]:
    """Mean rank percentile of the deleted items in their (remaining) users' lists, before and after."""
    from spark_unlearn.eval.forgetting import mean_rank_percentile

    remaining_users = after.user_factors.select("id").withColumnRenamed("id", "user")
    pairs = deleted.select("user", "item").join(remaining_users, ["user"], "left_semi")
    n = pairs.count()
    if n == 0:
        return {"pairs": 0, "note": "every deleted interaction belonged to an erased user (no factor row left to rank for)"}
    pairs = pairs.cache()
    return {
        "pairs": n,
        "rank_percentile_before": mean_rank_percentile(before.user_factors, before.item_factors, pairs),
        "rank_percentile_after": mean_rank_percentile(after.user_factors, after.item_factors, pairs),
        "convention": "0 = top of the user's list, 1 = bottom",
    }

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
import math
import os
import time
from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from spark_unlearn.als.plan import remove_batch
from spark_unlearn.als.certify import residual_summary
from spark_unlearn.als.options import UnlearnOptions, VersionFacts
from spark_unlearn.als.ratio_watch import empty_drift_watches
from spark_unlearn.als.unlearn import unlearn_als
from spark_unlearn.deferred import Deferred, force
from spark_unlearn.errors import ConfigError, ObjectiveError, StoreError, StoreMovedError
from spark_unlearn.faults import failpoint
from spark_unlearn.forgetting_measure import measure_forgetting
from spark_unlearn.request_caches import releases_caches
from spark_unlearn.publication import (
    applied_requests,
    applied_requests_local,
    derived_fingerprint,
    driver_rows,
    request_io,
    table_deltas,
)
from spark_unlearn.store.block_reader import FILE_CACHE, BlockReader
from spark_unlearn.store.fingerprint import fingerprint_ratings
from spark_unlearn.store.fsutil import files_for, path_key
from spark_unlearn.store.model_store import ModelStore
from spark_unlearn.store.spark_layout import load_spark_als_model
from spark_unlearn.store.tables import HOLDOUT_DIR, RATINGS_DIR

log = logging.getLogger(__name__)


def _is_spark_model_dir(path: str) -> bool:
    files = files_for(path)
    return files.isdir(os.path.join(path, "metadata")) and files.isdir(os.path.join(path, "userFactors"))


@dataclass(frozen=True)
class SourceModel:
    """What a request starts from: the model, its training offsets and data, and where it came from."""

    model: Any
    offsets: tuple[DataFrame, DataFrame]  # each may be a Deferred plan (spark_unlearn.deferred), as ratings and holdout
    ratings: DataFrame
    holdout: DataFrame | None
    manifest: dict
    parent: str | None  # the store version it is (None: a Spark MLlib model directory)
    objective_check: dict | None = None  # Spark MLlib source: the measured stationarity (objective_check)


def load_source_model(spark: SparkSession, model_path: str, ratings: DataFrame | None, *,
                      stated: dict[str, Any] | None = None, force: bool = False) -> SourceModel:
    """The model at ``model_path``: a model store (its current version) or a Spark-saved ALSModel directory.

    A Spark MLlib model records no objective: it comes from ``stated`` and is
    measured before use (:mod:`spark_unlearn.als.objective_check`); a model
    not stationary under it is refused unless ``force``.  A store version
    records its own; ``stated`` values that contradict it are refused.
    """
    from spark_unlearn.als.objective_check import require_stationary, stationarity_of

    if _is_spark_model_dir(model_path):
        if ratings is None:
            raise ConfigError(
                f"{model_path} is a model saved by Spark MLlib; pass --ratings with the data it was trained on "
                "(the unlearning needs the ratings to know what to remove and what remains)"
            )
        from spark_unlearn.als.train import ALSState, offsets_for

        model = load_spark_als_model(spark, model_path, stated=stated)
        state = ALSState.build(ratings, model.params.num_blocks)
        offsets = offsets_for(state, model)
        found = stationarity_of(offsets)
        state.unpersist()
        require_stationary(found, ratings, model, model_path, force)
        check = {**found.to_dict(), "forced": bool(force and not found.holds)}
        return SourceModel(model, offsets, ratings, None, {"source": "spark-mllib", "path": model_path}, None, check)
    store = ModelStore(model_path)
    loaded = store.load(spark)
    plans = loaded.plans()  # unbuilt: a request served from the blocks never builds them
    if plans["offsets"] is None:
        raise StoreError(f"model version {loaded.version} in {model_path} has no training offsets; retrain it with jobs/train.py")
    check_model_matches(loaded.model.params, stated, model_path)
    data = plans["ratings"]
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
    return SourceModel(loaded.model, plans["offsets"], data, plans["holdout"], loaded.manifest, loaded.version)


def _version_counts(manifest: dict) -> dict | None:
    """Rows of the version's tables as its manifest records them (``None`` for a Spark model dir).

    ``n_ratings`` is recorded only for a version that stores its ratings, and
    ratings given beside such a version were checked against its data
    fingerprint (:func:`load_source_model`), so the count is theirs too.
    """
    counts = manifest.get("counts") or {}
    out = {k: counts[k] for k in ("n_users", "n_items", "n_ratings") if isinstance(counts.get(k), int)}
    return out or None


@dataclass(frozen=True)
class UnlearnRequest:
    """One deletion request: what to forget, from which model, where to publish, and how.

    Attributes
    ----------
    model_path
        The model store (or a Spark ALSModel directory, then with
        ``output_store``).
    delete_path, batch
        The deletion batch, as a file or a DataFrame (``user``, ``item``,
        ``kind``; :func:`~spark_unlearn.data.deletions.read_deletions`).
    ratings_path, ratings_format
        The ratings the model was trained on (default: the store's data version).
    output_store
        Where the new version is published (default: ``model_path``).
    options
        How it is solved and certified (:class:`~spark_unlearn.als.options.UnlearnOptions`).
    k, measure
        The cut-off of the before/after metrics, and whether to measure them.
    batch_id
        The request's id for the ledger (e.g. a ticket number); default:
        derived from the batch's content hash.
    expected_params
        Hyperparameters the caller states (``rank``, ``reg``, ``alpha``,
        ``implicit``, ``nonnegative``; from flags or the config's ``[als]``).
        A store version that records other values is refused; for a Spark
        MLlib model, which records none, they are required (``reg``,
        ``implicit``, and ``alpha`` if implicit) and then measured
        (:mod:`spark_unlearn.als.objective_check`).
    force
        Unlearn a Spark MLlib model even if it is not stationary under the
        stated hyperparameters (the report records the override; ``tol`` must
        then be given, since the training residual failed the check).
    max_rebases
        How many times a request is re-applied on a store that moved.
    members
        The ids of the requests this batch coalesces (the service's
        micro-batches): recorded in the version's ``request.members`` and the
        ledger, so each is known to be applied by that version.
    batch_rows
        ``batch``'s ``(user, item, kind)`` rows when the caller read them on
        the driver (:func:`~spark_unlearn.data.plain_deletions.read_deletion_rows`):
        the request then runs no job to collect them.
    """

    model_path: str
    delete_path: str | None = None
    batch: DataFrame | None = None
    ratings_path: str | None = None
    ratings_format: str = "auto"
    output_store: str | None = None
    options: UnlearnOptions = UnlearnOptions()
    k: int = 20
    measure: bool = True
    batch_id: str | None = None
    expected_params: dict[str, Any] | None = None
    force: bool = False
    max_rebases: int = 3
    members: tuple[str, ...] = ()
    batch_rows: tuple | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model_path, str) or not self.model_path:
            raise ConfigError(f"model_path must be a store path, got {self.model_path!r}")
        if not isinstance(self.options, UnlearnOptions):
            raise ConfigError(f"options must be an UnlearnOptions, got {type(self.options).__name__}")
        if isinstance(self.max_rebases, bool) or not isinstance(self.max_rebases, int) or self.max_rebases < 0:
            raise ConfigError(f"max_rebases must be a non-negative integer, got {self.max_rebases!r}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1:
            raise ConfigError(f"k must be a positive integer, got {self.k!r}")
        if not isinstance(self.members, tuple) or not all(isinstance(m, str) and m for m in self.members):
            raise ConfigError(f"members must be a tuple of request ids, got {self.members!r}")


@releases_caches("unlearning request")
def run_unlearning(spark: SparkSession, request: UnlearnRequest, *, started: float | None = None) -> dict[str, Any]:
    """Apply a deletion batch to the model at ``model_path`` and publish the result.

    Returns the report (JSON-serialisable).  Nothing is written until the
    final atomic publish, so a failure leaves every store as it was.  The
    batch is applied exactly once: if the current model's lineage already
    holds it (same content, :mod:`spark_unlearn.store.ledger`), nothing is
    computed or written and the report says ``"status": "already_applied"``.
    A batch that removes nothing (no rows, or nothing of it in the data)
    publishes nothing either: ``"status": "nothing_to_delete"``.

    Publication is a compare-and-swap on the version the work started from.
    If another publisher moved the store in the meantime, the request is
    re-applied on the new current version (*rebase*, recorded in the report
    as ``"rebased"``), at most ``max_rebases`` times; then
    :class:`~spark_unlearn.errors.StoreMovedError` is raised and nothing of
    this request is published.  "applied" therefore always means the current
    version, when it was published, no longer held the batch's data.

    Parameters
    ----------
    request
        The request (:class:`UnlearnRequest`).
    started
        The ``time.perf_counter()`` at which the job started (default: when
        this call starts): ``seconds.end_to_end`` counts from it, and
        ``speedup_end_to_end`` sets it against the end-to-end training time
        the store records (``training_seconds.end_to_end``, from the training
        job's start until its version was ready to publish).  ``speedup_solve_only`` compares the
        training's ALS solve with this request's solve and certificate.
    """
    from spark_unlearn.data.plain_deletions import read_deletion_rows
    from spark_unlearn.data.readers import read_ratings
    from spark_unlearn.store.ledger import batch_identity

    t0 = time.perf_counter() if started is None else started
    model_path, output_store, batch = request.model_path, request.output_store, request.batch
    rows = list(request.batch_rows) if request.batch_rows is not None else None
    if batch is None:
        if request.delete_path is None:
            raise ConfigError("give a deletion batch: --delete PATH")
        batch, rows = read_deletion_rows(spark, request.delete_path)
    ratings = read_ratings(spark, request.ratings_path, format=request.ratings_format) if request.ratings_path else None
    if output_store is None:
        if _is_spark_model_dir(model_path):
            raise ConfigError(f"{model_path} is a Spark MLlib model directory; pass --output-store DIR for the unlearned versions")
        output_store = model_path
    store = ModelStore(output_store)  # checks the output path before any work
    store.reconcile()
    if rows is None:
        rows = driver_rows(batch)
    identity = batch_identity(batch, request.batch_id, rows=rows)
    if identity.n_requests == 0:
        log.info("deletion batch %s holds no request: nothing to do, nothing published", identity.batch_id)
        return _nothing_report(identity, store, "the deletion batch holds no request (e.g. a header-only file)", t0)
    req = _Request(batch, identity, request, rows)
    source, source_ratings = model_path, ratings
    holding = store.current()
    if holding is not None and not _same_path(model_path, store.root):
        # The output store already holds a lineage (earlier requests against this source): apply this one on top of
        # it, as a rebase would, instead of starting again from the source and bringing erased data back.
        log.warning("%s already holds %s: applying the request on it rather than on %s", store.root, holding, model_path)
        source, source_ratings = output_store, None
    rebases: list[dict[str, Any]] = []
    for _ in range(request.max_rebases + 1):
        try:
            report = _apply_once(spark, store, source, source_ratings, req, t0)
        except StoreMovedError as moved:
            rebases.append({"based_on": moved.expected, "current_was": moved.current})
            log.warning("store %s moved from %s to %s while this request was computed: re-applying it on %s",
                        store.root, moved.expected, moved.current, moved.current)
            # The store's current version holds the lineage now, with its own data version.
            source, source_ratings = output_store, None
            continue
        if rebases:
            report["rebased"] = rebases
        return report
    raise StoreMovedError(
        f"model store {store.root} moved on {len(rebases)} times while request {identity.batch_id} was computed "
        f"(another publisher committed first each time; last: {rebases[-1]['current_was']}); nothing of this request "
        "was published: store moved, resubmit it",
        current=rebases[-1]["current_was"], expected=rebases[-1]["based_on"],
    )


def _same_path(a: str, b: str) -> bool:
    """Whether two store paths (plain paths or URIs) name the same directory."""
    if _is_spark_model_dir(a):
        return False
    return path_key(ModelStore(a).root) == path_key(ModelStore(b).root)  # file:///x and /x are one directory


@dataclass(frozen=True)
class _Request:
    """A request with its batch read and its ledger identity, as they stay across rebases."""

    batch: DataFrame
    identity: Any
    request: UnlearnRequest
    rows: list | None = None  # the batch's (user, item, kind) rows on the driver, when it is small


def _nothing_report(identity, store: ModelStore, why: str, t0: float) -> dict[str, Any]:
    return {
        "status": "nothing_to_delete",
        "batch": identity.to_dict(),
        "version": store.current(),
        "note": f"{why}; nothing was recomputed or published",
        "seconds": {"end_to_end": round(time.perf_counter() - t0, 3)},
    }


def _apply_once(spark: SparkSession, store: ModelStore, model_path: str, ratings: DataFrame | None, req: _Request,
                t0: float) -> dict[str, Any]:
    """Unlearn ``req`` from the model at ``model_path`` and publish it to ``store`` (compare-and-swap)."""
    from spark_unlearn.store.ledger import find_applied, request_record

    batch, identity = req.batch, req.identity
    observed = store.current()
    applied = find_applied(store, identity) if observed is not None else None
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

    read_before = FILE_CACHE.bytes_read
    src = load_source_model(spark, model_path, ratings, stated=req.request.expected_params, force=req.request.force)
    model, offsets, data, holdout, manifest, parent = src.model, src.offsets, src.ratings, src.holdout, src.manifest, src.parent
    if src.objective_check is not None and src.objective_check["forced"] and req.request.options.tol is None:
        raise ObjectiveError(
            f"--force unlearns {model_path} although it is not stationary under the stated hyperparameters; the "
            "certificate's tolerance cannot come from that failed training residual: give --tol as well"
        )
    same_store = parent is not None and _same_path(model_path, store.root)
    # Read only if some request matches nothing (the lineage may hold hundreds of versions).
    forgotten = (lambda: store.forgotten(spark)) if same_store else None
    training_residual = manifest.get("training_residual") or residual_summary(tuple(force(o) for o in offsets))
    spark_source = src.objective_check is not None
    facts = VersionFacts(
        training_residual=training_residual, forgotten=forgotten, grams=manifest.get("grams"),
        drift_bound={"user": 0.0, "item": 0.0} if spark_source else manifest.get("drift_max"),
        counts=_version_counts(manifest), x_ratio=None if spark_source else manifest.get("x_ratio"),
        x_watch=None if spark_source else manifest.get("x_watch"),
        # A Spark MLlib source's offsets were just computed from its data: no drift, every |b| exact.
        drift_watch=empty_drift_watches() if spark_source else manifest.get("drift_watch"),
        bnorm_exact={"user": True, "item": True} if spark_source else manifest.get("bnorm_exact"),
        # The stored data version's blocks, read on the driver (not when other ratings were given).
        blocks=BlockReader.of(ModelStore(model_path).version_path(parent), manifest)
        if parent is not None and ratings is None else None,
    )
    result = unlearn_als(data, model, offsets, batch, req.request.options, facts, batch_rows=req.rows)
    failpoint("after_solve")
    report = {"status": "applied", "batch": identity.to_dict(), **result.report}
    if src.objective_check is not None:
        report["objective_check"] = src.objective_check
    new_holdout = None
    if holdout is not None:
        new_holdout = Deferred(lambda: remove_batch(force(holdout), batch))  # built if read (a full write, metrics)
    # Only when the training data lost nothing: the held-out split may still hold what the batch names.
    if not report["deletion"].get("deleted_ratings") and (new_holdout is None or
                                                          force(holdout).count() == force(new_holdout).count()):
        result.release()
        log.info("batch %s removes no rating from %s: nothing published", identity.batch_id, model_path)
        out = _nothing_report(identity, store, "no request of the batch matches a rating of the model's data", t0)
        out["deletion"], out["not_found"] = report["deletion"], report.get("not_found")
        return out
    t_measure = time.perf_counter()
    if req.request.measure:
        report["forgetting"] = measure_forgetting(model, result, facts.blocks)
        if holdout is not None:
            from spark_unlearn.train_model import evaluate_model

            recorded = recorded_metrics(manifest, req.request.k)
            if recorded is not None:  # the parent's own metrics, measured on this holdout when it was published
                report["metrics_before"] = recorded
                report["metrics_before_source"] = "recorded when the parent version was published"
            else:
                report["metrics_before"] = evaluate_model(model, force(data), force(holdout), model.params.implicit,
                                                          req.request.k)
            report["metrics_after"] = evaluate_model(result.model, result.remaining, force(new_holdout),
                                                     model.params.implicit, req.request.k)
    training = manifest.get("training") or {}
    report["seconds"]["unlearning_total"] = round(time.perf_counter() - t0, 3)
    if training.get("seconds"):
        # The training's ALS solve against this request's solve and certificate: a ratio of solves only.
        report["training_seconds"] = {"solve": training["seconds"], "end_to_end": training.get("seconds_end_to_end")}
        report["speedup_solve_only"] = round(
            training["seconds"] / max(report["seconds"]["solve"] + report["seconds"]["certificate"], 1e-9), 2)
    report["seconds"]["measure"] = round(time.perf_counter() - t_measure, 3)
    report = undefined_as_none(report)
    t_publish = time.perf_counter()
    out_ratings = out_holdout = None
    fingerprint: dict[str, Any] = {}
    if same_store:
        # The data versions derive from the parent's files: only part files holding a deleted row are rewritten.
        from spark_unlearn.store.derived import DerivedTable

        parent_dir = store.version_path(parent)
        contents = manifest.get("contents") or {}
        rows = tuple(req.rows) if req.rows is not None else None
        if contents.get("ratings"):
            out_ratings = DerivedTable(os.path.join(parent_dir, RATINGS_DIR), batch, rows)
            fingerprint = derived_fingerprint(manifest, result.deleted_local)
        if contents.get("holdout") and new_holdout is not None:
            out_holdout = DerivedTable(os.path.join(parent_dir, HOLDOUT_DIR), batch, rows)
    if out_ratings is None:
        out_ratings = result.remaining
    if out_holdout is None and new_holdout is not None:
        out_holdout = force(new_holdout)
    new_model = result.model  # its tables stay unbuilt where the publication patches them from row changes
    new_model.model_params = model.model_params
    try:
        version = store.publish(
            new_model,
            offsets=result.offset_plans or result.offsets,  # unbuilt where the publication patches from row changes
            ratings=out_ratings,
            holdout=out_holdout,
            manifest={
                "unlearning": {k_: v for k_, v in report.items() if k_ not in ("certificate",)},
                "certificate": report["certificate"],
                # The strategy's: the parent's, or a retrain's own (its rows' targets are new).
                "training_residual": result.report["training_residual"],
                "training": manifest.get("training"),
                **({"grams": result.grams} if result.grams else {}),
                "drift_max": result.report["drift_max"],
                # The certificate terms of rows a next request leaves untouched (explicit), and whether every
                # stored |b| is exact (the implicit exact passes divide by it); absent: unknown, bounded.
                **({"drift_watch": result.drift_watch} if result.drift_watch else {}),
                **({"bnorm_exact": result.report["bnorm_exact"]} if result.report.get("bnorm_exact") else {}),
                # Implicit, targeted engine only: the bound max |x|/|b| the next request starts from.
                **({"x_ratio": result.report["x_ratio"]} if result.report.get("x_ratio") else {}),
                **({"x_watch": result.x_watch} if result.x_watch else {}),
                **fingerprint,
            },
            parent=parent if same_store else None,
            forgotten=(applied_requests_local(req.rows, result.deleted_local)
                       if req.rows is not None and result.deleted_local is not None
                       else applied_requests(batch, result.deleted)),
            request=request_record(identity, method=f"unlearn-als/{report['mode']}",
                                   **({"members": list(req.request.members)} if req.request.members else {})),
            expect_current=parent if same_store else observed,
            # Copy-on-write of the factor and offsets blocks the request touched (the parent is in this store).
            deltas=table_deltas(result.changes) if same_store and result.changes else None,
        )
    finally:
        report["seconds"]["publish"] = round(time.perf_counter() - t_publish, 3)
        result.release()
        for name in ("remaining", "deleted"):  # their cache-manager entries; the blocks go with the scope
            if result.is_built(name):
                getattr(result, name).unpersist()
    published = store.read_manifest(version)
    report["io"] = request_io(published, read_before)
    if report.get("remaining_ratings") is None:
        report["remaining_ratings"] = published["counts"].get("n_ratings")
    if published.get("copy_on_write"):
        report["copy_on_write"] = published["copy_on_write"]
    report["version"] = version
    report["parent"] = published.get("parent")
    report["path"] = store.version_path(version)
    report["seconds"]["end_to_end"] = round(time.perf_counter() - t0, 3)
    train_e2e = (report.get("training_seconds") or {}).get("end_to_end")
    if train_e2e:
        # End to end on both sides: this request from its start to publication against the recorded training run.
        report["speedup_end_to_end"] = round(train_e2e / max(report["seconds"]["end_to_end"], 1e-9), 2)
    log.info("published %s: %d rows re-solved, certificate %.3g (tol %.3g)", version, report["rows_solved"],
             report["certificate"]["max_relative_residual"], report["tolerance"])
    return report


def undefined_as_none(report: Any, path: str = "", found: list[str] | None = None) -> Any:
    """``report`` with every NaN or infinite number replaced by ``None``; the top level lists where (``"undefined"``).

    A measure with nothing to measure (no deleted pair left to rank, an empty
    holdout) is undefined, not a number; JSON has no NaN, and the manifest
    and ledger must stay valid JSON.
    """
    top = found is None
    found = [] if top else found
    if isinstance(report, dict):
        out = {k: undefined_as_none(v, f"{path}.{k}" if path else str(k), found) for k, v in report.items()}
    elif isinstance(report, (list, tuple)):
        out = type(report)(undefined_as_none(v, f"{path}[{i}]", found) for i, v in enumerate(report))
    elif isinstance(report, float) and not math.isfinite(report):
        found.append(path)
        out = None
    else:
        out = report
    if top and found and isinstance(out, dict):
        out["undefined"] = sorted(set(out.get("undefined") or []) | set(found))
    return out


def check_model_matches(params, expected: dict[str, Any] | None, where: str) -> None:
    """Refuse a store version whose recorded objective differs from what the caller states."""
    if not expected:
        return
    if expected.get("nonnegative"):
        raise ObjectiveError(f"{where}: nonnegative ALS is not supported yet; this store's versions are not nonnegative "
                             "(drop --nonnegative)")
    have = params.to_dict()
    wrong = {k: (v, have.get(k)) for k, v in expected.items() if k in have and have.get(k) != v}
    if wrong:
        detail = ", ".join(f"{k}: stated {v!r}, model {m!r}" for k, (v, m) in sorted(wrong.items()))
        raise ObjectiveError(
            f"the model at {where} was trained with other hyperparameters than stated ({detail}); "
            "unlearning keeps the model's own objective, so fix the flags or config (or drop those keys) or pick the right model"
        )


def recorded_metrics(manifest: dict, k: int) -> dict | None:
    """The test metrics a version recorded about itself when it was published, if they are at ``k``.

    An unlearned version records ``metrics_after`` (its model on its remaining
    data and holdout); a trained one its training's test metrics.  Either is
    exactly what the next request would measure as "before", so it is reused
    instead of scoring the holdout again.  ``None`` when nothing usable is
    recorded (measuring was off, another ``k``, nothing held out).
    """
    if "unlearning" in manifest:
        rec = (manifest.get("unlearning") or {}).get("metrics_after")
    else:
        rec = manifest.get("metrics")
    return dict(rec) if rec and f"test_ndcg@{k}" in rec else None


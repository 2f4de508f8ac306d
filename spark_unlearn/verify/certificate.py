"""Recompute a published version's certificate from its files alone (the independent verifier).

``verify_version`` reads one version of a model store (factor tables,
remaining ratings, offsets, manifest, and its lineage's ``forgotten`` ids)
and recomputes, for every row (or a sample), the deviation

    rho_r = |A'_r x_r - b'_r - t_r| / |b'_r|

with :mod:`spark_unlearn.verify.reference`, as one Spark pass per side.  It
imports nothing of the unlearning path (``spark_unlearn.als.*``): only the
store's file reading.

**Targets** ``t_r`` are derived, not trusted.  The *base* of a version is
its nearest ancestor (or itself) that set targets: a training version
(``t = e``, its own training residual), a retrain of the remaining data (the
same), a paper-mode version (its absorbed residuals; stores written before
that mode was removed may hold one) or a lineage root.  A row keeps the base's target while its
rating count is the base's, and owes 0 once its data changed (deletions only
remove ratings).  The version's own recorded targets are compared with the
derived ones (``targets.mismatched_rows``).  When the base's tables were
purged, the recorded targets are used and the report says so.  A version
unlearned in paper mode is certified against ``t = 0``.

**Verdict** (``status``): ``verified`` when every row's recomputed deviation
is within its bound under the recorded policy (:func:`recorded_policy`:
``max(floor, own * |t_r| / |b'_r|)`` with the derived target), the maximum agrees with the recorded certificate to float32 noise
(:data:`AGREEMENT`; a certificate that records an upper bound, ``max_kind``,
must only not fall below the recomputation: :func:`recorded_kind`), every target agrees, every rated row has a factor row
and vice versa, and the version's data holds nothing its lineage erased;
``failed`` otherwise, with the reasons and the worst rows by id.
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_unlearn.errors import StoreError
from spark_unlearn.store.fsutil import file_uri, files_for
from spark_unlearn.store.model_store import ModelStore
from spark_unlearn.verify.reference import gram_of, row_deviation

log = logging.getLogger(__name__)

AGREEMENT = 1e-5
"""Recomputed and recorded maxima agree when they differ by at most this (absolute, in units of rho).

The factors are float32: a row's deviation computed in float64 from them can
differ from the same quantity computed before the cast by about
``|A| |x| 6e-8 / |b|``, a few 1e-7 on trained models; 1e-5 leaves margin and
still catches a certificate edited by more than rounding."""

TRAINING_TOLERANCE = 1e-5
"""A training version's rows must equal their recorded targets (``t = e``) to this (float32 noise)."""

RESULT_SCHEMA = ("side string, id int, deviation double, bnorm double, ratio double, target_agrees boolean, "
                 "problem string")


def recorded_policy(manifest: dict) -> tuple[float | None, float, str]:
    """``(floor, own weight, name)`` of the bound a version's certificate holds each row to.

    ``bound_r = max(floor, own * |t_r| / |b'_r|)``: ``own = 0`` for the
    ``strict`` policy (and for certificates recorded before policies), where
    the floor is the recorded tolerance.  A training version: its targets
    to float32 noise.
    """
    cert = manifest.get("certificate")
    if cert is None:
        return TRAINING_TOLERANCE, 0.0, "training"
    policy = cert.get("policy") or {}
    floor = policy.get("floor", cert.get("tolerance"))
    return (None if floor is None else float(floor)), float(policy.get("own_residual_weight") or 0.0), \
        str(policy.get("name") or "strict")


def recorded_kind(cert: dict | None) -> str:
    """Whether a certificate records its exact maximum (``"exact"``) or an ``"upper bound"`` of it.

    The record says so itself (``max_kind``).  Records written before it
    did: the targeted engine's (``method`` ``incremental``) were upper bounds
    (``|b'|`` of rows it did not re-solve was bounded below), every other
    engine's exact.  A bound may exceed the truth but never fall below it.
    """
    if cert is None:
        return "exact"
    kind = cert.get("max_kind")
    if kind is not None:
        return "exact" if kind == "exact" else "upper bound"
    return "upper bound" if str(cert.get("method", "")).startswith("incremental") else "exact"


def verify_version(spark: SparkSession, store_path: str, version: str | None = None, *, sample: int | None = None,
                   seed: int = 0, worst: int = 10) -> dict[str, Any]:
    """Recompute the certificate of ``version`` (default: the current one) of the store at ``store_path``.

    Parameters
    ----------
    sample
        ``None``: every row.  ``N``: ``N`` random rows of each side plus every
        row the version's request touched (its factor row differs from the
        parent's, or its id is named in the version's ``forgotten`` table).
    worst
        How many of the worst rows to name.

    Returns
    -------
    dict
        JSON-ready report: ``status`` (``verified`` | ``failed``),
        ``reasons``, ``recomputed`` (max, p50, p90, rows), ``recorded``
        (max, tolerance, holds), ``worst_rows``, ``targets``, ``data``.

    Raises
    ------
    StoreError
        Unknown or purged version, a version without its data, or tampered files.
    """
    store = ModelStore(store_path)
    name = version or store.current()
    if name is None:
        raise StoreError(f"model store {store_path} has no current version: nothing to verify")
    manifest = store.read_manifest(name)
    if manifest.get("purged"):
        raise StoreError(f"version {name} of {store.root} was purged: its tables are gone, nothing to recompute")
    try:
        store.verify(name, cached=False)  # every file's checksum, every byte read; a mismatch fails the verdict, and the arithmetic still runs
        files = {"verified": True}
    except StoreError as exc:
        files = {"verified": False, "problem": str(exc)}
    loaded = store.load(spark, name, verify=False)
    if loaded.ratings is None:
        raise StoreError(f"version {name} of {store.root} has no data version (ratings/): its certificate cannot be recomputed")
    params = manifest["params"]
    spec = {"reg": float(params["reg"]), "implicit": bool(params["implicit"]), "alpha": float(params["alpha"])}
    targets, target_source = _targets(spark, store, name, manifest, loaded)
    floor, own, _ = recorded_policy(manifest)
    # A paper-mode version stores its absorbed residuals as the next targets, by design: nothing to compare with 0.
    recorded_targets = _recorded_targets(loaded) if target_source["source"] != "zero" else {"user": None, "item": None}
    chosen = _sample_ids(spark, store, name, manifest, loaded, sample, seed) if sample else None

    sides = []
    for side, me, other, mine, theirs in (("user", "user", "item", loaded.model.user_factors, loaded.model.item_factors),
                                          ("item", "item", "user", loaded.model.item_factors, loaded.model.user_factors)):
        sides.append(_side_deviations(spark, side, me, other, mine, theirs, loaded.ratings, targets[side],
                                      recorded_targets[side], spec, chosen[side] if chosen else None,
                                      (floor if floor is not None else float("nan"), own)))
    rows = functools.reduce(DataFrame.unionByName, sides).cache()
    try:
        summary = _summarise(rows, worst)
    finally:
        rows.unpersist()
    data = _data_side(spark, store, name, loaded)
    return _verdict(name, manifest, summary, target_source, data, sample, files)


# ----------------------------------------------------------------------------- targets


def _lineage(store: ModelStore, name: str) -> list[tuple[str, dict]]:
    out, seen = [], set()
    while name and name not in seen:
        seen.add(name)
        manifest = store.read_manifest(name)
        out.append((name, manifest))
        name = manifest.get("parent")
    return out


def _sets_targets(manifest: dict) -> bool:
    unl = manifest.get("unlearning") or {}
    return "request" not in manifest or unl.get("mode") in ("paper", "retrain") or manifest.get("parent") is None


def _targets(spark, store, name, manifest, loaded) -> tuple[dict[str, DataFrame | None], dict[str, Any]]:
    """Per side ``(id, t)`` targets the version owes (``None``: zero), and where they come from."""
    mode = (manifest.get("unlearning") or {}).get("mode")
    if "request" in manifest and mode == "paper":
        return {"user": None, "item": None}, {"source": "zero", "why": "a paper-mode version is certified against t = 0"}
    base_name, base_manifest = next((v, m) for v, m in _lineage(store, name) if _sets_targets(m))
    if base_name == name:
        if "request" not in manifest:
            kind = "training version"
        elif mode == "retrain":
            kind = "retrain of the remaining data (its own training residual is every row's target)"
        else:
            kind = "lineage root (its source model is not in the store)"
        return _recorded_targets(loaded), {"source": "recorded", "base": name, "why": f"{name} is a {kind}"}
    contents = base_manifest.get("contents") or {}
    if base_manifest.get("purged") or not (contents.get("offsets") and contents.get("ratings")):
        return _recorded_targets(loaded), {"source": "recorded", "base": base_name,
                                           "why": f"the base {base_name} no longer has its offsets and ratings (purged)"}
    base = store.load(spark, base_name, verify=False)
    out = {}
    for side, col, offs in (("user", "user", base.offsets[0]), ("item", "item", base.offsets[1])):
        now = loaded.ratings.groupBy(F.col(col).alias("id")).agg(F.count("*").alias("n_now"))
        then = base.ratings.groupBy(F.col(col).alias("id")).agg(F.count("*").alias("n_base"))
        kept = (now.join(then, "id").filter(F.col("n_now") == F.col("n_base")).select("id")
                .join(offs.select("id", F.col("residual").alias("t")), "id"))
        out[side] = kept
    return out, {"source": "derived", "base": base_name,
                 "why": f"{base_name}'s targets for rows whose ratings are unchanged since it, 0 for the others"}


def _recorded_targets(loaded) -> dict[str, DataFrame | None]:
    if loaded.offsets is None:
        return {"user": None, "item": None}
    return {side: offs.select("id", F.col("residual").alias("t")) for side, offs in zip(("user", "item"), loaded.offsets)}


# ----------------------------------------------------------------------------- rows


def _sample_ids(spark, store, name, manifest, loaded, n, seed) -> dict[str, DataFrame]:
    """``n`` random ids per side plus the rows the version's request touched."""
    counts = manifest.get("counts") or {}
    parent = manifest.get("parent")
    parent_model = None
    if parent and not store.read_manifest(parent).get("purged"):
        parent_model = store.load(spark, parent, verify=False).model
    forgotten = loaded.forgotten
    out = {}
    for side, col, mine, key in (("user", "user", loaded.model.user_factors, "n_users"),
                                 ("item", "item", loaded.model.item_factors, "n_items")):
        total = max(int(counts.get(key) or 1), 1)
        picked = mine.select("id").sample(fraction=min(1.0, 1.5 * n / total), seed=seed).limit(n)
        parts = [picked]
        if parent_model is not None:
            theirs = getattr(parent_model, f"{side}_factors").select("id", F.col("features").alias("p"))
            moved = mine.join(theirs, "id", "left").filter(F.col("p").isNull() | (F.col("features") != F.col("p")))
            parts.append(moved.select("id"))
        if forgotten is not None:
            parts.append(forgotten.filter(F.col(col).isNotNull()).select(F.col(col).alias("id")))
        out[side] = functools.reduce(DataFrame.unionByName, parts).distinct()
    return out


def _gram(factors: DataFrame) -> np.ndarray:
    def partial(it):
        g = gram_of(row[0] for row in it)
        return [] if g is None else [g]

    return factors.select("features").rdd.mapPartitions(partial).reduce(lambda a, b: a + b)


def _side_deviations(spark, side, me, other, mine, theirs, ratings, targets, recorded, spec, chosen, bound) -> DataFrame:
    """One row per id of this side: its deviation, |b|, the deviation over the row's bound, whether its recorded
    target agrees, and any problem.  ``bound``: ``(floor, own)`` of :func:`recorded_policy`."""
    gram = _gram(theirs) if spec["implicit"] else None
    obs = (ratings.select(F.col(me).alias("id"), F.col(other).alias("oid"), "rating")
           .join(theirs.select(F.col("id").alias("oid"), F.col("features").alias("y")), "oid", "left"))
    if chosen is not None:
        obs = obs.join(chosen, "id", "left_semi")
        mine = mine.join(chosen, "id", "left_semi")
    grouped = obs.groupBy("id").agg(F.collect_list(F.struct("rating", "y")).alias("obs"))
    table = mine.select("id", F.col("features").alias("x")).join(grouped, "id", "full_outer")
    none = F.lit(None).cast("array<double>")
    table = table.join(targets, "id", "left") if targets is not None else table.withColumn("t", none)
    table = (table.join(recorded.withColumnRenamed("t", "t_rec"), "id", "left") if recorded is not None
             else table.withColumn("t_rec", none))
    kernel = functools.partial(_deviations_of_batches, side=side, spec=spec, gram=gram, bound=bound)
    return table.select("id", "x", "obs", "t", "t_rec").mapInPandas(kernel, RESULT_SCHEMA)


def _deviations_of_batches(batches, *, side, spec, gram, bound):
    floor, own = bound
    nan = float("nan")
    for pdf in batches:
        out = []
        for row in pdf.itertuples(index=False):
            if row.x is None:
                out.append((side, row.id, nan, nan, nan, True, "rated row without a factor row"))
                continue
            if row.obs is None or len(row.obs) == 0:
                out.append((side, row.id, nan, nan, nan, True, "factor row without ratings"))
                continue
            if any(o["y"] is None for o in row.obs):
                out.append((side, row.id, nan, nan, nan, True, "rates a row the other side lacks"))
                continue
            q = np.array([o["rating"] for o in row.obs], dtype=np.float64)
            Y = np.array([np.asarray(o["y"], dtype=np.float64) for o in row.obs])
            t = None if row.t is None else np.asarray(row.t, dtype=np.float64)
            rho, bnorm = row_deviation(np.asarray(row.x), t, q, Y, gram=gram, **spec)
            if not np.isfinite(rho):
                out.append((side, row.id, nan, nan, nan, True, "non-finite deviation (a factor or rating "
                                                               "is not a finite number)"))
                continue
            t_rec = None if row.t_rec is None else np.asarray(row.t_rec, dtype=np.float64)
            diff = np.linalg.norm((t if t is not None else 0.0) - (t_rec if t_rec is not None else 0.0))
            # The row's own bound, from the target its lineage owes it (not the recorded one).
            own_part = own * (np.linalg.norm(t) if t is not None else 0.0) / max(bnorm, 1e-300)
            ratio = rho / max(floor, own_part)
            out.append((side, row.id, rho, bnorm, ratio, bool(diff <= AGREEMENT * max(bnorm, 1e-300)), None))
        yield pd.DataFrame(out, columns=["side", "id", "deviation", "bnorm", "ratio", "target_agrees", "problem"])


def _summarise(rows: DataFrame, worst: int) -> dict[str, Any]:
    """Maxima, quantiles and counts in one aggregation; the worst rows and first problems in one job each."""
    ok = F.col("problem").isNull()
    dev = F.when(ok, F.col("deviation"))
    agg = rows.agg(
        F.max(dev).alias("max"), F.count(dev).alias("rows"), F.max(F.when(ok, F.col("ratio"))).alias("max_ratio"),
        F.percentile_approx(dev, [0.5, 0.9], 10000).alias("q"),
        F.max(F.when(ok & (F.col("side") == "user"), F.col("deviation"))).alias("user"),
        F.max(F.when(ok & (F.col("side") == "item"), F.col("deviation"))).alias("item"),
        F.sum(F.when(ok & ~F.col("target_agrees"), 1).otherwise(0)).alias("mismatched"),
        F.sum(F.when(~ok, 1).otherwise(0)).alias("problems"),
    ).first()
    q = agg["q"] or [0.0, 0.0]
    worst_rows = [{"side": r["side"], "id": r["id"], "deviation": r["deviation"], "bound_ratio": r["ratio"]}
                  for r in rows.filter(ok).orderBy(F.desc("ratio"), F.desc("deviation")).limit(worst).collect()]
    odd = rows.filter(~ok | ~F.col("target_agrees")).limit(2 * worst).collect() if agg["problems"] or agg["mismatched"] else []
    problems = [{"side": r["side"], "id": r["id"], "problem": r["problem"]} for r in odd if r["problem"]][:worst]
    mismatched = [{"side": r["side"], "id": r["id"]} for r in odd if not r["problem"]][:worst]
    max_ratio = agg["max_ratio"]
    return {"max": float(agg["max"] or 0.0), "rows": int(agg["rows"]), "p50": float(q[0]), "p90": float(q[1]),
            "max_bound_ratio": float(max_ratio) if max_ratio is not None else 0.0,
            "per_side": {side: float(agg[side]) for side in ("user", "item") if agg[side] is not None},
            "worst_rows": worst_rows, "problems": problems, "n_problems": int(agg["problems"] or 0),
            "mismatched_targets": int(agg["mismatched"] or 0), "mismatched_examples": mismatched}


# ----------------------------------------------------------------------------- data side


def erased_requests(spark: SparkSession, store: ModelStore, name: str) -> DataFrame | None:
    """Every request (``user``, ``item``, ``kind``) the lineage up to ``name`` recorded as applied (``forgotten/``)."""
    parts = []
    for v, manifest in _lineage(store, name):
        if (manifest.get("contents") or {}).get("forgotten"):
            parts.append(spark.read.parquet(os.path.join(store.version_path(v), "forgotten")).select("user", "item", "kind"))
    return functools.reduce(DataFrame.unionByName, parts) if parts else None


def still_present(loaded, requests: DataFrame) -> dict[str, int]:
    """What of ``requests`` a loaded version still holds (counts, all zero when forgotten; one Spark job)."""
    out = {"pairs_in_data": 0, "erased_user_rows_in_data": 0, "withdrawn_item_rows_in_data": 0,
           "erased_user_factor_rows": 0, "withdrawn_item_factor_rows": 0}
    pairs = requests.filter(F.col("kind") == "interaction").select("user", "item")
    users = requests.filter(F.col("kind") == "user").select("user")
    items = requests.filter(F.col("kind") == "item").select("item")
    hits = []
    for data in (loaded.ratings, loaded.holdout):
        if data is None:
            continue
        hits += [
            data.join(pairs, ["user", "item"], "left_semi").select(F.lit("pairs_in_data").alias("what")),
            data.join(users, ["user"], "left_semi").select(F.lit("erased_user_rows_in_data").alias("what")),
            data.join(items, ["item"], "left_semi").select(F.lit("withdrawn_item_rows_in_data").alias("what")),
        ]
    hits += [
        loaded.model.user_factors.join(users.withColumnRenamed("user", "id"), ["id"], "left_semi")
        .select(F.lit("erased_user_factor_rows").alias("what")),
        loaded.model.item_factors.join(items.withColumnRenamed("item", "id"), ["id"], "left_semi")
        .select(F.lit("withdrawn_item_factor_rows").alias("what")),
    ]
    counted = functools.reduce(DataFrame.unionByName, hits).groupBy("what").count().collect()
    out.update({r["what"]: int(r["count"]) for r in counted})
    return out


def data_identity(spark, loaded) -> dict[str, Any]:
    """The fingerprints of the version's ratings and of their item-blocked copy, recomputed from the files, against
    the manifest's ``data_fingerprint`` (which a request may have derived on the driver, not from the files)."""
    from spark_unlearn.store.fingerprint import fingerprint_ratings
    from spark_unlearn.store.tables import RATINGS_BY_ITEM_DIR

    out = {"recorded": loaded.manifest.get("data_fingerprint"), "ratings": fingerprint_ratings(loaded.ratings)}
    copy = os.path.join(loaded.path, RATINGS_BY_ITEM_DIR)
    if files_for(copy).isdir(copy):
        out["ratings_by_item"] = fingerprint_ratings(spark.read.parquet(file_uri(copy)))
    out["consistent"] = all(v == out["recorded"] for k, v in out.items() if k != "recorded")
    return out


def _data_side(spark, store, name, loaded) -> dict[str, Any]:
    identity = data_identity(spark, loaded)
    requests = erased_requests(spark, store, name)
    if requests is None:
        return {"erased_requests": 0, "still_present": {}, "clean": True, "identity": identity}
    found = still_present(loaded, requests)
    return {"erased_requests": requests.count(), "still_present": {k: v for k, v in found.items() if v},
            "clean": not any(found.values()), "identity": identity}


# ----------------------------------------------------------------------------- verdict


def _verdict(name, manifest, summary, target_source, data, sample, files) -> dict[str, Any]:
    cert = manifest.get("certificate")
    floor, own, policy = recorded_policy(manifest)
    if cert is None:  # a training version: every row is at its target by construction
        recorded = {"max": 0.0, "tolerance": TRAINING_TOLERANCE, "holds": True, "policy": policy,
                    "note": "a training version records no certificate: its rows must equal their targets (t = e)"}
    else:
        recorded = {"max": cert.get("max_relative_residual"), "tolerance": cert.get("tolerance"), "holds": cert.get("holds"),
                    "policy": policy, "floor": floor, "own_residual_weight": own}
    reasons = [] if files["verified"] else [f"checksums: {files['problem']}"]
    recorded["kind"] = recorded_kind(cert)
    if cert is not None and cert.get("max_kind_why"):
        recorded["kind_why"] = cert["max_kind_why"]
    if floor is None or not summary["max_bound_ratio"] <= 1.0:  # NaN fails too
        reasons.append(f"a row's recomputed deviation is {summary['max_bound_ratio']:.6g} x its bound under the "
                       f"{policy} policy (floor {floor}, own-residual weight {own})")
    if sample is None and recorded["max"] is not None:
        below = summary["max"] > recorded["max"] + AGREEMENT
        if below or (recorded["kind"] == "exact" and abs(summary["max"] - recorded["max"]) > AGREEMENT):
            reasons.append(f"the recomputed maximum {summary['max']:.6g} disagrees with the recorded "
                           f"{recorded['max']:.6g} ({recorded['kind']})")
        recorded["overstates_by"] = max(0.0, recorded["max"] - summary["max"])
    if sample is not None and recorded["max"] is not None and summary["max"] > recorded["max"] + AGREEMENT:
        reasons.append(f"sampled rows reach {summary['max']:.6g}, above the recorded maximum {recorded['max']:.6g}")
    if summary["mismatched_targets"]:
        reasons.append(f"{summary['mismatched_targets']} row(s) record another target than their lineage owes them")
    if summary["n_problems"]:
        reasons.append(f"{summary['n_problems']} row(s) with inconsistent tables (e.g. {summary['problems'][0]})")
    if not data["clean"]:
        reasons.append(f"the version still holds erased data: {data['still_present']}")
    if not data["identity"]["consistent"]:
        reasons.append(f"the data files do not match the recorded data fingerprint (or each other): {data['identity']}")
    if reasons and summary["worst_rows"] and summary["max_bound_ratio"] > 1.0:
        bad = [f"{w['side']} {w['id']} ({w['deviation']:.4g}, {w['bound_ratio']:.3g} x its bound)"
               for w in summary["worst_rows"] if w["bound_ratio"] > 1.0]
        reasons.append("rows above their bound: " + ", ".join(bad))
    return {
        "version": name,
        "status": "failed" if reasons else "verified",
        "reasons": reasons,
        "scope": "every row" if sample is None else f"{sample} random rows per side and every row the request touched",
        "recomputed": {k: summary[k] for k in ("max", "p50", "p90", "rows", "per_side", "max_bound_ratio")},
        "recorded": recorded,
        "agreement": AGREEMENT,
        "worst_rows": summary["worst_rows"],
        "targets": {**target_source, "mismatched_rows": summary["mismatched_targets"],
                    "examples": summary["mismatched_examples"]},
        "table_problems": summary["problems"],
        "files": files,
        "data": data,
        "definition": "rho_r = |A'_r x_r - b'_r - t_r| / |b'_r| on the version's remaining ratings "
                      "(spark_unlearn.verify.reference), held to max(floor, own_residual_weight * |t_r| / |b'_r|)",
    }

"""Audit a deletion request against a model store: was it applied, where, how exactly, with what effect.

This is what ``jobs/audit.py`` runs.  For a deletion batch it answers:

* whether the current model reflects it (the request is in the current
  version's lineage) and in which version it was applied, or that it was
  applied in a version that is no longer current (rolled back), or never;
* the certificate recorded when it was applied, and the ledger entry;
* whether the data still holds it: the current data version must contain
  none of the batch's pairs, rows of its erased users or of its withdrawn
  items, and the current model no factor row of an erased user;
* per user (up to ``max_users``), the mean rank percentile of the deleted
  items in that user's list in the version before and the version after
  (an erased user has no row after: ``null``, ``"erased": true``);
* where the batch's data is still *retained*: every other version of the
  store that still has its tables (older versions of the lineage, rolled-back
  or orphaned ones) is checked the same way, and the report says how to
  purge them (``retained_in_other_versions``, ``purge_command``).

Checks are joins and counts in Spark; only per-user summaries are collected.
"""

from __future__ import annotations

import logging
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_unlearn.errors import StoreError
from spark_unlearn.store.ledger import BatchIdentity, batch_identity, find_applied, read_ledger
from spark_unlearn.store.model_store import ModelStore
from spark_unlearn.verify.certificate import still_present

log = logging.getLogger(__name__)


def run_audit(
    spark: SparkSession, store_path: str, batch: DataFrame, *, batch_id: str | None = None, max_users: int = 50,
    verify_files: bool = True,
) -> dict[str, Any]:
    """Audit ``batch`` (``DELETIONS_SCHEMA``) against the store at ``store_path``; returns a JSON-ready report.

    Parameters
    ----------
    batch_id
        Look the request up by this id as well as by content.
    max_users
        At most this many users get a per-user rank line (the first by id).
    verify_files
        Recompute the SHA-256 of every file of the versions involved.
    """
    store = ModelStore(store_path)
    if store.current() is None:
        raise StoreError(f"model store {store_path} has no current version: nothing to audit")
    identity = batch_identity(batch, batch_id)
    entries = read_ledger(store.root)
    current = store.current()
    report: dict[str, Any] = {"batch": identity.to_dict(), "current_version": current}
    applied = find_applied(store, identity)
    entry = _ledger_entry_for(entries, identity)
    if applied is None:
        report["applied"] = False
        if entry is not None:
            report["status"] = "rolled_back"
            report["note"] = (
                f"applied in {entry['version_after']} on {entry.get('applied_at')}, but the current version {current} "
                "does not descend from it: the current model does NOT reflect this request; re-submit it"
            )
            report["ledger_entry"] = entry
        else:
            report["status"] = "not_applied"
            report["note"] = "no version of this store applied a batch with this content"
        report["still_present"] = _still_present(spark, store, batch)
        _add_retention(spark, store, batch, report)
        return report

    version = applied["version"]
    manifest = store.read_manifest(version)
    parent = manifest.get("parent")
    if verify_files:
        for v in (version, parent, current):
            if v:
                store.verify(v)
    report.update(
        {
            "applied": True,
            "status": "applied",
            "version": version,
            "version_before": parent,
            "applied_at": applied.get("applied_at"),
            "method": applied.get("method"),
            "certificate": manifest.get("certificate"),
            "ledger_entry": entry,
            "files_verified": bool(verify_files),
        }
    )
    report["still_present"] = _still_present(spark, store, batch)
    try:
        report["users"] = _per_user_ranks(spark, store, batch, parent, version, max_users) if parent else []
    except StoreError as exc:
        if "purged" not in str(exc):
            raise
        report["users"] = []
        report["users_note"] = f"ranks before/after unavailable: {exc}"
    report["proof_holds"] = bool(
        (manifest.get("certificate") or {}).get("holds") and not any(report["still_present"].values())
    )
    _add_retention(spark, store, batch, report)
    return report


def _add_retention(spark: SparkSession, store: ModelStore, batch: DataFrame, report: dict[str, Any]) -> None:
    """``retained_in_other_versions``: the versions other than the current one that still hold the batch's data."""
    retained = []
    for name in store.versions():
        if name == report["current_version"] or store.read_manifest(name).get("purged"):
            continue
        found = _still_present(spark, store, batch, name)
        if any(found.values()):
            retained.append({"version": name, **{k: v for k, v in found.items() if v}})
    report["retained_in_other_versions"] = retained
    report["purged"] = not retained
    if retained:
        report["purge_command"] = f"spark-submit jobs/purge.py --model {store.root} --keep 1"
        report["purge_note"] = (
            f"{len(retained)} version(s) other than the current one still hold data of this batch "
            f"({', '.join(r['version'] for r in retained)}): the purge keeps the current version whole, deletes the "
            "tables of older versions of its lineage (their manifests and deleted ids stay for the ledger) and removes "
            "versions outside it"
        )


def _ledger_entry_for(entries: list[dict[str, Any]], identity: BatchIdentity) -> dict[str, Any] | None:
    found = [e for e in entries if e.get("content_hash") == identity.content_hash]
    return found[-1] if found else None


def _still_present(spark: SparkSession, store: ModelStore, batch: DataFrame, version: str | None = None) -> dict[str, int]:
    """What of the batch ``version`` (default: the current one) still holds (all zeros when forgotten)."""
    return still_present(store.load(spark, version, verify=False), batch)


def _per_user_ranks(spark: SparkSession, store: ModelStore, batch: DataFrame, before_v: str, after_v: str,
                    max_users: int) -> list[dict[str, Any]]:
    """Mean rank percentile of each user's deleted items, in the version before and the version after."""
    from spark_unlearn.eval.forgetting import rank_percentile

    before = store.load(spark, before_v, verify=False)
    after = store.load(spark, after_v, verify=False)
    if before.ratings is None:
        return []
    pairs = batch.filter(F.col("kind") == "interaction").select("user", "item")
    erased = batch.filter(F.col("kind") == "user").select("user")
    # What was deleted per user: the requested pairs that were in the data, and every pair of an erased user.
    deleted = (
        before.ratings.join(pairs, ["user", "item"], "left_semi")
        .unionByName(before.ratings.join(erased, ["user"], "left_semi"))
        .select("user", "item")
        .distinct()
    )
    chosen = deleted.select("user").distinct().orderBy("user").limit(max_users)
    deleted = deleted.join(chosen, ["user"], "left_semi").cache()
    b = rank_percentile(before.model.user_factors, before.model.item_factors, deleted, "before")
    a = rank_percentile(after.model.user_factors, after.model.item_factors, deleted, "after")
    erased_ids = {r[0] for r in erased.join(chosen, ["user"], "left_semi").collect()}
    rows = (
        b.join(a, ["user", "item"])
        .groupBy("user")
        .agg(
            F.count("*").alias("deleted_items"),
            F.avg(F.when(~F.isnan("before"), F.col("before"))).alias("before"),
            F.avg(F.when(~F.isnan("after"), F.col("after"))).alias("after"),
        )
        .orderBy("user")
        .collect()
    )
    deleted.unpersist()
    out = []
    for r in rows:
        erased_user = r["user"] in erased_ids
        out.append(
            {
                "user": r["user"],
                "deleted_items": r["deleted_items"],
                "erased": erased_user,
                "rank_percentile_before": None if r["before"] is None else round(float(r["before"]), 4),
                "rank_percentile_after": None if erased_user or r["after"] is None else round(float(r["after"]), 4),
            }
        )
    return out


"""The request ledger: which deletion batch was applied, when, and in which model version.

Unlearning is a compliance operation, so every applied batch leaves a record
and is applied exactly once.

Sources of truth
----------------
* **The version manifests.**  A version produced by a deletion batch records
  the request (``manifest["request"]``: batch id, content hash, time).  The
  manifest is written *before* the version becomes current, in the same
  atomic publish, so "is batch B applied to the current model?" is answered
  by walking the current version's lineage (``parent`` links).  No crash
  can make that answer wrong.
* **The ledger file** ``STORE/ledger.jsonl`` is the human- and
  machine-readable audit log: one JSON object per line, oldest first, never
  rewritten in place (each append replaces the file atomically with the old
  lines plus the new one).  Each entry carries the SHA-256 of the previous
  entry (``prev``), so an edited or deleted line is detected.
  The entry is appended right after ``CURRENT`` moves; a crash in between is
  repaired by :func:`reconcile`, which every job runs (under the store lock)
  before it does anything: entries missing for versions in the current
  lineage are rebuilt from their manifests and marked ``"recovered": true``.

Batch identity
--------------
A batch's **content hash** is the SHA-256 of its normalised content: the
distinct ``(kind, user, item)`` rows, sorted, one ``kind,user,item`` line each
(an absent id is empty).  The same requests in any order, with repeats or
extra columns, hash the same.  The **batch id** is given by the caller
(``--batch-id``, e.g. a ticket number) or defaults to ``sha256:<first 16 hex
digits of the hash>``.  Re-using a batch id with different content is an
error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_unlearn.errors import ConfigError, StoreError
from spark_unlearn.store.fsutil import atomic_write_text, read_text

log = logging.getLogger(__name__)

LEDGER_FILE = "ledger.jsonl"
REQUEST_KEY = "request"
"""Manifest key of a version produced by a deletion batch."""

_GENESIS = "0" * 64
# Entry fields cross-checked against the version manifests (the last line of a
# hash chain can be edited undetectably; the manifest is the anchor).
_CHECKED = ("batch_id", "content_hash", "version_before", "deleted_ratings", "rows_solved", "certificate")


@dataclass(frozen=True)
class BatchIdentity:
    """Who a deletion batch is: its id, the hash of its content and its size."""

    batch_id: str
    content_hash: str
    n_requests: int

    def to_dict(self) -> dict[str, Any]:
        return {"batch_id": self.batch_id, "content_hash": self.content_hash, "n_requests": self.n_requests}


def batch_identity(batch: DataFrame, batch_id: str | None = None, rows: list | None = None) -> BatchIdentity:
    """Hash a deletion batch (``DELETIONS_SCHEMA``) by its normalised content.

    The rows are sorted in Spark and streamed to the driver one partition at
    a time (``toLocalIterator``), so a large batch is never held whole.
    ``rows``: the batch already on the driver (``(user, item, kind)``
    tuples); the same hash, computed there without Spark.

    Parameters
    ----------
    batch
        Deletion requests (``user``, ``item``, ``kind``).
    batch_id
        Caller's id for the batch; ``None`` derives one from the hash.

    Raises
    ------
    ConfigError
        ``batch_id`` is empty or has characters outside ``[A-Za-z0-9._:-]``.
    """
    if batch_id is not None:
        _check_batch_id(batch_id)
    digest = hashlib.sha256()
    n = 0
    if rows is not None:
        # The same order as Spark's below: kind, then user and item with nulls first.
        ordered = sorted({(kind, user, item) for user, item, kind in rows},
                         key=lambda r: (r[0], r[1] is not None, r[1] or 0, r[2] is not None, r[2] or 0))
    else:
        ordered = batch.select("kind", "user", "item").distinct().orderBy(
            "kind", F.col("user").asc_nulls_first(), F.col("item").asc_nulls_first()).toLocalIterator()
    for kind, user, item in ordered:
        digest.update(f"{kind},{'' if user is None else user},{'' if item is None else item}\n".encode())
        n += 1
    content_hash = digest.hexdigest()
    return BatchIdentity(batch_id or f"sha256:{content_hash[:16]}", content_hash, n)


def _check_batch_id(batch_id: str) -> None:
    ok = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:-")
    if not batch_id or len(batch_id) > 200 or not set(batch_id) <= ok:
        raise ConfigError(
            f"batch id {batch_id!r} is not valid: use 1-200 characters from letters, digits and . _ : - "
            "(e.g. a ticket number such as GDPR-2026-0042)"
        )


def request_record(identity: BatchIdentity, **extra: Any) -> dict[str, Any]:
    """The ``manifest["request"]`` value for a version produced by ``identity``."""
    return {**identity.to_dict(), "applied_at": datetime.now(timezone.utc).isoformat(), **extra}


# ---------------------------------------------------------------------------
# The ledger file
# ---------------------------------------------------------------------------


def ledger_path(store_root: str) -> str:
    return os.path.join(store_root, LEDGER_FILE)


def _entry_hash(entry: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(entry, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_ledger(store_root: str) -> list[dict[str, Any]]:
    """Every ledger entry, oldest first, after checking the hash chain.

    Raises
    ------
    StoreError
        A line is not JSON, or the chain is broken (a line was edited,
        removed or reordered).
    """
    path = ledger_path(store_root)
    try:
        lines = read_text(path).splitlines()
    except FileNotFoundError:
        return []
    entries: list[dict[str, Any]] = []
    prev = _GENESIS
    for no, line in enumerate(lines, 1):
        try:
            entry = json.loads(line)
        except ValueError as exc:
            raise StoreError(f"{path} line {no} is not JSON ({exc}); the ledger was edited or damaged") from None
        if not isinstance(entry, dict) or entry.get("prev") != prev:
            raise StoreError(
                f"{path} line {no} does not chain to the line before it (prev hash mismatch): the ledger was edited, "
                "truncated or reordered. Restore it from a backup; the version manifests still hold every request"
            )
        prev = _entry_hash(entry)
        entries.append(entry)
    return entries


def append_entry(store_root: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Append ``entry`` (the caller holds the store lock); returns it with its ``prev`` link."""
    entries = read_ledger(store_root)
    entry = {**entry, "prev": _entry_hash(entries[-1]) if entries else _GENESIS}
    lines = [json.dumps(e, sort_keys=True, separators=(",", ":"), allow_nan=False) for e in entries + [entry]]
    atomic_write_text(ledger_path(store_root), "\n".join(lines) + "\n")
    log.info("ledger: batch %s applied in %s", entry.get("batch_id"), entry.get("version_after"))
    return entry


def ledger_entry(manifest: dict[str, Any], *, recovered: bool = False) -> dict[str, Any]:
    """The ledger entry of a version produced by a deletion batch, from its manifest."""
    req = manifest[REQUEST_KEY]
    unl = manifest.get("unlearning") or {}
    cert = manifest.get("certificate") or {}
    entry = {
        "batch_id": req["batch_id"],
        "content_hash": req["content_hash"],
        "n_requests": req.get("n_requests"),
        "applied_at": req.get("applied_at"),
        "method": req.get("method"),
        "version_before": manifest.get("parent"),
        "version_after": manifest["version"],
        "data_fingerprint_after": manifest.get("data_fingerprint"),
        "deleted_ratings": (unl.get("deletion") or {}).get("deleted_ratings"),
        "rows_solved": unl.get("rows_solved"),
        "certificate": cert.get("max_relative_residual"),
        "certificate_holds": cert.get("holds"),
        "tolerance": cert.get("tolerance"),
    }
    if req.get("members"):
        entry["members"] = req["members"]
    if recovered:
        entry["recovered"] = True
    return entry


# ---------------------------------------------------------------------------
# Lineage queries (the source of truth) and repair
# ---------------------------------------------------------------------------


def lineage(store) -> list[tuple[str, dict[str, Any]]]:
    """``(version, manifest)`` from the current version back to the first, following ``parent``."""
    out: list[tuple[str, dict[str, Any]]] = []
    name = store.current()
    seen: set[str] = set()
    while name is not None:
        if name in seen:
            raise StoreError(f"model store {store.root}: version lineage loops at {name}; the store is corrupt")
        seen.add(name)
        manifest = store.read_manifest(name)
        out.append((name, manifest))
        name = manifest.get("parent")
    return out


def find_applied(store, identity: BatchIdentity) -> dict[str, Any] | None:
    """The request record (with ``version``) if ``identity`` is applied to the current model, else ``None``.

    Raises
    ------
    ConfigError
        The batch id was already used for a batch with different content.
    """
    if store.current() is None:
        return None
    for version, manifest in lineage(store):
        req = manifest.get(REQUEST_KEY)
        if not req:
            continue
        if req.get("batch_id") == identity.batch_id and req.get("content_hash") != identity.content_hash:
            raise ConfigError(
                f"batch id {identity.batch_id!r} was already used in {version} for a batch with different content "
                f"(hash {str(req.get('content_hash'))[:16]}... vs {identity.content_hash[:16]}...); give this batch "
                "its own --batch-id"
            )
        if req.get("content_hash") == identity.content_hash:
            return {**req, "version": version}
    return None


def reconcile(store) -> list[dict[str, Any]]:
    """Append ledger entries missing for requests in the current lineage (after a crash); returns them.

    The caller holds the store lock.  Entries are appended oldest first.
    """
    if store.current() is None:
        return []
    entries = read_ledger(store.root)
    versions = dict(lineage(store))
    for entry in entries:
        manifest = versions.get(entry.get("version_after"))
        if manifest is None or not manifest.get(REQUEST_KEY):
            continue
        expected = ledger_entry(manifest)
        differ = sorted(k for k in _CHECKED if entry.get(k) != expected.get(k))
        if differ:
            raise StoreError(
                f"{ledger_path(store.root)}: the entry of {entry.get('version_after')} disagrees with that version's manifest "
                f"in {differ}; the ledger was edited. Restore it from a backup (the manifests hold every request)"
            )
    have = {e.get("version_after") for e in entries}
    missing = [m for v, m in reversed(lineage(store)) if m.get(REQUEST_KEY) and v not in have]
    added = []
    for manifest in missing:
        log.warning("ledger: entry for %s missing (interrupted publish); recovering it from the manifest", manifest["version"])
        added.append(append_entry(store.root, ledger_entry(manifest, recovered=True)))
    return added

"""What a request hands to the store besides its new tables, computed on the driver when the request is small.

* :func:`driver_rows`: the deletion batch's rows, collected once (at most
  ``BLOCKED_MAX_REQUESTS``);
* :func:`table_deltas`: the engine's exact row changes as the store's
  per-table deltas (copy-on-write of the touched blocks);
* :func:`applied_requests` / :func:`applied_requests_local`: the requests
  that removed something (the version's ``forgotten`` ids), in Spark or
  from the driver's rows;
* :func:`derived_fingerprint`: the new data version's fingerprint from the
  parent's state minus the removed rows (no scan);
* :func:`request_io`: what the request read and wrote, from the new manifest.
"""

from __future__ import annotations

from typing import Any

from pyspark.sql import DataFrame

from spark_unlearn.store.block_reader import FILE_CACHE


def table_deltas(changes: dict[str, Any]) -> dict[str, Any]:
    """The store's per-table deltas (:class:`~spark_unlearn.store.blocked.TableDelta`) of a strategy's row changes
    (:class:`~spark_unlearn.als.result.RowChanges` per side); a side whose offsets changed beyond them has no
    offsets delta (that table is written in full)."""
    from spark_unlearn.store.blocked import TableDelta
    from spark_unlearn.store.spark_layout import ITEM_FACTORS, USER_FACTORS
    from spark_unlearn.store.tables import ITEM_OFFSETS, USER_OFFSETS

    out = {}
    for side, factors, offsets in (("user", USER_FACTORS, USER_OFFSETS), ("item", ITEM_FACTORS, ITEM_OFFSETS)):
        c = changes[side]
        out[factors] = TableDelta(removed=c.removed, updates=((c.factor_ids, {"features": c.factors}),))
        if c.offset_ids is not None:
            out[offsets] = TableDelta(removed=c.removed, updates=(
                (c.offset_ids, {"bnorm": c.bnorm, "drift": c.drift}), (c.target_ids, {"residual": c.targets})))
    return out


def applied_requests(batch: DataFrame, deleted: DataFrame) -> DataFrame:
    """The requests of ``batch`` that removed something (``user``, ``item``, ``kind``): what the ledger remembers."""
    from pyspark.sql import functions as F

    pairs = batch.filter(F.col("kind") == "interaction").join(deleted.select("user", "item"), ["user", "item"], "left_semi")
    users = batch.filter(F.col("kind") == "user").join(deleted.select("user").distinct(), ["user"], "left_semi")
    items = batch.filter(F.col("kind") == "item").join(deleted.select("item").distinct(), ["item"], "left_semi")
    return pairs.select("user", "item", "kind").unionByName(users.select("user", "item", "kind")).unionByName(
        items.select("user", "item", "kind")
    )


def request_io(published: dict, read_before: int) -> dict[str, Any]:
    """Bytes the request read from block files on the driver and the publication read and wrote (its copy-on-write
    of touched blocks), from the new version's manifest; tables Spark wrote in full are counted as written.

    Spark's own reads (the layout engine, full writes) are not counted in ``bytes_read``.
    """
    io = (published.get("blocks") or {}).get("io") or {}
    return {"bytes_read": FILE_CACHE.bytes_read - read_before + sum(int(v.get("bytes_read", 0)) for v in io.values()),
            "bytes_written": sum(int(v.get("bytes_written", 0)) for v in io.values()),
            "files_linked": sum(int(v.get("files_linked", 0)) for v in io.values()),
            "files_written": sum(int(v.get("files_written", 0)) for v in io.values())}


def derived_fingerprint(manifest: dict, deleted) -> dict[str, Any]:
    """The manifest keys of the data fingerprint of the parent's ratings minus ``deleted`` (Arrow: ``user``,
    ``item``, ``rating``; the rows the request removed), derived on the driver from the parent's fingerprint
    state; ``{}`` (the store scans the written table) when either is unknown."""
    from spark_unlearn.store.fingerprint import FINGERPRINT_STATE, fingerprint_without

    state = manifest.get(FINGERPRINT_STATE)
    if not state or deleted is None:
        return {}
    fp, new_state = fingerprint_without(state, deleted.column("user").to_numpy(), deleted.column("item").to_numpy(),
                                        deleted.column("rating").to_numpy())
    return {"data_fingerprint": fp, FINGERPRINT_STATE: new_state}


def driver_rows(batch: DataFrame) -> list[tuple] | None:
    """The batch's ``(user, item, kind)`` rows on the driver if it holds at most ``BLOCKED_MAX_REQUESTS`` (the most
    any engine takes on the driver), else ``None`` (one job, stopped after that many rows)."""
    from spark_unlearn.als.unlearn import BLOCKED_MAX_REQUESTS

    got = batch.select("user", "item", "kind").limit(BLOCKED_MAX_REQUESTS + 1).collect()
    return [(r[0], r[1], r[2]) for r in got] if len(got) <= BLOCKED_MAX_REQUESTS else None


def applied_requests_local(rows: list[tuple], deleted) -> Any:
    """:func:`applied_requests` on the driver: the ``rows`` that removed a rating of ``deleted`` (Arrow: ``user``,
    ``item``), as an Arrow table (``user``, ``item``, ``kind``)."""
    import numpy as np
    import pyarrow as pa

    du = deleted.column("user").to_numpy().astype(np.int64)
    di = deleted.column("item").to_numpy().astype(np.int64)
    pairs, users, items = set(zip(du.tolist(), di.tolist())), set(du.tolist()), set(di.tolist())
    kept = [(u, i, k) for u, i, k in rows
            if (k == "interaction" and (u, i) in pairs) or (k == "user" and u in users) or (k == "item" and i in items)]
    return pa.table({"user": pa.array([r[0] for r in kept], pa.int32()), "item": pa.array([r[1] for r in kept], pa.int32()),
                     "kind": pa.array([r[2] for r in kept], pa.string())})


__all__ = ["applied_requests", "applied_requests_local", "derived_fingerprint", "driver_rows", "request_io", "table_deltas"]

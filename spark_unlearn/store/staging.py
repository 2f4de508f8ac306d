"""Writing a complete version into a staging directory, before it is committed.

:meth:`spark_unlearn.store.model_store.ModelStore.publish` first writes the
new version under ``.staging/<uuid>/``: the Spark ``ALSModel`` metadata and
factor tables (validated by scanning what was written), the optional
offsets, ratings, holdout and forgotten tables, and the checksum of every
file.  :func:`canonical_inputs` casts the inputs to the shared schemas;
:func:`stage_version` writes them and returns the manifest body;
the store then takes its lock, names the version, writes the manifest and
renames the directory into ``versions/`` (the commit).  Nothing here touches
``CURRENT`` or ``versions/``.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any

from pyspark.sql import DataFrame, SparkSession

from spark_unlearn.als.model import FactorModel
from spark_unlearn.als.params import ALSParams
from spark_unlearn.deferred import Deferred, force
from spark_unlearn.errors import SchemaError
from spark_unlearn.faults import failpoint
from spark_unlearn.schema import FACTORS_SCHEMA, ITEM, OFFSETS_SCHEMA, RATINGS_SCHEMA, USER, with_drift
from spark_unlearn.store import ledger, tables
from spark_unlearn.store.derived import DerivedTable
from spark_unlearn.store.fingerprint import FINGERPRINT_STATE, fingerprint_state, state_count
from spark_unlearn.store.fsutil import file_uri, list_files
from spark_unlearn.store.manifest import CONVENTIONS, FORMAT_VERSION, checksum_written
from spark_unlearn.store.spark_layout import (
    ITEM_FACTORS,
    METADATA_DIR,
    USER_FACTORS,
    spark_als_metadata,
    write_spark_metadata,
)
from spark_unlearn.store.blocked import BLOCKS_KEY, TableDelta
from spark_unlearn.store.side_tables import ParentLayout, write_data_tables, write_factor_tables, write_offsets_tables
from spark_unlearn.store.tables import FORGOTTEN_DIR, HOLDOUT_DIR, ITEM_OFFSETS, RATINGS_DIR, USER_OFFSETS, canon_to_schema


def canonical_inputs(model: FactorModel, offsets: tuple[DataFrame, DataFrame] | None, ratings, holdout,
                     forgotten: DataFrame | None) -> tuple:
    """``(user_f, item_f, offs, rats, hold, gone)``: ``ModelStore.publish``'s inputs cast to the shared schemas.

    Factors to ``FACTORS_SCHEMA``, offsets to ``OFFSETS_SCHEMA`` (with their
    drift column), ratings and holdout to ``RATINGS_SCHEMA`` (a
    :class:`~spark_unlearn.store.derived.DerivedTable` is kept as it is), and
    forgotten to its ``user``, ``item``, ``kind`` columns; ``None`` stays ``None``.

    Raises
    ------
    SchemaError
        A column is missing or of the wrong type, or ``offsets`` is not a pair.
    """
    # Deferred: a table published copy-on-write from its delta never builds its DataFrame (see deferred).
    raw = model.__dict__
    user_f = Deferred(lambda: canon_to_schema(force(raw["user_factors"]), FACTORS_SCHEMA, "user_factors"))
    item_f = Deferred(lambda: canon_to_schema(force(raw["item_factors"]), FACTORS_SCHEMA, "item_factors"))
    offs = None
    if offsets is not None:
        if not (isinstance(offsets, tuple) and len(offsets) == 2):
            raise SchemaError("offsets must be a tuple (user_offsets, item_offsets) of DataFrames")
        offs = (
            Deferred(lambda: canon_to_schema(with_drift(force(offsets[0])), OFFSETS_SCHEMA, "user offsets")),
            Deferred(lambda: canon_to_schema(with_drift(force(offsets[1])), OFFSETS_SCHEMA, "item offsets")),
        )
    rats, hold = (
        t if t is None or isinstance(t, DerivedTable) else canon_to_schema(t, RATINGS_SCHEMA, what)
        for t, what in ((ratings, "ratings"), (holdout, "holdout"))
    )
    gone = forgotten
    if forgotten is not None and isinstance(forgotten, DataFrame):
        gone = forgotten.select(USER, ITEM, "kind")  # else an Arrow table of those columns, already on the driver
    return user_f, item_f, offs, rats, hold, gone


def stage_version(
    staging: str,
    spark: SparkSession,
    params: ALSParams,
    model_params: dict[str, Any] | None,
    user_f: DataFrame,
    item_f: DataFrame,
    offs: tuple[DataFrame, DataFrame] | None,
    rats,
    hold,
    gone: DataFrame | None,
    extra: dict[str, Any],
    parent: str | None,
    request: dict | None,
    layout: ParentLayout | None = None,
    deltas: dict[str, TableDelta] | None = None,
) -> dict[str, Any]:
    """Write a version's files into the existing directory ``staging``; return its manifest body.

    The inputs are already cast to the shared schemas (``rats`` and ``hold``
    may be :class:`~spark_unlearn.store.derived.DerivedTable`\\ s).
    ``layout``: the parent's blocks, if it is in this store and blocked;
    ``deltas``: per table (``userFactors``, ``offsets/users``, ...), what
    the request changed in it, for copy-on-write (:mod:`spark_unlearn.store.side_tables`).  ``extra``
    holds the caller's manifest keys (its ``data_fingerprint``, if any, is
    taken out of it).  The body's ``"version"`` is left ``None``: the version
    is named under the store lock.  The tables are written through
    :mod:`spark_unlearn.store.tables`' module-level functions, so tests can
    inject failures there.
    """
    write_spark_metadata(
        os.path.join(staging, METADATA_DIR),
        spark_als_metadata(params, spark_version=spark.version, model_params=model_params),
    )
    # Factor and offsets tables are blocked; where the parent is blocked and the caller knows a table's delta, only
    # the files of touched blocks are written (side_tables).  Factors are validated from what was written.
    written = write_factor_tables(spark, staging, {USER_FACTORS: user_f, ITEM_FACTORS: item_f}, params.rank, layout,
                                  deltas)
    counts: dict[str, int] = {"n_users": written.counts["user"], "n_items": written.counts["item"]}
    failpoint("after_factors_written")
    if offs is not None:
        write_offsets_tables(spark, staging, {USER_OFFSETS: offs[0], ITEM_OFFSETS: offs[1]}, written, layout, deltas)
    fingerprint = extra.pop("data_fingerprint", None)
    fp_state = extra.pop(FINGERPRINT_STATE, None)
    # Ratings and holdout are blocked by user; a deletion filters the parent's touched blocks (side_tables).
    data = {rel: t for rel, t in ((RATINGS_DIR, rats), (HOLDOUT_DIR, hold)) if t is not None}
    linked: dict[str, dict[str, int]] = write_data_tables(spark, staging, data, written, layout)
    if rats is not None and (fingerprint is None or fp_state is None):
        written_fp, fp_state = fingerprint_state(spark.read.parquet(file_uri(os.path.join(staging, RATINGS_DIR))))
        if fingerprint is None:
            fingerprint = written_fp
    if rats is not None:
        # Given with its state, the caller derived it from the parent's (a deletion's removed rows, on the driver).
        counts["n_ratings"] = state_count(fp_state)
    if isinstance(gone, DataFrame):
        tables.write_parquet(gone.coalesce(1), os.path.join(staging, FORGOTTEN_DIR))
    elif gone is not None:
        tables.write_local_parquet(gone, os.path.join(staging, FORGOTTEN_DIR))
    failpoint("after_ratings_written")

    # Files linked from the parent keep the checksums it recorded (same bytes, already durable).
    files = {rel: written.checksums.get(rel) or checksum_written(os.path.join(staging, rel))
             for rel in list_files(staging)}
    body: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "version": None,  # set under the lock
        "parent": parent,
        "created_at": datetime.now(timezone.utc).isoformat(),
        "params": params.to_dict(),
        "rank": params.rank,
        "conventions": dict(CONVENTIONS),
        "counts": counts,
        "data_fingerprint": fingerprint,
        **({FINGERPRINT_STATE: fp_state} if rats is not None else {}),
        "contents": {
            "offsets": offs is not None,
            "ratings": rats is not None,
            "holdout": hold is not None,
            "forgotten": gone is not None,
        },
        "spark_version": spark.version,
    }
    if linked:
        body["copy_on_write"] = linked
    body[BLOCKS_KEY] = {**written.blocks, "io": written.io}
    body.update(extra)
    if request is not None:
        body[ledger.REQUEST_KEY] = request
    body["files"] = files
    return body


__all__ = ["canonical_inputs", "stage_version"]

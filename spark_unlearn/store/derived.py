"""Copy-on-write data versions: a parent's ratings minus a deletion batch, rewriting only the files it touches.

A deletion batch of a few interactions touches a handful of the parent
version's Parquet part files.  Rewriting the whole table for it costs a full
read and write of the ratings (seconds at 5M ratings, minutes at 500M).
Instead, the files holding no deleted row are hard-linked into the new
version (same bytes, no copy; a copy where the filesystem cannot link) and
only the touched files are read, filtered and written again.

Hard links share the file: the two versions' checksums cover the same
bytes, so tampering with one is seen by both when verified, and purging the
parent leaves the child's link intact.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_unlearn.store.fsutil import file_uri, files_for, link_part_file, path_key, write_text_durable

log = logging.getLogger(__name__)

_FILE = "_spark_unlearn_file"


@dataclass(frozen=True)
class DerivedTable:
    """A table to publish as ``parent_dir``'s Parquet files minus the rows a deletion batch names.

    ``batch``: the requests (``user``, ``item``, ``kind``) as read by
    :func:`spark_unlearn.data.deletions.read_deletions`; a row goes if its
    pair, its user (``kind = user``) or its item (``kind = item``) is named
    (:func:`spark_unlearn.als.plan.remove_batch`).
    """

    parent_dir: str
    batch: DataFrame
    rows: tuple | None = None  # the batch's (user, item, kind) rows, when the caller holds them on the driver


def touched_files(spark: SparkSession, parent_dirs: list[str], batch: DataFrame) -> dict[str, set[str]]:
    """The names of the part files of each of ``parent_dirs`` that hold a row ``batch`` names (one scan of all).

    Returns ``parent_dir -> file names``; the directories must hold tables
    with ``user`` and ``item`` columns (a version's ratings and holdout).
    """
    from spark_unlearn.als.plan import batch_requests

    table = spark.read.parquet(*[file_uri(d) for d in parent_dirs]).select("user", "item").withColumn(_FILE, F.input_file_name())
    pairs, users, items = batch_requests(batch)
    hit = (
        table.join(pairs, ["user", "item"], "left_semi").select(_FILE)
        .unionByName(table.join(users, ["user"], "left_semi").select(_FILE))
        .unionByName(table.join(items, ["item"], "left_semi").select(_FILE))
        .distinct()
    )
    # Spark spells a file file:/x, the caller /x or file:///x: compared as path_key.
    paths = {path_key(r[0]) for r in hit.collect()}
    keys = {d: path_key(d) for d in parent_dirs}
    out = {d: {os.path.basename(p) for p in paths if os.path.dirname(p) == keys[d]} for d in parent_dirs}
    stray = {p for p in paths if os.path.dirname(p) not in keys.values()}
    if stray:
        raise RuntimeError(f"rows of {parent_dirs} were read from files outside them: {sorted(stray)[:3]}")
    return out


def write_derived(spark: SparkSession, table: DerivedTable, out_dir: str, touched: set[str] | None = None) -> dict[str, int]:
    """Write ``table`` to ``out_dir`` (must not exist): untouched part files linked, touched ones rewritten.

    Returns ``{"linked": n, "rewritten": n}`` (part files).  Only data files
    (``part-*``) and their ``.crc`` side files are carried over; the rewrite
    writes its own.  ``touched``: the parent's part files holding a deleted
    row, when :func:`touched_files` already found them (with other tables').
    """
    from spark_unlearn.als.plan import remove_batch

    parent = table.parent_dir
    files = files_for(out_dir)
    if not files.isdir(parent):
        raise FileNotFoundError(f"parent data directory {parent} does not exist")
    hit = touched_files(spark, [parent], table.batch)[parent] if touched is None else touched
    files.mkdir(out_dir)
    parts = sorted(n for n in files.listdir(parent) if n.startswith("part-"))
    linked = 0
    for name in parts:
        if name in hit:
            continue
        link_part_file(parent, out_dir, name)
        linked += 1
    rewritten = sorted(hit)
    if rewritten:
        tmp = os.path.join(out_dir, "_rewrite")
        source = spark.read.parquet(*[file_uri(os.path.join(parent, n)) for n in rewritten])
        # remove_batch's joins move the key columns first: keep the parent's column order in every file.
        kept = remove_batch(source, table.batch).select(*source.columns)
        kept.write.mode("error").parquet(file_uri(tmp))
        for name in files.listdir(tmp):
            if name.startswith("part-") or (name.startswith(".part-") and name.endswith(".crc")):
                files.rename(os.path.join(tmp, name), os.path.join(out_dir, name))
        files.rmtree(tmp)
    write_text_durable(os.path.join(out_dir, "_SUCCESS"), "")
    log.info("data version from %s: %d part files linked, %d rewritten without the batch's rows", parent, linked, len(rewritten))
    return {"linked": linked, "rewritten": len(rewritten)}

"""A small, plain deletion batch read on the driver, without Spark: the fast path of a one-user request.

:func:`spark_unlearn.data.deletions.read_deletions` defines what a deletion
batch means, and validates it in Spark: a second of planning and jobs, which
is most of a one-user request.  This module reads, on the driver, only the
files whose meaning is beyond doubt, and gives up (``None``) on anything
else, which then goes to the Spark reader and gets its error message there:

* a local file of at most :data:`MAX_BYTES`;
* CSV: printable ASCII, ``,``-separated, no quotes, tabs or carriage
  returns, a header, no blank line inside, every line with the header's
  number of fields, every id empty or a plain integer (``+`` and spaces
  around allowed) in ``[0, 2^31-1]``, no row without both ids;
* Parquet: integer id columns, values in that range, no row without both ids.

On those files the result is what the Spark reader returns: the same
``(user, item, kind)`` rows, repeated rows dropped.  The column mapping
(``columns=``) is the same function, with the same errors.
"""

from __future__ import annotations

import os
import re
from urllib.parse import unquote, urlparse

from spark_unlearn.data.deletions import (
    DELETIONS_SCHEMA,
    KIND_INTERACTION,
    KIND_ITEM,
    KIND_USER,
    column_mapping,
    read_deletions,
)
from spark_unlearn.data.readers import split_header, strip_compression
from spark_unlearn.data.validate import INT32_MAX
from spark_unlearn.schema import ITEM, USER

MAX_BYTES = 1 << 20
"""Larger batches are read by Spark."""

_PLAIN_ID = re.compile(r"\+?[0-9]+")
_PRINTABLE = re.compile(r"[\x20-\x7e\n]*")


def _local_file(path: str) -> str | None:
    parsed = urlparse(path)
    if parsed.scheme not in ("", "file"):
        return None
    local = unquote(parsed.path) if parsed.scheme == "file" else path
    return local if os.path.isfile(local) and os.path.getsize(local) <= MAX_BYTES else None


def read_plain_deletions(path: str, format: str = "auto",
                         columns: dict[str, str | None] | None = None) -> list[tuple] | None:
    """The ``(user, item, kind)`` rows of a small plain batch file, or ``None`` (read it with Spark).

    Raises what :func:`~spark_unlearn.data.deletions.read_deletions` raises
    for a column mapping that does not fit the file's header.
    """
    local = _local_file(path)
    if local is None:
        return None
    name = strip_compression(os.path.basename(local))
    if name != os.path.basename(local):
        return None  # compressed
    fmt = format if format != "auto" else ("csv" if name.endswith(".csv") else "parquet" if name.endswith(".parquet")
                                           else None)
    readers = {"csv": _csv_ids, "parquet": _parquet_ids}
    ids = readers[fmt](local, path, columns) if fmt in readers else None
    return None if ids is None else _requests(ids)


def read_deletion_rows(spark, path: str, format: str = "auto", columns: dict[str, str | None] | None = None):
    """``(batch, rows)``: the batch as :func:`~spark_unlearn.data.deletions.read_deletions` returns it, and its
    rows on the driver when the file is small and plain (then read without a Spark job), else ``None``."""
    rows = read_plain_deletions(path, format, columns)
    if rows is None:
        return read_deletions(spark, path, format=format, columns=columns), None
    return spark.createDataFrame(rows, DELETIONS_SCHEMA), rows


def _csv_ids(local: str, shown: str, columns) -> list[tuple] | None:
    """The ``(user, item)`` ids of each row (``None`` where empty), or ``None`` when the file is not plain."""
    with open(local, "rb") as fh:
        raw = fh.read()
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        return None
    if not _PRINTABLE.fullmatch(text) or '"' in text:
        return None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines or not lines[0].strip(" "):
        return None
    header = split_header(lines[0], ",")
    if len(set(header)) != len(header):
        return None
    mapping = column_mapping(columns, header, shown, str(header))
    pos = {ours: header.index(theirs) for ours, theirs in mapping.items() if theirs is not None}
    out = []
    for line in lines[1:]:
        fields = line.split(",")
        if len(fields) != len(header):
            return None  # a blank line or the wrong number of fields
        ids = {}
        for ours in (USER, ITEM):
            if ours not in pos:
                ids[ours] = None
                continue
            s = fields[pos[ours]].strip(" ")
            if s == "":
                ids[ours] = None
            elif _PLAIN_ID.fullmatch(s) and int(s) <= INT32_MAX:
                ids[ours] = int(s)
            else:
                return None
        out.append((ids[USER], ids[ITEM]))
    return out


def _parquet_ids(local: str, shown: str, columns) -> list[tuple] | None:
    """As :func:`_csv_ids`, for a Parquet file with integer id columns."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(local)
    except (pa.ArrowException, OSError):
        return None
    names = table.column_names
    if len(set(names)) != len(names):
        return None
    try:
        mapping = column_mapping(columns, names, shown, str(names))
    except Exception:  # noqa: BLE001 - the Spark reader words this error (with the file's column types)
        return None
    values = {}
    for ours in (USER, ITEM):
        theirs = mapping[ours]
        if theirs is None:
            values[ours] = [None] * table.num_rows
            continue
        col = table.column(theirs)
        if not pa.types.is_integer(col.type):
            return None
        got = col.to_pylist()
        if any(v is not None and not 0 <= v <= INT32_MAX for v in got):
            return None
        values[ours] = got
    return list(zip(values[USER], values[ITEM]))


def _requests(ids: list[tuple]) -> list[tuple] | None:
    """The distinct ``(user, item, kind)`` requests of ``(user, item)`` ids; ``None`` if a row has neither id
    (Spark's reader words that error)."""
    kinds = {(True, True): KIND_INTERACTION, (True, False): KIND_USER, (False, True): KIND_ITEM}
    if any(u is None and i is None for u, i in ids):
        return None
    return sorted({(u, i, kinds[u is not None, i is not None]) for u, i in ids}, key=str)


__all__ = ["MAX_BYTES", "read_deletion_rows", "read_plain_deletions"]

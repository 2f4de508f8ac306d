"""How the driver writes the store's Parquet files with pyarrow: encodings chosen per column type.

Measured on a 5M-rating store's files (rank 32; docs/BENCHMARKS.md, "The
resident service"): pyarrow's default dictionary-encodes every column, which
for factor lists (``list<float>``, nearly all values distinct) costs 6x the
write time of plain encoding and makes the file 40 % *larger* (a 12,270-row
item-factor file: 49 ms and 2.2 MB against 8 ms and 1.6 MB).  Sorted integer
ids compress best as ``DELTA_BINARY_PACKED``; a ``rating`` column has few
distinct values, so it keeps its dictionary (a 3.3M-rating file: 113 ms and
5.6 MB, against 215 ms and 9.0 MB by default, and Spark's own 8.5 MB).  Spark
reads every one of these encodings (``ALSModel.load`` included).
"""

from __future__ import annotations

DICTIONARY_COLUMNS = ("rating",)
"""Columns with few distinct values, where a dictionary pays."""


def write_options(schema) -> dict:
    """``pyarrow.parquet.write_table`` keyword arguments for a table of ``schema`` (see the module docstring)."""
    import pyarrow as pa

    ints = [f.name for f in schema if pa.types.is_integer(f.type) and f.name not in DICTIONARY_COLUMNS]
    return {"compression": "snappy", "use_dictionary": [c for c in DICTIONARY_COLUMNS if c in schema.names],
            "column_encoding": {c: "DELTA_BINARY_PACKED" for c in ints}}


def write_arrow_file(table, path: str) -> None:
    """Write the Arrow ``table`` as one Parquet file at ``path`` with :func:`write_options`."""
    from spark_unlearn.store.fsutil import write_parquet

    write_parquet(table, path, **write_options(table.schema))

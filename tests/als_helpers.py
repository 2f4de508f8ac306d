"""Small helpers shared by ALS tests: load the embedded sample, factor tables <-> numpy."""

from __future__ import annotations

import numpy as np
from pyspark.sql import functions as F

from spark_unlearn.data.embedded import sample_movielens_path


def load_sample(spark):
    """The embedded sample as canonical ratings, parsed without the data layer (tests stay independent)."""
    parts = F.split("value", "::")
    return spark.read.text(sample_movielens_path()).select(
        parts[0].cast("int").alias("user"), parts[1].cast("int").alias("item"), parts[2].cast("float").alias("rating")
    )


def factors_dict(df) -> dict[int, np.ndarray]:
    """Small factor table -> {id: vector}; tests only (tiny tables)."""
    return {int(r["id"]): np.asarray(r["features"], dtype=np.float64) for r in df.collect()}


def blocks_dict(rdd) -> dict[int, np.ndarray]:
    out = {}
    for _, (ids, F_) in rdd.collect():
        out.update({int(i): np.asarray(f, dtype=np.float64) for i, f in zip(ids, F_)})
    return out


def csr_from_pairs(rows, cols, vals, row_ids, col_index):
    order = np.lexsort((cols, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    indptr = np.searchsorted(rows, np.append(row_ids, row_ids.max() + 1))
    return indptr, np.array([col_index[c] for c in cols]), vals.astype(np.float32)

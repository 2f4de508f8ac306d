"""Spark passes over a version's factor and offsets tables (rows, never ratings).

Each pass is one ``mapInArrow`` over a table of one row per user or item:
the Gram ``F^T F`` of a factor table, and the implicit-mode drift
``|d + ΔG x|`` every row would have once the other side's Gram moves by
``ΔG`` (DESIGN §2).  The per-batch arithmetic is plain numpy.
"""

from __future__ import annotations

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_unlearn.schema import with_drift
from spark_unlearn.worker_heap import freeze_worker_heap


def arrow_matrix(batch, column: str) -> np.ndarray:
    """A list column of an Arrow record batch as an ``(n, k)`` float64 matrix."""
    n = batch.num_rows
    return batch.column(column).flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(n, -1)





def arrow_column(values: np.ndarray, sql_type: str, valid: np.ndarray | None = None):
    """An Arrow column of ``values`` (``(n,)`` or ``(n, k)``); rows where ``valid`` is False are null."""
    import pyarrow as pa

    mask = None if valid is None else pa.array(~np.asarray(valid, bool))
    if values.ndim == 2:
        elem = pa.float32() if "float" in sql_type else pa.float64()
        flat = pa.array(np.ascontiguousarray(values).reshape(-1).astype(elem.to_pandas_dtype()), elem)
        return pa.FixedSizeListArray.from_arrays(flat, values.shape[1], mask=mask).cast(pa.list_(elem))
    return pa.array(np.asarray(values, np.float64), pa.float64(), mask=mask)


def gram_of(factors: DataFrame) -> np.ndarray:
    """``F^T F`` of a factor DataFrame (distributed; returns k x k)."""
    def part(batches):
        freeze_worker_heap()
        import pyarrow as pa

        for batch in batches:
            col = batch.column("features")
            n = len(col)
            if n == 0:
                continue
            X = col.flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(n, -1)
            G = X.T @ X
            yield pa.RecordBatch.from_arrays([pa.array([G.reshape(-1).tobytes()], pa.binary())], names=["g"])

    parts = factors.select("features").mapInArrow(part, "g binary").collect()
    if not parts:
        return np.zeros((0, 0))
    mats = [np.frombuffer(r[0], dtype=np.float64) for r in parts]
    k = int(round(np.sqrt(mats[0].size)))
    return sum(m.reshape(k, k) for m in mats)


def with_offsets(factors: DataFrame, offsets: DataFrame) -> DataFrame:
    """A factor table joined with its offsets: ``id``, ``features``, ``residual``, ``bnorm``, ``drift``."""
    return factors.select("id", "features").join(with_drift(offsets).select("id", "residual", "bnorm", "drift"), "id")


def vector_norm(column: str):
    """The Euclidean norm of an array column, in double precision (a Spark column expression)."""
    return F.sqrt(F.aggregate(column, F.lit(0.0), lambda acc, x: acc + x.cast("double") * x.cast("double")))


def gram_moved(factors: DataFrame, offsets: DataFrame, delta_gram: np.ndarray) -> DataFrame:
    """``id``, ``moved = |d + delta_gram x|``, ``bnorm`` and ``xnorm = |x|`` for every row (one pass over the
    factor and offsets tables).

    ``d`` is the row's stored drift: the residual it will have once the other
    side's Gram has moved by ``delta_gram``, if the row is not re-solved.
    """
    dg = np.asarray(delta_gram, dtype=np.float64)

    def part(batches):
        freeze_worker_heap()
        import pyarrow as pa

        for batch in batches:
            if batch.num_rows == 0:
                continue
            X = arrow_matrix(batch, "features")
            moved = np.linalg.norm(arrow_matrix(batch, "drift") + X @ dg.T, axis=1)
            yield pa.RecordBatch.from_arrays([batch.column("id"), pa.array(moved), batch.column("bnorm"),
                                              pa.array(np.linalg.norm(X, axis=1))], names=["id", "moved", "bnorm", "xnorm"])

    return with_offsets(factors, offsets).mapInArrow(part, "id int, moved double, bnorm double, xnorm double")

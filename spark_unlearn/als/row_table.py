"""Rows keyed by id in sorted numpy arrays: the driver's bookkeeping without one Python object per row.

A deletion next to a popular item touches tens of thousands of rows on the
other side (every rater of the item drifts).  Keeping them in dicts of small
vectors made the driver's per-row Python work the largest cost of a request
on 5M ratings; here every operation is a handful of vectorised numpy calls
(``searchsorted`` lookups, one merge per batch of new ids).
"""

from __future__ import annotations

from typing import Any

import numpy as np


class RowTable:
    """Columns of per-row values for a growing set of int64 ids, kept sorted by id.

    Parameters
    ----------
    columns
        ``name -> (dtype, width, fill)``: width ``None`` for a scalar column
        (shape ``(n,)``), an int for a vector column (``(n, width)``); new rows
        start at ``fill``.
    """

    def __init__(self, columns: dict[str, tuple[Any, int | None, Any]]):
        self.spec = dict(columns)
        self.ids = np.zeros(0, np.int64)
        self.cols: dict[str, np.ndarray] = {
            name: np.zeros((0,) if width is None else (0, width), dtype) for name, (dtype, width, _) in self.spec.items()
        }

    def __len__(self) -> int:
        return int(self.ids.size)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.cols[name]

    def positions(self, ids) -> np.ndarray:
        """Index of each of ``ids`` in the table, ``-1`` where absent."""
        ids = np.asarray(ids, np.int64)
        if self.ids.size == 0 or ids.size == 0:
            return np.full(ids.shape, -1, np.int64)
        pos = np.minimum(np.searchsorted(self.ids, ids), self.ids.size - 1)
        return np.where(self.ids[pos] == ids, pos, -1)

    def contains(self, ids) -> np.ndarray:
        return self.positions(ids) >= 0

    def ensure(self, ids) -> np.ndarray:
        """Positions of ``ids`` after adding the absent ones at their fill values (``ids`` may repeat)."""
        ids = np.asarray(ids, np.int64)
        new = np.unique(ids[self.positions(ids) < 0])
        if new.size:
            merged = np.concatenate([self.ids, new])
            order = np.argsort(merged, kind="stable")
            self.ids = merged[order]
            for name, (dtype, width, fill) in self.spec.items():
                shape = (new.size,) if width is None else (new.size, width)
                self.cols[name] = np.concatenate([self.cols[name], np.full(shape, fill, dtype)])[order]
        return self.positions(ids)

    def put(self, ids, **values) -> np.ndarray:
        """Set ``values`` (name -> array in the order of ``ids``) for ``ids`` (unique), adding absent rows; positions."""
        pos = self.ensure(ids)
        for name, v in values.items():
            self.cols[name][pos] = v
        return pos

    def take(self, name: str, ids) -> np.ndarray:
        """``name`` for ``ids``; every id must be present (``KeyError`` naming the first absent one)."""
        pos = self.positions(ids)
        if (pos < 0).any():
            raise KeyError(int(np.asarray(ids, np.int64)[pos < 0][0]))
        return self.cols[name][pos]


class RaggedTable:
    """A variable-length pair of arrays per id (a row's neighbours and ratings), in one pool.

    ``add`` appends rows (an id added again replaces its earlier value); ``gather``
    returns the CSR of the requested rows without a Python loop over them.
    """

    def __init__(self, src_dtype=np.int64, val_dtype=np.float32):
        self.index = RowTable({"start": (np.int64, None, 0), "count": (np.int64, None, 0)})
        self.src = np.zeros(0, src_dtype)
        self.val = np.zeros(0, val_dtype)

    def __len__(self) -> int:
        return len(self.index)

    def contains(self, ids) -> np.ndarray:
        return self.index.contains(ids)

    def add(self, ids: np.ndarray, indptr: np.ndarray, src: np.ndarray, val: np.ndarray) -> None:
        """Rows ``ids`` (unique) with CSR ``indptr`` over ``src``/``val``."""
        ids = np.asarray(ids, np.int64)
        if ids.size == 0:
            return
        base = self.src.size
        self.src = np.concatenate([self.src, np.asarray(src, self.src.dtype)])
        self.val = np.concatenate([self.val, np.asarray(val, self.val.dtype)])
        indptr = np.asarray(indptr, np.int64)
        self.index.put(ids, start=base + indptr[:-1], count=np.diff(indptr))

    def gather(self, ids) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(indptr, src, val)`` of ``ids`` (all present), in their order."""
        pos = self.index.positions(ids)
        if (pos < 0).any():
            raise KeyError(int(np.asarray(ids, np.int64)[pos < 0][0]))
        indptr, take = ranges(self.index["start"][pos], self.index["count"][pos])
        return indptr, self.src[take], self.val[take]

    def counts(self, ids) -> np.ndarray:
        """Number of entries of each of ``ids`` (all present)."""
        return self.index.take("count", ids)


def ranges(starts, counts) -> tuple[np.ndarray, np.ndarray]:
    """``(indptr, positions)`` of the ranges ``starts[j] : starts[j] + counts[j]`` laid end to end (no Python loop)."""
    counts = np.asarray(counts, np.int64)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return indptr, np.arange(indptr[-1], dtype=np.int64) + np.repeat(np.asarray(starts, np.int64) - indptr[:-1], counts)


def csr_by(keys: np.ndarray, wanted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Group the positions of ``keys`` by the ids in ``wanted`` (unique).

    Returns ``(indptr, order)``: the entries of ``wanted[j]`` are
    ``order[indptr[j]:indptr[j+1]]`` (positions into ``keys``, stable); keys
    not in ``wanted`` are left out.
    """
    keys, wanted = np.asarray(keys, np.int64), np.asarray(wanted, np.int64)
    sel = np.flatnonzero(np.isin(keys, wanted))
    order = sel[np.argsort(keys[sel], kind="stable")]
    sorted_keys = keys[order]
    lo, hi = np.searchsorted(sorted_keys, wanted), np.searchsorted(sorted_keys, wanted, side="right")
    indptr, take = ranges(lo, hi - lo)
    return indptr, order[take]

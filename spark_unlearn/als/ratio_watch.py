"""The rows with the largest ``|x|/|b|`` of one side, and a bound for all the others (implicit feedback).

In implicit mode a deletion moves the other side's Gram by ``ΔG``, and every
row ``s`` that is not re-solved drifts by ``ΔG x_s``: its certificate term
becomes ``|d_s + ΔG x_s| / |b_s| <= |d_s|/|b_s| + |ΔG|_2 |x_s|/|b_s|``.  With
one number per side (``max |x|/|b|``) that bound is as loose as the single
worst row, usually a row with very few ratings and a tiny ``|b|``, and a
request that fails it pays a pass over every row of the side.

A :class:`RatioWatch` lists the ``size`` rows with the largest ratio (their
ids and ratios) and ``rest``, an upper bound of the ratio of every row not
listed.  The rows not listed are then bounded by ``|ΔG|_2 rest``; the listed
ones, few, are read and checked exactly.  The watch is exact at training and
carried forward by each request (:meth:`RatioWatch.updated`): rows the
request did not touch keep their ``x`` and ``b``, touched rows come with an
upper bound of their new ratio, so the invariant

    every listed row's ratio <= its listed value, every other row's <= rest

holds in every version.

The same shape serves explicit feedback as a *drift watch*
(:data:`DRIFT_WATCH_SIZE` rows by certificate ratio ``|d|/|b'|``, with
``exact`` flags: whether each listed value is the row's exact ratio or only
an upper bound of it).  There an untouched row's equation does not change at
all, so its listed value stays what it was, exact or not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_unlearn.als.factor_passes import vector_norm

#: Rows listed per side: the manifest holds two lists of this length, and a request reads at most this many
#: rows per side to check them exactly (one ``IN`` scan of the factor and offsets tables).
WATCH_SIZE = 1000

#: Rows a drift watch (explicit feedback) lists per side.
DRIFT_WATCH_SIZE = 256


@dataclass(frozen=True)
class RatioWatch:
    """``ids`` (int64) with ``ratios`` (float64, upper bounds of their ``|x|/|b|``, descending) and ``rest``.

    ``exact`` (bool, optional): per listed row, whether its value is exact
    (a drift watch; ``None`` for a ratio watch, which carries bounds only).
    """

    ids: np.ndarray
    ratios: np.ndarray
    rest: float
    exact: np.ndarray | None = None

    @property
    def max(self) -> float:
        """An upper bound of ``|x|/|b|`` over every row of the side."""
        return max(float(self.rest), float(self.ratios.max(initial=0.0)))

    @classmethod
    def from_values(cls, ids, ratios, size: int | None = None, rest: float = 0.0, exact=None) -> "RatioWatch":
        """The ``size`` (default :data:`WATCH_SIZE`) largest of ``ratios``; the others raise ``rest`` (ties by id).

        ``exact``: per row, whether its ratio is exact (kept for the listed rows).
        """
        size = WATCH_SIZE if size is None else int(size)
        ids, ratios = np.asarray(ids, np.int64), np.asarray(ratios, np.float64)
        order = np.lexsort((ids, -ratios))
        kept, dropped = order[:size], order[size:]
        rest = max(float(rest), float(ratios[dropped].max(initial=0.0)))
        return cls(ids[kept], ratios[kept], rest, None if exact is None else np.asarray(exact, bool)[kept])

    def updated(self, touched_ids, touched_ratios, removed_ids, size: int | None = None,
                touched_exact=None) -> "RatioWatch":
        """The watch of the next version.

        ``touched_ids``/``touched_ratios``: rows whose ``x`` or ``b`` may have
        changed, with an upper bound of their new ratio (``touched_exact``:
        which of them are exact; a drift watch only); ``removed_ids``: rows
        that left the model.  Listed rows not touched keep their value; rows
        not listed and not touched stay below ``rest``.
        """
        touched_ids = np.asarray(touched_ids, np.int64)
        gone = np.union1d(touched_ids, np.asarray(removed_ids, np.int64))
        keep = ~np.isin(self.ids, gone)
        ids = np.concatenate([self.ids[keep], touched_ids])
        ratios = np.concatenate([self.ratios[keep], np.asarray(touched_ratios, np.float64)])
        exact = None
        if self.exact is not None:
            new = np.zeros(touched_ids.size, bool) if touched_exact is None else np.asarray(touched_exact, bool)
            exact = np.concatenate([self.exact[keep], new])
        return RatioWatch.from_values(ids, ratios, size, self.rest, exact)

    def with_values(self, ids, ratios, exact) -> "RatioWatch":
        """The same watch with the listed rows ``ids`` set to ``ratios`` (``exact`` flags); other ids are ignored.

        For values learnt exactly (a listed bound replaced by the row's exact
        ratio, which is at most the bound): the order is restored.
        """
        pos = {int(i): j for j, i in enumerate(self.ids.tolist())}
        vals = self.ratios.copy()
        flags = np.zeros(self.ids.size, bool) if self.exact is None else self.exact.copy()
        for i, r, e in zip(np.asarray(ids, np.int64).tolist(), np.asarray(ratios, np.float64).tolist(),
                           np.asarray(exact, bool).tolist()):
            if i in pos:
                vals[pos[i]], flags[pos[i]] = r, e
        return RatioWatch.from_values(self.ids, vals, self.ids.size, self.rest, flags)

    def to_json(self) -> dict:
        out = {"ids": [int(i) for i in self.ids], "ratios": [float(r) for r in self.ratios], "rest": float(self.rest)}
        if self.exact is not None:
            out["exact"] = [bool(e) for e in self.exact]
        return out

    @classmethod
    def from_json(cls, d: dict) -> "RatioWatch":
        ids, ratios = np.asarray(d["ids"], np.int64), np.asarray(d["ratios"], np.float64)
        if ids.shape != ratios.shape:
            raise ValueError(f"a ratio watch needs as many ratios as ids, got {ids.size} and {ratios.size}")
        exact = None if d.get("exact") is None else np.asarray(d["exact"], bool)
        if exact is not None and exact.shape != ids.shape:
            raise ValueError(f"a drift watch needs as many exact flags as ids, got {ids.size} and {exact.size}")
        return cls(ids, ratios, float(d["rest"]), exact)

    @classmethod
    def empty(cls) -> "RatioWatch":
        """The drift watch of a version whose every row is at its target (training, retrain): nothing drifts."""
        return cls(np.zeros(0, np.int64), np.zeros(0), 0.0, np.zeros(0, bool))


def empty_drift_watches() -> dict[str, dict]:
    """Both sides' drift watch (JSON) of a version whose rows are all at their targets (no drift, every |b| exact)."""
    return {s: RatioWatch.empty().to_json() for s in ("user", "item")}


def ratio_watch(factors: DataFrame, offsets: DataFrame, size: int | None = None) -> RatioWatch:
    """The exact watch of a version's side: one join of its factor and offsets tables and a top-``size + 1``."""
    size = WATCH_SIZE if size is None else int(size)
    ratio = vector_norm("features") / F.greatest(F.col("bnorm"), F.lit(1e-300))
    rows = (factors.select("id", "features").join(offsets.select("id", "bnorm"), "id")
            .select("id", ratio.alias("ratio")).orderBy(F.desc("ratio"), "id").limit(size + 1).collect())
    ids = np.array([r["id"] for r in rows], np.int64)
    ratios = np.array([r["ratio"] for r in rows], np.float64)
    return RatioWatch.from_values(ids, ratios, size)


def listed_terms(source, side: str, watch: RatioWatch, delta_gram: np.ndarray, skip, drift_bound: float,
                 tol: float) -> tuple[np.ndarray, np.ndarray, float]:
    """The watch's listed rows (not in ``skip``) under a Gram change ``ΔG``.

    Rows whose bound ``drift_bound + |ΔG|_2 ratio`` exceeds ``tol`` are read
    from ``source`` (stored ``|b|`` and drift, base factors) and evaluated
    exactly.  Returns ``(ids read, their |d + ΔG x|/|b|, largest bound of the
    listed rows not read)``.
    """
    norm = float(np.linalg.norm(delta_gram, 2))
    open_ = ~np.isin(watch.ids, np.asarray(skip, np.int64))
    bounds = drift_bound + norm * watch.ratios[open_]
    read = bounds > tol
    ids = watch.ids[open_][read]
    if ids.size == 0:
        return ids, np.zeros(0), float(bounds.max(initial=0.0))
    bnorm, drift = source.drift_state(side, ids) if hasattr(source, "drift_state") else source.offsets(side, ids)[1:]
    return ids, gram_moved_rows(source.base_factors(side, ids), drift, bnorm, delta_gram), float(bounds[~read].max(initial=0.0))


def gram_moved_rows(X: np.ndarray, drift: np.ndarray, bnorm: np.ndarray, delta_gram: np.ndarray) -> np.ndarray:
    """``|d_s + ΔG x_s| / |b_s|`` per row: the certificate term of a row the request did not touch."""
    moved = np.asarray(drift, np.float64) + np.asarray(X, np.float64) @ np.asarray(delta_gram, np.float64).T
    return np.linalg.norm(moved, axis=1) / np.maximum(np.asarray(bnorm, np.float64), 1e-300)

"""The targeted engine's certificate: every row's term, exact where it can be at a cost proportional to the request.

Rows the frontier touched (solved, or drifted through a neighbour) have an
exactly bookkept drift ``d``; their ``|b'|`` is exact for solved rows
(:func:`~spark_unlearn.als.frontier.bnorm_now`) and bounded below for the
others.  Rows it did not touch:

* explicit feedback: nothing in their equation changed, so their term is
  what the version knew.  A *drift watch*
  (:class:`~spark_unlearn.als.ratio_watch.RatioWatch` with exact flags) lists
  the rows with the largest terms and bounds the others by its ``rest``;
  without a watch (older versions), the version's ``drift_max`` bounds them.
* implicit feedback: every row drifts by ``ΔG x`` (:func:`implicit_untouched`).

:func:`settle_side` then reads from the data (:mod:`~spark_unlearn.als.exact_rows`)
the few rows whose bound could exceed the exact maximum, so the recorded
maximum is exact unless a bound that cannot be read row by row (``rest``, a
whole side's Gram bound, rows left in Spark) or the read cap stands above it;
the record says which (``max_kind``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from pyspark.sql import functions as F

from spark_unlearn.als.exact_rows import MAX_EXACT_ROWS, exact_deviations, settle_maximum
from spark_unlearn.als.factor_passes import gram_moved
from spark_unlearn.als.frontier import bnorm_now, current_drift, current_factors, other
from spark_unlearn.als.kernels import SolveSpec
from spark_unlearn.als.ratio_watch import DRIFT_WATCH_SIZE, RatioWatch, listed_terms
from spark_unlearn.als.selection import select_ids

SIDES = ("user", "item")


def touched_rows(result, source, direct: dict[str, set[int]], removed: dict[str, set[int]],
                 spec: SolveSpec) -> dict[str, dict[str, Any]]:
    """Per side, the new offsets and certificate terms of every row the frontier touched.

    Returns ``{side: {"ids", "solved", "target", "drift", "bnorm", "exact", "relative", "x_relative"}}``:
    whether the row was solved, its target ``t`` (solved rows only: 0 if its
    own data changed, else the stored one; a row that only drifted keeps its
    stored target, which is not read), its drift ``A'x - b' - t``, ``|b'|``
    (exact where ``exact``, else a lower bound), ``relative = |drift| / bnorm``
    and (implicit; else ``None``) ``x_relative = |x| / bnorm`` with the row's new factor.
    """
    out = {}
    for s in SIDES:
        table = result.rows[s]
        gone = np.asarray(sorted(removed[s]), np.int64)
        sel = np.flatnonzero(table["touched"] & ~np.isin(table.ids, gone))
        ids = table.ids[sel]
        if ids.size == 0:
            empty = np.zeros((0, source.rank))
            out[s] = {"ids": ids, "solved": np.zeros(0, bool), "target": empty, "drift": empty, "bnorm": np.zeros(0),
                      "exact": np.zeros(0, bool), "relative": np.zeros(0),
                      "x_relative": np.zeros(0) if spec.implicit else None}
            continue
        train_bnorm, stored = source.drift_state(s, ids)
        solved = table["solved"][sel]
        t = np.zeros((ids.size, stored.shape[1]))
        keep = solved & ~np.isin(ids, np.asarray(sorted(direct[s]), np.int64))
        t[keep] = source.targets(s, ids[keep])
        X = current_factors(source, s, table, ids) if spec.implicit else None
        d = current_drift(table, sel, stored, X, result.gram_history[other(s)] if spec.implicit else None)
        scale, exact = bnorm_now(table, sel, train_bnorm)
        out[s] = {"ids": ids, "solved": solved, "target": t, "drift": d, "bnorm": scale, "exact": exact,
                  "relative": np.linalg.norm(d, axis=1) / scale,
                  "x_relative": np.linalg.norm(X.astype(np.float64), axis=1) / scale if X is not None else None}
    return out


def settle_side(source, side: str, touched: dict[str, Any], tables: dict, direct: set[int], spec: SolveSpec,
                gram: np.ndarray | None, *, exact_terms: dict[str, float], bound_terms: dict[str, float],
                watch: RatioWatch | None = None, untouched_skip: np.ndarray | None = None,
                cap: int = MAX_EXACT_ROWS) -> dict[str, Any]:
    """The exact maximum of one side's certificate, reading the rows whose bound could exceed it.

    ``touched``: the side's :func:`touched_rows` entry, updated in place where
    rows are read (exact ``drift``, ``bnorm``, ``relative``, ``x_relative``:
    the next version stores the exact ``|b'|``).  ``watch``: the parent's
    drift watch (explicit); its entries not in ``untouched_skip`` (touched,
    removed, left in Spark) are candidates too, and its ``rest`` a bound term.
    ``exact_terms``/``bound_terms``: other terms by name (e.g. implicit
    untouched rows, rows left in Spark).

    Returns ``{"max", "exact", "why", "read", "capped", "untouched_max", "watch"}``
    (``watch``: the parent's watch with the untouched entries read here made exact).
    """
    ids_t = touched["ids"]
    listed = np.zeros(0, np.int64)
    vals_w = np.zeros(0)
    exact_w = np.zeros(0, bool)
    bounds = dict(bound_terms)
    if watch is not None:
        open_ = ~np.isin(watch.ids, np.asarray(untouched_skip if untouched_skip is not None else [], np.int64))
        listed, vals_w = watch.ids[open_], watch.ratios[open_]
        exact_w = watch.exact[open_] if watch.exact is not None else np.zeros(listed.size, bool)
        bounds["rest of the drift watch (rows it does not list)"] = float(watch.rest)
    all_ids = np.concatenate([ids_t, listed])
    values = np.concatenate([touched["relative"], vals_w])
    exact = np.concatenate([touched["exact"], exact_w])
    found: dict[int, tuple[np.ndarray, float]] = {}
    direct_arr = np.asarray(sorted(direct), np.int64)

    def exactify(pos: np.ndarray) -> np.ndarray:
        rid, D, bn = exact_deviations(source, side, all_ids[pos], tables, direct_arr, spec, gram)
        for i, d, b in zip(rid.tolist(), D, bn):
            found[i] = (d, float(b))
        return np.array([np.linalg.norm(found[i][0]) / max(found[i][1], 1e-300) if i in found else 0.0
                         for i in all_ids[pos].tolist()])

    settled = settle_maximum(values, exact, exactify, max(exact_terms.values(), default=0.0),
                             max(bounds.values(), default=0.0), cap)
    n_t = ids_t.size
    read_t = settled.read[settled.read < n_t]
    if read_t.size:
        got = [i in found for i in ids_t[read_t].tolist()]
        read_t = read_t[np.asarray(got, bool)]
        new_bn = np.array([found[i][1] for i in ids_t[read_t].tolist()])
        if touched.get("x_relative") is not None:
            touched["x_relative"][read_t] *= touched["bnorm"][read_t] / np.maximum(new_bn, 1e-300)
        touched["drift"][read_t] = np.array([found[i][0] for i in ids_t[read_t].tolist()])
        touched["bnorm"][read_t] = new_bn
        touched["relative"][read_t] = settled.values[read_t]
        touched["exact"][read_t] = True
    new_watch = watch
    if watch is not None:
        read_w = settled.read[settled.read >= n_t]
        if read_w.size:
            new_watch = watch.with_values(all_ids[read_w], settled.values[read_w], np.ones(read_w.size, bool))
    m = max(max(exact_terms.values(), default=0.0), float(settled.values[settled.exact].max(initial=0.0)))
    # What stands above the exact maximum: a bound term (rows below it are deliberately not read), or the cap.
    above = [name for name, v in bounds.items() if v > m]
    if settled.capped:
        above.append(f"rows whose |b'| is bounded below, past the cap of {cap} rows read")
    untouched_max = float(settled.values[n_t:].max(initial=0.0))
    return {"max": settled.maximum, "exact": settled.is_exact, "why": "; ".join(above) or None,
            "read": int(settled.read.size), "capped": settled.capped, "untouched_max": untouched_max, "watch": new_watch}


def next_drift_watch(watch: RatioWatch | None, touched: dict[str, Any], removed: set[int], lazy_ids: np.ndarray,
                     lazy_max: float | None) -> RatioWatch | None:
    """The next version's drift watch (explicit): touched rows re-enter with their new terms.

    Rows left in Spark (``lazy_ids``, a lazy side's rows next to moved rows)
    leave the watch and raise ``rest`` to their largest (bounded) term.
    """
    if watch is None:
        return None
    gone = np.concatenate([np.asarray(sorted(removed), np.int64), np.asarray(lazy_ids, np.int64)])
    out = watch.updated(touched["ids"], touched["relative"], gone, DRIFT_WATCH_SIZE, touched["exact"])
    if lazy_max is not None:
        out = dataclasses.replace(out, rest=max(out.rest, float(lazy_max)))
    return out


def implicit_untouched(source, side: str, factors, offsets, watch, x_ratio: float, delta: np.ndarray,
                       touched: dict[str, Any], removed: set[int], lazy: dict | None, lazy_ids: np.ndarray,
                       drift_bound: float, tol: float) -> tuple[float, str, float, dict | None]:
    """Implicit feedback: the term of the rows the request did not re-solve and the next ``x_ratio`` and watch.

    Every untouched row moved by ``ΔG x``.  Returns ``(term, how, new max
    |x|/|b|, next ratio watch as JSON or None)``; ``how`` is a key of
    :data:`UNTOUCHED_CERTIFICATE`.
    """
    skip = np.concatenate([touched["ids"], np.array(sorted(removed), np.int64), lazy_ids])
    # Every untouched row moved by ΔG x: bounded without a pass when the bound is within tol ...
    norm = float(np.linalg.norm(delta, 2))
    bound = drift_bound + norm * float(x_ratio)
    x_untouched = float(x_ratio)
    # The watch's listed rows are read only when its rest is within tol (else the pass below runs anyway).
    covered = lazy is not None and lazy["check"].every_row
    listed = (watched_term(source, side, watch, delta, skip, drift_bound, tol)
              if watch and not covered and bound > tol and drift_bound + norm * watch.rest <= tol else None)
    if covered:
        # ... or by the frontier's last pass in Spark, which evaluated every row it did not re-solve ...
        term, how = lazy["check"].max_ratio, "spark"
        x_untouched = lazy["check"].max_xratio
    elif bound <= tol:
        term, how = bound, "bound"
    elif listed is not None and listed[0] <= tol:
        # ... or by the watch: its rest bounded, its listed rows read and evaluated where their bound fails ...
        term, how = listed[0], "watch"
        x_untouched = listed[1]
    elif source.holds_side(side):
        # ... else exact, over all rows: from the driver's caches when the frontier read the whole side ...
        _, moved_rows, xnorm = source.gram_moved_rows(side, delta, skip)
        term, how = float(moved_rows.max(initial=0.0)), "exact_held"
        x_untouched = float(xnorm.max(initial=0.0))
    else:
        # ... or by one pass (factor and offsets tables only).
        moved = gram_moved(factors, offsets, delta)
        if skip.size:
            moved = select_ids(moved, "id", skip.tolist(), keep=False)
        bn = F.greatest("bnorm", F.lit(1e-300))
        row = moved.agg(F.max(F.col("moved") / bn), F.max(F.col("xnorm") / bn)).first()
        term, how = float(row[0] or 0.0), "exact"
        x_untouched = float(row[1] or 0.0)
    # The new version's max |x|/|b|: untouched rows as they were, touched rows at their new x over |b'|.
    new_x_ratio = max(x_untouched, float(touched["x_relative"].max(initial=0.0)))
    up_ids, up_ratios = touched["ids"], touched["x_relative"]
    if lazy is not None:
        check = lazy["check"]
        new_x_ratio = max(new_x_ratio, check.max_xratio)
        # Lazy rows the check returned: the watch's listed ones and any above its rest (the others stay below).
        fresh = ~np.isin(check.watch_ids, up_ids)
        up_ids = np.concatenate([up_ids, check.watch_ids[fresh]])
        up_ratios = np.concatenate([up_ratios, check.watch_ratios[fresh]])
    new_watch = watch.updated(up_ids, up_ratios, sorted(removed)).to_json() if watch is not None else None
    return float(term), how, new_x_ratio, new_watch


def watched_term(source, side: str, watch: RatioWatch, delta_gram: np.ndarray, skip: np.ndarray, drift_bound: float,
                 tol: float) -> tuple[float, float]:
    """``(certificate term, max |x|/|b|)`` of the rows a request did not touch, by their watch.

    Rows the watch does not list: ``drift_bound + |ΔG|_2 rest``.  Listed rows
    (not in ``skip``): the same bound with their own ratio where it is within
    ``tol``, else their exact ``|d + ΔG x|/|b|`` (read: at most
    :data:`~spark_unlearn.als.ratio_watch.WATCH_SIZE` rows).
    """
    _, exact, unread = listed_terms(source, side, watch, delta_gram, skip, drift_bound, tol)
    term = max(drift_bound + float(np.linalg.norm(delta_gram, 2)) * float(watch.rest), unread,
               float(exact.max(initial=0.0)))
    return term, max(float(watch.rest), float(watch.ratios[~np.isin(watch.ids, skip)].max(initial=0.0)))


UNTOUCHED_CERTIFICATE = {
    "exact": "exact: |d + ΔG x| / |b| over every untouched row (implicit; one pass; |b| as stored)",
    "exact_held": "exact: |d + ΔG x| / |b| over every untouched row (implicit; from the driver, which had read the "
    "whole side; |b| as stored)",
    "spark": "bounded: |d + edge terms + ΔG x| / |b'| over every row not re-solved, |b'| bounded below next to moved "
    "rows (implicit; the frontier's last pass in Spark, after its last move)",
    "bound": "bounded: stored max |d|/|b| + |ΔG|_2 max |x|/|b| (implicit; no pass, the bound is within tol)",
    "watch": "bounded: stored max |d|/|b| + |ΔG|_2 x (x = |x|/|b| of the rows with the largest, exact where that "
    "exceeds tol, and a bound of it for the others; implicit, no pass)",
    "stored": "bounded by the version's stored drift |d| / |b| (explicit: nothing in an untouched row's equation "
    "changed; the version has no drift watch)",
    "drift_watch": "the version's drift watch (explicit: nothing in an untouched row's equation changed): its listed "
    "rows exact where they could be the maximum (read from the data), its rest bounding the others",
}

"""RatioWatch: the rows with the largest |x|/|b|, carried across requests, and the bounds built on it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spark_unlearn.als.targeted_certificate import watched_term
from spark_unlearn.als.ratio_watch import RatioWatch, gram_moved_rows
from spark_unlearn.als.spark_source import BoundedGramSource


def _holds(watch: RatioWatch, ids: np.ndarray, ratios: np.ndarray) -> bool:
    """Every listed row's ratio <= its listed value, every other row's <= rest."""
    listed = dict(zip(watch.ids.tolist(), watch.ratios.tolist()))
    return all(r <= listed.get(i, watch.rest) + 1e-12 for i, r in zip(ids.tolist(), ratios.tolist()))


def test_from_values_keeps_the_largest_and_bounds_the_rest():
    w = RatioWatch.from_values([5, 1, 9, 3], [0.2, 0.9, 0.2, 0.5], size=2)
    assert w.ids.tolist() == [1, 3] and w.ratios.tolist() == [0.9, 0.5]
    assert w.rest == 0.2 and w.max == 0.9
    tie = RatioWatch.from_values([5, 1, 9], [0.2, 0.2, 0.2], size=1)
    assert tie.ids.tolist() == [1] and tie.rest == 0.2
    assert RatioWatch.from_json(w.to_json()).to_json() == w.to_json()
    with pytest.raises(ValueError, match="as many ratios as ids"):
        RatioWatch.from_json({"ids": [1, 2], "ratios": [0.1], "rest": 0.0})


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_the_invariant_survives_any_sequence_of_requests(data):
    """Rows change ratio only when touched (or leave when removed); the carried watch stays a valid bound."""
    n = data.draw(st.integers(5, 40))
    size = data.draw(st.integers(1, 8))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    ids = np.arange(n, dtype=np.int64) * 3 + 1
    ratios = rng.gamma(1.0, 0.1, n)
    watch = RatioWatch.from_values(ids, ratios, size)
    assert _holds(watch, ids, ratios)
    assert watch.rest == pytest.approx(np.sort(ratios)[::-1][size] if n > size else 0.0)
    alive = np.ones(n, bool)
    for _ in range(data.draw(st.integers(1, 6))):
        live = np.flatnonzero(alive)
        touched = rng.choice(live, size=min(live.size, int(rng.integers(0, 6))), replace=False)
        removed = rng.choice(np.setdiff1d(live, touched), size=min(live.size - touched.size, int(rng.integers(0, 2))),
                             replace=False)
        ratios[touched] = rng.gamma(1.0, 0.1, touched.size)  # the true new ratios
        upper = ratios[touched] * (1 + rng.random(touched.size))  # what a request knows: an upper bound
        alive[removed] = False
        watch = watch.updated(ids[touched], upper, ids[removed], size)
        assert watch.ids.size <= size and not np.isin(watch.ids, ids[removed]).any()
        assert _holds(watch, ids[alive], ratios[alive])


class _Rows:
    """A row source over numpy arrays: base factors, stored |b| and drift (what the watch reads)."""

    def __init__(self, ids, X, bnorm, drift):
        self.pos = {int(i): k for k, i in enumerate(ids)}
        self.X, self.bnorm, self.drift = X, bnorm, drift
        self.read: list[int] = []
        self.full_passes = 0

    def _at(self, ids):
        self.read += [int(i) for i in ids]
        return [self.pos[int(i)] for i in ids]

    def base_factors(self, side, ids):
        return self.X[self._at(ids)]

    def drift_state(self, side, ids):
        k = self._at(ids)
        return self.bnorm[k], self.drift[k]

    def gram_violators(self, side, delta_gram, tol, skip):
        self.full_passes += 1
        moved = gram_moved_rows(self.X, self.drift, self.bnorm, delta_gram)
        ids = np.array(sorted(self.pos), np.int64)
        return ids[(moved > tol) & ~np.isin(ids, skip)]


def _rows(seed, n=60, k=4):
    rng = np.random.default_rng(seed)
    ids = np.arange(n, dtype=np.int64) + 100
    X = rng.normal(size=(n, k))
    bnorm = rng.gamma(2.0, 1.0, n) + 0.05
    bnorm[:5] = 0.02  # a few rows with tiny |b|: the largest |x|/|b|
    drift = rng.normal(scale=1e-4, size=(n, k))
    return ids, X, bnorm, drift


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_watched_term_bounds_every_untouched_row_and_reads_only_listed_rows(seed):
    ids, X, bnorm, drift = _rows(seed)
    ratios = np.linalg.norm(X, axis=1) / bnorm
    watch = RatioWatch.from_values(ids, ratios, size=8)
    dg = np.random.default_rng(seed + 10).normal(scale=2e-3, size=(4, 4))
    skip = ids[[0, 7, 30]]  # touched or removed rows are not the watch's business
    drift_bound = float((np.linalg.norm(drift, axis=1) / bnorm).max())
    exact = gram_moved_rows(X, drift, bnorm, dg)
    untouched_max = float(exact[~np.isin(ids, skip)].max())
    for tol in (1e-3, 1e-2, 1e-1):
        src = _Rows(ids, X, bnorm, drift)
        term, x_max = watched_term(src, "user", watch, dg, skip, drift_bound, tol)
        assert term >= untouched_max - 1e-12  # an upper bound of every untouched row's certificate term
        assert set(src.read) <= set(watch.ids.tolist()) - set(skip.tolist())
        assert x_max == pytest.approx(ratios[~np.isin(ids, skip)].max())
        # Rows read are evaluated exactly: with every listed row read, the term is exact up to the rest's bound.
        rest_bound = drift_bound + np.linalg.norm(dg, 2) * watch.rest
        if set(src.read) == set(watch.ids.tolist()) - set(skip.tolist()):
            listed = exact[np.isin(ids, watch.ids) & ~np.isin(ids, skip)]
            assert term == pytest.approx(max(rest_bound, listed.max()))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bounded_source_with_a_watch_finds_the_violators_a_full_pass_finds(seed):
    ids, X, bnorm, drift = _rows(seed)
    ratios = np.linalg.norm(X, axis=1) / bnorm
    drift_bound = float((np.linalg.norm(drift, axis=1) / bnorm).max())
    dg = np.random.default_rng(seed + 20).normal(scale=2e-3, size=(4, 4))
    skip = ids[[1, 2]]
    for tol in (3e-3, 3e-2, 3e-1):
        truth = _Rows(ids, X, bnorm, drift).gram_violators("user", dg, tol, skip)
        src = _Rows(ids, X, bnorm, drift)
        watched = BoundedGramSource(src, {"user": (float(ratios.max()), drift_bound)}, {"user": RatioWatch.from_values(ids, ratios, 10)})
        got = watched.gram_violators("user", dg, tol, skip)
        assert sorted(got.tolist()) == sorted(truth.tolist())
        plain = BoundedGramSource(_Rows(ids, X, bnorm, drift), {"user": (float(ratios.max()), drift_bound)})
        assert sorted(plain.gram_violators("user", dg, tol, skip).tolist()) == sorted(truth.tolist())
        # The watch avoids the full pass whenever the rows it does not list are within tol by the bound.
        rest_ok = drift_bound + np.linalg.norm(dg, 2) * watched.watch["user"].rest <= tol
        assert src.full_passes == (0 if rest_ok else 1)

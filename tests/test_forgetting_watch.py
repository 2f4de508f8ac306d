"""Oracle tests of the sweeps' forgetting stop (:mod:`spark_unlearn.als.forgetting_watch`), pure numpy.

Oracles: the pairs' scores one pair at a time; an exactly geometric score
sequence, whose tail the estimate must give exactly; the sweeps' loop with
and without the watch, and with the reference kernels.  The estimate is not
a bound (the module docstring): on these small random problems a slower
mode takes over after the stop, so no test holds it to a long run.
"""

from __future__ import annotations

import numpy as np
import pytest

from spark_unlearn.als.forgetting_watch import ForgettingWatch, forgetting_estimate, pair_scores, pair_scores_reference
from spark_unlearn.als.policy import RowTolerance
from spark_unlearn.als.sweep_kernel import warm_sweeps, warm_sweeps_reference
from tests.test_sweeps_planner import problem


def test_pair_scores_match_the_pair_by_pair_reference():
    rng = np.random.default_rng(0)
    U, V = rng.normal(size=(7, 4)).astype(np.float32), rng.normal(size=(5, 4)).astype(np.float32)
    users, items = rng.integers(0, 7, 30), rng.integers(0, 5, 30)
    assert pair_scores(U, V, users, items) == pytest.approx(pair_scores_reference(U, V, users, items), rel=1e-12)
    assert pair_scores(U, V, users[:0], items[:0]) == 0.0


@pytest.mark.parametrize("rate", [0.5, -0.4, 0.9])
def test_a_geometric_sequence_gives_its_exact_tail(rate):
    """s_0 = 1, a first jump to 0.5, then steps shrinking by ``rate`` towards the limit 0.3: the estimate after
    step k is the exact tail |s_k - 0.3| and the exact share."""
    limit, first = 0.3, 0.5
    scores = [1.0, first] + [limit + (first - limit) * rate ** j for j in range(1, 6)]
    for k in range(3, len(scores)):
        est = forgetting_estimate(scores[: k + 1])
        tail = abs(scores[k] - limit)
        assert est["rate"] == pytest.approx(rate, rel=1e-9)
        assert est["remaining"] == pytest.approx(tail, rel=1e-9, abs=1e-15)
        moved = abs(scores[k] - 1.0)
        assert est["share"] == pytest.approx(moved / (moved + tail), rel=1e-9)


def test_no_rate_before_three_steps_and_no_end_when_the_steps_grow():
    assert forgetting_estimate([1.0, 0.5, 0.4])["share"] == 0.0  # two steps: no rate yet
    assert forgetting_estimate([1.0, 0.5, 0.4, 0.25])["share"] == 0.0  # the step grew: no end predicted
    assert forgetting_estimate([1.0, 1.0, 1.0])["share"] == 1.0  # nothing moves: nothing to forget
    assert forgetting_estimate([1.0, 0.5, 0.4, 0.4])["remaining"] == 0.0


def test_a_watch_without_pairs_always_holds_and_reports_so():
    w = ForgettingWatch(np.zeros(0, np.int64), np.zeros(0, np.int64), 0.95)
    w.observe(np.ones((2, 2)), np.ones((2, 2)))
    assert w.done() and w.scores == [] and w.to_json()["pairs"] == 0


@pytest.mark.parametrize("implicit", [True, False])
def test_the_sweeps_run_on_until_the_pairs_have_made_the_share_and_the_estimate_is_checked(implicit):
    """A certificate every sweep meets: without a watch one sweep; with one, the sweeps go on unchecked until the
    estimate reaches the target, then the certificate is checked and stops them; the reference kernels agree."""
    sides, spec = problem(implicit, seed=3)
    users, items = sides.deleted
    loose = RowTolerance(floor=1e6)
    first = {"user": np.unique(users), "item": np.unique(items)}
    assert warm_sweeps(sides(), spec, loose, max_sweeps=30, first_rows=first).sweeps == 1
    watch = ForgettingWatch(users, items, 0.95)
    run = warm_sweeps(sides(), spec, loose, max_sweeps=30, first_rows=first, watch=watch)
    ref = warm_sweeps_reference(sides(), spec, loose, max_sweeps=30, first_rows=first,
                                watch=ForgettingWatch(users, items, 0.95))
    assert run.holds and run.sweeps == ref.sweeps >= 2 and run.forgetting["holds"]
    assert run.forgetting["share"] >= 0.95 and len(watch.scores) == run.sweeps + 2  # trained, rows first, each sweep
    assert [h.get("checked", True) for h in run.history] == [False] * (run.sweeps - 1) + [True]
    assert run.forgetting["scores"] == pytest.approx(ref.forgetting["scores"], rel=1e-4)
    for s in ("user", "item"):
        np.testing.assert_allclose(run.factors[s], ref.factors[s], rtol=1e-4, atol=1e-6)
    # The estimate the stop used is forgetting_estimate of the recorded scores, and one sweep fewer was short of it.
    assert forgetting_estimate(watch.scores)["share"] == run.forgetting["share"]
    assert forgetting_estimate(watch.scores[:-1])["share"] < 0.95


def test_the_sweeps_stop_at_max_sweeps_with_the_forgetting_short_and_the_certificate_checked():
    sides, spec = problem(True, seed=3)
    users, items = sides.deleted
    run = warm_sweeps(sides(), spec, RowTolerance(floor=1e6), max_sweeps=2, watch=ForgettingWatch(users, items, 0.999))
    assert run.holds and run.sweeps == 2 and not run.forgetting["holds"]
    assert run.history[-1].get("checked", True) and set(run.deviation) == {"user", "item"}

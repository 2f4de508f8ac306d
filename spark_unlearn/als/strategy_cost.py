"""The batch planner's cost model: the frontier, or warm sweeps of a version held on the driver.

Costs are counted in *sweep row solves*: one row solved inside a vectorised
warm sweep (:func:`~spark_unlearn.als.sweep_kernel.warm_sweeps`).  A row the
frontier solves costs :data:`FRONTIER_ROW_COST` of them (its reads, its
drift bookkeeping and its certificate terms, solved in small batches round
by round); a sweep solves every row of both sides.

* **Sweeps** cost ``min(EXPECTED_SWEEPS, max_sweeps) x rows`` (``max_sweeps``
  is the model's iteration count: sweeps never run more than a cold retrain
  would) and are possible only when the whole version fits the driver.
* **The frontier** runs when the rows it is expected to solve,
  :data:`FRONTIER_GROWTH` times the rows whose own data changed, cost less
  than the sweeps (``direct_rows_limit = sweeps' cost / (FRONTIER_ROW_COST
  FRONTIER_GROWTH)`` direct rows), else the planner sweeps at once.  Before each
  later round it predicts the rows the frontier has still to solve from the
  shrinking of its rounds (:func:`frontier_remaining`) and switches to sweeps
  when they would cost more than :data:`MOST_SWEEPS` sweeps
  (:func:`frontier_should_yield`): the sweeps' cost varies between
  deletions of the same data and cannot be told in advance, so a frontier
  under way yields only when it is clearly the dearer way.  The sweeps then
  start from the rows the frontier solved.  The frontier never solves more
  than the request's ``full_fallback_fraction`` of the rows.

* **A retrain** (:mod:`~spark_unlearn.als.held_retrain`) when the batch
  deletes at least :data:`RETRAIN_SHARE` of the ratings and the version
  fits the driver: then the sweeps' cost is not the question, their
  forgetting is (warm sweeps certify a large deletion while keeping its
  signal; the constant's comment).

Rows are those left after the deletion (rows that leave the model are not
swept).
* Where sweeps are impossible, a frontier that outgrows its budget falls back
  to a retrain, as before.

The constants are measured (docs/BENCHMARKS.md, "Batches by CURE4Rec's
rules"), not fitted to one result.  On Amazon Digital Music (implicit, rank
32, 122k rows) a frontier row cost 65-114 us (0.83 s for 12.7k rows after
20 % random users, 2.0 s for 23k after the core 5 %, 0.37 s for 3.2k after
1 % of the interactions), and a warm sweep 0.42 s for every row (3.4 us a
row solve, its certificate check included): a ratio of 19-33, of which the
planner takes the low end (when in doubt the frontier, which writes only the
blocks it touched); single-threaded sweeps, so with the driver's threads a
frontier row costs more sweep row solves than that.  Warm sweeps with the
changed rows solved first and the repair of the rows left outside
(:mod:`~spark_unlearn.als.sweep_kernel`) reached training precision in one
sweep in every CURE4Rec scenario on ADM and after 1 % of the 5M expansion's
interactions (1.06 sweep-equivalents of row solves there); plain sweeps
took 2-8.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

# Sweep row solves per row the frontier solves (measured 19-33 on ADM; see the module docstring).
FRONTIER_ROW_COST = 20.0
# Rows a frontier solves per row whose own data changed (measured on ADM: 1.1-1.2 after random interactions and
# users, 2.0-2.3 after core users; the upper end, so that a wide reach is priced as wide).
FRONTIER_GROWTH = 2.0
# Sweep-equivalents expected to reach training precision: the rows whose data changed, one sweep, then the repair of
# the few rows left outside their bounds, timed against a plain sweep with its check.  Measured with the repair's
# rounds checking only the repaired rows' neighbours (sweep_kernel._moved_other_side): 1 sweep and 5 rounds on the 5M
# ADM expansion (1 %: 1.06 sweep-equivalents of row solves); on ADM every CURE4Rec scenario certified after 1 sweep (docs/BENCHMARKS.md), where
# the full-side checks of every round had made it 1.75-3.0 before.  Without the repair plain sweeps took 2-8.
EXPECTED_SWEEPS = 2
# A batch deleting at least this share of the version's ratings is retrained on the driver when the version fits
# there (als/held_retrain.py): warm sweeps certify such a batch but keep its signal for many sweeps.  Measured on ADM
# (docs/BENCHMARKS.md): after the planner's certified sweeps NDCG@20 stayed within 1 % of a retrain for every
# CURE4Rec scenario deleting at most 9.3 % of the ratings (edge 5-20 %, random 5 %: -0.1 % to +0.7 %) and was
# +1.8 % to +12.6 % above it for every one deleting 9.6 % or more (random 10-20 %, core 5-20 %); the core 20 %
# model was still 5 % above after 10 sweeps.  The threshold sits below the first failure, with a margin.
RETRAIN_SHARE = 0.08
# The most sweep-equivalents measured there: what a frontier that has started weighs its remaining rounds against,
# so that it yields only when sweeping is cheaper even then.
MOST_SWEEPS = 3


@dataclass(frozen=True)
class StrategyChoice:
    """The planner's choice for one request, with the estimate it was made on."""

    choice: str  # "frontier", "sweeps" or "retrain"
    why: str
    direct_rows: int
    total_rows: int
    sweeps_possible: bool
    direct_rows_limit: int  # beyond this many direct rows the expected frontier (FRONTIER_GROWTH x) costs more
    frontier_max_rows: int  # the request's cap on the frontier's row solves (full_fallback_fraction of the rows)
    sweep_estimate_row_solves: int
    sweep_most_row_solves: int = 0  # MOST_SWEEPS sweeps: what a frontier under way yields to
    frontier_row_cost: float = FRONTIER_ROW_COST
    frontier_growth: float = FRONTIER_GROWTH
    expected_sweeps: int = EXPECTED_SWEEPS
    deleted_share: float = 0.0  # the batch's deleted ratings over the version's
    retrain_share: float = RETRAIN_SHARE  # from this deleted share on, a retrain (when sweeps are possible)

    def to_dict(self) -> dict:
        return asdict(self)


def choose_strategy(direct_rows: int, total_rows: int, max_rows: int, max_sweeps: int, sweeps_possible: bool,
                    why_not: str = "", deleted_share: float = 0.0, retrain_share: float = RETRAIN_SHARE) -> StrategyChoice:
    """The cheaper way to the certificate (see the module docstring).

    ``direct_rows``: rows whose own data changed (the frontier solves them
    first); ``total_rows``: rows of both sides left after the deletion; ``max_rows``: the request's
    frontier cap (``full_fallback_fraction`` of the rows); ``max_sweeps``: a
    cold retrain's iterations; ``why_not``: why sweeps are impossible;
    ``deleted_share``: the batch's deleted ratings over the version's, from
    ``retrain_share`` on a retrain on the driver (where sweeps are possible:
    the version fits there).
    """
    sweeps = min(EXPECTED_SWEEPS, max(1, int(max_sweeps)))
    estimate = sweeps * int(total_rows)
    limit = int(estimate / (FRONTIER_ROW_COST * FRONTIER_GROWTH))
    most = min(MOST_SWEEPS, max(1, int(max_sweeps))) * int(total_rows)
    share = {"deleted_share": float(deleted_share), "retrain_share": float(retrain_share)}
    if not sweeps_possible:
        return StrategyChoice("frontier", f"sweeps on the driver impossible: {why_not}", direct_rows, total_rows, False,
                              limit, int(max_rows), estimate, most, **share)
    if deleted_share >= retrain_share:
        return StrategyChoice("retrain", f"the batch deletes {deleted_share:.1%} of the ratings, at least retrain_share "
                              f"= {retrain_share:.1%}: warm sweeps would certify while keeping its signal, so a retrain "
                              "on the driver", direct_rows, total_rows, True, limit, int(max_rows), estimate, most, **share)
    if direct_rows > limit:
        return StrategyChoice("sweeps", f"a frontier from the {direct_rows} rows whose data changed is expected to cost "
                              f"more than {sweeps} sweeps of {total_rows} rows", direct_rows, total_rows, True, limit,
                              int(max_rows), estimate, most, **share)
    return StrategyChoice("frontier", f"a frontier from the {direct_rows} rows whose data changed is expected to cost "
                          f"less than {sweeps} sweeps; it yields to sweeps if its remaining rounds are predicted to cost "
                          f"more than {MOST_SWEEPS}",
                          direct_rows, total_rows, True, limit, int(max_rows), estimate, most, **share)


def frontier_remaining(sizes: list[int], next_size: int) -> float:
    """Rows the frontier is predicted to solve from its next round on, from the rounds so far.

    A frontier alternates sides (users, then the items they reach, ...), so
    its rounds shrink by a ratio ``q`` every two rounds: ``q`` is the next
    round over the round two before it, on the same side.  With that ratio
    on both sides, the next round's side has ``next / (1 - q)`` rows left to
    solve and the other side, whose last round was ``last``,
    ``last q / (1 - q)``.  A frontier that does not shrink (``q >= 0.9``) is
    predicted not to end.  Before two rounds there is no ratio on one side:
    the prediction is the next round alone.
    """
    if len(sizes) < 2:
        return float(next_size)
    q = next_size / max(sizes[-2], 1)
    if q >= 0.9:
        return float("inf")
    return (next_size + sizes[-1] * q) / (1.0 - q)


def frontier_should_yield(sizes: list[int], next_size: int, sweep_row_solves: float) -> bool:
    """Whether the rest of the frontier is predicted to cost more than ``sweep_row_solves`` (the planner passes
    :data:`MOST_SWEEPS` sweeps); the rows it solved are a sunk cost, and the sweeps start from them."""
    return frontier_remaining(sizes, next_size) * FRONTIER_ROW_COST > sweep_row_solves


def forced_sweeps(direct_rows: int, total_rows: int, max_sweeps: int) -> StrategyChoice:
    """The request asked for sweeps (``mode = "full"``) and the version fits the driver."""
    sweeps = min(EXPECTED_SWEEPS, max(1, int(max_sweeps)))
    return StrategyChoice("sweeps", "requested (mode full)", direct_rows, total_rows, True, 0, 0, sweeps * int(total_rows),
                          min(MOST_SWEEPS, max(1, int(max_sweeps))) * int(total_rows))

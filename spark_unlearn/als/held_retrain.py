"""The retrain strategy on the driver: ALS from scratch on the remaining data of a version held whole.

After a batch that deletes a large share of the ratings, warm sweeps
certify (every row as stationary as training left it) while the model keeps
the deleted data's signal for many sweeps: after ADM's core 20 % users
(48 % of the ratings) the certified model ranks 12.6 % better by NDCG@20
than a retrain, and still 5 % better after 10 sweeps (docs/BENCHMARKS.md,
"What the certificate does not see").  A retrain has nothing to forget, so
the batch planner retrains such a batch
(:data:`~spark_unlearn.als.strategy_cost.RETRAIN_SHARE`).

On a version that fits the driver (the sweep strategy's read,
:func:`~spark_unlearn.als.held_sweeps.read_held`), it runs Spark's ALS
there with the training kernels: the same initial factors
(:func:`~spark_unlearn.als.train.init_factors`, by seed, side and id),
items from users then users from items in each iteration, the model's
iteration count.  So it is the model
:func:`~spark_unlearn.als.train.train_als` trains on the remaining data, up
to float summation order (tests/test_held_retrain.py).  Its training
residual ``e_r = A_r x_r - b_r`` becomes every row's target, as after
``jobs/train.py``: every deviation is 0 by construction, and the next
request's tolerance comes from this model's residual.
"""

from __future__ import annotations

import numpy as np

from spark_unlearn.als.kernels import SolveSpec, gram, residuals, solve_rows
from spark_unlearn.als.policy import RowTolerance
from spark_unlearn.als.sweep_kernel import SweepRun, SweepSide, other_side, sweep
from spark_unlearn.als.train import INIT_SALT, init_factors

QUANTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}


def retrain_sides(sides: dict[str, SweepSide], ids: dict[str, np.ndarray], spec: SolveSpec, policy: RowTolerance,
                  rank: int, iterations: int, seed: int, solve_fn=solve_rows, residual_fn=residuals) -> SweepRun:
    """Train ALS from scratch on ``sides``' ratings (row ids ``ids``), in place: factors, then targets.

    ``sides[s].X`` becomes the trained factors and ``sides[s].T`` their
    training residual (float64), the rows' new targets.  The run's
    deviation and drift are 0 (each row's residual is its target), its
    ``bnorm`` the rows' ``|b|`` and its bounds ``policy``'s on the new targets.
    """
    if iterations < 1:
        raise ValueError(f"a retrain needs at least one iteration, got {iterations}")
    for s in sides:
        sides[s].X = init_factors(ids[s], rank, seed, INIT_SALT[s])
    for _ in range(iterations):
        sweep(sides, spec, solve_fn, offsets=False)
    deviation, drift, bnorm, bounds = {}, {}, {}, {}
    for s in sides:
        me, nb = sides[s], sides[other_side(s)]
        me.T, bnorm[s] = residual_fn(me.X, me.indptr, me.src, me.ratings, nb.X, spec,
                                     gram=gram(nb.X) if spec.implicit else None)
        n = me.X.shape[0]
        deviation[s], drift[s] = np.zeros(n), np.zeros((n, me.X.shape[1]))
        bounds[s] = policy.bounds(np.linalg.norm(me.T, axis=1), bnorm[s])
    return SweepRun({s: sides[s].X for s in sides}, deviation, drift, bnorm, bounds, iterations, True,
                    [{"iteration": iterations, "retrain": True}])


def residual_figures(sides: dict[str, SweepSide], bnorm: dict[str, np.ndarray]) -> dict:
    """The new model's training residual ``|e_r| / |b_r|``: quantiles pooled and per side, as
    :func:`~spark_unlearn.als.certify.residual_summary` gives them from the tables (exact quantiles here)."""
    rel = {s: np.linalg.norm(sides[s].T, axis=1) / np.maximum(bnorm[s], 1e-300) for s in sides}

    def summary(v: np.ndarray) -> dict[str, float]:
        if v.size == 0:
            return {**{k: 0.0 for k in QUANTILES}, "max": 0.0}
        return {**{k: float(np.quantile(v, q)) for k, q in QUANTILES.items()}, "max": float(v.max())}

    return {**summary(np.concatenate([rel["user"], rel["item"]])), "by_side": {s: summary(rel[s]) for s in ("user", "item")}}

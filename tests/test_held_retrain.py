"""Oracle tests of the retrain on the driver (:mod:`spark_unlearn.als.held_retrain`) and of the planner's rule that
chooses it, pure numpy.  The Spark-level oracle (the published factors equal ``train_als``'s on the remaining data) is
in tests/test_block_store.py.

Oracles: ALS written out with the dense reference kernels from Spark's initial factors; each row's training
residual from the dense normal equations; quantiles with numpy; the planner's rule applied by hand.
"""

from __future__ import annotations

import numpy as np
import pytest

from spark_unlearn.als.held_retrain import residual_figures, retrain_sides
from spark_unlearn.als.kernels import gram, residuals_reference, solve_rows_reference
from spark_unlearn.als.policy import RowTolerance
from spark_unlearn.als.strategy_cost import RETRAIN_SHARE, choose_strategy
from spark_unlearn.als.train import INIT_SALT, init_factors
from tests.test_sweeps_planner import RANK, problem


@pytest.mark.parametrize("implicit", [True, False])
def test_the_retrain_is_als_from_sparks_initial_factors_and_its_residual_is_every_target(implicit):
    sides, spec = problem(implicit, seed=4)
    held = sides()
    ids = {s: np.arange(held[s].X.shape[0]) * 3 + 7 for s in held}  # ids are not positions
    run = retrain_sides(held, ids, spec, RowTolerance(floor=0.01), RANK, iterations=4, seed=5)
    ref = sides()
    F = {s: init_factors(ids[s], RANK, 5, INIT_SALT[s]) for s in ref}
    for _ in range(4):
        for s, o in (("item", "user"), ("user", "item")):
            g = gram(F[o]) if implicit else None
            F[s] = solve_rows_reference(ref[s].indptr, ref[s].src, ref[s].ratings, F[o], spec, g).astype(np.float32)
    for s, o in (("user", "item"), ("item", "user")):
        np.testing.assert_allclose(run.factors[s], F[s], rtol=1e-4, atol=1e-6)
        R, bnorm = residuals_reference(held[s].X, held[s].indptr, held[s].src, held[s].ratings, held[o].X, spec,
                                       gram(held[o].X) if implicit else None)
        np.testing.assert_allclose(held[s].T, R, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(run.bnorm[s], bnorm, rtol=1e-9)
        assert not run.deviation[s].any() and not run.drift[s].any()
    assert run.holds and run.sweeps == 4 and run.row_solves == 4 * sum(x.shape[0] for x in F.values())
    # The side solved last is stationary; the one solved first keeps training's residual.
    assert np.abs(held["user"].T).max() < 1e-4 * np.abs(held["item"].T).max() + 1e-6
    figures = residual_figures(held, run.bnorm)
    rel = {s: np.linalg.norm(held[s].T, axis=1) / run.bnorm[s] for s in held}
    assert figures["by_side"]["item"]["p90"] == pytest.approx(np.quantile(rel["item"], 0.9))
    assert figures["max"] == pytest.approx(max(rel["user"].max(), rel["item"].max()))
    with pytest.raises(ValueError, match="at least one iteration"):
        retrain_sides(sides(), ids, spec, RowTolerance(floor=0.01), RANK, iterations=0, seed=5)


def test_the_planner_retrains_a_batch_deleting_at_least_retrain_share_when_the_version_fits_the_driver():
    args = dict(direct_rows=10, total_rows=10_000, max_rows=5_000, max_sweeps=10)
    assert choose_strategy(**args, sweeps_possible=True, deleted_share=RETRAIN_SHARE).choice == "retrain"
    below = choose_strategy(**args, sweeps_possible=True, deleted_share=RETRAIN_SHARE * 0.99)
    assert below.choice == "frontier" and below.deleted_share == pytest.approx(RETRAIN_SHARE * 0.99)
    # Where the version does not fit the driver the rule cannot apply (no retrain there): the frontier, as before.
    assert choose_strategy(**args, sweeps_possible=False, why_not="too big", deleted_share=0.5).choice == "frontier"
    custom = choose_strategy(**args, sweeps_possible=True, deleted_share=0.3, retrain_share=0.5)
    assert custom.choice == "frontier" and custom.retrain_share == 0.5
    assert "deletes 30.0% of the ratings" in choose_strategy(**args, sweeps_possible=True, deleted_share=0.3).why

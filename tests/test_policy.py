"""Certificate policies on a tiny implicit ALS model: one deletion, then a neighbour pushed off its bound."""

from __future__ import annotations

import numpy as np
import pytest

from spark_unlearn.als.kernels import SolveSpec, gram, residuals, solve_rows
from spark_unlearn.als.policy import CertificatePolicy, residual_floor, strict_tolerance, violations
from spark_unlearn.errors import ConfigError

SPEC = SolveSpec(reg=0.1, implicit=True, alpha=1.0)


def csr(rows, cols, vals, n):
    order = np.lexsort((cols, rows))
    return np.searchsorted(rows[order], np.arange(n + 1)), cols[order], vals[order].astype(np.float32)


def sides(u, i, r, nu, ni):
    return {"user": csr(u, i, r, nu), "item": csr(i, u, r, ni)}


def solve(data, F, side, targets=None, rows=None):
    other = "item" if side == "user" else "user"
    indptr, src, rat = data[side]
    Y = F[other]
    t = None if targets is None else (targets[side] if rows is None else targets[side][rows])
    return solve_rows(indptr, src, rat, Y, SPEC, gram=gram(Y), rows=rows, offsets=t).astype(np.float32)


def resid(data, F):
    out = {}
    for side, other in (("user", "item"), ("item", "user")):
        indptr, src, rat = data[side]
        out[side] = residuals(F[side], indptr, src, rat, F[other], SPEC, gram=gram(F[other]))
    return out


def deviation(data, F, targets):
    r = resid(data, F)
    return {s: np.linalg.norm(r[s][0] - targets[s], axis=1) / np.maximum(r[s][1], 1e-300) for s in r}


@pytest.fixture(scope="module")
def trained():
    rng = np.random.default_rng(2)
    nu, ni, k = 30, 40, 4
    pairs = rng.choice(nu * ni, size=320, replace=False)
    u, i = pairs // ni, pairs % ni
    r = rng.integers(1, 6, size=u.size).astype(np.float32)
    data = sides(u, i, r, nu, ni)
    F = {"user": rng.normal(size=(nu, k)).astype(np.float32) / 2, "item": rng.normal(size=(ni, k)).astype(np.float32) / 2}
    for _ in range(10):  # Spark's order: items, then users
        F["item"] = solve(data, F, "item")
        F["user"] = solve(data, F, "user")
    res = resid(data, F)
    rho = {s: np.linalg.norm(res[s][0], axis=1) / res[s][1] for s in res}
    return u, i, r, nu, ni, F, res, rho


def test_one_deletion_certified_then_a_pushed_neighbour_fails_under_both_policies(trained):
    u, i, r, nu, ni, F0, res, rho = trained
    gone = np.zeros(u.size, dtype=bool)
    gone[7] = True
    u0, i0 = int(u[7]), int(i[7])
    data = sides(u[~gone], i[~gone], r[~gone], nu, ni)
    targets = {s: res[s][0].copy() for s in res}
    targets["user"][u0] = 0.0  # rows whose own data changed are solved exactly
    targets["item"][i0] = 0.0
    F = {s: v.copy() for s, v in F0.items()}
    for _ in range(30):  # warm offset sweeps to the unlearned fixed point
        F["item"] = solve(data, F, "item", targets)
        F["user"] = solve(data, F, "user", targets)
    floor = residual_floor(rho["item"])  # items are solved first in each iteration
    tol = strict_tolerance(rho)
    assert float(np.quantile(rho["user"], 0.9)) < 1e-5 < floor  # the side solved last ends at ~0
    policies = [CertificatePolicy(), CertificatePolicy("strict")]
    dev = deviation(data, F, targets)
    for pol in policies:
        for s in dev:
            assert violations(dev[s], pol.bounds(rho[s], floor, tol)).size == 0, (pol.name, s)

    # push one neighbour of the deleted cell (another user of item i0) just above both bounds
    indptr, src, _ = data["item"]
    neighbour = int(next(x for x in src[indptr[i0]:indptr[i0 + 1]] if x != u0))
    limit = max(rho["user"][neighbour], floor, tol)
    direction = np.ones(F["user"].shape[1])
    scale = 1e-4
    while True:
        G = {"user": F["user"].copy(), "item": F["item"]}
        G["user"][neighbour] += (scale * direction).astype(np.float32)
        d = deviation(data, G, targets)["user"]
        if d[neighbour] > 1.05 * limit:
            break
        scale *= 1.5
    for pol in policies:
        bad = violations(d, pol.bounds(rho["user"], floor, tol))
        assert bad.tolist() == [neighbour], (pol.name, bad)


def test_training_precision_is_row_wise_and_strict_is_uniform(trained):
    *_, rho = trained
    floor, tol = residual_floor(rho["item"]), strict_tolerance(rho)
    b = CertificatePolicy().bounds(rho["item"], floor, tol)
    assert np.array_equal(b, np.maximum(rho["item"], floor))
    above = rho["item"] > floor
    assert above.any() and np.array_equal(b[above], rho["item"][above])  # a row keeps its own, larger residual
    assert np.all(CertificatePolicy("strict").bounds(rho["item"], floor, tol) == tol)
    assert violations(np.array([0.0, np.nan, 2.0]), np.array([1.0, 1.0, 1.0])).tolist() == [1, 2]


@pytest.mark.parametrize("kwargs", [{"name": "loose"}, {"floor_quantile": 1.5}, {"floor_quantile": True}])
def test_bad_policies_are_refused(kwargs):
    with pytest.raises(ConfigError):
        CertificatePolicy(**kwargs)


# ----------------------------------------------------------------------------- the engine's row tolerance


def test_row_tolerance_is_one_number_under_strict_and_the_own_residual_floored_under_training_precision():
    from spark_unlearn.als.policy import RowTolerance

    t_norm, bnorm = np.array([0.0, 0.3, 2.0]), np.array([1.0, 1.0, 4.0])
    assert RowTolerance(0.1).bounds(t_norm, bnorm).tolist() == [0.1, 0.1, 0.1]
    # own residual |t|/|b|: 0, 0.3, 0.5; floored at 0.1; weight 2 doubles it.
    assert RowTolerance(0.1, 1.0, "training-precision").bounds(t_norm, bnorm).tolist() == pytest.approx([0.1, 0.3, 0.5])
    assert RowTolerance(0.1, 2.0, "training-precision").bounds(t_norm, bnorm).tolist() == pytest.approx([0.1, 0.6, 1.0])


def test_the_request_tolerance_comes_from_the_recorded_training_residual():
    from spark_unlearn.als.policy import row_tolerance

    tr = {"p90": 0.02, "by_side": {"user": {"p90": 0.0}, "item": {"p90": 0.05}}}
    strict = row_tolerance("strict", tr, None, 2.0)
    assert (strict.floor, strict.own) == (pytest.approx(0.04), 0.0)
    tp = row_tolerance("training-precision", tr, None, 2.0)
    assert (tp.floor, tp.own) == (pytest.approx(0.1), 2.0) and "item side" in tp.source
    given = row_tolerance("training-precision", tr, 0.3, 1.0)
    assert (given.floor, given.own, given.source) == (0.3, 1.0, "given")
    # A model recorded before per-side residuals: the pooled percentile, said so.
    old = row_tolerance("training-precision", {"p90": 0.02}, None, 1.0)
    assert old.floor == pytest.approx(0.02) and "no per-side record" in old.source
    assert row_tolerance("strict", None, None, 1.0).floor == pytest.approx(1e-2)
    with pytest.raises(ConfigError, match="certificate policy"):
        row_tolerance("lenient", tr, None, 1.0)


@pytest.mark.parametrize("kwargs, match", [
    ({"mode": "fast"}, "unknown unlearning mode 'fast'"),
    ({"engine": "gpu"}, "unknown unlearning engine 'gpu'"),
    ({"certificate_policy": "loose"}, "unknown certificate policy 'loose'"),
    ({"tol": 1e-9}, "below what float32 factors can certify"),
    ({"tol": "0.1"}, "tol must be a number"),
    ({"tol_factor": 0}, "tol_factor=0 must be > 0"),
    ({"max_rounds": 0}, "max_rounds=0 must be >= 1"),
    ({"full_fallback_fraction": 1.5}, r"full_fallback_fraction=1.5 must be in \(0, 1\]"),
    ({"driver_rows": -1}, "driver_rows=-1 is negative"),
    ({"hold_side_mb": -1}, "hold_side_mb=-1 is negative"),
    ({"hold_side_mb": 1.5}, "hold_side_mb must be an integer"),
    ({"sweep_driver_mb": -1}, "sweep_driver_mb=-1 is negative"),
    ({"min_sweeps": 0}, "min_sweeps=0 must be >= 1"),
    ({"min_sweeps": 1.5}, "min_sweeps must be an integer"),
    ({"forgetting_share": 1.0}, r"forgetting_share=1.0 must be in \[0, 1\)"),
    ({"forgetting_share": "high"}, "forgetting_share must be a number"),
    ({"retrain_share": 0}, r"retrain_share=0 must be in \(0, 1\]"),
    ({"retrain_share": 1.5}, r"retrain_share=1.5 must be in \(0, 1\]"),
    ({"sweep_driver_mb": "big"}, "sweep_driver_mb must be an integer"),
    ({"strict": "yes"}, "strict must be true or false"),
])
def test_bad_request_options_are_refused_where_they_enter(kwargs, match):
    from spark_unlearn.als.options import UnlearnOptions

    with pytest.raises(ConfigError, match=match):
        UnlearnOptions(**kwargs)


def test_options_from_a_config_section_keep_only_their_own_keys():
    from spark_unlearn.als.options import UnlearnOptions
    from spark_unlearn.config import defaults

    section = defaults()["unlearn"]
    opts = UnlearnOptions.from_config({**section, "tol": 0.05, "certificate_policy": "strict"})
    assert (opts.tol, opts.certificate_policy, opts.mode) == (0.05, "strict", "frontier")
    assert UnlearnOptions.from_config(section) == UnlearnOptions()  # the config's defaults are the options' defaults


def test_the_strict_figure_is_the_maximum_against_the_pooled_90th_percentile_whatever_the_policy():
    from spark_unlearn.als.policy import TOL_FLOOR, strict_figure

    got = strict_figure(0.3, {"p90": 0.2}, tol_factor=1.5, max_kind="upper bound")
    assert got == {"tolerance": pytest.approx(0.3), "max_ratio": pytest.approx(1.0), "holds": True,
                   "max_kind": "upper bound"}
    assert strict_figure(0.5, {"p90": 0.25})["holds"] is False
    assert strict_figure(1e-7, {"p90": 1e-9})["tolerance"] == TOL_FLOOR  # float32 factors cannot certify below it
    assert strict_figure(0.5, None) is None and strict_figure(0.5, {"p50": 0.1}) is None

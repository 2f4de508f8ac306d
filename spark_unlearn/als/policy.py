"""Certificate policies: how far from the unlearned fixed point each row may stay.

A row's deviation is ``dev_r = |A'_r x_r - b'_r - t_r| / |b'_r|`` (``t_r`` its
training offset, 0 on rows whose own data changed).  A policy turns the
model's training residual ``rho_r = |e_r| / |b_r|`` into one bound per row; the
certificate holds when every row meets its own bound, so a small request
cannot hide behind the untouched rows.

``strict``
    ``dev_r <= tol`` for every row, ``tol`` the 90th percentile of the training
    residual pooled over both sides (the product's historical rule).
``training-precision`` (default)
    ``dev_r <= max(rho_r, floor)``: unlearning leaves no row further from
    stationarity than training left it, except below ``floor``, the
    ``floor_quantile`` quantile of the training residual of the side solved
    *first* in each ALS iteration.  The side solved last ends training with
    ``rho = 0`` up to rounding (it was just solved), so its own residual
    cannot be the bound, and rows that training happened to leave stationary
    would otherwise have to be solved to rounding noise.  The quantile 0.9 is
    measured (``benchmarks/measure_policy.py``, docs/bench/policy_*.json): with
    0.25-0.75 a few dozen rows of Amazon Digital Music never pass, whatever the
    number of warm sweeps (their deviation stalls at 0.1-0.4 while their own
    training residual is lower); with 0.9 warm sweeps pass in 3 sweeps after a
    1 % random deletion (ml-latest-small and ADM) and in 5 after CURE4Rec's
    core 5 % users (strict: 3, 3 and 6).

Rows whose own data changed are solved exactly under both policies; a policy
only decides how far their neighbours may lag.

In the engine (:class:`RowTolerance`, :func:`row_tolerance`) a row's own
residual is taken at today's scale, ``|t_r| / |b'_r|`` (its stored target
over its right-hand side on the remaining data), times ``tol_factor``; a row
whose data changed has ``t_r = 0`` and is held to the floor.  ``--tol`` sets
the floor under either policy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spark_unlearn.errors import ConfigError

POLICIES = ("training-precision", "strict")
FLOOR_QUANTILE = 0.9


@dataclass(frozen=True)
class CertificatePolicy:
    """A named certificate policy (see the module docstring)."""

    name: str = "training-precision"
    floor_quantile: float = FLOOR_QUANTILE

    def __post_init__(self) -> None:
        if self.name not in POLICIES:
            raise ConfigError(f"certificate policy must be one of {POLICIES}, got {self.name!r}")
        q = self.floor_quantile
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 <= q <= 1.0:
            raise ConfigError(f"floor_quantile must be a number in [0, 1], got {q!r}")

    def bounds(self, own_residual: np.ndarray, floor: float, strict_tolerance: float) -> np.ndarray:
        """Each row's largest admissible deviation, given its own training residual ``rho_r``."""
        rho = np.asarray(own_residual, dtype=np.float64)
        if self.name == "strict":
            return np.full(rho.shape, float(strict_tolerance))
        return np.maximum(rho, float(floor))

    def to_dict(self) -> dict:
        return {"name": self.name, "floor_quantile": self.floor_quantile}


def residual_floor(first_side_residual: np.ndarray, quantile: float = FLOOR_QUANTILE) -> float:
    """The ``quantile`` of the training residual of the side solved first (0 for an empty side)."""
    r = np.asarray(first_side_residual, dtype=np.float64)
    return float(np.quantile(r, quantile)) if r.size else 0.0


def strict_tolerance(residual_by_side: dict[str, np.ndarray]) -> float:
    """The 90th percentile of the training residual pooled over both sides."""
    pooled = np.concatenate([np.asarray(v, dtype=np.float64) for v in residual_by_side.values()])
    return float(np.quantile(pooled, 0.9)) if pooled.size else 0.0


def strict_figure(max_deviation: float, training_residual: dict | None, tol_factor: float = 1.0,
                  max_kind: str = "exact") -> dict | None:
    """The strict policy's verdict on a certificate's maximum, reported under either policy.

    ``tolerance`` is the strict floor (``tol_factor`` times the pooled 90th
    percentile of the training residual); ``max_ratio`` the maximum over it.
    ``max_kind`` says whether the maximum is exact or an upper bound (then a
    ratio above 1 does not show a violation).  ``None`` without a recorded
    training residual.
    """
    p90 = (training_residual or {}).get("p90")
    if not p90:
        return None
    tol = max(TOL_FLOOR, float(tol_factor) * float(p90))
    return {"tolerance": tol, "max_ratio": float(max_deviation) / tol, "holds": bool(max_deviation <= tol),
            "max_kind": max_kind}


def violations(deviation: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Indices of the rows whose deviation exceeds their bound (NaN deviations fail)."""
    dev = np.asarray(deviation, dtype=np.float64)
    return np.flatnonzero(~(dev <= bounds))


# Factors are float32: below this relative residual rounding alone breaks the
# certificate, so a smaller tolerance can never be met.
TOL_FLOOR = 1e-5
# The side ALS solves first in each iteration (Spark MLlib and this package: items, then users).
FIRST_SIDE = "item"


@dataclass(frozen=True)
class RowTolerance:
    """The bound a request holds every row to: ``bound_r = max(floor, own * |t_r| / |b'_r|)``.

    ``t_r`` is the row's stored target (its training residual, 0 once its own
    data changed) and ``b'_r`` its right-hand side on the remaining data, so
    ``|t_r| / |b'_r|`` is the row's own training residual at today's scale.
    ``strict`` has ``own = 0`` (one number for every row); ``training-precision``
    has ``own = tol_factor``.  Every row's bound is at least ``floor``, so a
    check against ``floor`` alone is conservative under either policy (the
    solve stages use it where a row's target is not at hand).
    """

    floor: float
    own: float = 0.0
    policy: str = "strict"
    source: str = ""

    def bounds(self, target_norm: np.ndarray, bnorm: np.ndarray) -> np.ndarray:
        """Each row's bound, from ``|t_r|`` and ``|b'_r|``."""
        t = np.asarray(target_norm, dtype=np.float64)
        if not self.own:
            return np.full(t.shape, self.floor)
        return np.maximum(self.floor, self.own * t / np.maximum(np.asarray(bnorm, dtype=np.float64), 1e-300))

    def to_dict(self) -> dict:
        return {"name": self.policy, "floor": self.floor, "own_residual_weight": self.own, "floor_source": self.source,
                "bound": "max(floor, own_residual_weight * |t_r| / |b'_r|) per row"}


def row_tolerance(policy: str, training_residual: dict | None, tol: float | None, tol_factor: float = 1.0) -> RowTolerance:
    """The :class:`RowTolerance` of a request (see the module docstring for the two policies).

    ``training_residual`` holds the model's training residual ``|e_r|/|b_r|``:
    pooled percentiles (``p90``, ...) and per side (``by_side``).  A given
    ``tol`` is the floor under either policy.
    """
    CertificatePolicy(policy)  # validates the name
    own = float(tol_factor) if policy == "training-precision" else 0.0
    if tol is not None:
        return RowTolerance(float(tol), own, policy, "given")
    tr = training_residual or {}
    if policy == "strict":
        if tr.get("p90"):
            p90 = float(tr["p90"])
            return RowTolerance(max(TOL_FLOOR, tol_factor * p90), own, policy,
                                f"{tol_factor} x the 90th percentile of the model's training residual ({p90:.3g})")
        return RowTolerance(1e-2 * tol_factor, own, policy, "1e-2 (no training residual recorded for this model)")
    side = (tr.get("by_side") or {}).get(FIRST_SIDE) or {}
    q = side.get("p90")
    if q:
        return RowTolerance(max(TOL_FLOOR, tol_factor * float(q)), own, policy,
                            f"{tol_factor} x the 90th percentile of the {FIRST_SIDE} side's training residual ({float(q):.3g})")
    if tr.get("p90"):  # a model recorded before per-side residuals: the pooled percentile, a lower floor
        p90 = float(tr["p90"])
        return RowTolerance(max(TOL_FLOOR, tol_factor * p90), own, policy,
                            f"{tol_factor} x the pooled 90th percentile of the training residual ({p90:.3g}; no per-side record)")
    return RowTolerance(1e-2 * tol_factor, own, policy, "1e-2 (no training residual recorded for this model)")

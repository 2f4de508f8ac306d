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


def violations(deviation: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Indices of the rows whose deviation exceeds their bound (NaN deviations fail)."""
    dev = np.asarray(deviation, dtype=np.float64)
    return np.flatnonzero(~(dev <= bounds))

"""Anderson acceleration of a fixed-point map ``x -> g(x)`` (type II, memory ``m``).

Warm offset sweeps are a fixed-point iteration: ``x`` holds both sides'
factors, flattened, and ``g(x)`` is what one sweep (items, then users) makes
of them.  Plain iteration ``x_{k+1} = g(x_k)`` converges linearly, at the rate
of the slowest mode; Anderson acceleration extrapolates from the last ``m``
steps instead (Walker and Ni, SIAM J. Numer. Anal. 2011; on a linear map it is
GMRES in disguise).

With residuals ``f_i = g(x_i) - x_i``, differences ``df_i = f_{i+1} - f_i``,
``dg_i = g(x_{i+1}) - g(x_i)`` stacked as the columns of ``dF``, ``dG`` (the
last ``m_k = min(m, k)`` of them), step ``k`` solves the least-squares problem

::

    gamma = argmin_gamma |f_k - dF gamma|^2  (+ mu |S gamma|^2)

and moves to

::

    x_{k+1} = g(x_k) - dG gamma                                  (beta = 1)
    x_{k+1} = x_k + beta f_k - (dG - (1 - beta) dF) gamma        (damping beta)

which is the constrained form ``x_{k+1} = sum_i alpha_i ((1 - beta) x_i +
beta g(x_i))`` with ``alpha`` minimising ``|sum_i alpha_i f_i|`` subject to
``sum_i alpha_i = 1`` (:func:`anderson_reference`).  ``S`` scales the columns
of ``dF`` to unit length, so the optional regularisation ``mu`` does not
depend on the size of the vectors.  When the scaled normal matrix is
ill-conditioned (condition number above ``max_condition``; its columns are
nearly dependent, typically once the iteration reaches rounding noise) the
history is dropped and the step is a plain (damped) one: a restart.  With
``m = 0`` every step is ``g(x_k)`` itself, plain iteration.
"""

from __future__ import annotations

from collections import deque

import numpy as np


class Anderson:
    """Type-II Anderson acceleration with memory ``memory`` (see the module docstring).

    Parameters
    ----------
    memory
        Number ``m`` of past differences kept; 0 is plain (damped) iteration.
    damping
        ``beta`` in ``(0, 1]``; 1 moves to the extrapolated ``g`` values.
    regularisation
        ``mu >= 0``, Tikhonov term of the least squares in column-scaled form.
    max_condition
        Restart when the scaled normal matrix's condition number exceeds this.

    Examples
    --------
    >>> acc = Anderson(memory=4)
    >>> x = x0
    >>> for _ in range(n):
    ...     x = acc.update(x, g(x))
    """

    def __init__(self, memory: int = 4, damping: float = 1.0, regularisation: float = 0.0,
                 max_condition: float = 1e10):
        if memory < 0 or not 0.0 < damping <= 1.0 or regularisation < 0.0:
            raise ValueError("Anderson needs memory >= 0, 0 < damping <= 1 and regularisation >= 0")
        self.memory, self.damping = int(memory), float(damping)
        self.regularisation, self.max_condition = float(regularisation), float(max_condition)
        self.restarts = 0
        self._dF: deque = deque(maxlen=max(self.memory, 1))
        self._dG: deque = deque(maxlen=max(self.memory, 1))
        self._last: tuple[np.ndarray, np.ndarray] | None = None  # (f_{k-1}, g_{k-1})

    def reset(self) -> None:
        """Forget the history: the next step is a plain one."""
        self._dF.clear()
        self._dG.clear()
        self._last = None

    def update(self, x: np.ndarray, gx: np.ndarray) -> np.ndarray:
        """The next iterate from the current one ``x`` and its image ``gx = g(x)`` (any shape, same for both)."""
        shape = np.shape(gx)
        x = np.asarray(x, dtype=np.float64).ravel()
        g = np.asarray(gx, dtype=np.float64).ravel()
        f = g - x
        if self.memory and self._last is not None:
            self._dF.append(f - self._last[0])
            self._dG.append(g - self._last[1])
        self._last = (f, g) if self.memory else None
        gamma = self._coefficients(f) if self._dF else None
        if gamma is None:
            step = g.copy() if self.damping == 1.0 else x + self.damping * f
        elif self.damping == 1.0:
            step = g - _combine(self._dG, gamma)
        else:
            step = x + self.damping * f - _combine(self._dG, gamma) + (1.0 - self.damping) * _combine(self._dF, gamma)
        return step.reshape(shape)

    def _coefficients(self, f: np.ndarray) -> np.ndarray | None:
        """``gamma`` of the least squares, or None after a restart (ill-conditioned or degenerate history)."""
        dF = list(self._dF)
        H = np.array([[a @ b for b in dF] for a in dF])
        scale = np.sqrt(np.diag(H))
        if not np.all(scale > 0):
            return self._restart()
        Hs = H / np.outer(scale, scale) + self.regularisation * np.eye(len(dF))
        if not np.isfinite(Hs).all() or np.linalg.cond(Hs) > self.max_condition:
            return self._restart()
        rhs = np.array([a @ f for a in dF]) / scale
        return np.linalg.solve(Hs, rhs) / scale

    def _restart(self) -> None:
        # Keep (f_k, g_k): the next step starts a new history from here.
        self.restarts += 1
        self._dF.clear()
        self._dG.clear()
        return None


def _combine(columns, gamma: np.ndarray) -> np.ndarray:
    """``sum_i gamma_i columns_i``."""
    out = np.zeros_like(columns[0])
    for c, w in zip(columns, gamma):
        out += w * c
    return out


# ---------------------------------------------------------------------------
# Slow obvious reference (tests only)
# ---------------------------------------------------------------------------


def anderson_reference(g, x0: np.ndarray, memory: int, iterations: int, damping: float = 1.0) -> list[np.ndarray]:
    """Iterates ``x_0 .. x_iterations`` of Anderson in its constrained form, no regularisation or restart.

    ``x_{k+1} = sum_i alpha_i ((1 - beta) x_i + beta g(x_i))`` over the last
    ``min(memory, k) + 1`` iterates, ``alpha`` minimising ``|sum_i alpha_i f_i|``
    subject to ``sum_i alpha_i = 1`` (its KKT system solved densely).
    """
    xs = [np.asarray(x0, dtype=np.float64)]
    gs: list[np.ndarray] = []
    for k in range(iterations):
        gs.append(np.asarray(g(xs[k]), dtype=np.float64))
        window = range(k - min(memory, k), k + 1)
        F = np.stack([gs[i] - xs[i] for i in window], axis=1)
        n = F.shape[1]
        kkt = np.zeros((n + 1, n + 1))
        kkt[:n, :n] = F.T @ F
        kkt[:n, n] = kkt[n, :n] = 1.0
        alpha = np.linalg.lstsq(kkt, np.r_[np.zeros(n), 1.0], rcond=None)[0][:n]
        xs.append(sum(a * ((1.0 - damping) * xs[i] + damping * gs[i]) for a, i in zip(alpha, window)))
    return xs

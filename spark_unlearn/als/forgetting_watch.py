"""How far the deleted interactions' predicted scores still have to move: the sweeps' forgetting stop.

The certificate checks that every row is as stationary as training left it.
It does not see how far the model still has to travel: warm sweeps move the
deleted pairs' scores towards the retrain's for a few sweeps after the
certificate first holds (ADM, 1 % of the interactions: the forgetting gap
closed is 0.68 after one sweep and 1.02 after three; docs/BENCHMARKS.md).
So the sweeps also watch the deleted pairs whose user and item both stay in
the model.

With ``s_j`` the pairs' mean predicted score ``mean(x_u . y_i)`` after step
``j`` (``s_0`` the trained model's, ``s_1`` after the first step: the rows
whose own data changed solved, or a frontier's work, or the first sweep,
then one per sweep), the steps ``d_j = s_j - s_{j-1}`` of a linearly
converging iteration shrink by a rate ``q = d_k / d_{k-1}``, and the move
still to come is the geometric tail

    remaining = |d_k q / (1 - q)|     (|q| < 1; infinite otherwise),

so the share of the whole move already made is

    share = |s_k - s_0| / (|s_k - s_0| + remaining).

The first step (the exact re-solve of the rows whose data changed, which
drops the deleted pairs' scores most) is not a step of the iteration, so the
rate comes from steps 2 and later: the estimate exists from the second sweep
on.  The sweeps stop only when the certificate holds *and* ``share`` is at
least the request's ``forgetting_share``.  On ADM and ml-latest-small
(1 % of the interactions) the estimate crosses 0.95 at the third sweep,
where the forgetting gap measured against a retrain is 0.94-1.02
(docs/BENCHMARKS.md).  It is an estimate, not a bound: the tail of the
last two steps misses a slower mode that takes over later (ALS is flat
along some directions).  On small random problems it estimated 0.975 where
200 more sweeps show 0.72 (tests/test_forgetting_watch.py).  The report
states it with the scores it came from; the stop never shortens the
sweeps, it only adds to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def pair_scores(U: np.ndarray, V: np.ndarray, users: np.ndarray, items: np.ndarray) -> float:
    """``mean_p U[users[p]] . V[items[p]]`` in float64 (0 for no pairs)."""
    if users.size == 0:
        return 0.0
    return float(np.einsum("ij,ij->i", U[users].astype(np.float64), V[items].astype(np.float64)).mean())


def pair_scores_reference(U: np.ndarray, V: np.ndarray, users: np.ndarray, items: np.ndarray) -> float:
    """:func:`pair_scores` one pair at a time (tests only)."""
    if len(users) == 0:
        return 0.0
    return sum(float(np.dot(U[u].astype(np.float64), V[i].astype(np.float64))) for u, i in zip(users, items)) / len(users)


def forgetting_estimate(scores: list[float]) -> dict:
    """The move made, the move to come and its share, from the mean scores ``s_0 .. s_k`` (module docstring).

    Before three steps (``k < 3``) there is no rate: ``remaining`` is infinite
    and ``share`` 0, unless nothing moved at all.
    """
    moved = abs(scores[-1] - scores[0]) if scores else 0.0
    if len(scores) < 4:
        remaining = 0.0 if len(scores) >= 2 and all(s == scores[0] for s in scores) else float("inf")
        rate = None
    else:
        last, before = scores[-1] - scores[-2], scores[-2] - scores[-3]
        if last == 0.0:
            rate, remaining = 0.0, 0.0
        elif before == 0.0:
            rate, remaining = float("inf"), float("inf")
        else:
            rate = last / before
            remaining = abs(last * rate / (1.0 - rate)) if abs(rate) < 1.0 else float("inf")
    total = moved + remaining
    share = 1.0 if total == 0.0 else (0.0 if remaining == float("inf") else moved / total)
    return {"moved": moved, "remaining": remaining, "rate": rate, "share": share}


@dataclass
class ForgettingWatch:
    """The deleted pairs (row positions on each side) and their mean score after each step.

    ``target``: the share of the move the sweeps must have made
    (:func:`forgetting_estimate`); 0 turns the stop off (the scores are
    still recorded).  With no pairs (user or item erasures only) there is
    nothing to watch and the stop always holds.
    """

    users: np.ndarray
    items: np.ndarray
    target: float
    scores: list[float] = field(default_factory=list)

    def observe(self, U: np.ndarray, V: np.ndarray) -> None:
        if self.users.size:
            self.scores.append(pair_scores(U, V, self.users, self.items))

    def estimate(self) -> dict:
        return forgetting_estimate(self.scores)

    def done(self) -> bool:
        return self.users.size == 0 or self.target <= 0 or self.estimate()["share"] >= self.target

    def to_json(self) -> dict:
        est = self.estimate() if self.users.size else {"moved": 0.0, "remaining": 0.0, "rate": None, "share": 1.0}
        return {"pairs": int(self.users.size), "target_share": self.target, "scores": list(self.scores),
                **{k: (None if v is not None and v == float("inf") else v) for k, v in est.items()},
                "holds": self.done()}

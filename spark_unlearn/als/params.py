"""Hyperparameters of an ALS model, with Spark MLlib's names and conventions."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from spark_unlearn.errors import ConfigError


@dataclass(frozen=True)
class ALSParams:
    """ALS hyperparameters (Spark MLlib ``ALS`` conventions).

    Objective (explicit)::

        sum_{(u,i) observed} (r_ui - x_u . y_i)^2 + reg * (sum_u n_u |x_u|^2 + sum_i n_i |y_i|^2)

    Objective (implicit, Hu-Koren-Volinsky with Spark's weighting)::

        sum_{u,i} c_ui (p_ui - x_u . y_i)^2 + reg * (sum_u n+_u |x_u|^2 + sum_i n+_i |y_i|^2)

    with ``c_ui = 1 + alpha |r_ui|`` on observed cells, 1 elsewhere,
    ``p_ui = 1`` iff ``r_ui > 0``, and ``n+`` the count of positive ratings.

    Attributes
    ----------
    rank
        Number of latent factors ``k``.
    reg
        Spark's ``regParam`` (lambda); scaled by each row's rating count.
    alpha
        Confidence slope of implicit feedback (``alpha`` in Spark).
    implicit
        ``implicitPrefs`` in Spark.
    iterations
        Spark's ``maxIter``: one iteration solves all items, then all users.
    seed
        Seed of the random initial factors.
    num_blocks
        Number of user blocks and of item blocks (Spark's ``numUserBlocks``
        and ``numItemBlocks``); ``None`` uses the context's default parallelism.
    checkpoint_interval
        Truncate lineage every this many iterations (Spark's ``checkpointInterval``).
    """

    rank: int = 10
    reg: float = 0.1
    alpha: float = 1.0
    implicit: bool = False
    iterations: int = 10
    seed: int = 0
    num_blocks: int | None = None
    checkpoint_interval: int = 10

    def __post_init__(self) -> None:
        if not isinstance(self.rank, int) or isinstance(self.rank, bool) or self.rank < 1:
            raise ConfigError(f"rank must be a positive integer, got {self.rank!r}")
        if not (isinstance(self.reg, (int, float)) and self.reg >= 0):
            raise ConfigError(f"reg must be a non-negative number, got {self.reg!r}")
        if not (isinstance(self.alpha, (int, float)) and self.alpha >= 0):
            raise ConfigError(f"alpha must be a non-negative number, got {self.alpha!r}")
        if not isinstance(self.iterations, int) or isinstance(self.iterations, bool) or self.iterations < 0:
            raise ConfigError(f"iterations must be a non-negative integer, got {self.iterations!r}")
        if self.num_blocks is not None and (not isinstance(self.num_blocks, int) or self.num_blocks < 1):
            raise ConfigError(f"num_blocks must be a positive integer or None, got {self.num_blocks!r}")
        if not isinstance(self.checkpoint_interval, int) or self.checkpoint_interval < 1:
            raise ConfigError(f"checkpoint_interval must be a positive integer, got {self.checkpoint_interval!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ALSParams":
        """Build from a plain dict, rejecting unknown keys (a typo must not be ignored)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown ALS parameter(s) {unknown}; known: {sorted(known)}")
        return cls(**values)

    def spark_param_map(self) -> dict[str, Any]:
        """The same settings under Spark MLlib ``ALS`` parameter names."""
        return {
            "rank": self.rank,
            "regParam": float(self.reg),
            "alpha": float(self.alpha),
            "implicitPrefs": bool(self.implicit),
            "maxIter": self.iterations,
            "seed": self.seed,
            "checkpointInterval": self.checkpoint_interval,
        }

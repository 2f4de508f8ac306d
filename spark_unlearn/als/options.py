"""A request's options, as one typed object, checked where they enter.

:class:`UnlearnOptions` says how a deletion is solved and certified; the
job, the Python API and the engine all take it.  :class:`VersionFacts` is
what the version's manifest already knows about the model (saves passes
over its tables).  Both are frozen: a request cannot change them half-way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from spark_unlearn.als.policy import POLICIES, TOL_FLOOR
from spark_unlearn.als.strategy_cost import RETRAIN_SHARE
from spark_unlearn.errors import ConfigError

MODES = ("frontier", "full", "retrain")
FALLBACKS = ("retrain", "full")
ENGINES = ("auto", "targeted", "layout")


def _number(name: str, value: Any, *, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise ConfigError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")


@dataclass(frozen=True)
class UnlearnOptions:
    """How a deletion is solved and certified.

    Attributes
    ----------
    mode
        ``frontier`` (re-solve the rows the deletion reaches), ``full``
        (offset sweeps over every row) or ``retrain`` (train again on the
        remaining data).  Xu et al.'s plain warm sweeps are no mode: they
        never certify, so no planner would pick them; they are
        ``train_als(remaining, params, init=model)``, the benchmarks'
        baseline.
    fallback
        What a frontier that outgrows ``full_fallback_fraction`` of the rows
        falls back to: ``retrain`` (default; measured faster than warm
        offset sweeps on ml-latest-small and ADM, docs/BENCHMARKS.md) or
        ``full`` sweeps.
    engine
        Frontier mode: ``targeted`` (scans of the stored tables, driver-side
        rows), ``layout`` (cached block layout) or ``auto`` (targeted for
        small batches).
    tol, tol_factor
        The certificate's floor; ``None``: ``tol_factor`` times the 90th
        percentile of the training residual (pooled under ``strict``, of the
        item side under ``training-precision``), never below
        :data:`TOL_FLOOR` (:func:`~spark_unlearn.als.policy.row_tolerance`).
    certificate_policy
        ``strict`` (every row's deviation at most the floor) or
        ``training-precision`` (at most ``max(floor, tol_factor`` times the
        row's own training residual), :mod:`spark_unlearn.als.policy`).
    strict
        Deletion requests that match nothing are errors (else reported).
    max_rounds, full_fallback_fraction, full_iterations
        Frontier rounds; the share of all rows beyond which the frontier
        falls back to ``fallback``; the most sweeps.
    min_sweeps
        When the request sweeps on the driver (``mode = "full"`` or the
        planner's choice): the fewest sweeps before the certificate may stop
        them.  The certificate holds after one sweep and a repair on ADM, but
        the deleted pairs' ranks keep moving towards the retrain's for 2-3
        sweeps (forgetting gap 0.67-0.77 after one, 0.89 after two, 0.95-1.0
        after three; docs/BENCHMARKS.md); ``forgetting_share`` stops them
        on a measured estimate instead.
    forgetting_share
        When the request sweeps on the driver: the sweeps also run until
        the deleted interactions whose user and item stay in the model have
        made this share of their estimated move (their mean predicted
        score's geometric tail, :mod:`spark_unlearn.als.forgetting_watch`),
        at most ``full_iterations``; 0: the certificate alone.  User and
        item erasures leave no such pairs.
    retrain_share
        A batch deleting at least this share of the version's ratings is
        retrained on the driver when the version fits there
        (``sweep_driver_mb``): warm sweeps would certify it while keeping
        its signal (:data:`~spark_unlearn.als.strategy_cost.RETRAIN_SHARE`,
        measured on ADM); 1 never retrains.
    driver_rows
        Targeted engine: neighbours beyond this many stay in Spark
        (``None``: the engine's default).
    hold_side_mb
        Implicit feedback on a blocked version: a side whose held rows take
        at most this many MiB of driver memory is read whole, so the checks
        over all its rows and its new offsets run on the driver
        (:mod:`spark_unlearn.als.block_source`); 0 keeps every side in Spark.
    sweep_driver_mb
        A blocked version whose remaining data and rows take at most this many
        MiB on the driver may be swept there whole: the batch planner's
        third way (:mod:`spark_unlearn.als.strategy_cost`), and what ``mode
        = "full"`` runs; 0: never (sweeps run on the Spark layout).
    num_blocks
        Block layout: blocks per side (``None``: the model's).
    """

    mode: str = "frontier"
    fallback: str = "retrain"
    engine: str = "auto"
    tol: float | None = None
    tol_factor: float = 1.0
    certificate_policy: str = "training-precision"
    strict: bool = False
    max_rounds: int = 50
    full_fallback_fraction: float = 0.5
    full_iterations: int = 10
    min_sweeps: int = 1
    forgetting_share: float = 0.95
    retrain_share: float = RETRAIN_SHARE
    driver_rows: int | None = None
    hold_side_mb: int = 256
    sweep_driver_mb: int = 1024
    num_blocks: int | None = None

    def __post_init__(self) -> None:
        if self.mode == "paper":
            raise ConfigError("unlearning mode 'paper' was removed: the paper's plain warm sweeps never certify, so "
                              "no request should publish them; use mode 'full' (certified warm offset sweeps), or "
                              "spark_unlearn.als.train.train_als(remaining, params, init=model) for the paper's method")
        if self.mode not in MODES:
            raise ConfigError(f"unknown unlearning mode {self.mode!r}; use one of {list(MODES)}")
        if self.fallback not in FALLBACKS:
            raise ConfigError(f"unknown fallback {self.fallback!r}; use one of {list(FALLBACKS)}")
        if self.engine not in ENGINES:
            raise ConfigError(f"unknown unlearning engine {self.engine!r}; use one of {list(ENGINES)}")
        if self.certificate_policy not in POLICIES:
            raise ConfigError(f"unknown certificate policy {self.certificate_policy!r}; use one of {list(POLICIES)}")
        if self.tol is not None:
            _number("tol", self.tol)
            if not self.tol >= TOL_FLOOR:
                raise ConfigError(f"tol={self.tol} is below what float32 factors can certify ({TOL_FLOOR}); "
                                  f"use tol >= {TOL_FLOOR}")
        _number("tol_factor", self.tol_factor)
        if not self.tol_factor > 0:
            raise ConfigError(f"tol_factor={self.tol_factor} must be > 0")
        if not isinstance(self.strict, bool):
            raise ConfigError(f"strict must be true or false, got {self.strict!r}")
        _number("max_rounds", self.max_rounds, integer=True)
        if self.max_rounds < 1:
            raise ConfigError(f"max_rounds={self.max_rounds} must be >= 1")
        _number("full_fallback_fraction", self.full_fallback_fraction)
        if not 0 < self.full_fallback_fraction <= 1:
            raise ConfigError(f"full_fallback_fraction={self.full_fallback_fraction} must be in (0, 1]")
        _number("full_iterations", self.full_iterations, integer=True)
        if self.full_iterations < 1:
            raise ConfigError(f"full_iterations={self.full_iterations} must be >= 1")
        _number("min_sweeps", self.min_sweeps, integer=True)
        if self.min_sweeps < 1:
            raise ConfigError(f"min_sweeps={self.min_sweeps} must be >= 1 (1: the certificate may stop the first sweep)")
        _number("retrain_share", self.retrain_share)
        if not 0 < self.retrain_share <= 1:
            raise ConfigError(f"retrain_share={self.retrain_share} must be in (0, 1] (the share of the ratings a batch "
                              f"deletes from which it is retrained; 1: never; default {RETRAIN_SHARE})")
        _number("forgetting_share", self.forgetting_share)
        if not 0 <= self.forgetting_share < 1:
            raise ConfigError(f"forgetting_share={self.forgetting_share} must be in [0, 1) (0: the certificate alone "
                              "stops the sweeps; 0.95: the default)")
        if self.driver_rows is not None:
            _number("driver_rows", self.driver_rows, integer=True)
            if self.driver_rows < 0:
                raise ConfigError(f"driver_rows={self.driver_rows} is negative; give a number of rows >= 0 "
                                  "(0 keeps every neighbour in Spark)")
        _number("hold_side_mb", self.hold_side_mb, integer=True)
        if self.hold_side_mb < 0:
            raise ConfigError(f"hold_side_mb={self.hold_side_mb} is negative; give MiB >= 0 (0 keeps every side in "
                              "Spark)")
        _number("sweep_driver_mb", self.sweep_driver_mb, integer=True)
        if self.sweep_driver_mb < 0:
            raise ConfigError(f"sweep_driver_mb={self.sweep_driver_mb} is negative; give MiB >= 0 (0: the planner never "
                              "sweeps on the driver)")
        if self.num_blocks is not None:
            _number("num_blocks", self.num_blocks, integer=True)
            if self.num_blocks < 1:
                raise ConfigError(f"num_blocks={self.num_blocks} must be >= 1")

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> "UnlearnOptions":
        """The options named in a config's ``[unlearn]`` section (other keys are the job's)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in section.items() if k in names and v is not None})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class VersionFacts:
    """What a version's manifest knows about its model; every field is optional (``None``: computed).

    Attributes
    ----------
    training_residual
        Percentiles of the model's training residual ``|e_r|/|b_r|``.
    forgotten
        Requests earlier batches applied (``user``, ``item``, ``kind``,
        ``version``), or a zero-argument callable returning them.
    grams
        Per side, the Gram ``F^T F`` of the factor table.
    drift_bound
        Per side, an upper bound of the stored ``|d|/|b|``.
    counts
        ``n_ratings``, ``n_users``, ``n_items``.
    x_ratio, x_watch
        Implicit mode: per side, a bound of ``max |x|/|b|``, and the
        :class:`~spark_unlearn.als.ratio_watch.RatioWatch` as JSON.
    drift_watch
        Explicit mode: per side, the drift watch (the rows with the largest
        certificate terms, exact flags, and a bound of the others) as JSON.
    bnorm_exact
        Per side, whether every stored ``|b|`` is exact.
    blocks
        A reader of the version's blocked files by id
        (:class:`~spark_unlearn.store.block_reader.BlockReader`): the
        targeted engine then reads its rows on the driver, without Spark.
    """

    training_residual: dict[str, float] | None = None
    forgotten: Any = None
    grams: dict[str, Any] | None = None
    drift_bound: dict[str, float] | None = None
    counts: dict[str, int] | None = None
    x_ratio: dict[str, float] | None = None
    x_watch: dict[str, dict] | None = None
    blocks: Any = None
    drift_watch: dict[str, dict] | None = None
    bnorm_exact: dict[str, bool] | None = None

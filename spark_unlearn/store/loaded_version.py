"""A published version read back from the store: its tables as lazy Spark plans, built when first read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame

from spark_unlearn.als.model import FactorModel
from spark_unlearn.deferred import ForcesDeferred


@dataclass
class LoadedVersion(ForcesDeferred):
    """One published version, read back from a :class:`ModelStore`.

    Attributes
    ----------
    version
        Version name, e.g. ``"v000003"``.
    path
        Absolute path of the version directory.
    model
        Factor tables (lazy Parquet reads) and hyperparameters.
    manifest
        The parsed ``manifest.json``.
    offsets
        ``(user_offsets, item_offsets)`` with ``OFFSETS_SCHEMA``, or ``None``.
    ratings
        The ratings published with the model (``RATINGS_SCHEMA``), or ``None``.
    holdout
        The held-out test ratings published with the model, or ``None``.
    forgotten
        What this version's deletion batch removed (``user``, ``item``,
        ``kind``: ids only, no ratings), or ``None``.
    """

    version: str
    path: str
    model: FactorModel
    manifest: dict
    offsets: tuple[DataFrame, DataFrame] | None
    ratings: DataFrame | None
    holdout: DataFrame | None = None
    forgotten: DataFrame | None = None
    offset_plans: tuple | None = None  # the two offsets tables as Deferred plans (``offsets`` builds both)

    def plans(self) -> dict[str, Any]:
        """The tables as they are held, unbuilt (:class:`~spark_unlearn.deferred.Deferred`): ``ratings``,
        ``holdout``, ``offsets`` (a pair of plans); reading the attributes builds them."""
        raw = object.__getattribute__(self, "__dict__")
        return {"ratings": raw["ratings"], "holdout": raw["holdout"], "offsets": raw["offset_plans"]}


__all__ = ["LoadedVersion"]

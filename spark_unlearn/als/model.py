"""The in-memory form of a trained ALS model: two partitioned factor tables plus hyperparameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pyspark.sql import DataFrame

from spark_unlearn.als.params import ALSParams
from spark_unlearn.deferred import ForcesDeferred


@dataclass
class FactorModel(ForcesDeferred):
    """A bi-linear model ``r_ui ~ x_u . y_i``.

    Attributes
    ----------
    user_factors, item_factors
        DataFrames with :data:`spark_unlearn.schema.FACTORS_SCHEMA`
        (``id`` int, ``features`` array<float> of length ``params.rank``).
    params
        Hyperparameters the factors were trained with.
    model_params
        Spark ``ALSModel``'s own params of the source model (``userCol``,
        ``itemCol``, ``predictionCol``, ``coldStartStrategy``, ``blockSize``),
        kept on publication; ``None``: Spark's defaults.
    """

    user_factors: DataFrame
    item_factors: DataFrame
    params: ALSParams
    model_params: dict[str, Any] | None = None

    @property
    def rank(self) -> int:
        return self.params.rank

"""IFRU's Python API, the same shape as :class:`spark_unlearn.api.ALSUnlearner`: DataFrames in, a result out.

    >>> ifru = IFRUUnlearner(modelType="lightgcn", dim=32, pruneQuantile=0.5)
    >>> ifru.fit(ratings, "models/lightgcn")                      # trains and saves a model directory
    >>> result = ifru.unlearn("models/lightgcn", ratings, spark.createDataFrame([(3, 7)], ["user", "item"]))
    >>> result.model, result.ratings.count(); print(result.report.summary())

Both calls run :func:`spark_unlearn.ifru.run.run_ifru`, the engine of
``jobs/ifru.py``; this module only stages the DataFrames as files and reads the
saved version back.  The model directory is the user's (versioned, atomic
switch, see :mod:`spark_unlearn.ifru.persist`); the staged files live in a
temporary directory until ``result.close()``.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field, fields
from typing import Any

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_unlearn.errors import ConfigError, StoreError
from spark_unlearn.ifru.config import IFRUConfig
from spark_unlearn.ifru.state import IFRUModel
from spark_unlearn.reporting import JobReport, ifru_summary
from spark_unlearn.schema import ITEM, RATING, USER, renamed_columns

COLUMN_PARAMS = {"userCol": "user", "itemCol": "item", "ratingCol": "rating"}


def snake(name: str) -> str:
    """pyspark.ml's camelCase param name as :class:`IFRUConfig`'s key: ``pruneQuantile`` -> ``prune_quantile``."""
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def camel(key: str) -> str:
    """:class:`IFRUConfig`'s key as a param name: ``prune_quantile`` -> ``pruneQuantile``."""
    head, *rest = key.split("_")
    return head + "".join(part.capitalize() for part in rest)


PARAMS = tuple(camel(f.name) for f in fields(IFRUConfig))
"""Every IFRU setting under its pyspark.ml-style name (``modelType``, ``dim``, ``pruneQuantile``, ``newtonSteps``, ...)."""


class IFRUReport(JobReport):
    """The report of one IFRU run (``data``: the JSON-ready dict ``jobs/ifru.py`` writes)."""

    summarise = staticmethod(ifru_summary)

    @property
    def certificate(self) -> dict[str, Any] | None:
        """The update's certificate (status, retained-objective change, gradients, validation AUC), if it unlearned."""
        return (self.data.get("unlearning") or {}).get("certificate")


@dataclass
class IFRUResult:
    """``model`` (the saved :class:`IFRUModel`), ``ratings`` (the input minus the deleted pairs, the input's
    column names; for :meth:`IFRUUnlearner.fit`, the input) and ``report``.

    ``ratings`` reads a Parquet copy in a temporary directory that lives until
    :meth:`close` (or the end of a ``with`` block): save or cache it first.
    """

    model: IFRUModel
    ratings: DataFrame
    report: IFRUReport
    path: str  # the model directory
    _owned: str | None = field(default=None, repr=False)

    def close(self) -> None:
        if self._owned is not None:
            shutil.rmtree(self._owned, ignore_errors=True)
            self._owned = None

    def __enter__(self) -> IFRUResult:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class IFRUUnlearner:
    """Trains and unlearns MF / LightGCN models with IFRU, given DataFrames.

    Params: every :class:`~spark_unlearn.ifru.config.IFRUConfig` key in
    camelCase (``modelType``, ``dim``, ``epochs``, ``reg``, ``pruneQuantile``,
    ``newtonSteps``, ``validationGuard``, ...; see :data:`PARAMS`), plus
    ``userCol``, ``itemCol``, ``ratingCol``.  Values are checked by
    ``IFRUConfig`` when the unlearner is built (:class:`ConfigError` naming the
    param).  For an existing model only the unlearning settings may differ
    from the saved ones (:data:`spark_unlearn.ifru.run.UNLEARNING_KEYS`).
    """

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(PARAMS) - set(COLUMN_PARAMS))
        if unknown:
            raise ConfigError(f"IFRUUnlearner: unknown param(s) {unknown}; known: {sorted(PARAMS + tuple(COLUMN_PARAMS))}")
        self._columns = {k: params.pop(k, v) for k, v in COLUMN_PARAMS.items()}
        for name, value in self._columns.items():
            if not isinstance(value, str) or not value:
                raise ConfigError(f"IFRUUnlearner: {name}={value!r} is invalid; give a column name")
        self._conf = {snake(k): v for k, v in params.items()}
        try:
            IFRUConfig.from_dict(self._conf)
        except ConfigError as exc:
            raise ConfigError(f"IFRUUnlearner: {exc} (params use camelCase: {', '.join(PARAMS)})") from None

    def params(self) -> dict[str, Any]:
        """The params set explicitly (camelCase), with the column names."""
        return {**{camel(k): v for k, v in self._conf.items()}, **self._columns}

    def __repr__(self) -> str:
        return f"IFRUUnlearner({', '.join(f'{k}={v!r}' for k, v in self.params().items())})"

    def fit(self, ratings: DataFrame, modelDir: str, *, workDir: str | None = None) -> IFRUResult:
        """Train a model on ``ratings`` and save it as the first version of ``modelDir`` (which must not hold one)."""
        from spark_unlearn.ifru.persist import current_version

        try:
            current_version(os.fspath(modelDir))
        except StoreError:
            pass  # no model there yet: what fit wants
        else:
            raise ConfigError(f"IFRUUnlearner.fit: {modelDir!r} already holds a model; unlearn from it or choose a new directory")
        return self._run(ratings, None, os.fspath(modelDir), workDir)

    def unlearn(self, modelDir: str, ratings: DataFrame, deletions: DataFrame, *,
                workDir: str | None = None) -> IFRUResult:
        """Remove the pairs in ``deletions`` (user and item columns) from the model saved in ``modelDir``.

        ``ratings``: what the model was trained on (checked against the
        model's fingerprint).  A new version of ``modelDir`` is saved (the
        previous one stays until the next save); pairs that are not training
        terms are counted in ``report["deletions"]`` and change nothing.
        """
        from spark_unlearn.ifru.persist import current_version

        current_version(os.fspath(modelDir))  # StoreError naming the directory when it holds no model
        if not isinstance(deletions, DataFrame):
            raise ConfigError(f"IFRUUnlearner.unlearn: deletions must be a DataFrame, got {type(deletions).__name__}")
        return self._run(ratings, deletions, os.fspath(modelDir), workDir)

    def _run(self, ratings: DataFrame, deletions: DataFrame | None, model_dir: str, work_dir: str | None) -> IFRUResult:
        from spark_unlearn.ifru.persist import load_model
        from spark_unlearn.ifru.run import run_ifru

        if not isinstance(ratings, DataFrame):
            raise ConfigError(f"IFRUUnlearner: ratings must be a DataFrame, got {type(ratings).__name__}")
        cols = [self._columns["userCol"], self._columns["itemCol"], self._columns["ratingCol"]]
        ours = renamed_columns(ratings, cols, [USER, ITEM, RATING], "IFRUUnlearner: ratings",
                               "name them with userCol/itemCol/ratingCol")
        spark = ratings.sparkSession
        work = tempfile.mkdtemp(prefix="spark_unlearn_ifru_", dir=work_dir)
        try:
            staged = os.path.join(work, "ratings.parquet")
            ours.write.parquet(staged)
            dels = remaining = None
            if deletions is not None:
                pairs = renamed_columns(deletions, cols[:2], [USER, ITEM], "IFRUUnlearner.unlearn: deletions",
                                        "IFRU removes (user, item) pairs")
                # A CSV with a header: read_pair_requests's own format for pairs without a rating.
                dels = os.path.join(work, "deletions.csv")
                pairs.write.option("header", True).csv(dels)
                remaining = os.path.join(work, "remaining.parquet")
            report = run_ifru(spark, ratings_path=staged, model_dir=model_dir, ifru_conf=dict(self._conf),
                              delete_path=dels, ratings_out=remaining)
            kept = remaining if remaining and os.path.exists(remaining) else staged
            out = spark.read.parquet(kept).select(*(F.col(o).alias(c) for o, c in zip((USER, ITEM, RATING), cols)))
            return IFRUResult(load_model(model_dir), out, IFRUReport(report), model_dir, work)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise

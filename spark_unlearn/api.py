"""Python API in the style of pyspark.ml: unlearn a :class:`pyspark.ml.recommendation.ALSModel` given DataFrames.

    >>> als = ALS(regParam=0.1); model = als.fit(ratings)
    >>> result = ALSUnlearner.fromALS(als).unlearn(model, ratings, spark.createDataFrame([(3,)], ["user"]))
    >>> result.model.recommendForAllUsers(10); result.ratings.count(); print(result.report.summary())

Both entry points run :func:`spark_unlearn.unlearn_model.run_unlearning`, the
engine the jobs use; this module only stages DataFrames as files and reads the
published version back.  Store level: :func:`unlearn_store`, also reachable as
``ModelStore(path).unlearn(deletions, ...)`` (the method is attached here, once
this module is imported, e.g. by ``from spark_unlearn import ModelStore``: a
method defined in :mod:`spark_unlearn.store.model_store` would import the
engine, which imports the store module, an import cycle).
"""

from __future__ import annotations

import atexit
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any

from pyspark.ml.recommendation import ALSModel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_unlearn.als.options import MODES, UnlearnOptions
from spark_unlearn.als.policy import POLICIES
from spark_unlearn.errors import ConfigError, ObjectiveError, SchemaError
from spark_unlearn.reporting import JobReport, unlearn_summary
from spark_unlearn.schema import ITEM, RATING, USER, renamed_columns
from spark_unlearn.store.model_store import ModelStore
from spark_unlearn.unlearn_model import UnlearnRequest, run_unlearning

_PARAMS = ("regParam", "alpha", "implicitPrefs", "userCol", "itemCol", "ratingCol", "tol", "maxRounds", "mode",
           "certificatePolicy")
_DEFAULTS: dict[str, Any] = dict(regParam=None, alpha=None, implicitPrefs=None, userCol="user", itemCol="item",
                                 ratingCol="rating", tol=None, maxRounds=50, mode="frontier",
                                 certificatePolicy="training-precision")
_PENDING: set[str] = set()  # work directories of results not closed yet: removed at interpreter exit


@atexit.register
def _remove_pending() -> None:
    for path in list(_PENDING):
        shutil.rmtree(path, ignore_errors=True)


class UnlearnReport(JobReport):
    """The report of one unlearning request (``data``: the JSON-ready dict the jobs write)."""

    summarise = staticmethod(unlearn_summary)
    status = property(lambda self: self.data.get("status"), doc="``applied``, ``nothing_to_delete`` or ``already_applied``")
    version = property(lambda self: self.data.get("version"), doc="the store version published (or current)")
    rows_solved = property(lambda self: self.data.get("rows_solved", 0), doc="factor rows re-solved (0 if nothing applied)")

    @property
    def certificate_holds(self) -> bool | None:
        """Whether the certificate is within its tolerance (``None``: nothing was computed)."""
        cert = self.data.get("certificate")
        return None if cert is None else bool(cert.get("holds"))


@dataclass
class UnlearnResult:
    """``model`` (an ALSModel), ``ratings`` (what remains, the input's column names) and ``report``.

    ``model`` and ``ratings`` are read lazily from ``path`` (the store the
    version was published to).  When :class:`ALSUnlearner` made that store in
    a temporary directory, the directory lives until :meth:`close` (or the end
    of a ``with`` block, or of the interpreter), *not* until garbage
    collection: DataFrames derived from ``ratings`` or ``model`` read it too.
    Save or cache what you keep before closing.
    """

    model: ALSModel
    ratings: DataFrame
    report: UnlearnReport
    path: str  # the model store holding the published version
    _owned: str | None = field(default=None, repr=False)  # temporary work directory to remove on close

    def close(self) -> None:
        if self._owned is not None:
            shutil.rmtree(self._owned, ignore_errors=True)
            _PENDING.discard(self._owned)
            self._owned = None

    def __enter__(self) -> UnlearnResult:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check(name: str, value: Any) -> Any:
    """``value`` if valid for param ``name``, else :class:`ConfigError` naming it and the fix."""
    def number(ok: bool, need: str) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not ok:
            raise ConfigError(f"ALSUnlearner: {name}={value!r} is invalid; it must be {need} (set{name[0].upper()}{name[1:]})")
        return value

    if value is None and name in ("regParam", "alpha", "implicitPrefs", "tol"):
        return None  # not stated / derived
    if name in ("regParam", "alpha"):
        return float(number(isinstance(value, (int, float)) and value >= 0, "a finite number >= 0, as given to ALS(...)"))
    if name == "tol":
        return float(number(isinstance(value, (int, float)) and value > 0, "a finite number > 0, or None (derived)"))
    if name == "maxRounds":
        return number(isinstance(value, int) and value >= 1, "an integer >= 1")
    if name == "implicitPrefs" and not isinstance(value, bool):
        raise ConfigError(f"ALSUnlearner: implicitPrefs={value!r} is invalid; give True or False, as given to ALS(...)")
    if name == "mode" and value not in MODES:
        raise ConfigError(f"ALSUnlearner: mode={value!r} is invalid; choose one of {', '.join(MODES)}")
    if name == "certificatePolicy" and value not in POLICIES:
        raise ConfigError(f"ALSUnlearner: certificatePolicy={value!r} is invalid; choose one of {', '.join(POLICIES)}")
    if name.endswith("Col") and (not isinstance(value, str) or not value):
        raise ConfigError(f"ALSUnlearner: {name}={value!r} is invalid; give a column name")
    return value


class ALSUnlearner:
    """Removes deletions from an ALS model trained by ``pyspark.ml`` (Unlearn-ALS, with a certificate).

    Params (Spark's names; getters ``getX()``, setters ``setX(v)`` returning self):
    ``regParam``, ``implicitPrefs``, ``alpha`` state the objective the model was
    trained with (Spark does not save them with the model, and they are never
    guessed: :meth:`fromALS` copies them from the estimator); ``userCol``,
    ``itemCol``, ``ratingCol`` name the DataFrames' columns; ``tol`` the
    certificate's tolerance (``None``: derived from the training residual);
    ``maxRounds`` the frontier's rounds; ``mode`` ``frontier`` | ``full`` | ``retrain``;
    ``certificatePolicy`` ``training-precision`` (each row within its own
    training residual, floored) | ``strict`` (one tolerance for every row).

    :meth:`unlearn` writes ``model.save``, the ratings and the deletions as
    Parquet into a fresh directory (under ``workDir``, default the system's
    temporary directory; on a cluster give a path every executor can read),
    publishes the unlearned version to a model store there and reads it back:
    one save and one load of the model and of the ratings beyond the
    unlearning itself.  The directory is removed by ``result.close()``
    (:class:`UnlearnResult`).  The input model is measured under the stated
    objective first and refused (:class:`~spark_unlearn.errors.ObjectiveError`)
    if it is not stationary under it.
    """

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(_PARAMS))
        if unknown:
            raise ConfigError(f"ALSUnlearner: unknown param(s) {unknown}; known: {', '.join(_PARAMS)}")
        self._params = {k: _check(k, params.get(k, d)) for k, d in _DEFAULTS.items()}

    @classmethod
    def fromALS(cls, als: Any, **params: Any) -> ALSUnlearner:
        """The objective and column names of a ``pyspark.ml.recommendation.ALS`` estimator (``params`` override)."""
        copied = {k: als.getOrDefault(k) for k in ("regParam", "alpha", "implicitPrefs", "userCol", "itemCol", "ratingCol")}
        return cls(**{**copied, **params})

    def copy(self, extra: dict[str, Any] | None = None) -> ALSUnlearner:
        return type(self)(**{**self._params, **(extra or {})})

    def params(self) -> dict[str, Any]:
        return dict(self._params)

    def __repr__(self) -> str:
        return f"ALSUnlearner({', '.join(f'{k}={v!r}' for k, v in self._params.items())})"

    def _stated(self) -> dict[str, Any]:
        p = self._params
        stated = {"reg": p["regParam"], "implicit": p["implicitPrefs"], "alpha": p["alpha"] if p["implicitPrefs"] else None}
        return {k: v for k, v in stated.items() if v is not None}

    def _options(self) -> UnlearnOptions:
        p = self._params
        return UnlearnOptions(tol=p["tol"], max_rounds=p["maxRounds"], mode=p["mode"], certificate_policy=p["certificatePolicy"])

    def unlearn(self, model: ALSModel, ratings: DataFrame, deletions: DataFrame, *, workDir: str | None = None,
                measure: bool = True) -> UnlearnResult:
        """Remove ``deletions`` from ``model``, trained on ``ratings``; see the class docstring for what it writes.

        ``deletions``: the user and/or item column (a row with only a user
        erases the user, only an item withdraws the item, both: one
        interaction).  ``measure``: also report how far the deleted items
        moved in their users' rankings.  A batch that removes nothing returns
        the input ``model`` and ``ratings`` (status ``nothing_to_delete``).
        """
        p = self._params
        if not isinstance(model, ALSModel):
            raise ConfigError(f"ALSUnlearner.unlearn: model must be a pyspark.ml.recommendation.ALSModel, got {type(model).__name__}")
        for what, df in (("ratings", ratings), ("deletions", deletions)):
            if not isinstance(df, DataFrame):
                raise ConfigError(f"ALSUnlearner.unlearn: {what} must be a DataFrame, got {type(df).__name__}")
        missing = [k for k in ("regParam", "implicitPrefs") if p[k] is None] + (["alpha"] if p["implicitPrefs"] and p["alpha"] is None else [])
        if missing:
            raise ObjectiveError(
                f"ALSUnlearner: the model's objective is not stated ({', '.join(f'{k}=None' for k in missing)}); Spark does not "
                "save it with the model: use ALSUnlearner.fromALS(als) with the estimator that trained it, or set "
                f"{', '.join(missing)} to the values given to ALS(...)")
        cols = [p["userCol"], p["itemCol"], p["ratingCol"]]
        ours = renamed_columns(ratings, cols, [USER, ITEM, RATING], "ALSUnlearner.unlearn: ratings",
                               "name them with setUserCol/setItemCol/setRatingCol")
        spark = ratings.sparkSession
        work = tempfile.mkdtemp(prefix="spark_unlearn_api_", dir=workDir)
        _PENDING.add(work)
        try:
            src, rat = os.path.join(work, "source_model"), os.path.join(work, "ratings.parquet")
            dels = _stage_deletions(deletions, p["userCol"], p["itemCol"], work)
            model.save(src)
            ours.write.parquet(rat)
            store = os.path.join(work, "store")
            request = UnlearnRequest(model_path=src, delete_path=dels, ratings_path=rat, ratings_format="parquet",
                                     output_store=store, expected_params=self._stated(), measure=measure,
                                     options=self._options())
            report = run_unlearning(spark, request)
            if report.get("status") != "applied":
                shutil.rmtree(work, ignore_errors=True)
                _PENDING.discard(work)
                return UnlearnResult(model, ratings, UnlearnReport(report), store)
            return _published(spark, store, report, cols, owned=work)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            _PENDING.discard(work)
            raise

    def unlearnStore(self, store: str, deletions: DataFrame | str, *, measure: bool = True,
                     batchId: str | None = None) -> UnlearnResult:
        """Apply ``deletions`` (a DataFrame, or a CSV/Parquet path) to the current version of the model store ``store``.

        The store records its objective: stated params must agree with it.
        Nothing temporary outlives the call; ``result.model`` and
        ``result.ratings`` are read from the store's new (or, if nothing was
        deleted, current) version.
        """
        p = self._params
        spark = deletions.sparkSession if isinstance(deletions, DataFrame) else SparkSession.builder.getOrCreate()
        staged = None
        try:
            if isinstance(deletions, DataFrame):
                staged = tempfile.mkdtemp(prefix="spark_unlearn_api_")
                path = _stage_deletions(deletions, p["userCol"], p["itemCol"], staged)
            elif isinstance(deletions, (str, os.PathLike)):
                path = os.fspath(deletions)
            else:
                raise ConfigError(f"unlearn: deletions must be a DataFrame or a path, got {type(deletions).__name__}")
            request = UnlearnRequest(model_path=store, delete_path=path, output_store=store, batch_id=batchId,
                                     expected_params=self._stated() or None, measure=measure, options=self._options())
            report = run_unlearning(spark, request)
        finally:
            if staged is not None:
                shutil.rmtree(staged, ignore_errors=True)
        return _published(spark, store, report, [p["userCol"], p["itemCol"], p["ratingCol"]], owned=None)


def _accessors(name: str) -> None:
    cap = name[0].upper() + name[1:]

    def getter(self):
        return self._params[name]

    def setter(self, value):
        self._params[name] = _check(name, value)
        return self

    getter.__doc__, setter.__doc__ = f"The value of ``{name}``.", f"Set ``{name}``; returns self."
    setattr(ALSUnlearner, f"get{cap}", getter)
    setattr(ALSUnlearner, f"set{cap}", setter)


for _name in _PARAMS:
    _accessors(_name)


def _stage_deletions(deletions: DataFrame, user_col: str, item_col: str, work: str) -> str:
    """``deletions``' user/item columns as Parquet under ``work`` (our names ``user``, ``item``); the path."""
    present = [(c, o) for c, o in ((user_col, USER), (item_col, ITEM)) if c in deletions.columns]
    if not present:
        raise SchemaError(f"deletions has neither a {user_col!r} nor an {item_col!r} column (it has {deletions.columns}): "
                          "give the users to erase, the items to withdraw, or both for single interactions")
    path = os.path.join(work, "deletions.parquet")
    deletions.select(*(F.col(c).alias(o) for c, o in present)).write.parquet(path)
    return path


def _published(spark: SparkSession, store: str, report: dict[str, Any], cols: list[str], owned: str | None) -> UnlearnResult:
    """The store's current version (the one published, or the unchanged one) as an ALSModel and ratings."""
    loaded = ModelStore(store).load(spark, verify=False)
    if loaded.ratings is None:
        raise ConfigError(f"version {loaded.version} of {store} holds no ratings; retrain it with jobs/train.py")
    ratings = loaded.ratings.select(*(F.col(o).alias(c) for o, c in zip((USER, ITEM, RATING), cols)))
    return UnlearnResult(ALSModel.load(loaded.path), ratings, UnlearnReport(report), store, owned)


def unlearn_store(store: str, deletions: DataFrame | str, **options: Any) -> UnlearnResult:
    """``ALSUnlearner(**params).unlearnStore(store, deletions, measure=, batchId=)``, options holding both kinds."""
    extra = {k: options.pop(k) for k in ("measure", "batchId") if k in options}
    return ALSUnlearner(**options).unlearnStore(os.fspath(store), deletions, **extra)


def _store_unlearn(self: ModelStore, deletions: DataFrame | str, **options: Any) -> UnlearnResult:
    """Apply ``deletions`` to this store's current version; see :func:`unlearn_store`."""
    return unlearn_store(self.root, deletions, **options)


ModelStore.unlearn = _store_unlearn

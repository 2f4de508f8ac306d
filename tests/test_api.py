"""The pyspark.ml-style API (spark_unlearn.api): the README's example runs as written, and bad inputs fail clearly."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from spark_unlearn.errors import ConfigError, ObjectiveError, SchemaError

README = Path(__file__).resolve().parents[1] / "README.md"
ERASED = 3  # the user the README's example erases


def readme_api_example() -> str:
    found = re.findall(r"<!--\s*api-example\s*-->\s*```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert len(found) == 1, "the README must hold exactly one <!-- api-example --> python block"
    return found[0]


@pytest.fixture(scope="module")
def example(spark):
    """The README's example, executed (its SparkSession.builder.getOrCreate() returns the test session)."""
    code = readme_api_example()
    assert len(code.strip().splitlines()) <= 10
    scope: dict = {}
    exec(compile(code, "README.md:api-example", "exec"), scope)
    yield scope
    scope["result"].close()


def test_readme_example_erases_the_user(example, capsys):
    result, ratings = example["result"], example["ratings"]
    assert result.report.status == "applied" and result.report.certificate_holds
    assert result.report.rows_solved > 0 and result.report.version == "v000001"
    assert len(result.report.summary().splitlines()) <= 15 and '"status": "applied"' in result.report.to_json()
    assert result.model.userFactors.filter(f"id = {ERASED}").count() == 0
    assert result.ratings.columns == ratings.columns
    assert result.ratings.filter(f"user = {ERASED}").count() == 0
    assert result.ratings.count() == ratings.count() - ratings.filter(f"user = {ERASED}").count()
    # An ALSModel as usual: it predicts and recommends for the remaining users only.
    recs = result.model.recommendForAllUsers(3)
    assert recs.count() == ratings.select("user").distinct().count() - 1
    assert result.model.transform(result.ratings.limit(5)).filter("isnan(prediction)").count() == 0


def test_readme_example_publishes_a_verifiable_version(example, spark):
    from spark_unlearn.verify import verify_version

    result = example["result"]
    assert os.path.isdir(result.path)
    check = verify_version(spark, result.path)
    assert check["status"] == "verified", check
    # The model returned is the version published, and that version no longer knows the user.
    from pyspark.ml.recommendation import ALSModel

    published = ALSModel.load(os.path.join(result.path, "versions", result.report.version))
    assert published.userFactors.count() == result.model.userFactors.count()


def test_bad_inputs_fail_clearly(spark, example):
    from spark_unlearn import ALSUnlearner

    ratings, model, als = example["ratings"], example["model"], example["als"]
    unlearner = ALSUnlearner.fromALS(als)
    with pytest.raises(SchemaError, match="neither a 'user' nor an 'item' column"):
        unlearner.unlearn(model, ratings, spark.createDataFrame([(3,)], ["customer"]))
    with pytest.raises(SchemaError, match=r"ratings has no column \['rating'\]"):
        unlearner.unlearn(model, ratings.drop("rating"), spark.createDataFrame([(3,)], ["user"]))
    with pytest.raises(ConfigError, match="regParam=-0.5 is invalid.*>= 0"):
        ALSUnlearner(regParam=-0.5)
    with pytest.raises(ConfigError, match="regParam"):
        unlearner.copy().setRegParam(float("nan"))
    with pytest.raises(ConfigError, match="mode='fast'.*frontier"):
        ALSUnlearner(mode="fast")
    with pytest.raises(ConfigError, match="unknown param.*maxIter"):
        ALSUnlearner(maxIter=3)
    with pytest.raises(ObjectiveError, match="fromALS"):
        ALSUnlearner().unlearn(model, ratings, spark.createDataFrame([(3,)], ["user"]))
    with pytest.raises(ConfigError, match="ALSModel"):
        unlearner.unlearn(ratings, ratings, ratings)


def test_from_als_copies_the_objective_and_columns():
    from pyspark.ml.recommendation import ALS

    from spark_unlearn import ALSUnlearner

    als = ALS(regParam=0.07, alpha=12.0, implicitPrefs=True, userCol="uid", itemCol="sku", ratingCol="clicks")
    u = ALSUnlearner.fromALS(als, tol=1e-3)
    assert (u.getRegParam(), u.getAlpha(), u.getImplicitPrefs()) == (0.07, 12.0, True)
    assert (u.getUserCol(), u.getItemCol(), u.getRatingCol(), u.getTol()) == ("uid", "sku", "clicks", 1e-3)
    assert (u.getMaxRounds(), u.getMode()) == (50, "frontier")
    other = u.copy({"maxRounds": 7}).setMode("full")
    assert (other.getMaxRounds(), other.getMode(), u.getMaxRounds(), u.getMode()) == (7, "full", 50, "frontier")
    defaults = ALSUnlearner.fromALS(ALS())
    assert (defaults.getRegParam(), defaults.getImplicitPrefs(), defaults.getUserCol()) == (0.1, False, "user")


def test_model_store_unlearn(spark, example, tmp_path):
    """The store level, on a copy of the store the example published to (it records the objective and the data)."""
    import shutil

    from spark_unlearn import ModelStore

    store = ModelStore(str(shutil.copytree(example["result"].path, tmp_path / "store")))
    before = store.load(spark, verify=False).ratings
    n_user = before.filter("user = 7").count()
    assert n_user > 0
    result = store.unlearn(spark.createDataFrame([(7,)], ["user"]), measure=False)
    assert result.report.status == "applied" and result.report.version == store.current() == "v000002"
    assert result.model.userFactors.filter("id = 7 or id = 3").count() == 0
    assert result.ratings.count() == before.count() - n_user
    again = store.unlearn(spark.createDataFrame([(7,)], ["user"]), measure=False)
    assert again.report.status == "already_applied" and again.report.version == result.report.version
    with pytest.raises(ObjectiveError, match="other hyperparameters"):
        store.unlearn(spark.createDataFrame([(8,)], ["user"]), regParam=123.0, implicitPrefs=False, measure=False)


def test_close_removes_the_work_directory(example):
    """Last: the example's result, closed, takes its temporary directory with it."""
    result = example["result"]
    work = os.path.dirname(result.path)
    assert os.path.isdir(work)
    with result:
        pass
    assert not os.path.exists(work)
    result.close()  # idempotent

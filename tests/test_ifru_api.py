"""IFRU's pyspark.ml-style API (spark_unlearn.ifru.api): the README's example runs as written, its result is the
saved model and the remaining pairs (checked by the independent IFRU verifier), and bad inputs fail clearly."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

pytest.importorskip("torch", reason="IFRU needs torch (extra [ifru])")

from spark_unlearn.errors import ConfigError, SchemaError, StoreError  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def example(spark, tmp_path_factory):
    """The README's IFRU example, executed in a fresh directory (its relative ``out/ifru_mf`` lands there)."""
    found = re.findall(r"<!--\s*ifru-api-example\s*-->\s*```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert len(found) == 1, "the README must hold exactly one <!-- ifru-api-example --> python block"
    assert len(found[0].strip().splitlines()) <= 10
    cwd, work = os.getcwd(), tmp_path_factory.mktemp("ifru_api")
    os.chdir(work)
    scope: dict = {}
    try:
        exec(compile(found[0], "README.md:ifru-api-example", "exec"), scope)
    finally:
        os.chdir(cwd)
    scope["model_dir"] = str(work / "out" / "ifru_mf")
    yield scope
    scope["result"].close()


def test_readme_example_unlearns_the_users_pairs_and_the_verifier_agrees(example, spark, tmp_path):
    from spark_unlearn.verify.ifru import verify_ifru_version

    result, ratings = example["result"], example["ratings"]
    report = result.report
    applied = report["deletions"]["in_training"]
    assert applied > 0 and report["unlearning"]["removed_terms"] == applied  # user 3's training pairs were terms
    assert report.certificate["retained_objective_change"] <= 0
    assert len(report.summary().splitlines()) <= 15 and '"unlearning"' in report.to_json()
    # result.model is the unlearned model: it records every removed training pair
    assert result.model.removed_u.numel() == applied
    # result.ratings: the input minus user 3's pairs, the input's column names
    assert result.ratings.columns == ["user", "item", "rating"]
    assert result.ratings.filter("user = 3").count() == 0
    assert result.ratings.count() == ratings.count() - ratings.filter("user = 3").count()
    # the independent verifier recomputes the update's certificate from the files and the ratings
    staged = str(tmp_path / "ratings.parquet")
    ratings.write.parquet(staged)
    checked = verify_ifru_version(spark, example["model_dir"], staged)
    assert checked["holds"], checked["problems"]


def test_bad_inputs_fail_clearly(example, spark, tmp_path):
    from spark_unlearn import IFRUUnlearner

    ratings = example["ratings"]
    with pytest.raises(ConfigError, match="unknown param.*prune_quantile"):
        IFRUUnlearner(prune_quantile=0.5)  # snake_case is the TOML's spelling, not the param's
    with pytest.raises(ConfigError, match="prune_quantile must be"):
        IFRUUnlearner(pruneQuantile=1.5)
    with pytest.raises(ConfigError, match="userCol"):
        IFRUUnlearner(userCol="")
    ifru = IFRUUnlearner(modelType="mf", dim=16, epochs=100, threshold=3.0, kcore=3)
    with pytest.raises(ConfigError, match="already holds a model"):
        ifru.fit(ratings, example["model_dir"])
    with pytest.raises(StoreError, match="no IFRU model"):
        ifru.unlearn(str(tmp_path / "empty"), ratings, ratings.select("user", "item").limit(1))
    with pytest.raises(SchemaError, match="no column"):
        ifru.unlearn(example["model_dir"], ratings, ratings.select("user").limit(1))
    with pytest.raises(SchemaError, match="userCol"):
        IFRUUnlearner(userCol="uid").fit(ratings, str(tmp_path / "new"))
    assert not os.path.exists(tmp_path / "new")  # a refused call writes nothing


def test_the_callers_column_names_go_in_and_come_back(example, spark, tmp_path):
    from spark_unlearn import IFRUUnlearner

    ratings = example["ratings"].withColumnRenamed("user", "uid").withColumnRenamed("item", "iid") \
        .withColumnRenamed("rating", "val")
    ifru = IFRUUnlearner(userCol="uid", itemCol="iid", ratingCol="val", modelType="mf", dim=8, epochs=20,
                         threshold=3.0, kcore=3)
    with ifru.fit(ratings, str(tmp_path / "m")) as trained:
        assert trained.ratings.columns == ["uid", "iid", "val"] and trained.ratings.count() == ratings.count()
    with ifru.unlearn(str(tmp_path / "m"), ratings, ratings.filter("uid = 3").select("uid", "iid")) as result:
        assert result.ratings.columns == ["uid", "iid", "val"]
        assert result.ratings.filter("uid = 3").count() == 0
        assert result.ratings.count() == ratings.count() - ratings.filter("uid = 3").count()
        assert result.report["deletions"]["in_training"] > 0

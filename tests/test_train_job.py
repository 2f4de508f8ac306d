"""jobs/train.py under pyspark.ml's parameter names: the file's own columns, numBlocks, maxIter, regParam."""

from __future__ import annotations

import json

import pandas as pd

from job_helpers import run_job
from spark_unlearn.store.model_store import ModelStore


def test_spark_names_choose_the_columns_blocks_and_objective(spark, tmp_path, sample_ratings_path):
    frame = pd.read_csv(sample_ratings_path, sep="::", engine="python", names=["uid", "iid", "val", "ts"])
    data = tmp_path / "ratings.parquet"
    frame[["uid", "iid", "val"]].to_parquet(data)
    code, out, err = run_job(spark, "train", [
        "--ratings", str(data), "--userCol", "uid", "--itemCol", "iid", "--ratingCol", "val", "--numBlocks", "3",
        "--maxIter", "2", "--regParam", "0.07", "--rank", "4", "--test-fraction", "0", "--model", str(tmp_path / "s"),
        "--json"])
    assert code == 0, err[-3000:]
    report = json.loads(out)
    assert report["n_train"] == len(frame) == 1501
    assert report["params"] == {**report["params"], "num_blocks": 3, "iterations": 2, "reg": 0.07, "rank": 4}
    loaded = ModelStore(str(tmp_path / "s")).load(spark)
    got = sorted(tuple(r) for r in loaded.ratings.select("user", "item", "rating").collect())
    assert got == sorted(zip(frame.uid, frame.iid, frame.val.astype(float)))
    # A column the file does not have is named in a one-line error (exit 2), nothing published.
    code, out, err = run_job(spark, "train", ["--ratings", str(data), "--userCol", "user_id", "--model",
                                              str(tmp_path / "t")])
    assert code == 2 and "user_id" in err and not (tmp_path / "t" / "versions").exists()

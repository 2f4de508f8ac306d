"""The deletion batch of the embedded demo: one erased user and a few interactions of another."""

from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_unlearn.store.model_store import ModelStore


def demo_batch(spark: SparkSession, store_path: str, n_interactions: int = 5) -> DataFrame:
    """Erase the most active user of the stored data version and forget ``n_interactions`` ratings of the second.

    Deterministic: users ranked by rating count, then id; interactions by item id.
    """
    data = ModelStore(store_path).load(spark, verify=False).ratings
    top = data.groupBy("user").count().orderBy(F.desc("count"), "user").limit(2).collect()
    erase, other = top[0]["user"], top[1]["user"]
    items = [r["item"] for r in data.filter(F.col("user") == other).orderBy("item").limit(n_interactions).collect()]
    rows = [(erase, None, "user")] + [(other, i, "interaction") for i in items]
    return spark.createDataFrame(rows, "user int, item int, kind string")

"""A request releases what it persisted in Spark, and only that."""

from __future__ import annotations

import pytest

from spark_unlearn.request_caches import persistent_rdd_ids, releases_caches, request_scope


def test_the_scope_releases_what_it_persisted_and_keeps_the_callers_caches(spark):
    mine = spark.range(50).selectExpr("id * 3 as v").cache()
    mine.count()
    before = persistent_rdd_ids(spark)
    with request_scope(spark, "test"):
        inner = spark.range(70).selectExpr("id % 5 as k").cache()
        inner.count()
        rdd = spark.sparkContext.parallelize(range(9)).persist()
        rdd.count()
        assert len(persistent_rdd_ids(spark) - before) == 2
    assert persistent_rdd_ids(spark) == before
    assert inner.count() == 70  # recomputed from its plan, not lost
    mine.unpersist()


def test_the_scope_releases_on_failure_and_the_error_propagates(spark):
    before = persistent_rdd_ids(spark)

    @releases_caches("failing request")
    def request(session):
        session.sparkContext.parallelize(range(4)).persist().count()
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        request(spark)
    assert persistent_rdd_ids(spark) == before

"""Progress of a long lazy job, read from Spark's status tracker."""

from __future__ import annotations

import logging
import time

from spark_unlearn.progress import completed_stages, stage_progress


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def test_progress_counts_the_finished_stages_of_its_own_jobs_and_restores_the_callers_group(spark):
    sc = spark.sparkContext
    handler = _Records()
    logger = logging.getLogger("spark_unlearn.progress")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    sc.setJobGroup("callers-group", "the caller's own work")
    try:
        with stage_progress(sc, lambda n: f"{n} stages done", every=0.2) as group:
            # Two shuffles: three stages, each slow enough for the watcher to see it finish.
            rdd = sc.parallelize(range(4), 2).map(lambda x: (time.sleep(0.4), (x % 2, x))[1]).partitionBy(2)
            rdd.map(lambda kv: (time.sleep(0.4), (kv[1] % 3, kv[1]))[1]).partitionBy(2).map(lambda kv: time.sleep(0.4)).count()
            assert completed_stages(sc, group) == 3
        assert sc.getLocalProperty("spark.jobGroup.id") == "callers-group"
        sc.parallelize([1]).count()  # a job outside the block is not counted in its group
        assert completed_stages(sc, group) == 3
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        sc.setLocalProperty("spark.jobGroup.id", None)
        sc.setLocalProperty("spark.job.description", None)
    counts = [int(m.split()[0]) for m in handler.messages]
    assert counts, "nothing was logged during a job of several seconds"
    assert counts == sorted(counts) and set(counts) <= {0, 1, 2, 3} and max(counts) >= 1

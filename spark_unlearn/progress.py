"""Progress of one long lazy Spark job, logged from Spark's status tracker.

Chained work (ALS half-iterations with no job of their own) runs as a single
Spark job, so the driver cannot log after each step.  :func:`stage_progress`
tags the jobs started inside it with a job group and, from a daemon thread,
logs how many of their stages have finished every ``every`` seconds.  Short
work logs nothing.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from pyspark import SparkContext

log = logging.getLogger(__name__)

_GROUP = "spark.jobGroup.id"
_DESCRIPTION = "spark.job.description"


def completed_stages(sc: SparkContext, group: str) -> int:
    """Stages of the jobs in ``group`` whose tasks have all finished."""
    tracker = sc.statusTracker()
    done = 0
    for job in tracker.getJobIdsForGroup(group):
        info = tracker.getJobInfo(job)
        for stage in info.stageIds if info else ():
            s = tracker.getStageInfo(stage)
            done += bool(s and s.numTasks and s.numCompletedTasks >= s.numTasks)
    return done


@contextmanager
def stage_progress(sc: SparkContext, describe: Callable[[int], str], every: float = 10.0) -> Iterator[str]:
    """Log ``describe(completed stages)`` every ``every`` seconds while the block runs.

    Jobs started in the block (from this thread) join a fresh job group, whose
    id is yielded; the caller's own group, if any, is restored afterwards.
    """
    group = f"spark_unlearn-{uuid.uuid4().hex[:12]}"
    saved = {key: sc.getLocalProperty(key) for key in (_GROUP, _DESCRIPTION)}
    sc.setJobGroup(group, describe(0))
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(every):
            try:
                log.info("%s", describe(completed_stages(sc, group)))
            except Exception as exc:  # progress must never break the work it reports on
                log.debug("progress unavailable: %s", exc)
                return

    thread = threading.Thread(target=watch, name="spark-unlearn-progress", daemon=True)
    thread.start()
    try:
        yield group
    finally:
        stop.set()
        thread.join()
        for key, value in saved.items():
            sc.setLocalProperty(key, value)

"""Release what one request persisted in Spark once it is over, so a long-lived driver does not fill up.

A request (train, unlearn) persists its intermediate tables: the block
layout, the factors of each sweep, the remaining ratings.  They must live
until the new version is published, since the tables it writes are lazy
and read them.  Spark frees a persisted RDD only when it is unpersisted or
when its driver-side object is garbage collected, and many stay reachable:
200 sequential requests in one process kept ~11 RDDs per full-sweep
request, and the JVM heap grew from 0.3 to 2.5 GiB (BENCHMARKS.md,
"200 sequential erasures").

:func:`request_scope` records the persistent RDDs before the request and
unpersists every new one when the scope exits, on success and on failure.
The storage of DataFrames cached inside the scope goes with them (each is
an RDD of Spark's cache manager, listed like any other); the cache manager
keeps only the plan, and a later query on it recomputes.  What was
persisted before the scope (a caller's own caches) is left alone.

Caveats: a DataFrame made inside the scope that rests on a local
checkpoint (IFRU's data preparation) cannot be used after it, its blocks
are gone; and the scope assumes one request per driver at a time, since an
RDD another thread persists meanwhile is released too.
"""

from __future__ import annotations

import functools
import logging
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable)


def persistent_rdd_ids(spark: SparkSession) -> set[int]:
    """Ids of the RDDs the SparkContext currently holds persisted (DataFrame caches included)."""
    return {int(k) for k in spark.sparkContext._jsc.getPersistentRDDs().keys()}


def release_new(spark: SparkSession, before: set[int]) -> int:
    """Unpersist (non-blocking) every persisted RDD whose id is not in ``before``; returns how many."""
    held = spark.sparkContext._jsc.getPersistentRDDs()
    new = [k for k in held.keys() if int(k) not in before]
    for k in new:
        held[k].unpersist(False)
    return len(new)


@contextmanager
def request_scope(spark: SparkSession, what: str) -> Iterator[None]:
    """Unpersist on exit every RDD persisted inside the block (see the module docstring)."""
    before = persistent_rdd_ids(spark)
    try:
        yield
    finally:
        try:
            n = release_new(spark, before)
        except Exception:  # noqa: BLE001 - releasing must never hide the request's own error
            log.warning("could not release the Spark caches of the %s", what, exc_info=True)
        else:
            if n:
                log.debug("%s: released %d persisted RDDs", what, n)


def releases_caches(what: str) -> Callable[[F], F]:
    """Decorator: run ``fn(spark, ...)`` inside :func:`request_scope`."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        def inner(spark: SparkSession, *args, **kwargs):
            with request_scope(spark, what):
                return fn(spark, *args, **kwargs)

        return inner  # type: ignore[return-value]

    return wrap

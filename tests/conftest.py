"""Shared fixtures: one local[2] SparkSession for the whole test session."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MOVIELENS_SMALL = Path(os.environ.get("SPARK_UNLEARN_SHARED", REPO.parent / "shared")) / "data" / "ml-latest-small"


SMOKE_TEST = "test_standalone_cluster_smoke"
CRASH_TESTS = "test_crash_safety.py"


@pytest.hookimpl(trylast=True)  # after -k / -m have deselected
def pytest_collection_modifyitems(config, items):
    """The crash-safety test goes near the end; the standalone-cluster smoke, if selected, starts now in the
    background and its test runs last.

    It mostly waits for JVMs, so it overlaps the rest of the suite (``cluster_smoke.py``).  Under
    pytest-xdist (``-n 2``) every worker collects the same items: the first worker (``gw0``) starts the smoke
    in the directory the controller named, and whichever worker gets the test, dealt out last, waits for it.
    """
    # The crash-safety kills run their jobs as two chains of subprocesses side by side, which fill both cores
    # by themselves: dealt out last, they run when the suite's class-data-sharing archive is ready (each JVM
    # starts ~7 s faster) and the other worker has finished, instead of competing with everything at the start.
    late = [item for item in items if item.path.name == CRASH_TESTS]
    items[:] = [item for item in items if item.path.name != CRASH_TESTS] + late
    smoke = [item for item in items if item.name == SMOKE_TEST]
    if not smoke or config.option.collectonly:
        return
    items[:] = [item for item in items if item.name != SMOKE_TEST] + smoke
    import cluster_smoke

    if len(items) == 1 or cluster_smoke.skip_reason() is not None:
        return  # run alone, the test starts the smoke itself
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None:
        cluster_smoke.start()
    elif worker == "gw0" and cluster_smoke.shared_work_dir() is not None:
        cluster_smoke.start(cluster_smoke.shared_work_dir())


def pytest_sessionstart(session):
    """Find the suite's CDS archive of Spark's classes, or start making it (``jvm_cds.py``).

    Under pytest-xdist this runs in the controller before the workers are spawned; they inherit its path.
    """
    if os.environ.get("PYTEST_XDIST_WORKER") or session.config.option.collectonly:
        return
    if getattr(session.config.option, "numprocesses", None):
        # The xdist workers inherit this: the directory the cluster smoke runs in (cluster_smoke.py).
        import tempfile

        import cluster_smoke

        os.environ[cluster_smoke.SHARED_DIR_ENV] = tempfile.mkdtemp(prefix="spark_unlearn_smoke_")
    from job_helpers import FAST_JVM_OPTS
    from jvm_cds import ensure_archive

    ensure_archive(FAST_JVM_OPTS)


def pytest_unconfigure(config):
    import sys

    if "jvm_cds" in sys.modules:
        sys.modules["jvm_cds"].stop_maker()
    if "cluster_smoke" in sys.modules:
        smoke = sys.modules["cluster_smoke"]
        smoke.finish()  # a smoke still running (interrupted session): its trap stops the cluster
        shared = os.environ.get(smoke.SHARED_DIR_ENV)
        if shared and not os.environ.get("PYTEST_XDIST_WORKER"):
            with contextlib.suppress(OSError):
                os.rmdir(shared)  # the controller's, left empty when no smoke ran (a failed smoke's logs stay)


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    from pyspark.sql import SparkSession

    from job_helpers import FAST_JVM_OPTS
    from jvm_cds import jvm_options

    session = (
        SparkSession.builder.master("local[2]")
        .appName("spark_unlearn-tests")
        # C1 only and the serial collector: the suite runs thousands of tiny, freshly code-generated jobs, for
        # which C2 and parallel GC threads mostly take CPU from the job on a 2-core machine (~30% faster).
        .config("spark.driver.extraJavaOptions", jvm_options(FAST_JVM_OPTS))
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.default.parallelism", "4")
        .config("spark.driver.memory", "2g")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.python.worker.reuse", "true")
        # Whole-stage code generation compiles a class per new query; the suite's thousands of distinct queries
        # over a few hundred rows run faster interpreted (tests/test_unlearn_spark.py: 139 s -> 127 s).
        .config("spark.sql.codegen.wholeStage", "false")
        # Adaptive execution runs each shuffle stage as a job of its own, and re-plans after it: on tables of a
        # few hundred rows that is pure overhead (the same two files 363 s -> 329 s).  The jobs run as scripts
        # (crash safety, cluster smoke) and the README's main command keep Spark's default (on).
        .config("spark.sql.adaptive.enabled", "false")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    session.sparkContext.setCheckpointDir(str(tmp_path_factory.mktemp("checkpoints")))
    yield session
    session.stop()


@pytest.fixture(scope="session")
def movielens_small_dir() -> Path:
    """ml-latest-small from ../shared; tests using it skip when it is absent."""
    if not (MOVIELENS_SMALL / "ratings.csv").exists():
        pytest.skip(f"ml-latest-small not found at {MOVIELENS_SMALL} (set SPARK_UNLEARN_SHARED to the folder holding data/)")
    return MOVIELENS_SMALL


@pytest.fixture(scope="session")
def sample_ratings_path() -> str:
    """pyspark's embedded MovieLens sample (1,501 ratings, user::item::rating::ts)."""
    from spark_unlearn.data.embedded import sample_movielens_path

    return sample_movielens_path()


@pytest.fixture(scope="session")
def trained_store(spark, tmp_path_factory, sample_ratings_path) -> str:
    """A model store with one version: rank-4 explicit ALS on the embedded sample (trained once per test run).

    Tests that change a store work on a copy (:func:`store_copy`).  Under pytest-xdist the workers share one:
    the first to need it trains it under a lock in the run's common temp directory and the others wait for
    it, since a second training on the other core would only slow down the first (~30 s of a cold JVM each).
    """
    import fcntl

    from spark_unlearn.als.params import ALSParams
    from spark_unlearn.train_model import run_training

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = shared / "trained_store"
    with open(shared / "trained_store.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (root / "CURRENT").exists():
            params = ALSParams(rank=4, reg=0.1, iterations=5, seed=1, num_blocks=3)
            run_training(spark, ratings_path=sample_ratings_path, store_path=str(root), params=params)
    return str(root)


@pytest.fixture()
def store_copy(trained_store, tmp_path) -> str:
    """A private copy of :func:`trained_store` for one test."""
    import shutil

    return str(shutil.copytree(trained_store, tmp_path / "store"))


@pytest.fixture(scope="module", autouse=True)
def _drop_cached_tables():
    """Each module's cached DataFrames and persisted RDDs are dropped when it ends.

    Tests cache what they reuse and rarely unpersist it; kept for the whole session, those blocks fill the
    driver's old generation and every later test pays for full collections.
    """
    yield
    from pyspark import SparkContext
    from pyspark.sql import SparkSession

    if SparkContext._active_spark_context is not None:
        session = SparkSession.getActiveSession()
        if session is not None:
            from spark_unlearn.request_caches import release_new

            session.catalog.clearCache()
            release_new(session, before=set())

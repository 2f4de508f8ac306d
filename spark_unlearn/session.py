"""Building a SparkSession the way jobs and tests need it."""

from __future__ import annotations

import atexit
import logging
import shutil
import tempfile

from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

# Applied only where neither spark-submit (--conf, --properties-file) nor the
# TOML [spark] table set a value: the jobs move small tables, so Spark's 200
# shuffle partitions are mostly empty tasks, and progress bars garble logs.
# Python workers talk to their JVM over a Unix domain socket: over loopback TCP
# the end of a task's input often waits ~40 ms for a delayed ACK (Nagle), which
# on small ALS blocks was a sixth of a training stage (docs/BENCHMARKS.md).
DEFAULTS = {
    "spark.sql.shuffle.partitions": "8",
    "spark.ui.showConsoleProgress": "false",
    "spark.python.worker.reuse": "true",
    "spark.python.unix.domain.socket.enabled": "true",
}


def get_session(
    app_name: str = "spark_unlearn",
    master: str | None = None,
    conf: dict[str, str] | None = None,
    checkpoint_dir: str | None = None,
    quiet: bool = True,
) -> SparkSession:
    """Return a SparkSession, creating it if needed.

    Parameters
    ----------
    app_name
        Spark application name.
    master
        Master URL.  ``None`` keeps whatever ``spark-submit`` set, falling back
        to ``local[*]`` when run as a plain Python script.
    conf
        Extra Spark properties (from ``conf/*.toml`` ``[spark]`` tables).
    checkpoint_dir
        Directory for RDD checkpoints (long ALS runs truncate lineage there).
        Defaults to a fresh temporary directory, removed when the process exits.
    quiet
        Spark's driver logs at WARN from the context's start (Spark's
        ``spark.log.level``; a job's ~11,000 INFO lines go, warnings stay),
        unless ``spark.log.level`` was set by spark-submit or ``conf``.
        ``False``: Spark's own log configuration (a job's ``--verbose``).
        ``conf/log4j2.properties`` is the same setting as a file, for
        ``--driver-java-options``/executors.
    """
    builder = SparkSession.builder.appName(app_name)
    submitted = _submitted_keys()
    if quiet and "spark.log.level" not in submitted and "spark.log.level" not in (conf or {}):
        builder = builder.config("spark.log.level", "WARN")
    if master is not None:
        builder = builder.master(master)
    elif "spark.master" not in submitted:
        builder = builder.master("local[*]")
    for key, value in DEFAULTS.items():
        if key not in submitted and key not in (conf or {}):
            builder = builder.config(key, value)
    for key, value in (conf or {}).items():
        builder = builder.config(key, str(value))
    spark = builder.getOrCreate()
    sc = spark.sparkContext
    if sc.getCheckpointDir() is None:
        if checkpoint_dir is None:
            checkpoint_dir = tempfile.mkdtemp(prefix="spark_unlearn_ckpt_")
            # Ours, so ours to remove: every job and test run would otherwise leave one behind.
            atexit.register(shutil.rmtree, checkpoint_dir, True)
        sc.setCheckpointDir(checkpoint_dir)
    return spark


def _submitted_keys() -> set[str]:
    """Keys already set by spark-submit (``--conf``, ``--properties-file``, ``--master``).

    spark-submit passes them to its JVM as system properties; a SparkConf
    only sees them once the Python side is connected to that JVM, so connect
    first (plain ``python`` starts a local gateway here, as getOrCreate would).
    """
    from pyspark import SparkConf, SparkContext

    SparkContext._ensure_initialized()
    return {k for k, _ in SparkConf(loadDefaults=True).getAll()}

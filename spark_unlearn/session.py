"""Building a SparkSession the way jobs and tests need it."""

from __future__ import annotations

import logging
import os
import tempfile

from pyspark.sql import SparkSession

log = logging.getLogger(__name__)

# Applied only where neither spark-submit (--conf, --properties-file) nor the
# TOML [spark] table set a value: the jobs move small tables, so Spark's 200
# shuffle partitions are mostly empty tasks, and progress bars garble logs.
DEFAULTS = {
    "spark.sql.shuffle.partitions": "8",
    "spark.ui.showConsoleProgress": "false",
    "spark.python.worker.reuse": "true",
}


def get_session(
    app_name: str = "spark_unlearn",
    master: str | None = None,
    conf: dict[str, str] | None = None,
    checkpoint_dir: str | None = None,
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
        Defaults to a fresh temporary directory.
    """
    builder = SparkSession.builder.appName(app_name)
    if master is not None:
        builder = builder.master(master)
    elif "spark.master" not in _submitted_conf():
        builder = builder.master("local[*]")
    submitted = _submitted_keys()
    for key, value in DEFAULTS.items():
        if key not in submitted and key not in (conf or {}):
            builder = builder.config(key, value)
    for key, value in (conf or {}).items():
        builder = builder.config(key, str(value))
    spark = builder.getOrCreate()
    sc = spark.sparkContext
    if sc.getCheckpointDir() is None:
        sc.setCheckpointDir(checkpoint_dir or tempfile.mkdtemp(prefix="spark_unlearn_ckpt_"))
    return spark


def _submitted_keys() -> set[str]:
    """Keys spark-submit already set (it passes them to the driver JVM as system properties)."""
    from pyspark import SparkConf

    try:
        return {k for k, _ in SparkConf().getAll()}
    except Exception:  # no JVM yet outside spark-submit: nothing was set
        return set()


def _submitted_conf() -> dict[str, str]:
    """Spark properties passed by spark-submit (it exports them to the driver's environment)."""
    # spark-submit starts the Python driver with PYSPARK_GATEWAY_PORT set and
    # the master already configured on the JVM side; we only look for the
    # marker so that a plain `python jobs/x.py` still gets a local master.
    return {"spark.master": "submitted"} if os.environ.get("PYSPARK_GATEWAY_PORT") else {}

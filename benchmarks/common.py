"""Shared set-up of the benchmarks: one Spark session and the input data, the same way every time."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyspark.sql import SparkSession  # noqa: E402


def add_data_args(parser) -> None:
    parser.add_argument("--ratings", help="ratings file (any format read_ratings knows)")
    parser.add_argument("--format", default="auto")
    parser.add_argument("--columns", help="user,item,rating column names of --ratings (e.g. uid,iid,val)")
    parser.add_argument("--synthetic", type=int, help="use a synthetic Zipf set with this many ratings instead")
    parser.add_argument("--master", default="local[2]")


def bench_session(app: str, master: str, java_options: str | None = None) -> SparkSession:
    """The benchmarks' session; ``java_options`` go to the driver JVM (set before it starts: a new process only)."""
    builder = SparkSession.builder
    if java_options:
        builder = builder.config("spark.driver.extraJavaOptions", java_options)
    spark = (
        builder.master(master).appName(app).config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false").config("spark.sql.shuffle.partitions", "8")
        .config("spark.driver.memory", "8g")
        .config("spark.python.unix.domain.socket.enabled", os.environ.get("BENCH_PYTHON_UDS", "true")).getOrCreate()
    )
    spark.sparkContext.setLogLevel("ERROR")
    spark.sparkContext.setCheckpointDir("/tmp/bench_ckpt")
    return spark


def load_data(spark, args):
    """``(ratings, description)`` from ``--ratings``/``--format`` or ``--synthetic N``."""
    from spark_unlearn.data.readers import read_ratings
    from spark_unlearn.data.synthetic import synthetic_ratings

    if args.synthetic:
        n = args.synthetic
        ratings = synthetic_ratings(spark, n_users=max(1000, n // 50), n_items=max(500, n // 250), n_ratings=n, seed=0, partitions=8)
        return ratings, f"synthetic Zipf, {n} ratings requested"
    columns = None
    if getattr(args, "columns", None):
        user, item, rating = args.columns.split(",")
        columns = {"user": user, "item": item, "rating": rating}
    return read_ratings(spark, args.ratings, format=args.format, columns=columns), args.ratings

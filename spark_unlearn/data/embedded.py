"""The embedded default data set: the MovieLens sample every pyspark install carries."""

from __future__ import annotations

import os

import pyspark

from spark_unlearn.errors import SchemaError


def sample_movielens_path() -> str:
    """Path of ``pyspark/data/mllib/als/sample_movielens_ratings.txt``.

    1,501 real MovieLens ratings of 30 users on 100 movies, one
    ``user::item::rating::timestamp`` line each.
    """
    # Under spark-submit, pyspark is imported from $SPARK_HOME/python/lib/pyspark.zip,
    # so pyspark.__file__ points inside the zip; the data lives under SPARK_HOME.
    homes = [os.path.dirname(pyspark.__file__), os.environ.get("SPARK_HOME")]
    try:
        from pyspark.find_spark_home import _find_spark_home

        homes.append(_find_spark_home())
    except Exception:  # an unusual install without the helper: the other candidates remain
        pass
    tried = []
    for home in filter(None, homes):
        path = os.path.join(home, "data", "mllib", "als", "sample_movielens_ratings.txt")
        if os.path.exists(path):
            return path
        tried.append(path)
    raise SchemaError(
        f"pyspark's sample ratings are missing (looked at {tried}); reinstall pyspark from PyPI "
        "or pass --ratings PATH explicitly"
    )

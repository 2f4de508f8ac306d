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
    path = os.path.join(os.path.dirname(pyspark.__file__), "data", "mllib", "als", "sample_movielens_ratings.txt")
    if not os.path.exists(path):
        raise SchemaError(
            f"pyspark's sample ratings are missing at {path}; reinstall pyspark from PyPI "
            "or pass --ratings PATH explicitly"
        )
    return path

"""spark_unlearn: recommendation unlearning at cluster scale on Apache Spark.

Two methods:

* Unlearn-ALS (Xu et al. 2023) for matrix-factorisation models trained by
  alternating least squares, re-solving only the rows a deletion reaches
  (:mod:`spark_unlearn.als`).
* IFRU (Zhang et al. 2024), influence-function unlearning for differentiable
  recommenders (:mod:`spark_unlearn.ifru`).
"""

__version__ = "0.1.0"

_API = ("ALSUnlearner", "UnlearnResult", "UnlearnReport", "unlearn_store", "ModelStore")
_IFRU_API = ("IFRUUnlearner", "IFRUResult", "IFRUReport")


def __getattr__(name: str):
    """``ALSUnlearner``, ``IFRUUnlearner`` and friends, imported on first use (:mod:`spark_unlearn.api`,
    :mod:`spark_unlearn.ifru.api`: torch only for the latter), so that importing the package stays cheap;
    ``ModelStore`` from here carries the ``unlearn`` method the API module attaches."""
    if name in _API:
        from spark_unlearn import api

        return getattr(api, name)
    if name in _IFRU_API:
        from spark_unlearn.ifru import api as ifru_api

        return getattr(ifru_api, name)
    raise AttributeError(f"module 'spark_unlearn' has no attribute {name!r}")


__all__ = ["__version__", *_API, *_IFRU_API]

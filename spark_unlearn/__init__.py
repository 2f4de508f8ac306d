"""spark_unlearn: recommendation unlearning at cluster scale on Apache Spark.

Two methods:

* Unlearn-ALS (Xu et al. 2023) for matrix-factorisation models trained by
  alternating least squares, re-solving only the rows a deletion reaches
  (:mod:`spark_unlearn.als`).
* IFRU (Zhang et al. 2024), influence-function unlearning for differentiable
  recommenders (:mod:`spark_unlearn.ifru`).
"""

__version__ = "0.1.0"

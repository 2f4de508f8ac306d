"""The independent verifier: recompute a published version's certificate from its files alone.

``verify_version(spark, store_path, version=None, sample=None)``; the job is
``spark-submit jobs/audit.py --model STORE --verify-certificate``.  Nothing
here imports the unlearning path (``spark_unlearn.als``).
"""

from spark_unlearn.verify.certificate import verify_version

__all__ = ["verify_version"]

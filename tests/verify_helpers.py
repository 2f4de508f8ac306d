"""End-to-end tests check a published version with the independent verifier, not with the job's own report."""

from __future__ import annotations

from spark_unlearn.verify import verify_version


def assert_verified(spark, store: str, version: str | None = None, **kwargs) -> dict:
    """Recompute ``version``'s certificate from its files (:mod:`spark_unlearn.verify`); fail with its reasons."""
    report = verify_version(spark, store, version, **kwargs)
    assert report["status"] == "verified", (report["version"], report["reasons"])
    return report

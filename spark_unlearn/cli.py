"""What every spark-submit job shares: report path checked first, one error line, one exit-code convention.

Exit codes: 0 done; 2 a :class:`~spark_unlearn.errors.SparkUnlearnError`
(bad input, configuration or store; nothing was written).  Jobs may add
their own non-zero codes for a completed run with a negative finding
(``jobs/audit.py``: 3).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from spark_unlearn.errors import SparkUnlearnError
from spark_unlearn.reporting import check_report_path, write_report

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def run_job(log: logging.Logger, report_path: str | None, work: Callable[[], dict[str, Any]]) -> tuple[int, dict | None]:
    """Check ``report_path``, run ``work()``, write its report; ``(exit code, report or None)``.

    A :class:`SparkUnlearnError` is logged and printed as one ``error:`` line
    on stderr (exit code 2); anything else is a bug and propagates with its
    traceback.
    """
    try:
        check_report_path(report_path)
        report = work()
        if report_path:
            write_report(report, report_path)
    except SparkUnlearnError as exc:
        log.error("%s: %s", type(exc).__name__, exc)
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT, None
    return EXIT_OK, report


def print_report(report: dict[str, Any]) -> None:
    """The report as sorted JSON on stdout (logs go to stderr, so stdout stays machine-readable)."""
    print(json.dumps(report, indent=2, sort_keys=True, default=str))

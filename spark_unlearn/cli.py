"""What every spark-submit job shares: report path checked first, one error line, one exit-code convention.

Exit codes: 0 done; 2 a :class:`~spark_unlearn.errors.SparkUnlearnError`
(bad input, configuration or store; nothing was written); 4 the store moved
on while the request was computed and re-applying it ran out of tries
(:class:`~spark_unlearn.errors.StoreMovedError`: nothing was published,
resubmit).  Jobs may add their own non-zero codes for a completed run with a
negative finding (``jobs/audit.py``: 3).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable
from typing import Any

from spark_unlearn.errors import SparkUnlearnError, StoreMovedError
from spark_unlearn.reporting import check_report_path, write_report

EXIT_OK, EXIT_BAD_INPUT, EXIT_STORE_MOVED = 0, 2, 4


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
        return (EXIT_STORE_MOVED if isinstance(exc, StoreMovedError) else EXIT_BAD_INPUT), None
    return EXIT_OK, report


def add_objective_flags(parser) -> None:
    """Flags that state a model's objective, under our names and Spark's (``ALS`` estimator params)."""
    g = parser.add_argument_group(
        "model objective",
        "A model saved by Spark MLlib does not record regParam, alpha or implicitPrefs: state them (the values given "
        "to ALS(...) at training). They are measured before use: a model that is not stationary under them is "
        "refused. For a store version they must agree with what the version records.",
    )
    g.add_argument("--reg", "--regParam", dest="reg", type=float, help="Spark's regParam")
    g.add_argument("--alpha", type=float, help="implicit confidence slope (Spark's alpha)")
    fb = g.add_mutually_exclusive_group()
    fb.add_argument("--implicit", dest="implicit", action="store_true", default=None, help="implicit feedback")
    fb.add_argument("--explicit", dest="implicit", action="store_false", help="explicit feedback")
    fb.add_argument("--implicitPrefs", dest="implicit", type=boolean_flag, metavar="true|false", help="Spark's name")
    g.add_argument("--nonnegative", action="store_true", default=None,
                   help="the model was trained with nonnegative=True (refused: not supported yet)")
    g.add_argument("--force", action="store_true",
                   help="unlearn even if the model is not stationary under these hyperparameters (needs --tol; "
                        "the report records the override)")


def stated_objective_flags(args) -> dict[str, Any]:
    """The objective keys the command line states (flags not given are not statements)."""
    return {k: getattr(args, k) for k in ("reg", "alpha", "implicit", "nonnegative") if getattr(args, k, None) is not None}


def boolean_flag(text: str) -> bool:
    """``true``/``false`` (also ``1``/``0``, ``yes``/``no``) for flags with Spark's boolean names, e.g. ``--implicitPrefs``."""
    low = text.strip().lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    import argparse

    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def print_report(report: dict[str, Any]) -> None:
    """The report as sorted JSON on stdout (logs go to stderr, so stdout stays machine-readable)."""
    print(json.dumps(report, indent=2, sort_keys=True, default=str))

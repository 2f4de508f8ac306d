"""What every spark-submit job shares: report path checked first, one error line, one exit-code convention,
one output convention.

Output: a summary of at most 15 lines on stderr (:mod:`spark_unlearn.reporting`);
the full report as JSON to ``--report PATH`` (written atomically) and/or on
stdout with ``--json``, and nothing else on stdout, under spark-submit too
(:func:`spark_unlearn.logs.separate_stderr`), so that
``spark-submit jobs/unlearn.py ... --json | python -m json.tool`` works.

Exit codes: 0 done; 2 a :class:`~spark_unlearn.errors.SparkUnlearnError`
(bad input, configuration or store; nothing was written); 4 the store moved
on while the request was computed and re-applying it ran out of tries
(:class:`~spark_unlearn.errors.StoreMovedError`: nothing was published,
resubmit).  Jobs may add their own non-zero codes for a completed run with a
negative finding (``jobs/audit.py``: 3).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Any

from spark_unlearn.errors import SparkUnlearnError, StoreMovedError
from spark_unlearn.logs import separate_stderr
from spark_unlearn.reporting import (MAX_SUMMARY_LINES, cap_lines, check_report_path, mlflow_line, report_json,
                                     write_report)

EXIT_OK, EXIT_BAD_INPUT, EXIT_STORE_MOVED = 0, 2, 4


def run_job(log: logging.Logger, report_path: str | None, work: Callable[[], dict[str, Any]]) -> tuple[int, dict | None]:
    """Check ``report_path``, run ``work()``, write its report; ``(exit code, report or None)``.

    A :class:`SparkUnlearnError` is logged and printed as one ``error:`` line
    on stderr (exit code 2); anything else is a bug and propagates with its
    traceback.  Under spark-submit, stderr is spark-submit's own from here on (:func:`separate_stderr`).
    """
    separate_stderr()
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


OUTPUT_HELP = ("A summary of at most 15 lines goes to stderr. The full report (JSON) goes to --report PATH and/or, "
               "with --json, to stdout, which then holds nothing else (also under spark-submit): "
               "... --json | python -m json.tool")


def add_output_flags(parser) -> None:
    """``--report PATH`` and ``--json``: where the full report goes (the summary always goes to stderr)."""
    g = parser.add_argument_group("output", OUTPUT_HELP)
    g.add_argument("--report", metavar="PATH", help="write the report (JSON) to PATH (atomically: temp file + rename)")
    g.add_argument("--json", action="store_true", help="print the report (JSON) on stdout, and nothing else there")


def emit(report: dict[str, Any], summary: list[str], as_json: bool) -> None:
    """The summary on stderr; the report as JSON on stdout with ``--json`` (``run_job`` wrote ``--report``)."""
    # The MLflow line is the run's address: it is kept, and the summary gives up a line for it if need be.
    extra = mlflow_line(report)
    for line in cap_lines(summary, MAX_SUMMARY_LINES - len(extra)) + extra:
        print(line, file=sys.stderr)
    sys.stderr.flush()
    if as_json:
        print_report(report)


def add_tracking_flags(parser) -> None:
    """``--mlflow-tracking-uri`` and ``--mlflow-experiment`` (``[mlflow]`` in the config; :mod:`spark_unlearn.tracking`)."""
    g = parser.add_argument_group("MLflow (optional: pip install 'spark_unlearn[mlflow]')",
                                  "Log this run (params, metrics, the version path) to an MLflow tracking store.")
    g.add_argument("--mlflow-tracking-uri", metavar="URI",
                   help="tracking store, e.g. http://mlflow:5000 or file:///tmp/mlruns (default [mlflow] tracking_uri; "
                        "none: no tracking)")
    g.add_argument("--mlflow-experiment", metavar="NAME", help="experiment name (default [mlflow] experiment, spark_unlearn)")


def open_tracker(cfg: dict[str, dict[str, Any]], args):
    """The run's :class:`~spark_unlearn.tracking.MlflowTracker`, or ``None`` when no tracking URI is set.

    Opened before the job works, so that a wrong URI or a missing package
    stops it (:class:`~spark_unlearn.errors.ConfigError`) before anything is
    computed or written.
    """
    from spark_unlearn.tracking import MlflowTracker

    uri = getattr(args, "mlflow_tracking_uri", None) or cfg["mlflow"]["tracking_uri"]
    experiment = getattr(args, "mlflow_experiment", None) or cfg["mlflow"]["experiment"]
    return MlflowTracker.open(uri, experiment)


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
    print(report_json(report))
    sys.stdout.flush()

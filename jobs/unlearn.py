"""spark-submit entry point: remove a deletion batch from a stored ALS model (Unlearn-ALS).

    spark-submit jobs/unlearn.py --model STORE_DIR --delete PATH [--ratings PATH] [--tol T]
        [--mode frontier|full|retrain] [--report PATH] [--json] [--strict] [--output-store DIR] [--config conf/local.toml]
        [--batch-id ID] [--engine auto|targeted|layout]
        [--implicit | --explicit | --implicitPrefs BOOL] [--reg/--regParam L] [--alpha A] [--nonnegative] [--force]

``--model`` is a model store written by jobs/train.py (the current version is
unlearned and a new version published beside it, with the remaining ratings)
or a directory saved by Spark MLlib's ``ALSModel.save``.  For an MLlib model,
``--ratings`` (the data it was trained on), ``--output-store`` and its
objective are required: Spark's saved metadata does not record regParam,
alpha or implicitPrefs, so state ``--implicit``/``--explicit``, ``--reg`` and
(implicit) ``--alpha``.  The model is then measured under them: if it is not
stationary (not an ALS fixed point under that objective) the job refuses and
says which feedback type fits better; ``--force --tol T`` overrides.
Prints a summary of at most 15 lines on stderr (what was deleted, rows
re-solved, the new version, the certificate, times and the end-to-end
speed-up); the report (JSON) goes to ``--report PATH`` or, with ``--json``, to
stdout (``... --json | python -m json.tool``).

Each batch is applied exactly once: re-submitting a batch the current model
already reflects (same content) is a no-op whose report says
``"status": "already_applied"`` (exit code 0); a batch that removes nothing
publishes nothing (``"status": "nothing_to_delete"``).  The store's
``ledger.jsonl`` records every applied batch.  Stated hyperparameters (flags,
or ``[als]`` keys set in ``--config``) must match a store version's, or the
job refuses.  Publication is compare-and-swap on the version the request
started from: if another job published first, the request is re-applied on
the new current version (up to ``[unlearn] max_rebases`` times).
Exit codes: 0 done, 2 bad input / configuration / store (nothing written),
4 the store kept moving: nothing published, resubmit.
"""

import argparse
import logging
import sys
import time

import _bootstrap  # noqa: F401

from spark_unlearn.config import load_config, override, stated_objective
from spark_unlearn.cli import (add_objective_flags, add_output_flags, add_tracking_flags, emit, open_tracker, run_job,
                               stated_objective_flags)
from spark_unlearn.logs import configure_logging
from spark_unlearn.reporting import unlearn_summary
from spark_unlearn.session import get_session
from spark_unlearn.als.options import UnlearnOptions
from spark_unlearn.unlearn_model import UnlearnRequest, run_unlearning

log = logging.getLogger("spark_unlearn.jobs.unlearn")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model store, a path or a Hadoop URI such as hdfs://nn:8020/store (or a Spark ALSModel directory); default [store] path")
    p.add_argument("--delete", required=True, help="deletion batch: CSV/Parquet with user,item | user | item columns")
    p.add_argument("--ratings", help="ratings the model was trained on (default: the store's data version)")
    p.add_argument("--format", help="format of --ratings (default auto-detect)")
    p.add_argument("--output-store", help="store for the new version (default: the --model store)")
    p.add_argument("--tol", type=float, help="certificate tolerance (default: relative to the model's training residual)")
    p.add_argument("--certificate-policy", choices=["training-precision", "strict"],
                   help="how far each row may stay from the unlearned fixed point: its own training residual "
                        "(default) or one tolerance for every row")
    p.add_argument("--mode", choices=["frontier", "full", "retrain"])
    p.add_argument("--engine", choices=["auto", "targeted", "layout"],
                   help="frontier mode: targeted scans with an incremental certificate, or the block layout with a full one")
    p.add_argument("--strict", action="store_true", default=None, help="deletion requests absent from the data are errors")
    p.add_argument("--batch-id", help="id of this deletion request for the ledger (default: hash of its content)")
    add_output_flags(p)
    p.add_argument("--config", help="TOML config (see conf/local.toml)")
    p.add_argument("--verbose", action="store_true", help="keep Spark's own INFO logs (default: warnings only, conf/log4j2.properties)")
    add_objective_flags(p)
    add_tracking_flags(p)
    return p.parse_args(argv)


EXAMPLES = """examples:
  # erase what a CSV lists (columns user,item | user | item) from the store jobs/train.py wrote
  spark-submit jobs/unlearn.py --model out/model_store --delete deletions.csv

  # the report (JSON) on stdout, for a pipe; or to a file
  spark-submit jobs/unlearn.py --model out/model_store --delete deletions.csv --json | python -m json.tool
  spark-submit jobs/unlearn.py --model out/model_store --delete deletions.csv --report out/unlearn.json

  # log the run (certificate, rows solved, times, the version's path) to MLflow
  spark-submit jobs/unlearn.py --model out/model_store --delete deletions.csv --mlflow-tracking-uri http://mlflow:5000

  # a model saved by pyspark.ml: state its objective, as given to ALS(...)
  spark-submit jobs/unlearn.py --model mllib_model/ --ratings ratings.csv --output-store out/store \\
      --delete deletions.csv --implicit --regParam 0.05 --alpha 10

exit codes: 0 done (applied, already_applied or nothing_to_delete), 2 bad input (nothing written),
            4 the store kept moving under concurrent publishers (nothing published: resubmit)
"""


def main(argv=None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)

    def work():
        cfg = load_config(args.config)
        cfg = override(cfg, "unlearn", tol=args.tol, mode=args.mode, strict=args.strict, engine=args.engine,
                       certificate_policy=args.certificate_policy)
        stated = {**stated_objective(args.config), **stated_objective_flags(args)}
        cfg = override(cfg, "store", path=args.model)
        configure_logging(cfg["logging"]["level"])
        tracker = open_tracker(cfg, args)
        u = cfg["unlearn"]
        t_session = time.perf_counter()
        spark = get_session("spark_unlearn-unlearn", conf=cfg["spark"], quiet=not args.verbose)
        session_s = time.perf_counter() - t_session
        request = UnlearnRequest(
            model_path=cfg["store"]["path"],
            delete_path=args.delete,
            ratings_path=args.ratings,
            ratings_format=args.format or cfg["data"]["format"],
            output_store=args.output_store,
            options=UnlearnOptions.from_config(u),
            k=cfg["eval"]["k"],
            measure=u["measure"],
            batch_id=args.batch_id,
            expected_params=stated,
            force=args.force,
            max_rebases=u["max_rebases"],
        )
        report = run_unlearning(spark, request, started=started)
        # The JVM's start is part of a cold job's end-to-end time; reported apart so a reader can subtract it.
        report.setdefault("seconds", {})["session_start"] = round(session_s, 3)
        if tracker is not None:
            report["mlflow"] = tracker.log("unlearn", report)
        return report

    code, report = run_job(log, args.report, work)
    if report is not None:
        emit(report, unlearn_summary(report), args.json)
    return code


if __name__ == "__main__":
    sys.exit(main())

"""IFRU job: train an MF / LightGCN model and unlearn training interactions from it.

    spark-submit jobs/ifru.py --ratings PATH --model DIR [--delete PATH]
                              [--model-type mf|lightgcn] [--config conf/ifru.toml]
                              [--ratings-out PATH] [--report PATH] [--json]

* No model in ``DIR`` yet: Spark prepares the data (binarise, k-core,
  60/20/20 split, dense ids) and the driver trains a model, saved in ``DIR``.
* ``--delete PATH`` (a ratings file or a CSV with ``user,item`` columns, raw
  ids): the listed training interactions are unlearned with the influence
  update (pruned if ``prune_quantile`` is set), LightGCN switches to the graph
  without them, and the new version replaces the old one atomically.  A failed
  run leaves the saved model untouched.
* ``--ratings-out PATH`` writes the ratings without the deleted pairs
  (Parquet), so that no later retrain brings them back.

The TOML config may hold an ``[ifru]`` table (keys of
:class:`spark_unlearn.ifru.config.IFRUConfig`) and a ``[spark]`` table (Spark
properties).  For an existing model only the unlearning keys
(:data:`spark_unlearn.ifru.run.UNLEARNING_KEYS`) may differ from the saved
ones.  A summary of at most 15 lines (pairs requested, applied and unknown,
what changed, the update's certificate, times) and the logs go to stderr; the
report (JSON) goes to ``--report PATH`` or, with ``--json``, to stdout.  The
work is done by :func:`spark_unlearn.ifru.run.run_ifru`.
"""

from __future__ import annotations

import argparse
import logging
import sys

import _bootstrap  # noqa: F401,E402  (source checkout without installation: puts the repo on sys.path)

from spark_unlearn.cli import add_output_flags, add_tracking_flags, emit, open_tracker, run_job  # noqa: E402
from spark_unlearn.logs import configure_logging  # noqa: E402
from spark_unlearn.reporting import ifru_summary  # noqa: E402

log = logging.getLogger("spark_unlearn.jobs.ifru")


EXAMPLES = """examples:
  spark-submit jobs/ifru.py --ratings ratings.csv --model out/ifru_mf                    # train MF
  spark-submit jobs/ifru.py --ratings ratings.csv --model out/ifru_mf --delete pairs.csv # unlearn pairs
  spark-submit jobs/ifru.py --ratings ratings.csv --model out/ifru_mf --delete pairs.csv --json | python -m json.tool
  spark-submit jobs/ifru.py --ratings ratings.csv --model out/ifru_mf --delete pairs.csv --mlflow-tracking-uri file:///tmp/mlruns
"""


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=EXAMPLES)
    ap.add_argument("--ratings", required=True, help="ratings the model is (to be) trained on")
    ap.add_argument("--model", required=True, help="model directory")
    ap.add_argument("--delete", help="interactions (user, item) to unlearn")
    ap.add_argument("--model-type", choices=("mf", "lightgcn"), help="for a new model (default from config, else mf)")
    ap.add_argument("--config", help="TOML file with [ifru] and [spark] tables")
    ap.add_argument("--verbose", action="store_true", help="keep Spark's own INFO logs (default: warnings only, conf/log4j2.properties)")
    ap.add_argument("--ratings-out", help="write the ratings without the deleted pairs here (Parquet)")
    ap.add_argument("--master", help="Spark master (default: spark-submit's, else local[*])")
    ap.add_argument("--log-level", default="INFO")
    add_output_flags(ap)
    add_tracking_flags(ap)
    return ap.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    from spark_unlearn.config import load_config
    from spark_unlearn.ifru.run import run_ifru
    from spark_unlearn.session import get_session

    cfg = load_config(args.config)
    tracker = open_tracker(cfg, args)
    ifru_conf, spark_conf = dict(cfg["ifru"]), dict(cfg["spark"])
    if args.model_type:
        ifru_conf["model_type"] = args.model_type
    spark = get_session("spark_unlearn-ifru", master=args.master, conf=spark_conf, quiet=not args.verbose)
    report = run_ifru(spark, ratings_path=args.ratings, model_dir=args.model, ifru_conf=ifru_conf,
                      delete_path=args.delete, ratings_out=args.ratings_out)
    if tracker is not None:
        report["mlflow"] = tracker.log("ifru", report)
    return report


def main(argv=None) -> int:
    args = parse_args(argv)
    configure_logging(args.log_level)
    code, report = run_job(log, args.report, lambda: run(args))
    if report is not None:
        emit(report, ifru_summary(report), args.json)
    return code


if __name__ == "__main__":
    sys.exit(main())

"""spark-submit entry point: the embedded end-to-end demo (no arguments, no downloads).

Trains ALS on pyspark's MovieLens sample, then erases one user and forgets a
handful of interactions of another with frontier Unlearn-ALS, and prints a
summary on stderr: how many ratings trained the model, what was deleted, rows
re-solved, the certificate, times and the end-to-end speed-up, and how far the
deleted items fell in their users' lists.  The full report (JSON) goes to
``--report PATH`` or, with ``--json``, to stdout.  spark_unlearn's own
progress logs are shown with ``--verbose`` (with Spark's INFO logs).

    spark-submit jobs/demo.py [--store DIR] [--config conf/local.toml] [--report PATH] [--json] [--verbose]
"""

import argparse
import logging
import shutil
import sys
import tempfile

import _bootstrap  # noqa: F401

from spark_unlearn.als.options import UnlearnOptions
from spark_unlearn.als.params import ALSParams
from spark_unlearn.cli import add_output_flags, emit, run_job
from spark_unlearn.config import load_config
from spark_unlearn.data.embedded import sample_movielens_path
from spark_unlearn.demo import demo_batch
from spark_unlearn.logs import configure_logging
from spark_unlearn.reporting import demo_summary
from spark_unlearn.session import get_session
from spark_unlearn.train_model import run_training
from spark_unlearn.unlearn_model import UnlearnRequest, run_unlearning

log = logging.getLogger("spark_unlearn.jobs.demo")


EXAMPLES = """examples:
  spark-submit jobs/demo.py                      # train on pyspark's sample, erase a user, forget 5 interactions
  spark-submit jobs/demo.py --json | python -m json.tool    # the full report (JSON) on stdout
  spark-submit jobs/demo.py --verbose            # the same with spark_unlearn's progress and Spark's INFO logs
"""


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", help="model store to use (default: a fresh temporary directory, removed afterwards)")
    p.add_argument("--config", help="TOML config (see conf/local.toml)")
    p.add_argument("--verbose", action="store_true",
                   help="spark_unlearn's progress logs ([logging] level) and Spark's own INFO logs (default: warnings only)")
    add_output_flags(p)
    args = p.parse_args(argv)
    store = args.store or tempfile.mkdtemp(prefix="spark_unlearn_demo_")

    def work():
        cfg = load_config(args.config)
        # The demo's output is its summary: spark_unlearn's progress lines only with --verbose.
        configure_logging(cfg["logging"]["level"] if args.verbose else "WARNING")
        spark = get_session("spark_unlearn-demo", conf=cfg["spark"], quiet=not args.verbose)
        params = ALSParams.from_dict(cfg["als"])
        trained = run_training(spark, ratings_path=sample_movielens_path(), store_path=store, params=params,
                               k=cfg["eval"]["k"])
        log.info("trained %s: %s", trained["version"], {k: v for k, v in trained.items() if k.startswith("test_")})
        batch = demo_batch(spark, store)
        request = UnlearnRequest(model_path=store, batch=batch, k=cfg["eval"]["k"],
                                 options=UnlearnOptions.from_config(cfg["unlearn"]))
        unlearned = run_unlearning(spark, request)
        return {"training": trained, "unlearning": unlearned}

    try:
        code, report = run_job(log, args.report, work)
    finally:
        if not args.store:
            shutil.rmtree(store, ignore_errors=True)
    if report is not None:
        emit(report, demo_summary(report), args.json)
    return code


if __name__ == "__main__":
    sys.exit(main())

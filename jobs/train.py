"""spark-submit entry point: train an ALS model and publish it to a model store.

    spark-submit jobs/train.py [--ratings PATH] [--model STORE_DIR] [--config conf/local.toml]
        [--format auto|movielens-dat|udata|movielens-csv|csv|parquet] [--implicit]
        [--rank K] [--reg/--regParam L] [--alpha A] [--iterations/--maxIter N] [--seed S] [--numBlocks B]
        [--userCol C --itemCol C --ratingCol C] [--test-fraction F] [--report PATH] [--json]

With no arguments it trains on pyspark's embedded MovieLens sample and
publishes to ``out/model_store``.  Prints a short summary on stderr (how many
ratings trained the model and how many were held out, test metrics, times);
the report (JSON) goes to ``--report PATH`` or, with ``--json``, to stdout.
"""

import argparse
import logging
import sys
import time

import _bootstrap  # noqa: F401

from spark_unlearn.als.params import ALSParams
from spark_unlearn.config import load_config, override
from spark_unlearn.data.embedded import sample_movielens_path
from spark_unlearn.cli import add_output_flags, add_tracking_flags, boolean_flag, emit, open_tracker, run_job
from spark_unlearn.logs import configure_logging
from spark_unlearn.reporting import train_summary
from spark_unlearn.session import get_session
from spark_unlearn.train_model import run_training

log = logging.getLogger("spark_unlearn.jobs.train")


EXAMPLES = """examples:
  spark-submit jobs/train.py                                          # pyspark's sample into out/model_store
  spark-submit jobs/train.py --ratings ../shared/data/ml-latest-small/ratings.csv --implicit --rank 16 \\
      --model out/ml_small_store --test-fraction 0 --report out/train.json   # production: every rating
  spark-submit jobs/train.py --json | python -m json.tool             # the report (JSON) on stdout
  spark-submit jobs/train.py --ratings data.parquet --userCol uid --itemCol iid --ratingCol val \
      --maxIter 10 --regParam 0.05 --numBlocks 8                        # pyspark.ml's names
  spark-submit jobs/train.py --mlflow-tracking-uri file:///tmp/mlruns  # log params and metrics to MLflow
"""


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ratings", help="ratings file or directory (default: pyspark's embedded MovieLens sample)")
    p.add_argument("--model", help="model store: a directory or a Hadoop URI such as hdfs://nn:8020/store (default: [store] path, out/model_store)")
    p.add_argument("--config", help="TOML config (see conf/local.toml)")
    p.add_argument("--verbose", action="store_true", help="keep Spark's own INFO logs (default: warnings only, conf/log4j2.properties)")
    p.add_argument("--format", help="ratings format (default auto-detect)")
    fb = p.add_mutually_exclusive_group()
    fb.add_argument("--implicit", action="store_true", default=None, help="implicit feedback (Spark's implicitPrefs)")
    fb.add_argument("--explicit", dest="implicit", action="store_false", help="explicit feedback (the default)")
    fb.add_argument("--implicitPrefs", dest="implicit", type=boolean_flag, metavar="true|false", help="Spark's name")
    p.add_argument("--rank", type=int)
    p.add_argument("--reg", "--regParam", dest="reg", type=float, help="Spark's regParam")
    p.add_argument("--alpha", type=float)
    p.add_argument("--iterations", "--maxIter", dest="iterations", type=int, help="Spark's maxIter")
    p.add_argument("--seed", type=int)
    p.add_argument("--numBlocks", "--num-blocks", dest="num_blocks", type=int,
                   help="Spark's numBlocks (user and item blocks of the ALS solve; default: Spark's parallelism)")
    p.add_argument("--checkpointInterval", dest="checkpoint_interval", type=int, help="Spark's checkpointInterval")
    p.add_argument("--userCol", help="the ratings file's user column (Spark's userCol; default: auto-detect)")
    p.add_argument("--itemCol", help="the ratings file's item column (Spark's itemCol)")
    p.add_argument("--ratingCol", help="the ratings file's rating column (Spark's ratingCol)")
    p.add_argument("--test-fraction", type=float,
                   help="share of each user's ratings held out to measure the model (default 0.2); 0 trains on every "
                        "rating: use 0 for a production model")
    add_output_flags(p)
    add_tracking_flags(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)

    def work():
        cfg = load_config(args.config)
        cfg = override(cfg, "als", rank=args.rank, reg=args.reg, alpha=args.alpha, implicit=args.implicit,
                       iterations=args.iterations, seed=args.seed, num_blocks=args.num_blocks,
                       checkpoint_interval=args.checkpoint_interval)
        named = {k: v for k, v in (("user", args.userCol), ("item", args.itemCol), ("rating", args.ratingCol)) if v}
        if named:
            cfg["data"]["columns"] = {**(cfg["data"]["columns"] or {}), **named}
        cfg = override(cfg, "data", ratings=args.ratings, format=args.format, test_fraction=args.test_fraction)
        cfg = override(cfg, "store", path=args.model)
        configure_logging(cfg["logging"]["level"])
        tracker = open_tracker(cfg, args)
        params = ALSParams.from_dict(cfg["als"])
        spark = get_session("spark_unlearn-train", conf=cfg["spark"], quiet=not args.verbose)
        report = run_training(
            spark,
            ratings_path=cfg["data"]["ratings"] or sample_movielens_path(),
            store_path=cfg["store"]["path"],
            params=params,
            data_format=cfg["data"]["format"],
            columns=cfg["data"]["columns"],
            duplicates=cfg["data"]["duplicates"],
            test_fraction=cfg["data"]["test_fraction"],
            split_seed=cfg["data"]["split_seed"],
            k=cfg["eval"]["k"],
            started=started,
        )
        if tracker is not None:
            report["mlflow"] = tracker.log("train", report)
        return report

    code, report = run_job(log, args.report, work)
    if report is not None:
        emit(report, train_summary(report), args.json)
    return code


if __name__ == "__main__":
    sys.exit(main())

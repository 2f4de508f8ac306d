"""Profile: wall time and phases of repeated targeted Unlearn-ALS requests on one saved model.

    python benchmarks/profile_targeted.py --synthetic 5000000 --mode implicit --state /tmp/prof5M \\
        --sizes 1u 100i --repeat 3 --out docs/bench/profile_targeted_5M_implicit.json

The first call trains the model (our ALS, rank 32, 10 iterations) and keeps
it under ``--state`` (Parquet tables and the manifest-like JSON a store
records); later calls reuse it, so code changes can be timed on the same
model without retraining.  Each request runs ``--repeat`` times in one
process: the first is *cold* (JVM and Arrow warm-up, as in a spark-submit
job), the rest *warm*.  Nothing is published; the new tables are only
planned, then the offsets of the result are counted, which is what a
publish would write.

``--mllib-retrain`` also times Spark MLlib's ``ALS.fit`` on the remaining
ratings of each size (same rank, regularisation, 10 iterations and 4 blocks
as the model), the comparator of issue 3's speed targets, without the
evaluation ``bench_unlearn.py`` runs (ranking metrics over every user cost
more than the requests on large synthetic sets).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_unlearn import make_batch  # noqa: E402
from common import add_data_args, bench_session, load_data  # noqa: E402

from spark_unlearn.als.model import FactorModel  # noqa: E402
from spark_unlearn.als.params import ALSParams  # noqa: E402
from spark_unlearn.als.train import train_als  # noqa: E402
from spark_unlearn.als.plan import remove_batch  # noqa: E402
from spark_unlearn.als.certify import residual_summary  # noqa: E402
from spark_unlearn.als.options import UnlearnOptions, VersionFacts  # noqa: E402
from spark_unlearn.als.unlearn import unlearn_als  # noqa: E402
from spark_unlearn.data.split import train_test_split  # noqa: E402
from spark_unlearn.logs import configure_logging  # noqa: E402
from spark_unlearn.train_model import implicit_manifest_state  # noqa: E402

log = logging.getLogger("spark_unlearn.bench.profile")

TABLES = ("train", "user_factors", "item_factors", "user_offsets", "item_offsets")


def build_state(spark, args, path: str) -> None:
    ratings, source = load_data(spark, args)
    params = ALSParams(rank=args.rank, reg=args.reg, implicit=args.mode == "implicit", iterations=10, num_blocks=4)
    train, _ = train_test_split(ratings, 0.2, seed=0)
    train.write.mode("overwrite").parquet(f"{path}/train")
    train = spark.read.parquet(f"{path}/train")
    t = time.perf_counter()
    res = train_als(train, params)
    offsets = res.offsets()
    res.model.user_factors.write.mode("overwrite").parquet(f"{path}/user_factors")
    res.model.item_factors.write.mode("overwrite").parquet(f"{path}/item_factors")
    offsets[0].write.mode("overwrite").parquet(f"{path}/user_offsets")
    offsets[1].write.mode("overwrite").parquet(f"{path}/item_offsets")
    offsets = tuple(spark.read.parquet(f"{path}/{s}_offsets") for s in ("user", "item"))
    meta = {"source": source, "params": params.to_dict(), "train_seconds": time.perf_counter() - t,
            "training_residual": residual_summary(offsets),
            "counts": {"n_ratings": train.count(), "n_users": spark.read.parquet(f"{path}/user_factors").count(),
                       "n_items": spark.read.parquet(f"{path}/item_factors").count()}}
    if params.implicit:
        meta["recorded"] = implicit_manifest_state(res, offsets)
    with open(f"{path}/meta.json", "w") as fh:
        json.dump(meta, fh, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))


def mllib_retrain_seconds(train, batch, params: ALSParams) -> float:
    """Wall seconds of Spark MLlib's ``ALS.fit`` on ``train`` minus ``batch``, factors materialised."""
    from pyspark.ml.recommendation import ALS

    remaining = remove_batch(train, batch).cache()
    remaining.count()
    t = time.perf_counter()
    m = ALS(rank=params.rank, regParam=params.reg, implicitPrefs=params.implicit, maxIter=params.iterations,
            numUserBlocks=params.num_blocks, numItemBlocks=params.num_blocks, seed=0).fit(remaining)
    m.userFactors.count()
    m.itemFactors.count()
    seconds = time.perf_counter() - t
    remaining.unpersist()
    return seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_args(p)
    p.add_argument("--mode", choices=["explicit", "implicit"], default="implicit")
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--reg", type=float, default=0.1)
    p.add_argument("--state", required=True, help="directory holding (or to receive) the trained model")
    p.add_argument("--sizes", nargs="+", default=["1u", "100i"])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--mllib-retrain", action="store_true", help="also time Spark MLlib's ALS.fit on the remaining ratings")
    p.add_argument("--out")
    args = p.parse_args(argv)
    configure_logging("WARNING")
    spark = bench_session("profile-targeted", args.master)
    if not os.path.exists(f"{args.state}/meta.json"):
        build_state(spark, args, args.state)
    with open(f"{args.state}/meta.json") as fh:
        meta = json.load(fh)
    params = ALSParams.from_dict(meta["params"])
    tables = {name: spark.read.parquet(f"{args.state}/{name}") for name in TABLES}
    model = FactorModel(tables["user_factors"], tables["item_factors"], params)
    offsets = (tables["user_offsets"], tables["item_offsets"])
    recorded = meta.get("recorded", {})
    out = {"command": " ".join(sys.argv), "data": meta["source"], "params": meta["params"], "runs": []}
    for size in args.sizes:
        batch = make_batch(spark, tables["train"], size, seed=7).cache()
        batch.count()
        if args.mllib_retrain:
            out.setdefault("mllib_retrain", {})[size] = mllib_retrain_seconds(tables["train"], batch, params)
            print(json.dumps({"size": size, "mllib_retrain_s": out["mllib_retrain"][size]}), flush=True)
        for rep in range(args.repeat):
            t = time.perf_counter()
            res = unlearn_als(tables["train"], model, offsets, batch, options=UnlearnOptions(mode="frontier"), facts=VersionFacts(training_residual=meta["training_residual"], counts=meta["counts"], drift_bound={"user": 0.0, "item": 0.0}, grams=recorded.get("grams"), x_ratio=recorded.get("x_ratio"), x_watch=recorded.get("x_watch")))
            wall = time.perf_counter() - t
            t = time.perf_counter()
            written = sum(df.count() for df in res.offsets)
            write = time.perf_counter() - t
            rep_ = res.report
            run = {"size": size, "repeat": rep, "wall_s": wall, "offsets_count_s": write, "rows_written": written,
                   "rows_solved": rep_["rows_solved"], "seconds": rep_.get("seconds"),
                   "certificate": rep_["certificate"]["max_relative_residual"],
                   "holds": rep_["certificate"]["holds"], "engine": rep_.get("engine"),
                   "spark_jobs": rep_.get("spark_jobs"), "driver_rows": rep_.get("driver_rows")}
            out["runs"].append(run)
            print(json.dumps(run, default=str), flush=True)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Measure how stationary Spark MLlib ALS models are under right and wrong hyperparameters.

    python benchmarks/measure_objective_check.py --ratings ../shared/data/ml-latest-small/ratings.csv \\
        --out docs/bench/objective_check_ml-latest-small.json

Trains pyspark.ml ``ALS`` models (explicit and implicit, several ``regParam``
and ``alpha``), then computes each model's per-row relative normal-equation
residual ``|A_r x_r - b_r| / |b_r|`` (the training residual unlearning uses as
its offsets) under the true hyperparameters and under wrong ones (the other
feedback type, other ``regParam`` / ``alpha``).  The refusal threshold of
:mod:`spark_unlearn.als.objective_check` is chosen from these figures.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from pyspark.ml.recommendation import ALS  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from spark_unlearn.als.model import FactorModel  # noqa: E402
from spark_unlearn.als.objective_check import sample_residuals  # noqa: E402
from spark_unlearn.als.params import ALSParams  # noqa: E402
from spark_unlearn.data.readers import read_ratings  # noqa: E402
from spark_unlearn.session import get_session  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ratings", required=True)
    p.add_argument("--format", default="auto")
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--sample", type=int, default=2000)
    p.add_argument("--out")
    args = p.parse_args(argv)
    spark = get_session("measure_objective_check", conf={"spark.sql.shuffle.partitions": "8"})
    spark.sparkContext.setLogLevel("WARN")
    ratings = read_ratings(spark, args.ratings, format=args.format).cache()
    binary = ratings.withColumn("rating", F.lit(1.0).cast("float")).cache()
    rows = []
    trained = [(False, reg, 1.0) for reg in (0.01, 0.05, 0.1, 0.3)] + [
        (True, reg, alpha) for reg, alpha in itertools.product((0.01, 0.05, 0.1, 0.3), (1.0, 10.0, 40.0))
    ]
    for implicit, reg, alpha in trained:
        data = binary if implicit else ratings
        t = time.perf_counter()
        m = ALS(rank=args.rank, maxIter=args.iterations, regParam=reg, alpha=alpha, implicitPrefs=implicit, seed=1,
                userCol="user", itemCol="item", ratingCol="rating").fit(data)
        fit_s = time.perf_counter() - t
        uf = m.userFactors.cache()
        itf = m.itemFactors.cache()
        hypotheses = [(implicit, reg, alpha)]
        hypotheses += [(not implicit, reg, alpha), (False, 0.1, 1.0), (True, 0.1, 1.0)]
        hypotheses += [(implicit, r2, alpha) for r2 in (reg / 10, reg * 10)]
        if implicit:
            hypotheses += [(True, reg, a2) for a2 in (alpha / 10, alpha * 10, 1.0)]
        seen = set()
        for h in hypotheses:
            if h in seen:
                continue
            seen.add(h)
            params = ALSParams(rank=args.rank, reg=h[1], alpha=h[2], implicit=h[0], iterations=args.iterations)
            model = FactorModel(user_factors=uf, item_factors=itf, params=params)
            q = sample_residuals(data, model, args.sample, seed=0)
            rows.append({"trained": {"implicit": implicit, "regParam": reg, "alpha": alpha}, "fit_s": round(fit_s, 2),
                         "assumed": {"implicit": h[0], "regParam": h[1], "alpha": h[2]}, "right": h == trained_key(implicit, reg, alpha),
                         **q})
            print(json.dumps(rows[-1]), flush=True)
        uf.unpersist()
        itf.unpersist()
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"ratings": args.ratings, "rank": args.rank, "iterations": args.iterations, "rows": rows}, fh, indent=1)


def trained_key(implicit, reg, alpha):
    return (implicit, reg, alpha)


if __name__ == "__main__":
    main()

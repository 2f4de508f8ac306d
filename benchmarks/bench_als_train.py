"""Benchmark: training time per iteration and test utility, ours vs Spark MLlib ALS, side by side.

    python benchmarks/bench_als_train.py --ratings ../shared/data/ml-latest-small/ratings.csv \\
        --ranks 16 64 --iterations 10 --out docs/bench_als_train_ml.json
    python benchmarks/bench_als_train.py --synthetic 5000000 --ranks 16 64 --out docs/bench_als_train_syn.json

For each rank and feedback type, both trainers get the same split, the same
hyperparameters and the same session.  Seconds per iteration are the
training wall time (after the data is cached) divided by the iterations; our
figure excludes the one-off block layout, which is reported separately
(Spark MLlib builds its blocks inside ``fit``, so its figure includes them).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import add_data_args, bench_session, load_data  # noqa: E402


from spark_unlearn.als.params import ALSParams  # noqa: E402
from spark_unlearn.als.train import ALSState, train_als  # noqa: E402
from spark_unlearn.data.split import train_test_split  # noqa: E402
from spark_unlearn.eval.metrics import ranking_metrics, rmse  # noqa: E402
from spark_unlearn.logs import configure_logging  # noqa: E402

log = logging.getLogger("spark_unlearn.bench.train")


def mllib_factors(spark, train, params: ALSParams):
    from pyspark.ml.recommendation import ALS

    als = ALS(
        rank=params.rank, regParam=params.reg, alpha=params.alpha, implicitPrefs=params.implicit, maxIter=params.iterations,
        seed=params.seed, numUserBlocks=params.num_blocks, numItemBlocks=params.num_blocks, checkpointInterval=params.checkpoint_interval,
    )
    t = time.perf_counter()
    model = als.fit(train)
    model.userFactors.cache().count()
    model.itemFactors.cache().count()
    return model, time.perf_counter() - t


def utility(uf, itf, train, test, implicit, k=20, ranking=True):
    from spark_unlearn.als.model import FactorModel

    out = {}
    if not implicit:
        out["test_rmse"] = rmse(FactorModel(uf, itf, ALSParams()), test)
    if ranking:
        out[f"recall@{k}"] = ranking_metrics(uf, itf, train, test, k=k)[f"recall@{k}"]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_args(p)
    p.add_argument("--ranks", type=int, nargs="+", default=[16, 64])
    p.add_argument("--modes", nargs="+", default=["explicit", "implicit"])
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--reg", type=float, default=0.1)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--repeats", type=int, default=1,
                   help="fit each trainer this many times in turn and report the median time (the first MLlib fit "
                        "of a process also warms its JIT; utility is measured on the last fit)")
    p.add_argument("--no-ranking", action="store_true",
                   help="skip Recall@20 (top-K for every user: minutes at 5M ratings; RMSE is kept for explicit)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    configure_logging("INFO")
    spark = bench_session("bench-als-train", args.master)
    ratings, source = load_data(spark, args)
    train, test = train_test_split(ratings, 0.2, seed=0)
    train, test = train.cache(), test.cache()
    n_train, n_test = train.count(), test.count()
    log.info("%s: %d train / %d test ratings", source, n_train, n_test)
    rows = []
    for mode in args.modes:
        for rank in args.ranks:
            params = ALSParams(rank=rank, reg=args.reg, implicit=mode == "implicit", iterations=args.iterations, num_blocks=args.blocks)
            t = time.perf_counter()
            state = ALSState.build(train, params.num_blocks)
            state.users.count()
            state.items.count()
            t_layout = time.perf_counter() - t
            mllib_times, ours_times, ours_iter, model = [], [], [], None
            for rep in range(args.repeats):
                if model is not None:
                    model.userFactors.unpersist()
                    model.itemFactors.unpersist()
                model, t_fit = mllib_factors(spark, train, params)
                mllib_times.append(t_fit)
                t = time.perf_counter()
                ours = train_als(train, params, state=state)
                ours_times.append(time.perf_counter() - t)
                ours_iter.append(ours.seconds_per_iteration)
                log.info("repeat %d: MLlib fit %.2fs, ours %.2fs (%.3f s/iter)", rep + 1, t_fit, ours_times[-1], ours_iter[-1])
            t_mllib, t_ours, s_iter = (float(np.median(v)) for v in (mllib_times, ours_times, ours_iter))
            u_mllib = utility(model.userFactors, model.itemFactors, train, test, params.implicit, ranking=not args.no_ranking)
            model.userFactors.unpersist()
            model.itemFactors.unpersist()
            u_ours = utility(ours.model.user_factors, ours.model.item_factors, train, test, params.implicit, ranking=not args.no_ranking)
            row = {
                "data": source, "n_train": n_train, "mode": mode, "rank": rank, "iterations": args.iterations,
                "repeats": args.repeats, "mllib_fit_s": mllib_times, "ours_fit_s": ours_times,
                "mllib_s_per_iter": t_mllib / args.iterations, "ours_s_per_iter": s_iter,
                "ours_total_s": t_ours + t_layout, "mllib_total_s": t_mllib, "ours_layout_s": t_layout,
                "ratio_per_iter": s_iter / (t_mllib / args.iterations),
                "ratio_total": (t_ours + t_layout) / t_mllib,
                "mllib": u_mllib, "ours": u_ours,
            }
            log.info("result: %s", row)
            rows.append(row)
            state.unpersist()
            with open(args.out, "w") as fh:  # after every row: a long run keeps what it measured
                json.dump({"command": " ".join(sys.argv), "rows": rows}, fh, indent=2)
    print(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: unlearning vs retraining, side by side in one run (issue 3 protocol).

    python benchmarks/bench_unlearn.py --ratings ../shared/data/ml-latest-small/ratings.csv \\
        --rank 32 --mode explicit --sizes 1i 1u 100i 1% --out docs/bench_unlearn_ml_explicit.json

Per deletion size (``1i`` one interaction, ``1u`` one user, ``100i`` a hundred
interactions, ``1%`` one percent of the training interactions; sampled with a
fixed seed) the methods are:

* ``mllib_retrain``: Spark MLlib ``ALS().fit`` on the remaining data (same rank, iterations);
* ``retrain``: our ALS from scratch on the remaining data (the reference);
* ``retrain_seedN``: the same with initialisation seed ``N`` instead of the
  model's: how far apart two retrains are, i.e. the noise floor of ``gap_closed``;
* ``paper_full``: the paper's method, plain ALS warm-started from the trained
  factors on the remaining data (``train_als(..., init=model)``, ``--paper-sweeps``
  iterations; no certificate);
* ``full``: warm-started full sweeps with the training offsets, to the tolerance
  (``--mode full``, also the frontier's fallback);
* ``frontier``: our frontier Unlearn-ALS (default tolerance).

Each entry holds ``wall_s``, ``rows_solved``, ``test_metric`` (RMSE for
explicit, Recall@20 for implicit, on the test split minus the batch),
``forget_rank_pct`` (mean rank percentile of the deleted items in their
remaining users' lists, 0 = top), ``gap_closed`` ((method - original) /
(retrain - original) of that percentile) and ``certificate``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import replace

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import add_data_args, bench_session, load_data  # noqa: E402

import numpy as np  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from spark_unlearn.als.model import FactorModel  # noqa: E402
from spark_unlearn.als.params import ALSParams  # noqa: E402
from spark_unlearn.als.train import train_als  # noqa: E402
from spark_unlearn.als.plan import remove_batch  # noqa: E402
from spark_unlearn.als.certify import residual_summary  # noqa: E402
from spark_unlearn.als.options import UnlearnOptions, VersionFacts  # noqa: E402
from spark_unlearn.als.unlearn import unlearn_als  # noqa: E402
from spark_unlearn.data.split import train_test_split  # noqa: E402
from spark_unlearn.eval.forgetting import mean_rank_percentile  # noqa: E402
from spark_unlearn.eval.metrics import ranking_metrics, rmse  # noqa: E402
from spark_unlearn.logs import configure_logging  # noqa: E402
from spark_unlearn.train_model import implicit_manifest_state  # noqa: E402

log = logging.getLogger("spark_unlearn.bench.unlearn")


def make_batch(spark, train, size: str, seed: int):
    """Deletion batch of the given size, drawn deterministically from the training data."""
    rng = np.random.default_rng(seed)
    if size.startswith("users:"):
        # users:PATH[:OFFSET]: erase every user named in PATH's first column (e.g. CURE4Rec's 0-based unlearn sets,
        # OFFSET 1), as user requests.
        _, path, *offset = size.split(":")
        shift = int(offset[0]) if offset else 0
        ids = spark.read.csv(path, header=True, inferSchema=True)
        first = ids.columns[0]
        return ids.select((F.col(first).cast("int") + shift).alias("user")).distinct().select(
            "user", F.lit(None).cast("int").alias("item"), F.lit("user").alias("kind"))
    if size == "1u":
        users = [r[0] for r in train.groupBy("user").count().filter("count >= 20").orderBy("user").select("user").collect()]
        return spark.createDataFrame([(int(rng.choice(users)), None, "user")], "user int, item int, kind string")
    n = train.count()
    want = 1 if size == "1i" else 100 if size == "100i" else max(1, int(round(n * float(size.rstrip("%")) / 100)))
    frac = min(1.0, 3.0 * want / n)
    pairs = train.sample(fraction=frac, seed=seed).orderBy(F.xxhash64("user", "item", F.lit(seed))).limit(want)
    return pairs.select("user", "item", F.lit("interaction").alias("kind"))


def test_metric(model: FactorModel, train, test, implicit: bool) -> float:
    if implicit:
        return ranking_metrics(model.user_factors, model.item_factors, train, test, k=20)["recall@20"]
    return rmse(model, test)


def forget_pct(model: FactorModel, pairs) -> float:
    return mean_rank_percentile(model.user_factors, model.item_factors, pairs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_data_args(p)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--mode", choices=["explicit", "implicit"], default="explicit")
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--paper-sweeps", type=int, default=5)
    p.add_argument("--reg", type=float, default=0.1)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--sizes", nargs="+", default=["1i", "1u", "100i", "1%"],
                   help="1i 1u 100i P%% (random interactions) users:PATH[:OFFSET] (erase the users PATH lists)")
    p.add_argument("--methods", nargs="+", default=["mllib_retrain", "retrain", "paper_full", "frontier"],
                   help="mllib_retrain retrain retrain_seedN (another initialisation) paper_full full (offset sweeps to "
                        "the certificate) frontier (targeted engine for small batches) frontier_layout; a suffix "
                        "_strict runs full/frontier/frontier_layout under the strict certificate policy")
    p.add_argument("--tol", type=float)
    p.add_argument("--certificate-policy", choices=["training-precision", "strict"], default="training-precision",
                   help="policy of the methods without the _strict suffix")
    p.add_argument("--fallback-fraction", type=float, default=0.5,
                   help="frontier: fall back to full sweeps beyond this fraction of all rows ([unlearn] full_fallback_fraction)")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    configure_logging("INFO")
    spark = bench_session("bench-unlearn", args.master)
    ratings, source = load_data(spark, args)
    implicit = args.mode == "implicit"
    params = ALSParams(rank=args.rank, reg=args.reg, implicit=implicit, iterations=args.iterations, num_blocks=args.blocks)
    train, test = train_test_split(ratings, 0.2, seed=0)
    train, test = train.cache(), test.cache()
    log.info("%s: %d train ratings", source, train.count())

    t = time.perf_counter()
    original = train_als(train, params)
    original.model.user_factors.cache().count()
    original.model.item_factors.cache().count()
    offsets = tuple(df.cache() for df in original.offsets())
    t_train = time.perf_counter() - t
    tr = residual_summary(offsets)
    log.info("original model trained in %.1fs; training residual %s", t_train, tr)

    # What a store's manifest records for a trained version (drift 0, table sizes), known before any request.
    known = {"n_ratings": train.count(), "n_users": original.model.user_factors.count(),
             "n_items": original.model.item_factors.count()}
    # Implicit: the Grams and max |x|/|b| that jobs/train.py records in the manifest.
    recorded = implicit_manifest_state(original, offsets) if implicit else {}
    grams, x_ratio, x_watch = recorded.get("grams"), recorded.get("x_ratio"), recorded.get("x_watch")
    results = {"command": " ".join(sys.argv), "data": source, "params": params.to_dict(), "train_seconds": t_train,
               "training_residual": tr, "entries": []}
    for size in args.sizes:
        batch = make_batch(spark, train, size, seed=7).cache()
        remaining = remove_batch(train, batch).cache()
        n_remaining = remaining.count()
        test_r = remove_batch(test, batch).cache()
        deleted = train.join(remaining, ["user", "item"], "left_anti").select("user", "item").cache()
        pairs = deleted.join(remaining.select("user").distinct(), ["user"], "left_semi").cache()
        n_pairs = pairs.count()
        pct_orig = forget_pct(original.model, pairs) if n_pairs else float("nan")
        rows_total = remaining.select("user").distinct().count() + remaining.select("item").distinct().count()
        per_method = {}
        for method in ["retrain"] + [m for m in args.methods if m != "retrain"]:
            if method not in args.methods and method != "retrain":
                continue
            t = time.perf_counter()
            cert = sweeps = None
            if method == "mllib_retrain":
                from pyspark.ml.recommendation import ALS

                m = ALS(rank=params.rank, regParam=params.reg, implicitPrefs=implicit, maxIter=params.iterations,
                        numUserBlocks=args.blocks, numItemBlocks=args.blocks, seed=0).fit(remaining)
                model = FactorModel(m.userFactors.cache(), m.itemFactors.cache(), params)
                model.user_factors.count()
                solved = params.iterations * rows_total
            elif method == "paper_full":
                res = train_als(remaining, replace(params, iterations=args.paper_sweeps), init=original.model)
                model = res.model
                model.user_factors.cache().count()
                solved = args.paper_sweeps * rows_total
                sweeps = args.paper_sweeps
            elif method == "retrain" or method.startswith("retrain_seed"):
                seed = params.seed if method == "retrain" else int(method[len("retrain_seed"):])
                res = train_als(remaining, replace(params, seed=seed))
                model = res.model
                model.user_factors.cache().count()
                solved = params.iterations * rows_total
            else:
                base = method[: -len("_strict")] if method.endswith("_strict") else method
                mode = "full" if base == "full" else "frontier"
                options = UnlearnOptions(
                    mode=mode, tol=args.tol, full_fallback_fraction=args.fallback_fraction,
                    full_iterations=max(args.iterations, 10),
                    engine="layout" if base == "frontier_layout" else "auto",
                    certificate_policy="strict" if method.endswith("_strict") else args.certificate_policy)
                facts = VersionFacts(training_residual=tr, counts=known, drift_bound={"user": 0.0, "item": 0.0}, grams=grams,
                                     x_ratio=x_ratio, x_watch=x_watch)
                out = unlearn_als(train, original.model, offsets, batch, options, facts)
                model = out.model
                model.user_factors.cache().count()
                solved = out.report["rows_solved"]
                cert = out.report["certificate"]["max_relative_residual"]
                sweeps = out.report.get("sweeps")
                results.setdefault("reports", {})[f"{size}/{method}"] = out.report
            wall = time.perf_counter() - t
            pct = forget_pct(model, pairs) if n_pairs else float("nan")
            per_method[method] = {"size": size, "method": method, "wall_s": wall, "rows_solved": int(solved),
                                  "test_metric": test_metric(model, remaining, test_r, implicit), "forget_rank_pct": pct,
                                  "certificate": cert, "sweeps": sweeps, "deleted_ratings": train.count() - n_remaining,
                                  "ranked_pairs": n_pairs}
            log.info("%s %s: %s", size, method, per_method[method])
        ref = per_method["retrain"]["forget_rank_pct"]
        for entry in per_method.values():
            gap = ref - pct_orig
            entry["forget_rank_pct_original"] = pct_orig
            entry["gap_closed"] = (entry["forget_rank_pct"] - pct_orig) / gap if n_pairs and abs(gap) > 1e-12 else None
            entry["speedup_vs_mllib"] = per_method.get("mllib_retrain", {}).get("wall_s", float("nan")) / entry["wall_s"]
            results["entries"].append(entry)
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=2, default=str)
    print(json.dumps(results["entries"], indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Expand a ratings file to a large realistic table by randomized fractal expansion, and report what it keeps.

    python benchmarks/expand_data.py --ratings ../shared/data/ml-latest-small/ratings.csv \\
        --target 1M --out /tmp/fractal/ml1m --report /tmp/fractal/ml1m.json --quality

Runs as one Spark job (``local[2]`` unless ``--master``): reads the ratings
(``--columns user=uid,item=iid,rating=val`` when the file's columns differ),
expands them with :func:`spark_unlearn.data.fractal.plan_expansion`, writes
Parquet clustered by user block (:func:`~spark_unlearn.data.fractal.write_blocked`)
and a JSON report comparing original and expansion:

* counts: users, items, interactions, density;
* discrete power-law fits of user and item degrees (``alpha``, ``xmin``,
  ``n_tail``, KS distance, standard error);
* the top normalised singular values ``sigma_i / sigma_1`` of the 0/1
  matrices, and those the Kronecker model predicts for the expansion
  (products of the original's and the reduced matrix's).  Computed with
  ``scipy.sparse.linalg.svds`` on the driver from the collected
  ``(user, item)`` pairs, only for tables of at most ``--svd-max``
  interactions (skipped with the reason otherwise);
* with ``--quality``: Recall@20 / NDCG@20 of implicit ALS (rank 32,
  regParam 0.1, alpha 1, 10 iterations, every interaction rating 1.0) on a
  hashed 80/20 per-interaction split of the expansion, against a popularity
  baseline (most popular training items not yet seen), both scored in Spark
  by :func:`spark_unlearn.eval.metrics.ranking_metrics` on up to
  ``--eval-users`` test users drawn by hash; the same on the original, for
  reference.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from pyspark.sql import functions as F  # noqa: E402

from spark_unlearn.data.fractal import fit_power_law, plan_expansion, write_blocked  # noqa: E402
from spark_unlearn.data.readers import read_ratings  # noqa: E402
from spark_unlearn.errors import ConfigError  # noqa: E402
from spark_unlearn.reporting import check_report_path, write_report  # noqa: E402
from spark_unlearn.schema import ITEM, RATING, USER  # noqa: E402
from spark_unlearn.session import get_session  # noqa: E402

log = logging.getLogger("expand_data")
_SUFFIX = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9}
ALS_PARAMS = {"rank": 32, "regParam": 0.1, "alpha": 1.0, "maxIter": 10}


def parse_target(text: str) -> int:
    """``"1M"`` -> 1000000; also ``K``, ``B`` suffixes, decimals (``"2.5M"``) and plain integers."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMB]?)\s*", text.upper())
    if not match:
        raise ConfigError(f"--target {text!r}: use an integer or a size such as 1M, 5M, 20M, 100M")
    return int(round(float(match.group(1)) * _SUFFIX[match.group(2)]))


def parse_columns(text: str | None) -> dict[str, str | None] | None:
    """``"user=uid,item=iid,rating=val"`` -> dict; ``rating=`` (empty) means implicit data."""
    if not text:
        return None
    out = {}
    for part in text.split(","):
        ours, sep, theirs = part.partition("=")
        if not sep or ours.strip() not in (USER, ITEM, RATING, "timestamp"):
            raise ConfigError(f"--columns {text!r}: expected ours=theirs pairs with ours in user, item, rating, timestamp")
        out[ours.strip()] = theirs.strip() or None
    return out


def degrees(df, col: str) -> np.ndarray:
    return df.groupBy(col).count().select("count").toArrow().column(0).to_numpy()


def table_stats(df, top: int, svd_max: int) -> tuple[dict, np.ndarray | None]:
    """Counts, power-law fits and (small enough tables) top singular values of a ratings table."""
    user_deg, item_deg = degrees(df, USER), degrees(df, ITEM)
    nnz = int(user_deg.sum())
    stats = {
        "users": int(user_deg.size), "items": int(item_deg.size), "interactions": nnz,
        "density": nnz / (user_deg.size * item_deg.size),
        "mean_user_degree": nnz / user_deg.size, "mean_item_degree": nnz / item_deg.size,
        "user_degree_power_law": vars(fit_power_law(user_deg)),
        "item_degree_power_law": vars(fit_power_law(item_deg)),
    }
    if nnz > svd_max:
        stats["singular_values"] = f"skipped: {nnz:,} interactions > --svd-max {svd_max:,} (driver-side SVD)"
        return stats, None
    from scipy import sparse
    from scipy.sparse.linalg import svds

    pairs = df.select(USER, ITEM).toArrow()
    _, rows = np.unique(pairs.column(0).to_numpy(), return_inverse=True)
    _, cols = np.unique(pairs.column(1).to_numpy(), return_inverse=True)
    matrix = sparse.csr_matrix((np.ones(nnz), (rows, cols)), shape=(user_deg.size, item_deg.size))
    s = np.sort(svds(matrix, k=min(top, min(matrix.shape) - 1), return_singular_vectors=False, random_state=0))[::-1]
    stats["singular_values"] = s.tolist()
    stats["singular_values_normalised"] = (s / s[0]).tolist()
    return stats, s


def quality(spark, expansion, seed: int, eval_users: int) -> dict:
    """Implicit ALS vs popularity, Recall@20 / NDCG@20 on a hashed 80/20 split of ``expansion``."""
    from pyspark.ml.recommendation import ALS

    from spark_unlearn.eval.metrics import ranking_metrics

    data = expansion.select(USER, ITEM, F.lit(1.0).cast("float").alias(RATING))
    is_test = F.pmod(F.xxhash64(USER, ITEM, F.lit(seed)), F.lit(5)) == 0
    train, test = data.where(~is_test).persist(), data.where(is_test)
    sampled = (
        test.select(USER).distinct().orderBy(F.xxhash64(USER, F.lit(seed + 1)), USER).limit(eval_users).persist()
    )
    test_sampled = test.join(sampled, USER).persist()
    t0 = time.time()
    als = ALS(implicitPrefs=True, userCol=USER, itemCol=ITEM, ratingCol=RATING, seed=seed,
              coldStartStrategy="drop", **ALS_PARAMS)
    model = als.fit(train)
    train_seconds = time.time() - t0
    als_metrics = ranking_metrics(model.userFactors, model.itemFactors, train, test_sampled, k=20)
    popularity = train.groupBy(ITEM).count().select(
        F.col(ITEM).alias("id"), F.array(F.col("count").cast("float")).alias("features"))
    constant = sampled.select(F.col(USER).alias("id"), F.array(F.lit(1.0).cast("float")).alias("features"))
    pop_metrics = ranking_metrics(constant, popularity, train, test_sampled, k=20)
    report = {
        "split": "per-interaction hash split: test iff xxhash64(user, item, seed) mod 5 == 0 (about 20%)",
        "train_interactions": train.count(), "test_interactions": test.count(),
        "evaluated": f"up to {eval_users} test users drawn by hash (xxhash64(user, seed + 1)); their test items "
                     "are the relevant set, their training items are excluded from the lists",
        "als": {**ALS_PARAMS, "implicitPrefs": True, "train_seconds": train_seconds, **als_metrics},
        "popularity": pop_metrics,
    }
    for df in (train, sampled, test_sampled):
        df.unpersist()
    return report


def predicted_spectrum(s_original: np.ndarray, reduced: np.ndarray, top: int) -> list[float]:
    """Top normalised singular values of ``E[X] = R (x) B``: products ``sigma_i(R) sigma_j(B)``."""
    products = np.sort(np.outer(s_original, np.linalg.svd(reduced, compute_uv=False)).ravel())[::-1][:top]
    return (products / products[0]).tolist()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ratings", required=True, help="ratings file (any format read_ratings knows)")
    parser.add_argument("--format", default="auto")
    parser.add_argument("--columns", help="our=theirs column names, e.g. user=uid,item=iid,rating=val")
    parser.add_argument("--target", required=True, help="expected interactions: 1M, 5M, 20M, 100M or an integer")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, help="copies per user (default from the target)")
    parser.add_argument("--l", type=int, help="copies per item (default from the target)")
    parser.add_argument("--out", required=True, help="output Parquet directory (must not exist)")
    parser.add_argument("--blocks", type=int, default=16, help="user blocks of the output")
    parser.add_argument("--report", help="JSON report path")
    parser.add_argument("--quality", action="store_true", help="also train and score implicit ALS vs popularity")
    parser.add_argument("--eval-users", type=int, default=2000)
    parser.add_argument("--svd-top", type=int, default=10)
    parser.add_argument("--svd-max", type=int, default=5_000_000, help="largest table whose SVD is computed")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--driver-memory", default="4g")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    target, columns = parse_target(args.target), parse_columns(args.columns)
    check_report_path(args.report)
    seconds: dict[str, float] = {}
    t_start = time.time()
    spark = get_session("expand_data", master=args.master, conf={"spark.driver.memory": args.driver_memory})
    seconds["session"] = time.time() - t_start

    t0 = time.time()
    ratings = read_ratings(spark, args.ratings, format=args.format, columns=columns).persist()
    n_ratings = ratings.count()
    seconds["read"] = time.time() - t0
    t0 = time.time()
    plan = plan_expansion(spark, ratings, target, args.seed, args.k, args.l)
    seconds["plan"] = time.time() - t0
    t0 = time.time()
    write_blocked(plan.expand(), args.out, args.blocks)
    seconds["expand_and_write"] = time.time() - t0
    expansion = read_ratings(spark, args.out, format="parquet").persist()

    t0 = time.time()
    original_stats, s_original = table_stats(ratings, args.svd_top, args.svd_max)
    expansion_stats, _ = table_stats(expansion, args.svd_top, args.svd_max)
    if s_original is not None:
        expansion_stats["singular_values_predicted_normalised"] = predicted_spectrum(s_original, plan.reduced,
                                                                                     args.svd_top)
    seconds["stats"] = time.time() - t0
    report = {
        "input": args.ratings, "columns": columns, "output": args.out, "blocks": args.blocks, "seed": args.seed,
        "target_interactions": target, "expected_interactions": plan.expected_interactions,
        "k": plan.k, "l": plan.l, "reduced_matrix": plan.reduced.round(6).tolist(),
        "svd_of_original_for_reduction": plan.singular_values.tolist(),
        "svd_method": "scipy.sparse.linalg.svds (ARPACK) of the 0/1 matrix on the driver, from collected pairs",
        "original": original_stats, "expansion": expansion_stats, "input_rows": n_ratings,
    }
    if args.quality:
        t0 = time.time()
        report["quality"] = quality(spark, expansion, args.seed, args.eval_users)
        report["quality_of_original"] = quality(spark, ratings, args.seed, args.eval_users)  # for reference
        seconds["quality"] = time.time() - t0
    seconds["total"] = time.time() - t_start
    report["seconds"] = seconds
    if args.report:
        write_report(report, args.report)
    for side in ("original", "expansion"):
        st = report[side]
        log.info("%s: %s users, %s items, %s interactions, density %.3g; alpha users %.2f (xmin %d), items %.2f "
                 "(xmin %d)", side, f"{st['users']:,}", f"{st['items']:,}", f"{st['interactions']:,}", st["density"],
                 st["user_degree_power_law"]["alpha"], st["user_degree_power_law"]["xmin"],
                 st["item_degree_power_law"]["alpha"], st["item_degree_power_law"]["xmin"])
    log.info("seconds: %s", {key: round(value, 1) for key, value in seconds.items()})
    return report


if __name__ == "__main__":
    main()

"""Benchmark: batch deletions by CURE4Rec's rules, unlearned against retraining, end to end, in one run on the same data.

    python benchmarks/bench_batch.py --ratings ../shared/data/adm/train.csv --test ../shared/data/adm/test.csv \\
        --columns uid,iid,val --implicit --scenarios core5 edge5 random5 interactions0.1 interactions1 \\
        --out docs/bench/batch_adm.json

Scenarios (CURE4Rec, read.py ``delete``; computed here on any data by the same rules):

* ``coreP`` / ``edgeP``: the ``int(U * P / 100)`` users with the most / fewest
  training interactions (``value_counts`` order), every interaction of theirs;
* ``randomP``: that many users drawn by ``np.random.seed(42)``,
  ``np.random.choice(users, n, replace=False)``;
* ``interactionsP``: P % of the training interactions, drawn with seed 42.

Methods, each in this warm driver, end to end:

* ``unlearn``: the product (``run_unlearning`` on a copy of the store, default
  options: the batch planner's choice between the frontier and warm sweeps
  on the driver, a retrain past both), load and publish included;
  ``planner_choice`` is the strategy it ran and ``planner`` its estimate and
  actual cost; ``unlearn_strict`` the same under the strict certificate
  policy, ``unlearn_tolX`` with the certificate's floor set to X,
  ``unlearn_full`` warm sweeps of every row (``mode = "full"``: on the
  driver when the version fits), ``unlearn_full_minN`` with at least ``N``
  sweeps (``min_sweeps``);
* ``mllib_retrain``: Spark MLlib ``ALS().fit`` on the remaining ratings (read
  from Parquet), saved; the faster of ``--anchor-runs`` runs, in each BLAS
  configuration of ``--anchor-blas`` (native and netlib's Java fallback, each
  in its own warm JVM: ``mllib_anchor.py``), the faster configuration kept
  (``anchor_blas``; both in ``by_blas``, with the cost of one iteration);
* ``retrain``: our ALS on the remaining ratings, factors written;
  ``retrain_itN`` the same with ``N`` iterations (how far the model's own
  iteration count is from converged).

Without ``--test`` (a fractal expansion, say; ``--ratings`` may be its Parquet
directory) ``--test-fraction`` of the interactions, drawn with seed 0, is the
test split.  ``--eval-users`` and ``--gap-pairs`` bound the driver's ranking
work on large data (users and deleted pairs drawn with seed 0).

Per entry: ``wall_s``, ``ndcg20`` and ``hr20`` on the test split over the
remaining users that have test items (all, ``active`` = the top 5 % by
training degree after the deletion, ``inactive`` the rest, as CURE4Rec
splits them), ``gap_closed`` (interaction scenarios: the deleted pairs' mean
rank percentile, unlearned against retrained, from the original),
``certificate`` and ``planner_choice``.  Ranking metrics are computed on the
driver with numpy (train items of a user excluded from its ranking); the gap
over the deleted pairs that every model still ranks.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from dataclasses import replace

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import bench_session  # noqa: E402
from mllib_anchor import CONFIGS, anchor_times, fastest  # noqa: E402

from spark_unlearn.als.options import UnlearnOptions  # noqa: E402
from spark_unlearn.als.params import ALSParams  # noqa: E402
from spark_unlearn.als.train import train_als  # noqa: E402
from spark_unlearn.eval.forgetting import rank_percentiles  # noqa: E402
from spark_unlearn.logs import configure_logging  # noqa: E402
from spark_unlearn.store.model_store import ModelStore  # noqa: E402
from spark_unlearn.train_model import run_training  # noqa: E402
from spark_unlearn.unlearn_model import UnlearnRequest, run_unlearning  # noqa: E402

log = logging.getLogger("spark_unlearn.bench.batch")
K = 20


def scenario_batch(train: pd.DataFrame, name: str) -> pd.DataFrame:
    """The deletion of scenario ``name`` as ``user, item, kind`` rows (CURE4Rec's rules; see the module docstring)."""
    for kind in ("core", "edge", "random", "interactions"):
        if name.startswith(kind):
            pct = float(name[len(kind):])
            break
    else:
        raise SystemExit(f"unknown scenario {name!r}: coreP, edgeP, randomP or interactionsP")
    if kind == "interactions":
        rng = np.random.default_rng(42)
        n = max(1, int(round(len(train) * pct / 100)))
        rows = train.iloc[np.sort(rng.choice(len(train), n, replace=False))]
        return pd.DataFrame({"user": rows.user.values, "item": rows.item.values, "kind": "interaction"})
    counts = train["user"].value_counts(ascending=kind == "edge")
    n = int(len(counts) * pct / 100)
    if kind == "random":
        np.random.seed(42)
        users = np.random.choice(counts.index, n, replace=False)
    else:
        users = counts.index[:n].to_numpy()
    return pd.DataFrame({"user": np.asarray(users, np.int64), "item": pd.array([None] * n, dtype="Int64"), "kind": "user"})


def split_input(args, rename: dict, work: str) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """``(train, test, path of the training ratings)``: ``--ratings`` and ``--test`` as given, or ``--ratings`` split
    by interaction (``--test-fraction``, seed 0) and its training part written as CSV for the store's training."""
    if os.path.isdir(args.ratings):
        import pyarrow.dataset as ds

        table = ds.dataset(args.ratings, format="parquet", partitioning="hive").to_table()
        ratings = table.to_pandas().rename(columns=rename)[["user", "item", "rating"]]
    else:
        ratings = pd.read_csv(args.ratings).rename(columns=rename)[["user", "item", "rating"]]
    if args.test:
        return ratings, pd.read_csv(args.test).rename(columns=rename)[["user", "item", "rating"]], args.ratings
    held = np.random.default_rng(0).random(len(ratings)) < args.test_fraction
    train = ratings[~held].reset_index(drop=True)
    path = os.path.join(work, "train.csv")
    train.to_csv(path, index=False)
    return train, ratings[held].reset_index(drop=True), path


def eval_users(test: pd.DataFrame, n: int) -> pd.DataFrame:
    """The test rows of at most ``n`` users drawn with seed 0 (all when ``n`` is 0 or covers them)."""
    users = test.user.unique()
    if not n or users.size <= n:
        return test
    return test[test.user.isin(np.random.default_rng(0).choice(users, n, replace=False))]


def remaining_of(train: pd.DataFrame, batch: pd.DataFrame) -> pd.DataFrame:
    users = set(batch.loc[batch.kind == "user", "user"].tolist())
    pairs = set(zip(batch.loc[batch.kind == "interaction", "user"], batch.loc[batch.kind == "interaction", "item"]))
    keep = ~train.user.isin(users)
    if pairs:
        keep &= ~pd.Series(list(zip(train.user, train.item)), index=train.index).isin(pairs)
    return train[keep]


def factor_arrays(user_df, item_df) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """``(user id -> row, U, item ids, V)`` from two ``id``/``features`` tables (pandas)."""
    U = np.stack(user_df.features.to_numpy()).astype(np.float32)
    V = np.stack(item_df.features.to_numpy()).astype(np.float32)
    return {int(u): k for k, u in enumerate(user_df.id.to_numpy())}, U, item_df.id.to_numpy().astype(np.int64), V


def read_factors(path: str):
    import pyarrow.parquet as pq

    return (pq.read_table(os.path.join(path, "userFactors")).to_pandas(),
            pq.read_table(os.path.join(path, "itemFactors")).to_pandas())


def ranking_metrics(factors, remaining: pd.DataFrame, test: pd.DataFrame, active: set) -> dict:
    """NDCG@20 and HR@20 (a hit: a test item in the top 20) over users with test items, all / active / inactive."""
    urow, U, item_ids, V = factors
    col = {int(i): k for k, i in enumerate(item_ids)}
    seen = remaining.groupby("user").item.apply(list).to_dict()
    wanted = test.groupby("user").item.apply(list).to_dict()
    users = [u for u in wanted if u in urow]
    ndcg, hit, is_active = [], [], []
    discount = 1.0 / np.log2(np.arange(2, K + 2))
    for start in range(0, len(users), 512):
        chunk = users[start:start + 512]
        scores = U[[urow[u] for u in chunk]] @ V.T
        for r, u in enumerate(chunk):
            ex = [col[i] for i in seen.get(u, ()) if i in col]
            scores[r, ex] = -np.inf
        top = np.argpartition(-scores, K, axis=1)[:, :K]
        order = np.take_along_axis(scores, top, 1).argsort(axis=1)[:, ::-1]
        top = np.take_along_axis(top, order, 1)
        for r, u in enumerate(chunk):
            rel = set(col[i] for i in wanted[u] if i in col)
            gains = np.array([c in rel for c in top[r]], float)
            ideal = discount[: min(len(rel), K)].sum()
            ndcg.append(float(gains @ discount / ideal) if ideal > 0 else 0.0)
            hit.append(float(gains.any()))
            is_active.append(u in active)
    ndcg, hit, is_active = np.array(ndcg), np.array(hit), np.array(is_active, bool)

    def mean(x, m):
        return float(x[m].mean()) if m.any() else None

    every = np.ones(len(ndcg), bool)
    return {"ndcg20": mean(ndcg, every), "hr20": mean(hit, every), "users": int(len(ndcg)),
            "ndcg20_active": mean(ndcg, is_active), "hr20_active": mean(hit, is_active),
            "ndcg20_inactive": mean(ndcg, ~is_active), "hr20_inactive": mean(hit, ~is_active)}


def pair_percentiles(factors, pairs: pd.DataFrame) -> np.ndarray:
    """Percentile of each deleted item in its user's ranking over every item (0 = top); NaN where the model has no
    row for the user or the item (the product's kernel, :func:`spark_unlearn.eval.forgetting.rank_percentiles`)."""
    urow, U, item_ids, V = factors
    col = {int(i): k for k, i in enumerate(item_ids)}
    u = pairs.user.to_numpy().astype(np.int64)
    i = pairs.item.to_numpy().astype(np.int64)
    known = np.array([int(a) in urow and int(b) in col for a, b in zip(u, i)], bool)
    out = np.full(u.size, np.nan)
    if known.any():
        out[known] = rank_percentiles(U[[urow[int(a)] for a in u[known]]], V, np.array([col[int(b)] for b in i[known]]))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ratings", required=True, help="CSV, or a Parquet directory (e.g. a fractal expansion)")
    p.add_argument("--test", help="the test split (same columns); without it, --test-fraction of --ratings")
    p.add_argument("--test-fraction", type=float, default=0.2,
                   help="without --test: this share of the interactions, drawn with seed 0, is the test split")
    p.add_argument("--eval-users", type=int, default=0,
                   help="rank for at most this many test users, drawn with seed 0 (0: every test user)")
    p.add_argument("--gap-pairs", type=int, default=0,
                   help="measure the gap over at most this many deleted pairs, drawn with seed 0 (0: every pair)")
    p.add_argument("--columns", help="user,item,rating column names (e.g. uid,iid,val)")
    p.add_argument("--implicit", action="store_true")
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--reg", type=float, default=0.1)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--scenarios", nargs="+", default=["core5", "edge5", "random5", "interactions0.1", "interactions1"])
    p.add_argument("--methods", nargs="+", default=["unlearn", "mllib_retrain", "retrain"])
    p.add_argument("--anchor-runs", type=int, default=2)
    p.add_argument("--sweep-driver-mb", type=int, default=None,
                   help="[unlearn] sweep_driver_mb for every unlearn method (default: the product's)")
    p.add_argument("--anchor-blas", nargs="+", choices=CONFIGS, default=list(CONFIGS),
                   help="MLlib's BLAS configurations, each timed in its own JVM; the faster is the anchor")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    configure_logging("INFO")
    logging.getLogger("spark_unlearn").setLevel(logging.WARNING)
    log.setLevel(logging.INFO)
    spark = bench_session("bench-batch", args.master)
    work = tempfile.mkdtemp(prefix="bench_batch_")
    names = dict(zip(("user", "item", "rating"), (args.columns or "user,item,rating").split(",")))
    rename = {v: k for k, v in names.items()}
    train, test, train_path = split_input(args, rename, work)
    params = ALSParams(rank=args.rank, reg=args.reg, alpha=args.alpha, implicit=args.implicit,
                       iterations=args.iterations, num_blocks=args.blocks)
    base = os.path.join(work, "store")
    t = time.perf_counter()
    run_training(spark, ratings_path=train_path, store_path=base, params=params, test_fraction=0.0,
                 columns=names if args.columns and train_path == args.ratings else None)
    results = {"command": " ".join(sys.argv), "data": args.ratings, "test": args.test, "n_ratings": len(train),
               "params": params.to_dict(), "train_seconds_end_to_end": round(time.perf_counter() - t, 2),
               "machine": os.uname().nodename + f", {os.cpu_count()} cores",
               "test_split": args.test or f"{args.test_fraction} of the interactions of --ratings, seed 0",
               "eval_users": args.eval_users or "all", "sweep_driver_mb": args.sweep_driver_mb, "gap_pairs": args.gap_pairs or "all", "entries": []}
    original = factor_arrays(*read_factors(ModelStore(base).version_path()))
    remaining_dirs = {}
    for name in args.scenarios:  # every scenario's remaining ratings first: the anchor's JVMs time them all
        remaining_dirs[name] = os.path.join(work, f"remaining_{name}")
        spark.createDataFrame(remaining_of(train, scenario_batch(train, name)).astype(
            {"user": "int32", "item": "int32", "rating": "float32"})).write.mode("overwrite").parquet(remaining_dirs[name])
    anchor = {}
    if "mllib_retrain" in args.methods:
        anchor = anchor_times(remaining_dirs, {"rank": params.rank, "reg": params.reg, "alpha": params.alpha,
                                               "implicit": params.implicit, "iterations": params.iterations,
                                               "blocks": args.blocks},
                              runs=args.anchor_runs, configs=args.anchor_blas, save_dir=os.path.join(work, "mllib"))
        results["anchor"] = {blas: {k: v for k, v in r.items() if k != "datasets"} for blas, r in anchor.items()}
    for name in args.scenarios:
        batch = scenario_batch(train, name)
        remaining = remaining_of(train, batch)
        counts = remaining.user.value_counts()
        active = set(counts.index[: int(len(counts) * 5 / 100)].tolist())
        test_left = eval_users(test[test.user.isin(set(remaining.user))], args.eval_users)
        deleted = train[~train.index.isin(remaining.index)]
        gap_pairs = deleted if not args.gap_pairs or len(deleted) <= args.gap_pairs else \
            deleted.sample(args.gap_pairs, random_state=0)
        per: dict[str, dict] = {}
        models = {}
        best = fastest(anchor, name) if anchor else None
        if best:
            blas, entry = best
            per["mllib_retrain"] = {"wall_s": entry["wall_s"], "runs": entry["runs"], "anchor_blas": blas,
                                    "by_blas": {b: {k: v for k, v in r["datasets"][name].items() if k != "model"}
                                                for b, r in anchor.items() if name in r.get("datasets", {})}}
            models["mllib_retrain"] = factor_arrays(*read_factors(entry["model"]))
        for method in [m for m in args.methods if m == "retrain" or m.startswith("retrain_it")]:
            # retrain: our ALS as the model was trained; retrain_itN: with N iterations (how far that is from converged).
            iterations = params.iterations if method == "retrain" else int(method[len("retrain_it"):])
            data = spark.read.parquet(remaining_dirs[name])
            t = time.perf_counter()
            res = train_als(data, replace(params, iterations=iterations))
            path = os.path.join(work, method)
            res.model.user_factors.write.mode("overwrite").parquet(os.path.join(path, "userFactors"))
            res.model.item_factors.write.mode("overwrite").parquet(os.path.join(path, "itemFactors"))
            per[method] = {"wall_s": time.perf_counter() - t, "planner_choice": "retrain"}
            models[method] = factor_arrays(*read_factors(path))
        for method in [m for m in args.methods if m.startswith("unlearn")]:
            # unlearn: the default options (training-precision); unlearn_strict: the strict certificate policy;
            # unlearn_tolX: the floor set to X (--tol).
            options = (UnlearnOptions(certificate_policy="strict") if method == "unlearn_strict" else
                       UnlearnOptions(tol=float(method[len("unlearn_tol"):])) if method.startswith("unlearn_tol") else
                       UnlearnOptions(mode="full") if method == "unlearn_full" else
                       UnlearnOptions(mode="full", min_sweeps=int(method[len("unlearn_full_min"):]))
                       if method.startswith("unlearn_full_min") else UnlearnOptions())
            if args.sweep_driver_mb is not None:
                options = replace(options, sweep_driver_mb=args.sweep_driver_mb)
            store = os.path.join(work, f"store_{name}")
            shutil.rmtree(store, ignore_errors=True)
            shutil.copytree(base, store, copy_function=os.link)
            frame = spark.createDataFrame(
                [(int(u), None if pd.isna(i) else int(i), k) for u, i, k in batch.itertuples(index=False)],
                "user int, item int, kind string")
            t = time.perf_counter()
            rep = run_unlearning(spark, UnlearnRequest(model_path=store, batch=frame, measure=False, options=options))
            wall = time.perf_counter() - t
            planner = rep.get("planner") or {}
            per[method] = {"wall_s": wall, "planner_choice": planner.get("choice", rep.get("mode")),
                              "planner": planner, "sweeps": rep.get("sweeps"), "engine": rep.get("engine"),
                              "rows_solved": rep.get("rows_solved"), "rows_total": rep.get("rows_total"),
                              # The engine's own Spark jobs (not every job of the request, e.g. its batch read).
                              "engine_spark_jobs": rep.get("spark_jobs"), "held_sides": rep.get("held_sides"),
                              "tolerance": rep.get("tolerance"),
                              "certificate": (rep.get("certificate") or {}).get("holds"),
                              "certificate_max_kind": (rep.get("certificate") or {}).get("max_kind"),
                              "forgetting_stop": rep.get("forgetting_stop"), "seconds": rep.get("seconds")}
            models[method] = factor_arrays(*read_factors(ModelStore(store).version_path()))
            shutil.rmtree(store, ignore_errors=True)
        # The gap is taken over the pairs every model can rank (an item that lost its only rating has no row left).
        scored = ({m: pair_percentiles(models[m], gap_pairs) for m in models} | {"original": pair_percentiles(original, gap_pairs)}
                  if name.startswith("interactions") and "retrain" in models else None)
        common = np.logical_and.reduce([np.isfinite(v) for v in scored.values()]) if scored else None
        before = float(scored["original"][common].mean()) if scored and common.any() else None
        retrained = float(scored["retrain"][common].mean()) if before is not None else None
        mllib = per.get("mllib_retrain", {}).get("wall_s")
        for method, entry in per.items():
            metrics = ranking_metrics(models[method], remaining, test_left, active)
            gap = after = None
            if before is not None and abs(retrained - before) > 1e-12:
                after = float(scored[method][common].mean())
                gap = (after - before) / (retrained - before)
            entry = {"scenario": name, "method": method, **entry, **metrics, "gap_closed": gap,
                     "rank_percentile": {"original": before, "this": after, "retrain": retrained,
                                         "pairs": int(common.sum()) if common is not None else None},
                     "deleted_ratings": int(len(deleted)), "deleted_users": int((batch.kind == "user").sum()),
                     "speedup_vs_mllib": mllib / entry["wall_s"] if mllib else None}
            entry.setdefault("certificate", None)
            entry.setdefault("planner_choice", None)
            results["entries"].append(entry)
            log.info("%s %s: %s", name, method, {k: v for k, v in entry.items() if k != "seconds"})
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=2, default=str)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

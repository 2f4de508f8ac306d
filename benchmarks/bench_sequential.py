"""Benchmark (issue 5): many sequential single-user erasures through the store, in one driver process.

    python benchmarks/bench_sequential.py --ratings ../shared/data/ml-latest-small/ratings.csv \\
        --users 200 --rank 16 --out docs/bench/sequential_ml-latest-small.json

1. Train a model into a fresh store (per-user 80/20 split, the holdout kept with it).
2. Erase ``--users`` random users one request at a time with
   ``run_unlearning`` (frontier mode, default engine and tolerance), each
   published as a new version with its ledger entry.  After each: the
   certificate, rows re-solved, seconds, driver RSS, JVM RSS and JVM heap in use
   (after a GC), written to the JSON as the run goes.
3. Compare the final model's test RMSE (holdout minus the erased users) with
   (a) unlearning all the users in one batch from the first version and
   (b) a retrain from scratch on the final data version.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import bench_session  # noqa: E402

from spark_unlearn.als.params import ALSParams  # noqa: E402
from spark_unlearn.als.train import train_als  # noqa: E402
from spark_unlearn.eval.metrics import rmse  # noqa: E402
from spark_unlearn.logs import configure_logging  # noqa: E402
from spark_unlearn.store.model_store import ModelStore  # noqa: E402
from spark_unlearn.train_model import run_training  # noqa: E402
from spark_unlearn.als.options import UnlearnOptions  # noqa: E402
from spark_unlearn.unlearn_model import UnlearnRequest, run_unlearning  # noqa: E402

log = logging.getLogger("bench_sequential")


def rss_mib(pid: int | str = "self") -> float:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def jvm_memory(spark) -> tuple[float, float]:
    """(JVM RSS MiB, JVM heap in use after a GC, MiB)."""
    jvm = spark.sparkContext._jvm
    runtime = jvm.java.lang.Runtime.getRuntime()
    jvm.java.lang.System.gc()
    heap = (runtime.totalMemory() - runtime.freeMemory()) / 2**20
    pid = jvm.java.lang.ProcessHandle.current().pid()
    return rss_mib(pid), heap


def test_rmse(model, holdout) -> float:
    return float(rmse(model, holdout))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ratings", required=True)
    p.add_argument("--users", type=int, default=200)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tol-factor", type=float, default=1.0,
                   help="tolerance = this x the model's 90th-percentile training residual (run_unlearning's tol_factor)")
    p.add_argument("--master", default="local[2]")
    p.add_argument("--store", help="store directory (default: a temporary one, removed at the end)")
    p.add_argument("--steps", type=int,
                   help="stop after this many of the --users erasures (same users, same order) and skip the comparisons")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    configure_logging("WARNING")
    log.setLevel(logging.INFO)
    logging.getLogger("bench_sequential").addHandler(logging.StreamHandler(sys.stderr))
    spark = bench_session("bench-sequential", args.master)
    root = args.store or tempfile.mkdtemp(prefix="seq_store_")
    params = ALSParams(rank=args.rank, reg=0.1, iterations=args.iterations, seed=args.seed)
    t = time.perf_counter()
    run_training(spark, ratings_path=args.ratings, store_path=root, params=params)
    train_s = time.perf_counter() - t
    store = ModelStore(root)
    first = store.current()
    snapshot = tempfile.mkdtemp(prefix="seq_first_")
    shutil.copytree(root, os.path.join(snapshot, "s"))
    users = sorted(r[0] for r in store.load(spark).ratings.select("user").distinct().collect())
    chosen = random.Random(args.seed).sample(users, args.users)
    out = {"command": " ".join(sys.argv), "params": params.to_dict(), "train_seconds": train_s, "users": chosen, "steps": []}

    for n, user in enumerate(chosen[: args.steps or len(chosen)], 1):
        batch = spark.createDataFrame([(user, None, "user")], "user int, item int, kind string")
        t = time.perf_counter()
        rep = run_unlearning(spark, UnlearnRequest(model_path=root, batch=batch, measure=False, batch_id=f"seq-{n:04d}", options=UnlearnOptions(tol_factor=args.tol_factor)))
        wall = time.perf_counter() - t
        jrss, heap = jvm_memory(spark) if n % 10 == 0 or n == 1 else (None, None)
        step = {
            "n": n, "user": user, "version": rep["version"], "wall_s": round(wall, 3),
            "unlearning_s": rep["seconds"].get("total"), "rows_solved": rep["rows_solved"],
            "certificate": rep["certificate"]["max_relative_residual"], "tolerance": rep["tolerance"],
            "holds": rep["certificate"]["holds"], "mode": rep["mode"], "repair": rep.get("repair"),
            "deleted_ratings": rep["deletion"]["deleted_ratings"],
            "driver_rss_mib": round(rss_mib(), 1), "jvm_rss_mib": jrss, "jvm_heap_mib": heap,
        }
        out["steps"].append(step)
        log.info("step %s", step)
        if n % 10 == 0 or n == args.users:
            with open(args.out, "w") as fh:
                json.dump(out, fh, indent=2)

    if args.steps:
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=2)
        return
    final = store.load(spark)
    out["final_rmse"] = test_rmse(final.model, final.holdout)
    out["ledger_entries"] = len(store.ledger())

    # (a) all users in one batch, from the first version.
    one = os.path.join(snapshot, "s")
    batch = spark.createDataFrame([(u, None, "user") for u in chosen], "user int, item int, kind string")
    t = time.perf_counter()
    rep = run_unlearning(spark, UnlearnRequest(model_path=one, batch=batch, measure=False, options=UnlearnOptions(tol_factor=args.tol_factor)))
    out["one_batch"] = {"wall_s": time.perf_counter() - t, "rows_solved": rep["rows_solved"], "mode": rep["mode"],
                        "certificate": rep["certificate"]["max_relative_residual"]}
    one_v = ModelStore(one).load(spark)
    out["one_batch"]["rmse"] = test_rmse(one_v.model, one_v.holdout)

    # (b) retrain from scratch on the final data version.
    t = time.perf_counter()
    retrained = train_als(final.ratings, params).model
    out["retrain"] = {"wall_s": time.perf_counter() - t, "rmse": test_rmse(retrained, final.holdout)}
    out["first_version"] = first
    for key in ("one_batch", "retrain"):
        out[key]["final_vs_this_pct"] = 100 * (out["final_rmse"] / out[key]["rmse"] - 1)
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=2)
    print(json.dumps({k: v for k, v in out.items() if k not in ("steps", "users")}, indent=2))
    if not args.store:
        shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(snapshot, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

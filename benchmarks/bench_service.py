"""Benchmark: a store-level erasure three ways, end to end, against retraining, in one run on the same data.

    python benchmarks/bench_service.py --ratings ../shared/data/ml-latest-small/ratings.csv --rank 32 \\
        --requests 20 --out docs/bench/service_ml-latest-small.json

1. Train a model into a fresh store (``run_training``, ``--test-fraction 0``:
   every rating, as in production).
2. Per request kind (``1u`` one user with at least 20 ratings, ``1i`` one rating):

   * ``mllib_retrain``: read the store's remaining ratings, Spark MLlib
     ``ALS().fit`` (same rank, regParam, iterations, blocks), ``save``: in this
     warm driver, the fastest of ``--anchor-runs`` runs (the anchor's best case);
   * ``retrain``: our ALS on the same data, in this driver;
   * ``frontier``: ``python jobs/unlearn.py`` as a fresh process, as
     spark-submit runs it: load and publish included.  ``wall_s`` excludes
     the JVM's start (``session_start_s``, reported), ``process_s`` is all of it;
   * ``service``: the resident service (:class:`UnlearnService`) in this warm
     driver: ``--requests`` requests of that kind, one after the other, each
     timed from its drop into the request directory to its receipt (publish
     included).  ``wall_s`` is the median; p90, max and the Spark jobs per
     micro-batch are in the entry.

Each entry: ``size``, ``method``, ``wall_s``, ``spark_jobs``, ``bytes_written``
(files of the new version not shared with its parent by a hard link),
``store_bytes`` (distinct bytes in the store), ``certificate`` and
``speedup_vs_mllib``.  ``bytes_read`` (``frontier``, ``service``): bytes of
block files read on the driver, from disk (not the service's cache), and by
the publication's copy-on-write; ``null`` for the retrains (Spark's reads).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import bench_session  # noqa: E402

from spark_unlearn.als.params import ALSParams  # noqa: E402
from spark_unlearn.als.train import train_als  # noqa: E402
from spark_unlearn.logs import configure_logging  # noqa: E402
from spark_unlearn.service.inbox import Inbox  # noqa: E402
from spark_unlearn.store.block_reader import FILE_CACHE  # noqa: E402
from spark_unlearn.unlearn_model import request_io  # noqa: E402
from spark_unlearn.service.serve import ServiceOptions, UnlearnService  # noqa: E402
from spark_unlearn.als.options import UnlearnOptions  # noqa: E402
from spark_unlearn.store.model_store import ModelStore  # noqa: E402
from spark_unlearn.train_model import run_training  # noqa: E402

log = logging.getLogger("spark_unlearn.bench.service")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def store_bytes(root: str) -> int:
    """Distinct bytes under ``root`` (a hard-linked file counted once)."""
    seen, total = set(), 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                total += st.st_size
    return total


def written_bytes(version_dir: str) -> int:
    """Bytes of the files of a version that it does not share with another version by a hard link."""
    total = 0
    for dirpath, _, files in os.walk(version_dir):
        for name in files:
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_nlink == 1:
                total += st.st_size
    return total


def pick_requests(ratings, kind: str, n: int, seed: int) -> list[dict]:
    """``n`` distinct requests of ``kind``: users with at least 20 ratings, or single ratings, by a seeded hash."""
    from pyspark.sql import functions as F

    if kind == "1u":
        users = (ratings.groupBy("user").count().filter("count >= 20")
                 .orderBy(F.xxhash64("user", F.lit(seed))).limit(n).collect())
        return [{"user": int(r.user)} for r in users]
    pairs = ratings.orderBy(F.xxhash64("user", "item", F.lit(seed))).limit(n).collect()
    return [{"user": int(r.user), "item": int(r.item)} for r in pairs]


def write_request(path: str, rows: list[dict]) -> None:
    with open(path, "w") as fh:
        fh.write("user,item\n" + "".join(f"{r.get('user', '')},{r.get('item', '') if 'item' in r else ''}\n" for r in rows))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ratings", required=True)
    p.add_argument("--columns", help="user,item,rating column names of --ratings")
    p.add_argument("--implicit", action="store_true")
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--reg", type=float, default=0.1)
    p.add_argument("--alpha", type=float, default=1.0)
    p.add_argument("--iterations", type=int, default=10)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--sizes", nargs="+", default=["1u", "1i"])
    p.add_argument("--requests", type=int, default=20, help="requests per kind for the service's median")
    p.add_argument("--methods", nargs="+", default=["mllib_retrain", "retrain", "frontier", "service"])
    p.add_argument("--master", default="local[2]")
    p.add_argument("--anchor-runs", type=int, default=2, help="MLlib retrains per size; the fastest is the anchor")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    configure_logging("INFO")
    logging.getLogger("spark_unlearn").setLevel(logging.WARNING)
    log.setLevel(logging.INFO)
    spark = bench_session("bench-service", args.master)
    work = tempfile.mkdtemp(prefix="bench_service_")
    params = ALSParams(rank=args.rank, reg=args.reg, alpha=args.alpha, implicit=args.implicit,
                       iterations=args.iterations, num_blocks=args.blocks)
    columns = None
    if args.columns:
        u, i, r = args.columns.split(",")
        columns = {"user": u, "item": i, "rating": r}
    base = os.path.join(work, "store")
    t = time.perf_counter()
    run_training(spark, ratings_path=args.ratings, store_path=base, params=params, columns=columns, test_fraction=0.0)
    t_train = time.perf_counter() - t
    cfg = os.path.join(work, "job.toml")
    with open(cfg, "w") as fh:
        fh.write('[unlearn]\nmeasure = false\n[spark]\n"spark.sql.shuffle.partitions" = "8"\n'
                 '"spark.ui.showConsoleProgress" = "false"\n"spark.driver.memory" = "8g"\n')
    ms = ModelStore(base)
    ratings = ms.load(spark).ratings.cache()
    n_ratings = ratings.count()
    results = {"command": " ".join(sys.argv), "data": args.ratings, "n_ratings": n_ratings, "params": params.to_dict(),
               "train_seconds_end_to_end": round(t_train, 2), "machine": os.uname().nodename + f", {os.cpu_count()} cores",
               "entries": []}
    for size in args.sizes:
        requests = pick_requests(ratings, size, args.requests + 1, seed=11)
        first, rest = requests[0], requests[1:]
        per = {}
        remaining_path = ms.version_path()
        if "mllib_retrain" in args.methods:
            from pyspark.ml.recommendation import ALS
            from pyspark.sql import functions as F

            walls = []
            for _ in range(args.anchor_runs):  # the anchor's best run: the first one also warms the JVM's JIT
                t = time.perf_counter()
                data = spark.read.parquet(os.path.join(remaining_path, "ratings"))
                cond = (F.col("user") == first["user"]) & (F.col("item") == first["item"]) if "item" in first else (
                    F.col("user") == first["user"])
                data = data.where(~cond)
                model = ALS(rank=params.rank, regParam=params.reg, implicitPrefs=params.implicit, alpha=params.alpha,
                            maxIter=params.iterations, numUserBlocks=args.blocks, numItemBlocks=args.blocks, seed=0,
                            userCol="user", itemCol="item", ratingCol="rating").fit(data)
                model.write().overwrite().save(os.path.join(work, "mllib_model"))
                walls.append(time.perf_counter() - t)
            per["mllib_retrain"] = {"wall_s": min(walls), "runs": [round(w, 2) for w in walls]}
        if "retrain" in args.methods:
            from spark_unlearn.als.plan import remove_batch

            batch = spark.createDataFrame([(first["user"], first.get("item"), "interaction" if "item" in first else "user")],
                                          "user int, item int, kind string")
            t = time.perf_counter()
            res = train_als(remove_batch(ratings, batch), params)
            res.model.user_factors.write.mode("overwrite").parquet(os.path.join(work, "retrain_u"))
            res.model.item_factors.write.mode("overwrite").parquet(os.path.join(work, "retrain_i"))
            per["retrain"] = {"wall_s": time.perf_counter() - t}
        if "frontier" in args.methods:
            store = os.path.join(work, f"store_frontier_{size}")
            shutil.copytree(base, store, copy_function=os.link)
            delete = os.path.join(work, f"delete_{size}.csv")
            write_request(delete, [first])
            env = dict(os.environ)
            t = time.perf_counter()
            proc = subprocess.run([sys.executable, os.path.join(REPO, "jobs", "unlearn.py"), "--model", store,
                                   "--delete", delete, "--config", cfg, "--json"], env=env, capture_output=True,
                                  text=True, timeout=3600)
            process_s = time.perf_counter() - t
            if proc.returncode != 0:
                raise RuntimeError(proc.stderr[-3000:])
            rep = json.loads(proc.stdout)
            sec = rep["seconds"]
            version_dir = ModelStore(store).version_path()
            per["frontier"] = {"wall_s": sec["end_to_end"] - sec["session_start"], "process_s": process_s,
                               "bytes_read": (rep.get("io") or {}).get("bytes_read"),
                               "session_start_s": sec["session_start"], "rows_solved": rep.get("rows_solved"),
                               "engine_spark_jobs": rep.get("spark_jobs"),  # the engine's own scans, not every job of the process
                               "certificate": (rep.get("certificate") or {}).get("holds"),
                               "bytes_written": written_bytes(version_dir), "store_bytes": store_bytes(store)}
        if "service" in args.methods:
            store = os.path.join(work, f"store_service_{size}")
            shutil.copytree(base, store, copy_function=os.link)
            inbox = Inbox(os.path.join(work, f"requests_{size}"))
            service = UnlearnService(spark, store, inbox, ServiceOptions(measure=False, unlearn=UnlearnOptions()))
            walls, jobs, written, read, holds = [], [], [], [], []
            for k, req in enumerate(rest):
                read_before = FILE_CACHE.bytes_read
                t = time.perf_counter()
                rid = inbox.submit_rows([req], f"r{k:04d}")
                receipts = service.step()
                walls.append(time.perf_counter() - t)
                (receipt,) = [r for r in receipts if r["request_id"] == rid]
                if receipt["status"] != "applied":
                    raise RuntimeError(f"request {rid}: {receipt}")
                jobs.append(receipt["micro_batch"]["spark_jobs"])
                holds.append(bool((receipt.get("certificate") or {}).get("holds")))
                written.append(written_bytes(service.store.version_path(receipt["version"])))
                read.append(request_io(service.store.read_manifest(receipt["version"]), read_before)["bytes_read"])
                log.info("%s service request %d: %.3f s, %d Spark jobs", size, k, walls[-1], jobs[-1])
            qs = statistics.quantiles(walls, n=10)
            per["service"] = {"wall_s": statistics.median(walls), "p90_s": qs[-1], "max_s": max(walls),
                              "first_s": walls[0], "n_requests": len(walls), "spark_jobs": statistics.median(jobs),
                              "certificate": all(holds), "bytes_written": statistics.median(written),
                              "bytes_read": statistics.median(read),
                              "store_bytes": store_bytes(store), "walls": [round(w, 3) for w in walls]}
        mllib = per.get("mllib_retrain", {}).get("wall_s")
        for method, entry in per.items():
            entry = {"size": size, "method": method, "bytes_read": None, **entry}  # None: Spark's reads, not counted
            entry["speedup_vs_mllib"] = mllib / entry["wall_s"] if mllib else None
            results["entries"].append(entry)
            log.info("%s %s: %s", size, method, {k: v for k, v in entry.items() if k != "walls"})
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=2, default=str)
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

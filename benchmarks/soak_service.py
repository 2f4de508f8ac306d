"""Soak: mixed deletion requests streamed into a running jobs/serve.py, SIGKILLed at random moments and restarted.

    python benchmarks/soak_service.py --ratings ../shared/data/ml-latest-small/ratings.csv \\
        --requests 500 --kills 3 --out docs/bench/soak_service_ml-latest-small.json

1. ``jobs/train.py`` trains a store on every rating (``--test-fraction 0``).
2. ``jobs/serve.py`` runs as a real process.  Requests are dropped into its
   directory at ``--rate`` per second: one user's erasure, one rating, or one
   item's withdrawal (6 : 3 : 1, distinct, drawn with ``--seed``).  At
   ``--kills`` random moments the service is SIGKILLed and started again.
3. When every request has a receipt the service is stopped, and the store
   is checked:

   * every request has one receipt, and the lineage lists each applied
     request in exactly one version (``request.members``): applied once;
   * the current ratings equal the original minus every applied request,
     recomputed here with pandas (no erasure lost, none applied twice);
   * every version's recorded certificate holds, and the independent
     verifier (:func:`spark_unlearn.verify.certificate.verify_version`, every
     row) passes on the current version and ``--verify`` random others;
   * every version loads with ``pyspark.ml.recommendation.ALSModel.load``;
   * the driver's memory: the heartbeat's RSS over each life of the service.

The JSON report holds the counts, latencies and those verdicts.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def pick_requests(ratings, n: int, seed: int) -> list[dict]:
    """``n`` distinct requests: users (with ≥ 20 ratings), ratings and items, 6 : 3 : 1, in a random order."""
    rng = random.Random(seed)
    counts = ratings.groupby("user").size()
    users = rng.sample(sorted(counts[counts >= 20].index.tolist()), (6 * n) // 10)
    items = rng.sample(sorted(ratings["item"].unique().tolist()), n // 10)
    others = ratings[~ratings["user"].isin(users) & ~ratings["item"].isin(items)]
    pairs = others.sample(n - len(users) - len(items), random_state=seed)[["user", "item"]].values.tolist()
    out = ([{"user": int(u)} for u in users] + [{"item": int(i)} for i in items]
           + [{"user": int(u), "item": int(i)} for u, i in pairs])
    rng.shuffle(out)
    return out


def expected_ratings(ratings, applied: list[dict]):
    """The original ratings minus every applied request (the oracle of the final data version)."""
    users = {r["user"] for r in applied if "item" not in r}
    items = {r["item"] for r in applied if "user" not in r}
    pairs = {(r["user"], r["item"]) for r in applied if "user" in r and "item" in r}
    keep = ~ratings["user"].isin(users) & ~ratings["item"].isin(items)
    keep &= ~ratings.apply(lambda row: (row["user"], row["item"]) in pairs, axis=1)
    return ratings[keep]


def start_service(store: str, inbox_dir: str, log_path: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, os.path.join(REPO, "jobs", "serve.py"), "--model", store, "--requests",
                             inbox_dir, "--poll", "0.2"], stdout=subprocess.DEVNULL,
                            stderr=open(log_path, "a"), start_new_session=True)


def main(argv=None) -> int:
    from spark_unlearn.data.readers import read_ratings
    from spark_unlearn.service.inbox import Inbox
    from spark_unlearn.session import get_session
    from spark_unlearn.store.model_store import ModelStore

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ratings", required=True)
    p.add_argument("--requests", type=int, default=500)
    p.add_argument("--kills", type=int, default=3)
    p.add_argument("--rate", type=float, default=5.0, help="requests dropped per second")
    p.add_argument("--rank", type=int, default=10)
    p.add_argument("--verify", type=int, default=3, help="random versions checked by the verifier, besides the last")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    work = tempfile.mkdtemp(prefix="soak_service_")
    store, inbox_dir, log_path = os.path.join(work, "store"), os.path.join(work, "requests"), os.path.join(work, "serve.log")
    subprocess.run([sys.executable, os.path.join(REPO, "jobs", "train.py"), "--ratings", args.ratings, "--model", store,
                    "--test-fraction", "0", "--rank", str(args.rank)], check=True, capture_output=True)
    spark = get_session("soak-check")
    original = read_ratings(spark, args.ratings).toPandas()
    requests = pick_requests(original, args.requests, args.seed)
    inbox = Inbox(inbox_dir)
    rng = random.Random(args.seed)
    kill_at = sorted(rng.sample(range(args.requests // 10, args.requests), args.kills))
    t0 = time.perf_counter()
    service = start_service(store, inbox_dir, log_path)
    lives, ids, kills = [[]], [], []
    for k, req in enumerate(requests):
        ids.append(inbox.submit_rows([req], f"soak-{k:05d}"))
        time.sleep(1.0 / args.rate)
        beat = _heartbeat(inbox_dir)
        if beat and beat.get("pid") == service.pid and beat.get("driver_rss_mb"):
            lives[-1].append(beat["driver_rss_mb"])
        if kill_at and k == kill_at[0]:
            kill_at.pop(0)
            time.sleep(rng.uniform(0.0, 2.0))  # anywhere in a micro-batch
            os.killpg(service.pid, signal.SIGKILL)
            service.wait()
            kills.append({"after_request": k, "receipts_then": sum(inbox.has_receipt(i) for i in ids)})
            service = start_service(store, inbox_dir, log_path)
            lives.append([])
    while not all(inbox.has_receipt(i) for i in ids):
        if time.perf_counter() - t0 > args.timeout:
            raise RuntimeError(f"not every request got a receipt within {args.timeout} s; see {log_path}")
        if service.poll() is not None:
            raise RuntimeError(f"the service exited ({service.returncode}); see {log_path}")
        beat = _heartbeat(inbox_dir)
        if beat and beat.get("pid") == service.pid and beat.get("driver_rss_mb"):
            lives[-1].append(beat["driver_rss_mb"])
        time.sleep(0.5)
    wall = time.perf_counter() - t0
    inbox.request_stop()
    service.wait(timeout=600)

    receipts = {i: inbox.read_receipt(i) for i in ids}
    statuses: dict[str, int] = {}
    for r in receipts.values():
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    ms = ModelStore(store)
    lineage, version = [], ms.current()
    while version is not None:
        manifest = ms.read_manifest(version)
        lineage.append((version, manifest))
        version = manifest.get("parent")
    listed: dict[str, int] = {}
    for _, manifest in lineage:
        for rid in (manifest.get("request") or {}).get("members") or []:
            listed[rid] = listed.get(rid, 0) + 1
    applied_ids = [i for i in ids if receipts[i]["status"] == "applied"]
    once = all(listed.get(i) == 1 for i in applied_ids) and all(v == 1 for v in listed.values())
    applied = [requests[ids.index(i)] for i in applied_ids]
    want = expected_ratings(original, applied)
    have = ms.load(spark).ratings.toPandas()
    same_data = (len(want) == len(have) and want.merge(have, on=["user", "item", "rating"]).shape[0] == len(want))
    certificates = [bool((m.get("certificate") or {}).get("holds", True)) for _, m in lineage]

    from pyspark.ml.recommendation import ALSModel

    from spark_unlearn.verify.certificate import verify_version

    loads = 0
    for name, _ in lineage:
        ALSModel.load(ms.version_path(name)).userFactors.limit(1).collect()
        loads += 1
    chosen = [lineage[0][0]] + rng.sample([n for n, _ in lineage[1:]], min(args.verify, len(lineage) - 1))
    verdicts = {name: verify_version(spark, store, name)["status"] for name in chosen}
    lat = sorted(r["micro_batch"]["wall_s"] for r in receipts.values() if (r.get("micro_batch") or {}).get("wall_s"))
    report = {
        "command": " ".join(sys.argv), "ratings": args.ratings, "requests": len(ids), "kills": kills, "wall_s": round(wall, 1),
        "statuses": statuses, "versions": len(lineage), "applied_once": once, "data_equals_oracle": same_data,
        "rows": {"original": len(original), "expected": len(want), "current": len(have)},
        "certificates_hold": all(certificates), "versions_loaded_by_ALSModel": loads, "verifier": verdicts,
        "micro_batch_wall_s": {"p50": lat[len(lat) // 2] if lat else None, "max": lat[-1] if lat else None},
        "driver_rss_mb": [{"first": life[0], "max": max(life), "last": life[-1], "samples": len(life)}
                          for life in lives if life],
        "machine": os.uname().nodename + f", {os.cpu_count()} cores",
    }
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=2)
    print(json.dumps({k: report[k] for k in ("statuses", "versions", "applied_once", "data_equals_oracle",
                                             "certificates_hold", "verifier", "driver_rss_mb")}, indent=1))
    ok = once and same_data and all(certificates) and all(v == "verified" for v in verdicts.values())
    return 0 if ok else 1


def _heartbeat(inbox_dir: str) -> dict | None:
    try:
        with open(os.path.join(inbox_dir, "service.json")) as fh:
            return json.load(fh)
    except (OSError, ValueError):
        return None


if __name__ == "__main__":
    sys.exit(main())

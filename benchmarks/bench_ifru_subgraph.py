"""Wall time of IFRU's Spark step alone: node scores, kept nodes and the influenced subgraph.

    python benchmarks/bench_ifru_subgraph.py --out docs/bench/ifru_subgraph_ml-latest-small_s15.json

Same data as ``bench_ifru.py --scenario random``: ml-latest-small, label =
rating >= 4, 5-core, 60/20/20 per user, 2 % of the training labels flipped
and flagged ``removed``. For MF (0 layers) and a 1-layer LightGCN, without
pruning and with pruning at ``--quantile`` (one score hop), each selection
(``ifru.pruning.select_subgraph_spark``, what an IFRU request runs) runs
``--repeat`` times in one process. Repeat 0 of the first configuration also
pays for starting Spark's Python workers. Each entry records the
seconds per repeat and the size of the subgraph.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from spark_unlearn.logs import configure_logging  # noqa: E402

log = logging.getLogger("spark_unlearn.bench.ifru_subgraph")
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ratings", default=os.path.join(_REPO, "..", "shared", "data", "ml-latest-small", "ratings.csv"))
    ap.add_argument("--quantile", type=float, default=0.8)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    configure_logging("INFO")
    if not os.path.exists(args.ratings):
        ap.error(f"ratings file not found: {args.ratings} (pass --ratings PATH)")

    from pyspark.sql import functions as F  # noqa: N812

    from spark_unlearn.data.readers import read_ratings
    from spark_unlearn.ifru.data import flip_labels, prepare
    from spark_unlearn.ifru.pruning import select_subgraph_spark
    from spark_unlearn.session import get_session

    spark = get_session("bench_ifru_subgraph", master="local[2]", conf={
        "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false", "spark.sql.shuffle.partitions": "4"})
    spark.sparkContext.setLogLevel("ERROR")
    prep = prepare(read_ratings(spark, args.ratings), threshold=4.0, k=5, fractions=(0.6, 0.2, 0.2), seed=0)
    df = flip_labels(prep.train, 0.02, 0).select("u", "i", "label", F.col("noisy").alias("removed")).localCheckpoint()
    n_terms = df.count()
    runs = []
    for layers in (0, 1):
        for q in (None, args.quantile):
            seconds = []
            for _ in range(args.repeat):
                t = time.perf_counter()
                sub, _ = select_subgraph_spark(df, prep.n_users, prep.n_items, layers, q, 1)
                seconds.append(time.perf_counter() - t)
            entry = {"model": "mf" if layers == 0 else "lightgcn", "layers": layers, "quantile": q, "seconds": seconds,
                     "terms_selected": sub.num_terms, "edges_g": int(sub.edges_g[0].numel()),
                     "kept_nodes": None if sub.kept is None else int(sub.kept.numel())}
            log.info("%s", entry)
            runs.append(entry)
    out = {"command": " ".join(["benchmarks/bench_ifru_subgraph.py"] + (argv if argv is not None else sys.argv[1:])),
           "ratings": os.path.abspath(args.ratings), "n_users": prep.n_users, "n_items": prep.n_items,
           "train_terms": n_terms, "runs": runs}
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())

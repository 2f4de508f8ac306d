"""Plot the unlearning benchmark: wall time per method and deletion size, one panel per input.

    pip install -e ".[plot]"
    python benchmarks/plot_unlearn.py docs/bench/unlearn_ml-latest-small_explicit.json \\
        docs/bench/unlearn_synthetic5M_explicit.json --out docs/bench/unlearn_wall.png

Reads the JSON files ``bench_unlearn.py --out`` writes; bars are wall seconds
(log scale), each frontier bar is labelled with its speed-up over Spark
MLlib's retrain and the rows it re-solved.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

log = logging.getLogger("spark_unlearn.bench.plot")

ORDER = ["mllib_retrain", "retrain", "paper_full", "frontier", "frontier_layout"]
LABEL = {"mllib_retrain": "Spark MLlib retrain", "retrain": "our retrain", "paper_full": "paper full sweeps",
         "frontier": "frontier (ours)", "frontier_layout": "frontier, layout engine"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", nargs="+", help="JSON files written by bench_unlearn.py --out")
    p.add_argument("--out", required=True, help="PNG path")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(args.results), figsize=(6 * len(args.results), 4.5), squeeze=False)
    for ax, path in zip(axes[0], args.results):
        with open(path) as fh:
            res = json.load(fh)
        entries = res["entries"]
        canon = ["1i", "1u", "100i", "1%"]
        sizes = sorted(dict.fromkeys(e["size"] for e in entries), key=lambda x: canon.index(x) if x in canon else len(canon))
        methods = [m for m in ORDER if any(e["method"] == m for e in entries)]
        width = 0.8 / len(methods)
        for j, m in enumerate(methods):
            xs, ys, notes = [], [], []
            for i, size in enumerate(sizes):
                e = next((e for e in entries if e["size"] == size and e["method"] == m), None)
                if e is None:
                    continue
                xs.append(i + (j - (len(methods) - 1) / 2) * width)
                ys.append(e["wall_s"])
                sp = e.get("speedup_vs_mllib")
                notes.append(f"{sp:.1f}x\n{e['rows_solved']:,} rows" if m.startswith("frontier") and sp else "")
            bars = ax.bar(xs, ys, width, label=LABEL.get(m, m))
            for bar, note in zip(bars, notes):
                if note:
                    ax.annotate(note, (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center", va="bottom",
                                fontsize=7, xytext=(0, 2), textcoords="offset points")
        ax.set_yscale("log")
        ax.set_xticks(range(len(sizes)), [{"1i": "1 interaction", "1u": "1 user", "100i": "100 interactions"}.get(s, s)
                                          for s in sizes])
        ax.set_ylabel("wall time (s, log scale)")
        data = str(res.get("data", path))
        data = os.path.join(os.path.basename(os.path.dirname(data)), os.path.basename(data)) if os.sep in data else data
        ax.set_title(f"{data}\n{res['params'].get('rank')} factors, {'implicit' if res['params'].get('implicit') else 'explicit'}",
                     fontsize=9)
        ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

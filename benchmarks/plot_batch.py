"""Plot the batch benchmark: wall time against the ratings a batch deletes, per method, and the planner's choice.

    pip install -e ".[plot]"
    python benchmarks/plot_batch.py docs/bench/batch_adm.json --out docs/bench/batch_adm_wall.png

Reads the JSON ``bench_batch.py --out`` writes.  One point per scenario and
method (log-log); the unlearning points are marked by the strategy the
planner ran (``frontier``, ``retrain``, ...), so the plot shows where it
switches.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

log = logging.getLogger("spark_unlearn.bench.plot")

STYLE = {"mllib_retrain": ("Spark MLlib retrain (faster BLAS)", "tab:red", "-"), "retrain": ("our retrain", "tab:orange", "-"),
         "unlearn": ("unlearn (training-precision)", "tab:blue", "-"),
         "unlearn_strict": ("unlearn (strict)", "tab:green", "--"),
         "unlearn_full": ("unlearn, --mode full (warm sweeps)", "tab:purple", "--")}
MARKER = {"frontier": "o", "retrain": "s", "sweeps": "^", "full": "^"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("result", help="JSON written by bench_batch.py --out")
    p.add_argument("--out", required=True, help="PNG path")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(args.result) as fh:
        res = json.load(fh)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    methods = dict.fromkeys(e["method"] for e in res["entries"])
    for method in methods:
        label, color, line = STYLE.get(method, (method, None, ":"))
        pts = sorted((e["deleted_ratings"], e["wall_s"], e.get("planner_choice")) for e in res["entries"]
                     if e["method"] == method)
        if not pts:
            continue
        ax.plot([x for x, _, _ in pts], [y for _, y, _ in pts], line, color=color, label=label, alpha=0.7)
        for x, y, choice in pts:
            ax.plot(x, y, MARKER.get(choice, "."), color=color, markersize=5)
    for choice, marker in MARKER.items():
        if any(e.get("planner_choice") == choice and e["method"].startswith("unlearn") for e in res["entries"]):
            ax.plot([], [], marker, color="gray", label=f"planner ran: {choice}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("ratings deleted by the batch (log scale)")
    ax.set_ylabel("wall time, end to end (s, log scale)")
    ax.set_title(f"{res.get('data')}: CURE4Rec scenarios, rank {res['params'].get('rank')}, "
                 f"{'implicit' if res['params'].get('implicit') else 'explicit'}", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Entry point: delete the data of old model versions, so erased data does not survive in the history.

    python jobs/purge.py --model STORE_DIR [--keep N] [--report PATH] [--json]      (or spark-submit jobs/purge.py ...)

Keeps the N newest versions of the current lineage (default 1: the current
one) whole.  Older versions keep only their manifest and the ids their
deletion batch removed (the ledger, exactly-once checks and audits keep
working); versions outside the lineage are removed.  No Spark needed.
Prints what was purged on stderr; the report (JSON) goes to ``--report PATH``
or, with ``--json``, to stdout.  Exit code 2 on a bad store or argument.
"""

import argparse
import logging
import sys
import time

import _bootstrap  # noqa: F401

from spark_unlearn.cli import add_output_flags, emit, run_job
from spark_unlearn.logs import configure_logging
from spark_unlearn.reporting import purge_summary
from spark_unlearn.store.model_store import ModelStore

log = logging.getLogger("spark_unlearn.jobs.purge")


EXAMPLES = """examples:
  python jobs/purge.py --model out/model_store            # keep only the current version whole
  python jobs/purge.py --model out/model_store --keep 3   # keep the 3 newest versions of the lineage whole
  python jobs/purge.py --model out/model_store --json | python -m json.tool   # the report (JSON) on stdout
"""


def main(argv=None) -> int:
    started = time.perf_counter()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model store: a path or a Hadoop URI such as hdfs://nn:8020/store")
    p.add_argument("--keep", type=int, default=1, help="newest versions of the current lineage kept whole (>= 1)")
    add_output_flags(p)
    args = p.parse_args(argv)
    configure_logging("INFO")

    def work():
        store = ModelStore(args.model)
        store.reconcile()
        report = {"store": store.root, "current": store.current(), "keep": args.keep, **store.purge(keep=args.keep)}
        report["seconds"] = {"end_to_end": round(time.perf_counter() - started, 3)}
        return report

    code, report = run_job(log, args.report, work)
    if report is not None:
        emit(report, purge_summary(report), args.json)
    return code


if __name__ == "__main__":
    sys.exit(main())

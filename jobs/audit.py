"""spark-submit entry point: audit a deletion request against a model store.

    spark-submit jobs/audit.py --model STORE_DIR --delete PATH [--batch-id ID] [--max-users N]
        [--no-verify] [--require-purged] [--report PATH] [--config conf/local.toml]

Shows whether the batch was applied and in which version, its certificate,
whether the current version still holds any of it, and for each affected
user the rank of the deleted items before and after, and which other
versions of the store still retain the batch's data (with the purge command
that removes it; see :mod:`spark_unlearn.audit`).  Prints a summary on
stderr and the report (JSON) on stdout.

Exit codes: 0 applied and proven (certificate holds, nothing left in the
current version); 3 not applied, rolled back, or something still present,
or, with ``--require-purged``, data of the batch retained in another version;
2 bad input or a damaged store.
"""

import argparse
import logging
import sys

import _bootstrap  # noqa: F401

from spark_unlearn.audit import audit_lines, run_audit
from spark_unlearn.config import load_config, override
from spark_unlearn.data.deletions import read_deletions
from spark_unlearn.cli import print_report, run_job
from spark_unlearn.logs import configure_logging
from spark_unlearn.session import get_session

log = logging.getLogger("spark_unlearn.jobs.audit")


EXAMPLES = """examples:
  # was the batch applied, is it proven, and does any older version still hold it?
  spark-submit jobs/audit.py --model out/model_store --delete deletions.csv --require-purged

exit codes: 0 applied and proven, 3 not (or retained elsewhere with --require-purged), 2 bad input
"""


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model store (default: [store] path)")
    p.add_argument("--delete", required=True, help="the deletion batch to audit (as given to jobs/unlearn.py)")
    p.add_argument("--batch-id", help="the id the batch was submitted with (default: hash of its content)")
    p.add_argument("--max-users", type=int, default=50, help="users shown with their ranks (default 50)")
    p.add_argument("--no-verify", action="store_true", help="skip recomputing the checksums of the versions involved")
    p.add_argument("--require-purged", action="store_true",
                   help="exit 3 as well when a version other than the current one still retains the batch's data")
    p.add_argument("--report", help="also write the report (JSON) to this path")
    p.add_argument("--config", help="TOML config (see conf/local.toml)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def work():
        cfg = override(load_config(args.config), "store", path=args.model)
        configure_logging(cfg["logging"]["level"])
        spark = get_session("spark_unlearn-audit", conf=cfg["spark"])
        batch = read_deletions(spark, args.delete)
        return run_audit(spark, cfg["store"]["path"], batch, batch_id=args.batch_id, max_users=args.max_users,
                         verify_files=not args.no_verify)

    code, report = run_job(log, args.report, work)
    if report is None:
        return code
    for line in audit_lines(report):
        print(line, file=sys.stderr)
    print_report(report)
    if args.require_purged and not report.get("purged"):
        return 3
    return 0 if report.get("proof_holds") else 3


if __name__ == "__main__":
    sys.exit(main())

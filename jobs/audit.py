"""spark-submit entry point: audit a deletion request against a model store.

    spark-submit jobs/audit.py --model STORE_DIR --delete PATH [--batch-id ID] [--max-users N]
        [--no-verify] [--require-purged] [--report PATH] [--json] [--config conf/local.toml]
    spark-submit jobs/audit.py --model STORE_DIR --verify-certificate [--version V] [--sample N]
    spark-submit jobs/audit.py --model IFRU_DIR --verify-certificate [--version V] [--ratings PATH]

Shows whether the batch was applied and in which version, its certificate,
whether the current version still holds any of it, and for each affected
user the rank of the deleted items before and after, and which other
versions of the store still retain the batch's data (with the purge command
that removes it; see :mod:`spark_unlearn.audit`).  Prints a summary of at
most 15 lines on stderr; the report (JSON) goes to ``--report PATH`` or, with
``--json``, to stdout.

``--verify-certificate`` recomputes a version's certificate from its files
alone, with code that shares nothing with the unlearning path
(:mod:`spark_unlearn.verify`): every row's (or, with ``--sample N``, N random
rows per side and every row the request touched) deviation from its target,
against the recorded maximum and tolerance, plus a check that the version's
data holds nothing its lineage erased.

Exit codes: 0 applied and proven (certificate holds, nothing left in the
current version), or verified; 3 not applied, rolled back, or something
still present, or, with ``--require-purged``, data of the batch retained in
another version, or a certificate that does not hold or disagrees with its
record (the rows are named); 2 bad input or a damaged store.
"""

import argparse
import logging
import sys
import time

import _bootstrap  # noqa: F401

from spark_unlearn.audit import run_audit
from spark_unlearn.config import load_config, override
from spark_unlearn.data.deletions import read_deletions
from spark_unlearn.cli import add_output_flags, emit, run_job
from spark_unlearn.logs import configure_logging
from spark_unlearn.reporting import audit_summary
from spark_unlearn.session import get_session
from spark_unlearn.verify import verify_version
from spark_unlearn.verify.ifru import is_ifru_model, verify_ifru_version

log = logging.getLogger("spark_unlearn.jobs.audit")


EXAMPLES = """examples:
  # was the batch applied, is it proven, and does any older version still hold it?
  spark-submit jobs/audit.py --model out/model_store --delete deletions.csv --require-purged

  # recompute the current version's certificate from its files (every row), or a sample of rows
  spark-submit jobs/audit.py --model out/model_store --verify-certificate
  spark-submit jobs/audit.py --model out/model_store --verify-certificate --version v000002 --sample 1000

  # an IFRU model directory: recompute the last request's retained-objective change and merit gradients
  spark-submit jobs/audit.py --model out/ifru_model --verify-certificate --ratings ratings.csv

  # the report (JSON) on stdout, for a pipe
  spark-submit jobs/audit.py --model out/model_store --delete deletions.csv --json | python -m json.tool

exit codes: 0 applied and proven / verified, 3 not (or retained elsewhere with --require-purged, or a
            certificate that fails its recomputation), 2 bad input
"""


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model store: a path or a Hadoop URI such as hdfs://nn:8020/store (default: [store] path)")
    p.add_argument("--delete", help="the deletion batch to audit (as given to jobs/unlearn.py)")
    p.add_argument("--batch-id", help="the id the batch was submitted with (default: hash of its content)")
    p.add_argument("--max-users", type=int, default=50, help="users shown with their ranks (default 50)")
    p.add_argument("--no-verify", action="store_true", help="skip recomputing the checksums of the versions involved")
    p.add_argument("--require-purged", action="store_true",
                   help="exit 3 as well when a version other than the current one still retains the batch's data")
    p.add_argument("--verify-certificate", action="store_true",
                   help="recompute the certificate of a version from its files (independent verifier)")
    p.add_argument("--version", help="with --verify-certificate: the version to verify (default: the current one)")
    p.add_argument("--sample", type=int, help="with --verify-certificate: N random rows per side plus the touched rows")
    p.add_argument("--ratings", help="with --verify-certificate on an IFRU model trained with BCE: the ratings it was "
                                     "trained on (the labels of its training pairs are not saved with it)")
    add_output_flags(p)
    p.add_argument("--config", help="TOML config (see conf/local.toml)")
    p.add_argument("--verbose", action="store_true", help="keep Spark's own INFO logs (default: warnings only, conf/log4j2.properties)")
    args = p.parse_args(argv)
    if not args.delete and not args.verify_certificate:
        p.error("give --delete PATH (audit a batch) and/or --verify-certificate (recompute a version's certificate)")
    if (args.version or args.sample is not None) and not args.verify_certificate:
        p.error("--version and --sample go with --verify-certificate")
    if args.sample is not None and args.sample < 1:
        p.error(f"--sample must be a positive number of rows, got {args.sample}")
    return args


def main(argv=None) -> int:
    started = time.perf_counter()
    args = parse_args(argv)

    def work():
        cfg = override(load_config(args.config), "store", path=args.model)
        configure_logging(cfg["logging"]["level"])
        spark = get_session("spark_unlearn-audit", conf=cfg["spark"], quiet=not args.verbose)
        report = {}
        if args.delete:
            batch = read_deletions(spark, args.delete)
            report = run_audit(spark, cfg["store"]["path"], batch, batch_id=args.batch_id, max_users=args.max_users,
                               verify_files=not args.no_verify)
        if args.verify_certificate and is_ifru_model(cfg["store"]["path"]):
            report["verification"] = verify_ifru_version(spark, cfg["store"]["path"], args.ratings, args.version)
        elif args.verify_certificate:
            report["verification"] = verify_version(spark, cfg["store"]["path"], args.version, sample=args.sample)
        report["seconds"] = {"end_to_end": round(time.perf_counter() - started, 3)}
        return report

    code, report = run_job(log, args.report, work)
    if report is None:
        return code
    failed = False
    if args.delete:
        failed = not report.get("proof_holds") or (args.require_purged and not report.get("purged"))
    if args.verify_certificate:
        failed = failed or report["verification"]["status"] != "verified"
    emit(report, audit_summary(report), args.json)
    return 3 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""spark-submit entry point: the resident unlearning service, applying the deletion requests dropped into a directory.

    spark-submit jobs/serve.py --model STORE_DIR --requests DIR [--config conf/local.toml]
        [--max-batch N] [--poll S] [--exit-when-idle S] [--report PATH] [--json] [--verbose]

A long-running driver.  Requests are files dropped into ``DIR``: ``<id>.csv``
(header ``user,item``, ``user`` or ``item``, as for jobs/unlearn.py) or
``<id>.parquet``; ``python jobs/submit.py`` drops one and can wait for its
receipt.  The service coalesces the queued requests (at most ``--max-batch``)
into one micro-batch, applies it with the same engine and certificate as
jobs/unlearn.py, publishes one version per micro-batch (compare-and-swap: a
one-off jobs/unlearn.py may publish to the same store meanwhile) and writes a
receipt per request to ``DIR/receipts/<id>.json``.  Each request is applied
exactly once across SIGKILL and restart: the version that applies it lists it
(``request.members``), and a restarted service settles those first.
``DIR/service.json`` is a heartbeat (pid, current version, counts, driver
memory).

Stop it gracefully with SIGTERM or SIGINT to the driver process (its pid is in
``DIR/service.json``) or ``python jobs/submit.py --requests DIR --stop``: the
micro-batch under way is finished and published first.  Exit codes: 0
stopped, 2 bad input / configuration / store.
"""

import argparse
import logging
import signal
import sys
import threading
import time

import _bootstrap  # noqa: F401

from spark_unlearn.cli import add_output_flags, emit, run_job
from spark_unlearn.config import load_config, override
from spark_unlearn.logs import configure_logging
from spark_unlearn.reporting import serve_summary
from spark_unlearn.service.inbox import Inbox
from spark_unlearn.service.serve import ServiceOptions, UnlearnService
from spark_unlearn.session import get_session

log = logging.getLogger("spark_unlearn.jobs.serve")

EXAMPLES = """examples:
  # serve the store jobs/train.py wrote; requests go to out/requests
  spark-submit jobs/serve.py --model out/model_store --requests out/requests

  # from another shell: erase user 42 and wait up to a minute for the receipt
  python jobs/submit.py --requests out/requests --user 42 --wait 60

  # stop the service after the micro-batch under way
  python jobs/submit.py --requests out/requests --stop

  # apply what is queued, then exit after 5 idle seconds (a batch run of the same loop)
  spark-submit jobs/serve.py --model out/model_store --requests out/requests --exit-when-idle 5

exit codes: 0 stopped, 2 bad input / configuration / store
"""


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model store: a path or a Hadoop URI such as hdfs://nn:8020/store (default [store] path)")
    p.add_argument("--requests", required=True, help="request directory (created if missing)")
    p.add_argument("--config", help="TOML config (see conf/local.toml, sections [serve] and [unlearn])")
    p.add_argument("--max-batch", type=int, help="at most this many queued requests per micro-batch")
    p.add_argument("--poll", type=float, help="seconds between looks at an idle request directory")
    p.add_argument("--exit-when-idle", type=float, metavar="S", help="exit after S seconds with nothing queued")
    add_output_flags(p)
    p.add_argument("--verbose", action="store_true", help="keep Spark's own INFO logs")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    stop = threading.Event()

    def on_signal(signum, _frame):
        log.warning("signal %d: finishing the micro-batch under way, then stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def work():
        cfg = load_config(args.config)
        cfg = override(cfg, "serve", max_batch=args.max_batch, poll_seconds=args.poll)
        cfg = override(cfg, "store", path=args.model)
        configure_logging(cfg["logging"]["level"])
        options = ServiceOptions.from_config(cfg)
        inbox = Inbox(args.requests)
        inbox.clear_stop()
        spark = get_session("spark_unlearn-serve", conf=cfg["spark"], quiet=not args.verbose)
        service = UnlearnService(spark, cfg["store"]["path"], inbox, options)
        log.info("serving %s: requests from %s (micro-batches of at most %d)", service.store.root, inbox.root,
                 options.max_batch)
        t0 = time.perf_counter()
        stats = service.run(stop.is_set, max_idle_s=args.exit_when_idle)
        return {"status": "stopped", "store": service.store.root, "requests": inbox.root,
                "current": service.store.current(), "seconds": round(time.perf_counter() - t0, 3), **stats}

    code, report = run_job(log, args.report, work)
    if report is not None:
        emit(report, serve_summary(report), args.json)
    return code


if __name__ == "__main__":
    sys.exit(main())

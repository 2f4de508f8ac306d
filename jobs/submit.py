"""Drop a deletion request for the resident service (jobs/serve.py) and optionally wait for its receipt.

    python jobs/submit.py --requests DIR (--user U ... [--item I ...] | --item I ... | --file PATH)
        [--request-id ID] [--wait SECONDS]
    python jobs/submit.py --requests DIR --stop

``--user`` alone erases those users; ``--item`` alone withdraws those items;
both, given the same number of times, forget those (user, item) interactions.
``--file`` drops a copy of a deletion file (.csv or .parquet).  The request is
written under a temporary name and renamed into place, so the service never
reads half of it.  Prints the request id; with ``--wait`` prints the receipt
(JSON) once the service wrote it.  No Spark needed.
Exit codes: 0 submitted (or, with --wait, applied / already applied / nothing
to delete), 2 bad arguments, 3 the receipt says rejected or failed, 5 no
receipt within --wait seconds.
"""

import argparse
import json
import sys

import _bootstrap  # noqa: F401

from spark_unlearn.errors import SparkUnlearnError
from spark_unlearn.service.inbox import Inbox

EXAMPLES = """examples:
  python jobs/submit.py --requests out/requests --user 42                  # erase user 42
  python jobs/submit.py --requests out/requests --user 42 --item 7 --wait 60   # forget one rating, wait for the receipt
  python jobs/submit.py --requests out/requests --item 7 --request-id GDPR-2026-0042
  python jobs/submit.py --requests out/requests --file deletions.csv
  python jobs/submit.py --requests out/requests --stop                     # stop the service gracefully

exit codes: 0 submitted / applied, 2 bad arguments, 3 rejected or failed, 5 no receipt within --wait
"""


def rows_of(users, items):
    users, items = users or [], items or []
    if users and items:
        if len(users) != len(items):
            raise SparkUnlearnError(f"{len(users)} --user and {len(items)} --item: give them in pairs to forget "
                                    "interactions, or only one kind to erase users / withdraw items")
        return [{"user": u, "item": i} for u, i in zip(users, items)]
    return [{"user": u} for u in users] + [{"item": i} for i in items]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", required=True, help="the service's request directory")
    p.add_argument("--user", type=int, action="append", help="a user id (repeatable)")
    p.add_argument("--item", type=int, action="append", help="an item id (repeatable)")
    p.add_argument("--file", help="a deletion file (.csv with header, or .parquet) to submit as it is")
    p.add_argument("--request-id", help="the request's id (default: req-<time>-<random>)")
    p.add_argument("--wait", type=float, metavar="SECONDS", help="wait this long for the receipt and print it")
    p.add_argument("--stop", action="store_true", help="ask the service to stop after its micro-batch")
    args = p.parse_args(argv)
    try:
        inbox = Inbox(args.requests)
        if args.stop:
            inbox.request_stop()
            print(f"stop requested in {inbox.root}", file=sys.stderr)
            return 0
        if args.file and (args.user or args.item):
            raise SparkUnlearnError("give --file or --user/--item, not both")
        rid = (inbox.submit_file(args.file, args.request_id) if args.file
               else inbox.submit_rows(rows_of(args.user, args.item), args.request_id))
    except SparkUnlearnError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(rid)
    sys.stdout.flush()
    if args.wait is None:
        return 0
    receipt = inbox.wait_receipt(rid, args.wait)
    if receipt is None:
        print(f"no receipt for {rid} within {args.wait:g} s (is jobs/serve.py running on {inbox.root}?)", file=sys.stderr)
        return 5
    print(json.dumps(receipt, indent=2, sort_keys=True))
    return 3 if receipt.get("status") in ("rejected", "failed") else 0


if __name__ == "__main__":
    sys.exit(main())

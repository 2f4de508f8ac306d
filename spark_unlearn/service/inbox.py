"""The request directory of the unlearning service: drop zone, receipts, archive, heartbeat.

Layout of ``DIR`` (no Spark here: plain files, usable by any submitter)::

    DIR/<id>.csv | <id>.parquet      a deletion request waiting (CSV with header, or Parquet file/directory)
    DIR/receipts/<id>.json           its receipt, written once it is settled (atomically)
    DIR/done/<id>.csv ...            the request file, moved here after its receipt
    DIR/service.json                 the running service's heartbeat (pid, versions, memory)
    DIR/STOP                         present: the service finishes its micro-batch and exits

A request's id is its file name without the extension, from the characters a
ledger batch id allows (``[A-Za-z0-9._:-]``).  Names starting with ``.`` or
``_`` are ignored (temporary files: a submitter writes ``.<id>.csv.tmp`` and
renames it into place, so the service never reads half a file).

A request is settled exactly once: its receipt is written after the version
that applied it is current (the version's manifest lists it among the
``request.members``), and a restarted service writes the receipts of requests
it finds applied but unreceipted before it applies anything.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Iterator

from spark_unlearn.errors import ConfigError
from spark_unlearn.store.fsutil import atomic_write_text, fsync_dir, is_uri

RECEIPTS_DIR = "receipts"
DONE_DIR = "done"
HEARTBEAT_FILE = "service.json"
STOP_FILE = "STOP"
STAGING_PREFIX = ".microbatch-"
FORMATS = {".csv": "csv", ".parquet": "parquet"}
ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")
SETTLED = ("applied", "already_applied", "nothing_to_delete", "rejected", "failed")
"""Receipt statuses: the first three mean the model no longer holds the request's data."""


@dataclass(frozen=True)
class QueuedRequest:
    """A request file waiting in the drop zone."""

    request_id: str
    path: str
    format: str
    submitted_at: float  # the file's mtime (when it was renamed into place)

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


def request_id_of(name: str) -> tuple[str, str | None]:
    """``(id, format)`` of a drop-zone entry name; format ``None`` if the extension is not one we read."""
    stem, ext = os.path.splitext(name)
    return stem, FORMATS.get(ext.lower())


class Inbox:
    """The request directory ``root`` (created with its subdirectories)."""

    def __init__(self, root: str) -> None:
        if not isinstance(root, str) or not root:
            raise ConfigError(f"the request directory must be a path, got {root!r}")
        if is_uri(root) and not root.startswith("file://"):
            raise ConfigError(f"{root!r}: the request directory must be a local or NFS path (or a file:// URI of one)")
        self.root = os.path.abspath(root[len("file://"):] if root.startswith("file://") else root)
        if os.path.exists(self.root) and not os.path.isdir(self.root):
            raise ConfigError(f"{self.root} exists and is not a directory; give a directory for the requests")
        for sub in (RECEIPTS_DIR, DONE_DIR):
            os.makedirs(os.path.join(self.root, sub), exist_ok=True)

    # -- the service's side ------------------------------------------------
    def queued(self) -> list[QueuedRequest]:
        """Every request entry waiting, oldest first (mtime, then name); unreadable names included with format None."""
        out = []
        for entry in os.scandir(self.root):
            if entry.name.startswith((".", "_")) or entry.name in (RECEIPTS_DIR, DONE_DIR, HEARTBEAT_FILE, STOP_FILE):
                continue
            rid, fmt = request_id_of(entry.name)
            try:
                mtime = entry.stat().st_mtime
            except FileNotFoundError:  # archived meanwhile
                continue
            out.append(QueuedRequest(rid, entry.path, fmt or "", mtime))
        return sorted(out, key=lambda r: (r.submitted_at, r.name))

    def problem(self, req: QueuedRequest) -> str | None:
        """Why ``req`` cannot be read at all (bad name or extension), else ``None``."""
        if not req.format:
            return (f"{req.name}: unsupported request file; name it <id>.csv (with a header: user,item | user | item) "
                    "or <id>.parquet")
        if not ID_PATTERN.match(req.request_id):
            return (f"{req.name}: request id {req.request_id!r} must be 1-200 characters from letters, digits and "
                    ". _ : - (rename the file)")
        return None

    def receipt_path(self, request_id: str) -> str:
        return os.path.join(self.root, RECEIPTS_DIR, f"{request_id}.json")

    def has_receipt(self, request_id: str) -> bool:
        return os.path.exists(self.receipt_path(request_id))

    def read_receipt(self, request_id: str) -> dict[str, Any] | None:
        try:
            with open(self.receipt_path(request_id), encoding="utf-8") as fh:
                return json.load(fh)
        except FileNotFoundError:
            return None

    def settle(self, req: QueuedRequest, receipt: dict[str, Any]) -> dict[str, Any]:
        """Write ``req``'s receipt (once; atomically) and move its file to ``done/``.  Returns the receipt."""
        if receipt.get("status") not in SETTLED:
            raise ValueError(f"receipt status {receipt.get('status')!r} is not one of {SETTLED}")
        settled_at = time.time()
        full = {
            "request_id": req.request_id,
            "file": req.name,
            **receipt,
            "submitted_at": _iso(req.submitted_at),
            "settled_at": _iso(settled_at),
            "latency_s": round(settled_at - req.submitted_at, 3),
        }
        if not self.has_receipt(req.request_id):
            atomic_write_text(self.receipt_path(req.request_id), json.dumps(full, indent=2, sort_keys=True) + "\n")
        self.archive(req)
        return full

    def archive(self, req: QueuedRequest) -> None:
        """Move the request file into ``done/`` (a same-named older one there is replaced)."""
        target = os.path.join(self.root, DONE_DIR, req.name)
        if os.path.isdir(target):
            shutil.rmtree(target)
        try:
            os.replace(req.path, target)
        except FileNotFoundError:
            return  # archived already (a restarted service settling it again)
        fsync_dir(self.root)

    @contextlib.contextmanager
    def staging(self) -> Iterator[str]:
        """A private directory for one micro-batch's links to its request files, removed afterwards."""
        path = os.path.join(self.root, f"{STAGING_PREFIX}{uuid.uuid4().hex}")
        os.makedirs(path)
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def remove_stale_staging(self) -> int:
        """Remove the staging directories a killed service left; returns how many."""
        stale = [e.path for e in os.scandir(self.root) if e.name.startswith(STAGING_PREFIX) and e.is_dir()]
        for path in stale:
            shutil.rmtree(path, ignore_errors=True)
        return len(stale)

    def stop_requested(self) -> bool:
        return os.path.exists(os.path.join(self.root, STOP_FILE))

    def clear_stop(self) -> None:
        try:
            os.remove(os.path.join(self.root, STOP_FILE))
        except FileNotFoundError:
            pass

    def heartbeat(self, state: dict[str, Any]) -> None:
        atomic_write_text(os.path.join(self.root, HEARTBEAT_FILE),
                          json.dumps({**state, "at": _iso(time.time())}, indent=2, sort_keys=True) + "\n")

    # -- the submitter's side ----------------------------------------------
    def submit_rows(self, rows: list[dict[str, Any]], request_id: str | None = None) -> str:
        """Drop a request made of ``rows`` (dicts with ``user`` and/or ``item``) as ``<id>.csv``; returns the id.

        Raises
        ------
        ConfigError
            No rows, a row with neither id, a non-integer id, or an id already used in this directory.
        """
        if not rows:
            raise ConfigError("a request needs at least one row: --user, --item, or both")
        lines = ["user,item"]
        for row in rows:
            user, item = row.get("user"), row.get("item")
            if user is None and item is None:
                raise ConfigError(f"request row {row!r} names neither a user nor an item")
            for name, value in (("user", user), ("item", item)):
                if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                    raise ConfigError(f"request row {row!r}: {name} must be a non-negative integer id, got {value!r}")
            lines.append(f"{'' if user is None else user},{'' if item is None else item}")
        return self._drop("\n".join(lines) + "\n", ".csv", request_id)

    def submit_file(self, path: str, request_id: str | None = None) -> str:
        """Drop a copy of a deletion file (``.csv`` or ``.parquet`` file/directory); returns the id."""
        _, ext = os.path.splitext(path.rstrip("/"))
        if ext.lower() not in FORMATS:
            raise ConfigError(f"{path}: a request file must end in .csv or .parquet")
        if not os.path.exists(path):
            raise ConfigError(f"{path} does not exist")
        rid = self._new_id(request_id)
        tmp = os.path.join(self.root, f".{rid}{ext.lower()}.tmp-{uuid.uuid4().hex}")
        if os.path.isdir(path):
            shutil.copytree(path, tmp)
        else:
            shutil.copyfile(path, tmp)
        os.replace(tmp, os.path.join(self.root, rid + ext.lower()))
        fsync_dir(self.root)
        return rid

    def wait_receipt(self, request_id: str, timeout_s: float, poll_s: float = 0.2) -> dict[str, Any] | None:
        """The receipt of ``request_id`` once written, or ``None`` after ``timeout_s`` seconds."""
        deadline = time.monotonic() + timeout_s
        while True:
            receipt = self.read_receipt(request_id)
            if receipt is not None or time.monotonic() >= deadline:
                return receipt
            time.sleep(poll_s)

    def request_stop(self) -> None:
        atomic_write_text(os.path.join(self.root, STOP_FILE), "stop requested\n")

    def _new_id(self, request_id: str | None) -> str:
        rid = request_id or f"req-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        if not ID_PATTERN.match(rid):
            raise ConfigError(f"request id {rid!r} must be 1-200 characters from letters, digits and . _ : -")
        taken = [n for n in os.listdir(self.root) + os.listdir(os.path.join(self.root, DONE_DIR))
                 if request_id_of(n)[0] == rid]
        if taken or self.has_receipt(rid):
            raise ConfigError(f"request id {rid!r} is already used in {self.root}; give another --request-id")
        return rid

    def _drop(self, text: str, ext: str, request_id: str | None) -> str:
        rid = self._new_id(request_id)
        tmp = os.path.join(self.root, f".{rid}{ext}.tmp-{uuid.uuid4().hex}")
        with open(tmp, "x", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, os.path.join(self.root, rid + ext))
        fsync_dir(self.root)
        return rid


def same_layout_groups(requests: list[QueuedRequest]) -> list[list[QueuedRequest]]:
    """``requests`` grouped so that each group can be read as one table: same format, and same CSV header line.

    Parquet requests are kept one per group (their schemas may differ).  Order is kept within a group.
    """
    groups: dict[tuple[str, str], list[QueuedRequest]] = {}
    singles: list[list[QueuedRequest]] = []
    for req in requests:
        if req.format != "csv" or os.path.isdir(req.path):
            singles.append([req])
            continue
        groups.setdefault(("csv", _header_line(req.path)), []).append(req)
    return list(groups.values()) + singles


def _header_line(path: str) -> str:
    try:
        with open(path, encoding="utf-8-sig", errors="replace") as fh:
            return fh.readline().strip().replace(" ", "")
    except OSError:
        return ""


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat()

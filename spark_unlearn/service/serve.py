"""The resident unlearning service: one long-lived driver applies the requests dropped into a directory.

Loop (:meth:`UnlearnService.step`, one micro-batch per call):

1. **Settle what is already applied.**  The store's lineage is the source of
   truth: each version a micro-batch published lists its request ids in
   ``manifest["request"]["members"]`` (written in the same atomic publish
   that moves ``CURRENT``).  A queued request found there, e.g. after a
   SIGKILL between publication and receipt, gets its receipt now and is not
   applied again.  A request that already has a receipt is archived.
2. **Coalesce.**  The oldest queued requests, up to ``max_batch``, are read
   and validated one by one (a malformed file gets a ``rejected`` receipt
   naming the problem and does not hold the others back), and their union is
   one deletion batch whose ledger id is derived from its member ids.
3. **Apply** it with :func:`~spark_unlearn.unlearn_model.run_unlearning`, the
   same path as ``jobs/unlearn.py`` (same engine, same certificate, same
   compare-and-swap publication, so one-off jobs may publish to the store at
   the same time: a moved store is rebased on).
4. **Receipts**: one per member, written after the version is current.

Exactly once: a request is applied by the micro-batch whose publication
records it, and by no other, since step 1 runs before any new micro-batch.
A kill anywhere leaves either no version (the requests stay queued and are
applied after the restart) or a current version that lists them (they are
settled in step 1).  A micro-batch that fails with a data or configuration
error is retried member by member, so the faulty request gets the error in
its receipt (``rejected``); one that fails otherwise is retried up to
``max_attempts`` times per request before a ``failed`` receipt.

What stays resident between micro-batches: the SparkSession and its JVM
(the cold start of a job is ~10 s of a one-user request), the lineage index
of applied request ids, and Spark's caches of nothing (each request releases
what it persisted: :mod:`spark_unlearn.request_caches`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from pyspark.sql import DataFrame, SparkSession

from spark_unlearn.als.options import UnlearnOptions
from spark_unlearn.errors import ConfigError, SparkUnlearnError, StoreMovedError
from spark_unlearn.service.inbox import Inbox, QueuedRequest, same_layout_groups
from spark_unlearn.store.fsutil import link_or_copy
from spark_unlearn.store.ledger import REQUEST_KEY
from spark_unlearn.store.block_reader import FILE_CACHE
from spark_unlearn.store.model_store import ModelStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceOptions:
    """How the service batches and applies requests.

    Attributes
    ----------
    max_batch
        At most this many queued requests are coalesced into one micro-batch
        (one published version).
    poll_seconds
        How often an idle service looks at the request directory.
    max_attempts
        A request whose micro-batch fails for a reason other than its data is
        retried this many times before its receipt says ``failed``.
    measure
        Measure before/after metrics for each micro-batch (costs Spark jobs; off by default).
    unlearn
        The solve and certificate options (:class:`~spark_unlearn.als.options.UnlearnOptions`).
    max_rebases
        How many times a micro-batch is re-applied on a store another publisher moved.
    cache_mb
        Bound of the driver's cache of block files (read and written), in MiB
        (:class:`~spark_unlearn.store.block_reader.FileCache`).
    """

    max_batch: int = 100
    poll_seconds: float = 1.0
    max_attempts: int = 3
    measure: bool = False
    unlearn: UnlearnOptions = field(default_factory=UnlearnOptions)
    max_rebases: int = 3
    cache_mb: int = 2048

    def __post_init__(self) -> None:
        for name in ("max_batch", "max_attempts", "cache_mb"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"[serve] {name} must be a positive integer, got {value!r}")
        if isinstance(self.poll_seconds, bool) or not isinstance(self.poll_seconds, (int, float)) or not (
                0 < self.poll_seconds <= 3600):
            raise ConfigError(f"[serve] poll_seconds must be in (0, 3600], got {self.poll_seconds!r}")
        if not isinstance(self.unlearn, UnlearnOptions):
            raise ConfigError(f"unlearn must be an UnlearnOptions, got {type(self.unlearn).__name__}")

    @classmethod
    def from_config(cls, cfg: dict[str, dict[str, Any]]) -> "ServiceOptions":
        s, u = cfg["serve"], cfg["unlearn"]
        return cls(max_batch=s["max_batch"], poll_seconds=s["poll_seconds"], max_attempts=s["max_attempts"],
                   measure=s["measure"], unlearn=UnlearnOptions.from_config(u), max_rebases=u["max_rebases"],
                   cache_mb=s["cache_mb"])


class AppliedIndex:
    """Request id -> the version that applied it, over the current lineage; reads each manifest once.

    Manifests never change once published (a purge keeps ``request``), so a
    version's members are cached by name; a refresh walks ``parent`` links from
    ``CURRENT`` only until it meets a version already read.
    """

    def __init__(self) -> None:
        self._members: dict[str, tuple[list[str], str | None]] = {}  # version -> (members, parent)

    def refresh(self, store: ModelStore) -> dict[str, str]:
        name = store.current()
        chain = []
        seen = set()
        while name is not None and name not in seen:
            seen.add(name)
            if name not in self._members:
                manifest = store.read_manifest(name)
                req = manifest.get(REQUEST_KEY) or {}
                self._members[name] = (list(req.get("members") or []), manifest.get("parent"))
            chain.append(name)
            name = self._members[name][1]
        return {rid: version for version in chain for rid in self._members[version][0]}


def micro_batch_id(members: list[str]) -> str:
    """The ledger batch id of a micro-batch: the member id alone, or ``serve:`` + a hash of the sorted ids."""
    if len(members) == 1:
        return members[0]
    return "serve:" + hashlib.sha256("\n".join(sorted(members)).encode()).hexdigest()[:16]


class UnlearnService:
    """Applies the requests of ``inbox`` to the store at ``store_path``, one micro-batch per :meth:`step`.

    ``apply`` is the unlearning call (``run_unlearning`` by default; a test may wrap it).
    """

    def __init__(self, spark: SparkSession, store_path: str, inbox: Inbox, options: ServiceOptions,
                 apply: Callable[..., dict[str, Any]] | None = None) -> None:
        from spark_unlearn.unlearn_model import run_unlearning

        self.spark, self.inbox, self.options = spark, inbox, options
        self.store = ModelStore(store_path)
        if self.store.current() is None:
            raise ConfigError(f"{self.store.root} holds no model version: train one first (jobs/train.py)")
        self._apply = apply or run_unlearning
        FILE_CACHE.max_bytes = options.cache_mb << 20  # hot blocks stay in memory between micro-batches
        if inbox.remove_stale_staging():
            log.warning("removed the micro-batch staging a killed service left in %s", inbox.root)
        self._index = AppliedIndex()
        self._attempts: dict[str, int] = {}
        self._solo: set[str] = set()  # requests to apply alone after their micro-batch failed
        self.stats = {"micro_batches": 0, "versions": 0, "settled": 0, "rejected": 0, "failed": 0, "started_at": time.time()}

    # -- one micro-batch -------------------------------------------------------
    def step(self) -> list[dict[str, Any]]:
        """Settle what is applied, then apply one micro-batch of queued requests; returns the receipts written."""
        receipts = self._settle_applied()
        batch = self._next_batch(receipts)
        if not batch:
            return receipts
        # Jobs are counted per micro-batch from here: a request file read by Spark counts too.
        job_group = f"spark_unlearn-microbatch-{self.stats['micro_batches'] + 1}"
        self.spark.sparkContext.setJobGroup(job_group, f"{len(batch)} deletion request(s)")
        try:
            return receipts + self._read_and_apply(batch, job_group)
        finally:
            self.spark.sparkContext.setLocalProperty("spark.jobGroup.id", None)

    def _read_and_apply(self, batch: list[QueuedRequest], job_group: str) -> list[dict[str, Any]]:
        receipts: list[dict[str, Any]] = []
        with self.inbox.staging() as staging:
            frames, members = [], []
            for group in same_layout_groups(batch):
                try:
                    # One read for the group: the common case, and a Spark read per request would cost seconds.
                    frames.append(self._read_together(group, staging))
                    members += group
                    continue
                except SparkUnlearnError as exc:
                    if len(group) == 1:
                        receipts.append(self._reject(group[0], exc))
                        continue
                    log.warning("%d requests read together failed validation (%s): reading them one by one",
                                len(group), exc)
                for req in group:
                    try:
                        frames.append(self._read(req.path, req.format))
                        members.append(req)
                    except SparkUnlearnError as exc:
                        receipts.append(self._reject(req, exc))
            if members:
                receipts += self._apply_members(members, frames, job_group)
        return receipts

    def _settle_applied(self) -> list[dict[str, Any]]:
        out = []
        queued = self.inbox.queued()
        if not queued:
            return out
        applied = self._index.refresh(self.store)
        for req in queued:
            if self.inbox.has_receipt(req.request_id):
                log.warning("request %s already has a receipt: archiving the file again dropped", req.request_id)
                self.inbox.archive(req)
            elif req.request_id in applied:
                version = applied[req.request_id]
                log.info("request %s was applied in %s before a restart: writing its receipt", req.request_id, version)
                out.append(self._receipt(req, {"status": "applied", "version": version, "recovered": True,
                                               **self._version_facts(version)}))
        return out

    def _next_batch(self, receipts: list[dict[str, Any]]) -> list[QueuedRequest]:
        """The oldest readable queued requests, at most ``max_batch``; unreadable names get their receipt here."""
        batch = []
        for req in self.inbox.queued():
            problem = self.inbox.problem(req)
            if problem:
                receipts.append(self._reject(req, ConfigError(problem)))
                continue
            if req.request_id in self._solo:
                return batch or [req]
            batch.append(req)
            if len(batch) >= self.options.max_batch:
                break
        return batch

    def _read(self, path: str, fmt: str) -> tuple[DataFrame, list | None]:
        """A request file as ``(batch, rows)``; a small plain file is read on the driver (``rows``), without Spark."""
        from spark_unlearn.data.plain_deletions import read_deletion_rows

        return read_deletion_rows(self.spark, path, format=fmt)

    def _read_together(self, group: list[QueuedRequest], staging: str) -> tuple[DataFrame, list | None]:
        """One validated read of requests sharing a format and CSV header: on the driver when every file is small
        and plain, else linked into one directory and read by Spark."""
        from spark_unlearn.data.deletions import DELETIONS_SCHEMA
        from spark_unlearn.data.plain_deletions import read_plain_deletions

        if len(group) == 1:
            return self._read(group[0].path, group[0].format)
        plain = [read_plain_deletions(req.path, req.format) for req in group]
        if all(rows is not None for rows in plain):
            rows = sorted({r for part in plain for r in part}, key=str)
            return self.spark.createDataFrame(rows, DELETIONS_SCHEMA), rows
        folder = os.path.join(staging, f"group-{uuid.uuid4().hex[:8]}")
        os.makedirs(folder)
        for req in group:
            link_or_copy(req.path, os.path.join(folder, req.name))
        return self._read(folder, group[0].format)[0], None

    def _apply_members(self, members: list[QueuedRequest], frames: list[tuple[DataFrame, list | None]],
                       job_group: str) -> list[dict[str, Any]]:
        from functools import reduce

        from spark_unlearn.unlearn_model import UnlearnRequest

        ids = [r.request_id for r in members]
        batch = reduce(DataFrame.unionByName, [df for df, _ in frames])
        rows = None if any(r is None for _, r in frames) else tuple(sorted({x for _, r in frames for x in r}, key=str))
        t0 = time.perf_counter()
        try:
            report = self._apply(self.spark, UnlearnRequest(
                model_path=self.store.root, batch=batch, batch_rows=rows, options=self.options.unlearn,
                measure=self.options.measure,
                batch_id=micro_batch_id(ids), members=tuple(ids), max_rebases=self.options.max_rebases))
        except StoreMovedError as exc:
            log.warning("micro-batch of %d request(s): %s; retrying on the next step", len(ids), exc)
            return []
        except SparkUnlearnError as exc:
            if len(members) > 1:
                log.warning("micro-batch of %d requests failed (%s: %s): applying them one by one to find the cause",
                            len(ids), type(exc).__name__, exc)
                self._solo.update(ids)
                return []
            return [self._reject(members[0], exc)]
        except Exception as exc:  # noqa: BLE001 - a Spark failure: retry, and give up on a request only after max_attempts
            if self.spark.sparkContext._jsc is None or self.spark.sparkContext._jsc.sc().isStopped():
                raise
            log.exception("micro-batch of %d request(s) failed", len(ids))
            out = []
            for req in members:
                self._attempts[req.request_id] = self._attempts.get(req.request_id, 0) + 1
                if self._attempts[req.request_id] >= self.options.max_attempts:
                    self.stats["failed"] += 1
                    out.append(self._receipt(req, {"status": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000],
                                                   "attempts": self._attempts.pop(req.request_id)}))
            if len(members) > 1:
                self._solo.update(ids)
            return out
        wall = time.perf_counter() - t0
        jobs = len(self.spark.sparkContext.statusTracker().getJobIdsForGroup(job_group))
        self.stats["micro_batches"] += 1
        if report.get("status") == "applied":
            self.stats["versions"] += 1
        facts = {
            "status": report.get("status"),
            "version": report.get("version"),
            "micro_batch": {"batch_id": micro_batch_id(ids), "requests": len(ids), "wall_s": round(wall, 3),
                            "spark_jobs": jobs},
            "deleted_ratings": (report.get("deletion") or {}).get("deleted_ratings"),
            "rows_solved": report.get("rows_solved"),
            "certificate": _certificate_facts(report.get("certificate")),
        }
        if report.get("rebased"):
            facts["rebased"] = report["rebased"]
        log.info("micro-batch %d: %d request(s) -> %s %s in %.2f s (%d Spark jobs)", self.stats["micro_batches"],
                 len(ids), facts["status"], facts["version"], wall, jobs)
        out = [self._receipt(req, facts) for req in members]
        self._solo.difference_update(ids)
        for rid in ids:
            self._attempts.pop(rid, None)
        return out

    def _version_facts(self, version: str) -> dict[str, Any]:
        manifest = self.store.read_manifest(version)
        unl = manifest.get("unlearning") or {}
        return {"micro_batch": {"batch_id": (manifest.get(REQUEST_KEY) or {}).get("batch_id")},
                "deleted_ratings": (unl.get("deletion") or {}).get("deleted_ratings"),
                "rows_solved": unl.get("rows_solved"), "certificate": _certificate_facts(manifest.get("certificate"))}

    def _reject(self, req: QueuedRequest, exc: Exception) -> dict[str, Any]:
        log.warning("request %s rejected: %s", req.request_id, exc)
        self.stats["rejected"] += 1
        self._solo.discard(req.request_id)
        return self._receipt(req, {"status": "rejected", "error": f"{type(exc).__name__}: {exc}"[:2000]})

    def _receipt(self, req: QueuedRequest, facts: dict[str, Any]) -> dict[str, Any]:
        self.stats["settled"] += 1
        return self.inbox.settle(req, {**facts, "store": self.store.root})

    # -- the loop ----------------------------------------------------------------
    def run(self, should_stop: Callable[[], bool], max_idle_s: float | None = None) -> dict[str, Any]:
        """Call :meth:`step` until ``should_stop()`` or the ``STOP`` file (checked between micro-batches).

        ``max_idle_s``: also return after that long with nothing queued (tests, benchmarks).  Returns the stats.
        """
        idle_since = time.monotonic()
        self._beat()
        while not (should_stop() or self.inbox.stop_requested()):
            receipts = self.step()
            self._beat()
            if receipts or self.inbox.queued():
                idle_since = time.monotonic()
                continue
            if max_idle_s is not None and time.monotonic() - idle_since >= max_idle_s:
                break
            _sleep_until(should_stop, self.inbox.stop_requested, self.options.poll_seconds)
        self._beat(stopping=True)
        return dict(self.stats)

    def _beat(self, stopping: bool = False) -> None:
        self.inbox.heartbeat({
            "pid": os.getpid(), "store": self.store.root, "current": self.store.current(),
            "queued": len(self.inbox.queued()), "stopping": stopping, **self.stats,
            "driver_rss_mb": _rss_mb(), "jvm_heap_used_mb": _jvm_heap_mb(self.spark),
        })


def _certificate_facts(cert: dict[str, Any] | None) -> dict[str, Any] | None:
    if not cert:
        return None
    return {k: cert.get(k) for k in ("holds", "max_relative_residual", "tolerance", "max_bound_ratio", "method")
            if k in cert}


def _sleep_until(*conditions: Callable[[], bool] | float) -> None:
    *checks, seconds = conditions
    deadline = time.monotonic() + float(seconds)
    while time.monotonic() < deadline and not any(c() for c in checks):
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def _jvm_heap_mb(spark: SparkSession) -> float | None:
    try:
        rt = spark.sparkContext._jvm.java.lang.Runtime.getRuntime()
        return round((rt.totalMemory() - rt.freeMemory()) / 2**20, 1)
    except Exception:  # noqa: BLE001 - a heartbeat must not fail the service
        return None

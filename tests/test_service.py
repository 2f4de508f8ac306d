"""The resident unlearning service: request directory, micro-batches, receipts, exactly once across SIGKILL.

Unit tests of the request directory need no Spark.  The service's steps run
in this process on a copy of the trained store, and each published version is
checked with the independent verifier and against the remaining ratings.  The
kill test runs jobs/serve.py as a real process that a fail point SIGKILLs
right after ``CURRENT`` moved, then restarts it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from job_helpers import subprocess_env
from spark_unlearn.errors import ConfigError
from spark_unlearn.faults import ENV
from spark_unlearn.service.inbox import Inbox, same_layout_groups
from spark_unlearn.service.serve import AppliedIndex, ServiceOptions, UnlearnService, micro_batch_id
from spark_unlearn.store.model_store import ModelStore
from verify_helpers import assert_verified

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------- the request directory (no Spark)


def test_submitted_requests_queue_oldest_first_and_temporary_names_are_ignored(tmp_path):
    inbox = Inbox(str(tmp_path / "req"))
    a = inbox.submit_rows([{"user": 3}], "a")
    time.sleep(0.01)
    b = inbox.submit_rows([{"user": 4, "item": 5}, {"item": 9}])
    (tmp_path / "req" / ".half-written.csv.tmp").write_text("user\n1\n")
    (tmp_path / "req" / "_SUCCESS").write_text("")
    queued = inbox.queued()
    assert [q.request_id for q in queued] == [a, b]
    assert (tmp_path / "req" / f"{b}.csv").read_text() == "user,item\n4,5\n,9\n"


def test_submission_refuses_bad_rows_reused_ids_and_other_files(tmp_path):
    inbox = Inbox(str(tmp_path / "req"))
    inbox.submit_rows([{"user": 1}], "GDPR-1")
    with pytest.raises(ConfigError, match="already used"):
        inbox.submit_rows([{"user": 2}], "GDPR-1")
    with pytest.raises(ConfigError, match="neither"):
        inbox.submit_rows([{"rating": 5}])
    with pytest.raises(ConfigError, match="non-negative integer"):
        inbox.submit_rows([{"user": "7"}])
    with pytest.raises(ConfigError, match="at least one row"):
        inbox.submit_rows([])
    with pytest.raises(ConfigError, match="letters, digits"):
        inbox.submit_rows([{"user": 1}], "has space")
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"\.csv or \.parquet"):
        inbox.submit_file(str(tmp_path / "x.json"))
    with pytest.raises(ConfigError, match="not a directory"):
        Inbox(str(tmp_path / "x.json"))


def test_a_receipt_is_written_once_and_the_file_archived(tmp_path):
    inbox = Inbox(str(tmp_path / "req"))
    rid = inbox.submit_rows([{"user": 1}], "r1")
    req = inbox.queued()[0]
    first = inbox.settle(req, {"status": "applied", "version": "v000002"})
    assert inbox.queued() == [] and os.path.exists(tmp_path / "req" / "done" / "r1.csv")
    assert inbox.read_receipt(rid)["version"] == "v000002" and first["latency_s"] >= 0
    inbox.settle(req, {"status": "applied", "version": "v000003"})  # a second settle never rewrites the receipt
    assert inbox.read_receipt(rid)["version"] == "v000002"
    with pytest.raises(ValueError, match="not one of"):
        inbox.settle(req, {"status": "done"})


def test_requests_with_the_same_header_are_read_together(tmp_path):
    inbox = Inbox(str(tmp_path / "req"))
    inbox.submit_rows([{"user": 1}], "u1")
    (tmp_path / "users.csv").write_text("user\n1\n")
    inbox.submit_file(str(tmp_path / "users.csv"), "only-users")
    inbox.submit_rows([{"user": 1, "item": 2}], "p1")
    (tmp_path / "req" / "q.parquet").mkdir()
    groups = same_layout_groups(inbox.queued())
    assert sorted(sorted(r.request_id for r in g) for g in groups) == [["only-users"], ["p1", "u1"], ["q"]]


def test_the_applied_index_reads_each_manifest_once():
    class Store:
        def __init__(self):
            self.manifests = {"v1": {}, "v2": {"parent": "v1", "request": {"members": ["a", "b"]}}}
            self.head, self.reads = "v2", []

        def current(self):
            return self.head

        def read_manifest(self, name):
            self.reads.append(name)
            return self.manifests[name]

    store, index = Store(), AppliedIndex()
    assert index.refresh(store) == {"a": "v2", "b": "v2"}
    store.manifests["v3"] = {"parent": "v2", "request": {"members": ["c"]}}
    store.head = "v3"
    assert index.refresh(store) == {"a": "v2", "b": "v2", "c": "v3"}
    assert store.reads == ["v2", "v1", "v3"]


def test_service_options_and_micro_batch_ids():
    assert micro_batch_id(["only"]) == "only"
    assert micro_batch_id(["b", "a"]) == micro_batch_id(["a", "b"]) != micro_batch_id(["a", "c"])
    for bad in ({"max_batch": 0}, {"poll_seconds": 0.0}, {"max_attempts": True}, {"cache_mb": 0}):
        with pytest.raises(ConfigError):
            ServiceOptions(**bad)


# --------------------------------------------------------------------------- the service, in this process


def _remaining(spark, store, version):
    ms = ModelStore(store)
    return {(r.user, r.item) for r in ms.load(spark, version).ratings.select("user", "item").collect()}


def test_a_micro_batch_applies_every_valid_request_once_and_rejects_the_bad_one(spark, store_copy, tmp_path):
    before = _remaining(spark, store_copy, None)
    inbox = Inbox(str(tmp_path / "req"))
    users = sorted({u for u, _ in before})
    pair = next(p for p in sorted(before) if p[0] not in users[:2])
    inbox.submit_rows([{"user": users[0]}], "erase-a")
    inbox.submit_rows([{"user": users[1]}], "erase-b")
    inbox.submit_rows([{"user": pair[0], "item": pair[1]}], "one-rating")
    (tmp_path / "bad.csv").write_text("user,item\nx,1\n")
    inbox.submit_file(str(tmp_path / "bad.csv"), "bad")
    (tmp_path / "req" / "notes.txt").write_text("hello")
    service = UnlearnService(spark, store_copy, inbox, ServiceOptions())
    parent = service.store.current()
    receipts = {r["request_id"]: r for r in service.step()}

    assert receipts["bad"]["status"] == "rejected" and "InvalidIdError" in receipts["bad"]["error"]
    assert receipts["notes"]["status"] == "rejected" and "unsupported request file" in receipts["notes"]["error"]
    good = ["erase-a", "erase-b", "one-rating"]
    versions = {receipts[r]["version"] for r in good}
    assert [receipts[r]["status"] for r in good] == ["applied"] * 3 and len(versions) == 1
    (version,) = versions
    manifest = service.store.read_manifest(version)
    assert manifest["parent"] == parent and sorted(manifest["request"]["members"]) == good
    assert sorted(service.store.ledger()[-1]["members"]) == good
    after = _remaining(spark, store_copy, version)
    assert after == {p for p in before if p[0] not in users[:2] and p != pair}
    assert_verified(spark, store_copy, version)
    assert inbox.queued() == [] and service.step() == []  # nothing left, nothing published
    assert service.store.current() == version

    # The same content again, under a new id: the lineage already reflects it.
    inbox.submit_rows([{"user": users[0]}], "erase-a-again")
    (again,) = service.step()
    assert again["status"] in ("already_applied", "nothing_to_delete") and service.store.current() == version
    # A request file dropped again under a settled id is archived, not applied again.
    inbox.submit_rows([{"user": users[2]}], "erase-c")
    (tmp_path / "req" / "done" / "erase-a.csv").rename(tmp_path / "req" / "erase-a.csv")
    out = {r["request_id"]: r for r in service.step()}
    assert list(out) == ["erase-c"] and inbox.queued() == []
    assert inbox.read_receipt("erase-a")["version"] == version


# --------------------------------------------------------------------------- real processes: SIGKILL, restart, SIGTERM


def _serve(store, requests, cfg, *extra, failpoint=None):
    env = subprocess_env()
    env.pop(ENV, None)
    if failpoint:
        env[ENV] = failpoint
    cmd = [sys.executable, os.path.join(REPO, "jobs", "serve.py"), "--model", store, "--requests", requests,
           "--config", cfg, "--poll", "0.2", *extra]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_a_service_killed_after_publishing_settles_its_requests_once_on_restart_and_stops_on_sigterm(
        spark, store_copy, tmp_path):
    cfg = tmp_path / "serve.toml"
    cfg.write_text('[unlearn]\ntol = 0.05\n[spark]\n"spark.sql.shuffle.partitions" = "4"\n'
                   '"spark.ui.showConsoleProgress" = "false"\n')
    req = str(tmp_path / "req")
    inbox = Inbox(req)
    ms = ModelStore(store_copy)
    parent = ms.current()
    for u in (3, 7):
        inbox.submit_rows([{"user": u}], f"user-{u}")
    inbox.submit_rows([{"user": 11, "item": ms.load(spark).ratings.where("user = 11").first().item}], "pair-11")

    killed = _serve(store_copy, req, str(cfg), failpoint="after_current_switched")
    out, err = killed.communicate(timeout=600)
    assert killed.returncode == -signal.SIGKILL, err[-3000:]
    published = ms.current()
    assert published != parent and sorted(ms.read_manifest(published)["request"]["members"]) == ["pair-11", "user-3", "user-7"]
    assert len(inbox.queued()) == 3 and not os.listdir(os.path.join(req, "receipts"))  # killed before any receipt

    inbox.submit_rows([{"user": 20}], "user-20")  # arrives while the service is down
    restarted = _serve(store_copy, req, str(cfg), "--json")
    names = ("user-3", "user-7", "pair-11", "user-20")
    deadline = time.time() + 300
    while not all(inbox.has_receipt(r) for r in names) and time.time() < deadline and restarted.poll() is None:
        time.sleep(0.1)
    receipts = {r: inbox.read_receipt(r) for r in names}
    for r in ("user-3", "user-7", "pair-11"):
        assert receipts[r]["status"] == "applied" and receipts[r]["version"] == published and receipts[r]["recovered"]
    assert receipts["user-20"]["status"] == "applied" and receipts["user-20"]["version"] == ms.current() != published

    # SIGTERM in the middle of a micro-batch: it is finished and published, then the service exits 0.
    inbox.submit_rows([{"user": 25}], "user-25")
    while not any(n.startswith(".microbatch-") for n in os.listdir(req)) and time.time() < deadline:
        time.sleep(0.01)
    restarted.send_signal(signal.SIGTERM)
    out, err = restarted.communicate(timeout=600)
    assert restarted.returncode == 0, err[-3000:]
    report = json.loads(out)
    receipt = inbox.read_receipt("user-25")
    assert receipt["status"] == "applied" and receipt["version"] == ms.current()
    assert report["versions"] == 2 and report["settled"] == 5 and _heartbeat(req)["stopping"] is True
    members = [m for e in ms.ledger() for m in e.get("members", [e["batch_id"]])]
    assert sorted(members) == ["pair-11", "user-20", "user-25", "user-3", "user-7"]  # each once; the ledger reconciled
    assert inbox.queued() == []
    assert_verified(spark, store_copy, published)
    assert_verified(spark, store_copy)


def _heartbeat(req):
    try:
        with open(os.path.join(req, "service.json")) as fh:
            return json.load(fh)
    except (FileNotFoundError, json.JSONDecodeError):
        return {}

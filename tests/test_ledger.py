"""The request ledger: batch identity, exactly-once application, already-forgotten requests, tamper evidence."""

from __future__ import annotations

import json

import pytest

from spark_unlearn.errors import ConfigError, StoreError
from spark_unlearn.store import ledger as L
from spark_unlearn.store.model_store import ModelStore
from spark_unlearn.als.options import UnlearnOptions
from spark_unlearn.unlearn_model import UnlearnRequest, run_unlearning
from verify_helpers import assert_verified



@pytest.fixture()
def store(store_copy):
    return store_copy


def batch(spark, rows):
    return spark.createDataFrame(rows, "user int, item int, kind string")


def test_content_hash_ignores_order_and_repeats_but_not_content(spark):
    a = L.batch_identity(batch(spark, [(1, 2, "interaction"), (3, None, "user"), (None, 7, "item")]))
    b = L.batch_identity(batch(spark, [(None, 7, "item"), (1, 2, "interaction"), (3, None, "user"), (1, 2, "interaction")]))
    c = L.batch_identity(batch(spark, [(1, 2, "interaction"), (3, None, "user"), (None, 8, "item")]))
    assert a.content_hash == b.content_hash and a.n_requests == 3
    assert c.content_hash != a.content_hash
    assert a.batch_id == "sha256:" + a.content_hash[:16]
    assert L.batch_identity(batch(spark, []), "GDPR-7").batch_id == "GDPR-7"
    with pytest.raises(ConfigError, match="batch id 'no spaces'"):
        L.batch_identity(batch(spark, []), "no spaces")
    # The driver's hash of rows it holds is Spark's, whatever the order: a batch keeps its id on either path.
    rows = [(12, 3, "interaction"), (None, 7, "item"), (3, None, "user"), (2, 30, "interaction"), (None, 10, "item"),
            (12, 3, "interaction"), (20, None, "user"), (2, 4, "interaction")]
    spark_side = L.batch_identity(batch(spark, rows))
    for order in (rows, rows[::-1], sorted(rows, key=str)):
        driver_side = L.batch_identity(batch(spark, []), rows=order)
        assert (driver_side.content_hash, driver_side.n_requests) == (spark_side.content_hash, spark_side.n_requests) == (
            spark_side.content_hash, 7)


@pytest.mark.parametrize("engine", ["auto", "layout"])  # the targeted engine's deletion plan, and plan_deletion's
def test_batch_is_applied_once_and_later_batches_see_what_is_forgotten(spark, store, engine):
    ms = ModelStore(store)
    pairs = [(r["user"], r["item"]) for r in ms.load(spark).ratings.filter("user = 2").orderBy("item").limit(2).collect()]
    first = [(u, i, "interaction") for u, i in pairs] + [(5, None, "user")]
    r1 = run_unlearning(spark, UnlearnRequest(model_path=store, batch=batch(spark, first), batch_id="REQ-1", measure=False, options=UnlearnOptions(tol=5e-2, engine=engine)))
    assert r1["status"] == "applied" and r1["batch"]["batch_id"] == "REQ-1"

    # Same content again (another order, another repeat): a no-op that names the version holding it.
    again = list(reversed(first)) + [first[0]]
    r2 = run_unlearning(spark, UnlearnRequest(model_path=store, batch=batch(spark, again), batch_id="REQ-1", measure=False))
    assert r2["status"] == "already_applied" and r2["version"] == r1["version"]
    assert ms.versions() == ["v000001", "v000002"]

    # The same id with other content is refused before any work.
    with pytest.raises(ConfigError, match="REQ-1.*different content"):
        run_unlearning(spark, UnlearnRequest(model_path=store, batch=batch(spark, first[:1]), batch_id="REQ-1", measure=False))

    # A new batch naming a forgotten pair, a pair of the erased user, the erased user, and an unknown pair:
    # it removes nothing, so it publishes nothing.
    later = [(pairs[0][0], pairs[0][1], "interaction"), (5, 1, "interaction"), (5, None, "user"), (1, 987654, "interaction")]
    r0 = run_unlearning(spark, UnlearnRequest(model_path=store, batch=batch(spark, later), measure=False, options=UnlearnOptions(tol=5e-2, engine=engine)))
    assert r0["status"] == "nothing_to_delete" and r0["deletion"]["deleted_ratings"] == 0
    assert ms.versions() == ["v000001", "v000002"] and [e["batch_id"] for e in ms.ledger()] == ["REQ-1"]
    # With one pair still in the data beside them, it is applied, and says what was already forgotten.
    fresh = ms.load(spark).ratings.filter("user = 1").orderBy("item").first()
    later.append((fresh["user"], fresh["item"], "interaction"))
    r3 = run_unlearning(spark, UnlearnRequest(model_path=store, batch=batch(spark, later), measure=False, options=UnlearnOptions(tol=5e-2, engine=engine)))
    d = r3["deletion"]
    assert r3["status"] == "applied" and d["deleted_ratings"] == 1
    assert r3["engine"] == ("layout" if engine == "layout" else "targeted")
    assert d["already_forgotten_interactions"] == 2 and d["already_forgotten_users"] == 1
    assert d["not_found_interactions"] == 1 and d["not_found_users"] == 0
    assert r3["not_found"]["interactions"] == [(1, 987654)]
    assert {"user": 5, "forgotten_in": r1["version"]} in r3["not_found"]["already_forgotten"]

    entries = ms.ledger()
    assert [e["batch_id"] for e in entries] == ["REQ-1", r3["batch"]["batch_id"]]
    assert entries[0]["version_before"] == "v000001" and entries[0]["version_after"] == r1["version"]
    assert entries[1]["version_before"] == r1["version"]
    assert entries[0]["deleted_ratings"] == r1["deletion"]["deleted_ratings"]
    assert entries[0]["certificate"] == r1["certificate"]["max_relative_residual"]
    assert ms.read_manifest(r1["version"])["request"]["content_hash"] == r1["batch"]["content_hash"]
    for version in (r1["version"], r3["version"]):
        assert_verified(spark, store, version)


def test_reconcile_recovers_a_missing_entry_and_a_tampered_ledger_is_refused(spark, store):
    ms = ModelStore(store)
    rep = run_unlearning(spark, UnlearnRequest(model_path=store, batch=batch(spark, [(7, None, "user")]), measure=False, options=UnlearnOptions(tol=5e-2)))
    path = L.ledger_path(store)
    (entry,) = ms.ledger()
    # As if the job died between moving CURRENT and appending the entry.
    open(path, "w").close()
    recovered = ms.reconcile()
    assert [e["version_after"] for e in recovered] == [rep["version"]] and recovered[0]["recovered"] is True
    assert {k: v for k, v in ms.ledger()[0].items() if k not in ("recovered", "applied_at")} == {
        k: v for k, v in entry.items() if k != "applied_at"
    }
    assert ms.reconcile() == []  # idempotent

    # An edited line breaks the hash chain; editing the only (last) line is caught against the manifest.
    lines = open(path).read().splitlines()
    edited = json.loads(lines[0])
    edited["deleted_ratings"] = 0
    with open(path, "w") as fh:
        fh.write(json.dumps(edited) + "\n")
    with pytest.raises(StoreError, match=r"disagrees with that version's manifest in \['deleted_ratings'\]"):
        ms.reconcile()
    with open(path, "a") as fh:
        fh.write(json.dumps({**edited, "prev": L._entry_hash(entry)}) + "\n")
    with pytest.raises(StoreError, match="line 2 does not chain"):
        ms.ledger()
    with pytest.raises(StoreError, match="ledger was edited"):
        run_unlearning(spark, UnlearnRequest(model_path=store, batch=batch(spark, [(8, None, "user")]), measure=False))


def test_abandoned_staging_is_removed_but_live_staging_is_kept(store):
    from spark_unlearn.store.fsutil import exclusive_lock

    import os

    ms = ModelStore(store)
    staging = os.path.join(ms.root, ".staging")

    os.makedirs(os.path.join(staging, "dead"), exist_ok=True)
    open(os.path.join(staging, "dead.lock"), "w").close()
    os.makedirs(os.path.join(staging, "live"), exist_ok=True)
    with exclusive_lock(os.path.join(staging, "live.lock")):
        ms.reconcile()
        assert sorted(os.listdir(staging)) == ["live", "live.lock"]


def test_purge_deletes_old_data_but_keeps_the_ledger_working(spark, store):
    import os

    from job_helpers import run_job

    ms = ModelStore(store)
    first = ms.current()
    r1 = run_unlearning(spark, UnlearnRequest(model_path=store, batch=batch(spark, [(9, None, "user")]), batch_id="P-1", measure=False, options=UnlearnOptions(tol=5e-2)))
    code, out, err = run_job(spark, "purge", ["--model", store, "--json"])
    assert code == 0 and json.loads(out)["purged"] == [first], err
    assert sorted(os.listdir(ms.version_path(first))) == ["manifest.json"]  # v1 forgot nothing: no forgotten/ either
    with pytest.raises(StoreError, match="was purged"):
        ms.load(spark, first)
    ms.verify(first)  # what is left is still checksummed
    # Exactly-once and already-forgotten still work across the purged history.
    again = run_unlearning(spark, UnlearnRequest(model_path=store, batch=batch(spark, [(9, None, "user")]), batch_id="P-1", measure=False))
    assert again["status"] == "already_applied" and again["version"] == r1["version"]
    assert ms.reconcile() == [] and [e["batch_id"] for e in ms.ledger()] == ["P-1"]
    code, _, err = run_job(spark, "purge", ["--model", store, "--keep", "0"])
    assert code == 2 and "keep >= 1" in err

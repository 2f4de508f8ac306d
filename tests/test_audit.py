"""jobs/audit.py: applied and proven, not applied, and after the history was purged."""

from __future__ import annotations

import json

from job_helpers import run_job
from spark_unlearn.store.model_store import ModelStore
from spark_unlearn.unlearn_model import run_unlearning


def test_audit_of_applied_missing_and_purged_requests(spark, store_copy, tmp_path):
    store = store_copy
    ms = ModelStore(store)
    data = ms.load(spark).ratings
    pairs = [(r[0], r[1]) for r in data.filter("user = 6").orderBy("item").limit(2).collect()]
    path = tmp_path / "d.csv"
    path.write_text("user,item\n" + "".join(f"{u},{i}\n" for u, i in pairs) + "12,\n")
    batch = spark.createDataFrame([(u, i, "interaction") for u, i in pairs] + [(12, None, "user")], "user int, item int, kind string")

    code, out, err = run_job(spark, "audit", ["--model", store, "--delete", str(path)])
    assert code == 3, err[-3000:]
    assert json.loads(out)["status"] == "not_applied" and json.loads(out)["still_present"]["pairs_in_data"] == 2

    rep = run_unlearning(spark, model_path=store, batch=batch, batch_id="AUD-1", tol=5e-2, measure=False)
    code, out, err = run_job(spark, "audit", ["--model", store, "--delete", str(path), "--batch-id", "AUD-1"])
    report = json.loads(out)
    assert code == 0, err
    assert report["status"] == "applied" and report["version"] == rep["version"] and report["proof_holds"]
    assert report["ledger_entry"]["batch_id"] == "AUD-1"
    assert not any(report["still_present"].values())
    users = {u["user"]: u for u in report["users"]}
    assert set(users) == {6, 12}
    assert users[12]["erased"] and users[12]["rank_percentile_after"] is None
    assert users[6]["deleted_items"] == 2 and 0 <= users[6]["rank_percentile_after"] <= 1
    assert f"applied in {rep['version']}" in err

    ms.purge(keep=1)
    code, out, err = run_job(spark, "audit", ["--model", store, "--delete", str(path)])
    assert code == 0, err[-3000:]
    report = json.loads(out)
    assert report["users"] == [] and "purged" in report["users_note"]

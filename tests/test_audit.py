"""jobs/audit.py: applied and proven, not applied, and after the history was purged."""

from __future__ import annotations

import json

import numpy as np
import pytest

from als_helpers import factors_dict
from job_helpers import run_job
from spark_unlearn.store.model_store import ModelStore
from spark_unlearn.als.options import UnlearnOptions
from spark_unlearn.unlearn_model import UnlearnRequest, run_unlearning


def test_audit_of_applied_missing_and_purged_requests(spark, store_copy, tmp_path):
    store = store_copy
    ms = ModelStore(store)
    data = ms.load(spark).ratings
    pairs = [(r[0], r[1]) for r in data.filter("user = 6").orderBy("item").limit(2).collect()]
    path = tmp_path / "d.csv"
    path.write_text("user,item\n" + "".join(f"{u},{i}\n" for u, i in pairs) + "12,\n")
    batch = spark.createDataFrame([(u, i, "interaction") for u, i in pairs] + [(12, None, "user")], "user int, item int, kind string")

    code, out, err = run_job(spark, "audit", ["--model", store, "--delete", str(path), "--json"])
    assert code == 3, err[-3000:]
    assert json.loads(out)["status"] == "not_applied" and json.loads(out)["still_present"]["pairs_in_data"] == 2

    rep = run_unlearning(spark, UnlearnRequest(model_path=store, batch=batch, batch_id="AUD-1", measure=False, options=UnlearnOptions(tol=5e-2)))
    code, out, err = run_job(spark, "audit", ["--model", store, "--delete", str(path), "--batch-id", "AUD-1", "--json"])
    report = json.loads(out)
    assert code == 0, err
    assert report["status"] == "applied" and report["version"] == rep["version"] and report["proof_holds"]
    assert report["ledger_entry"]["batch_id"] == "AUD-1"
    assert not any(report["still_present"].values())
    users = {u["user"]: u for u in report["users"]}
    assert set(users) == {6, 12}
    assert users[12]["erased"] and users[12]["rank_percentile_after"] is None
    assert users[6]["deleted_items"] == 2
    # Before and after, recomputed here from each version's factor files (numpy, the formula of rank_percentile).
    for version, key in (("v000001", "rank_percentile_before"), (rep["version"], "rank_percentile_after")):
        assert users[6][key] == pytest.approx(_mean_percentile(spark, ms, version, 6, [i for _, i in pairs]), abs=1e-4)
    assert users[6]["rank_percentile_after"] != users[6]["rank_percentile_before"]
    assert f"applied in {rep['version']}" in err
    # v000001 still holds the erased data: the audit says where and how to purge it; --require-purged fails on it.
    retained = {r["version"]: r for r in report["retained_in_other_versions"]}
    assert set(retained) == {"v000001"} and retained["v000001"]["pairs_in_data"] == 2
    assert retained["v000001"]["erased_user_factor_rows"] == 1 and not report["purged"]
    assert "jobs/purge.py" in report["purge_command"] and "retained in 1 other version(s): v000001" in err
    code, out, err = run_job(spark, "audit", ["--model", store, "--delete", str(path), "--require-purged", "--json"])
    assert code == 3 and json.loads(out)["proof_holds"], err[-3000:]

    ms.purge(keep=1)
    code, out, err = run_job(spark, "audit", ["--model", store, "--delete", str(path), "--require-purged", "--json"])
    assert code == 0, err[-3000:]
    report = json.loads(out)
    assert report["users"] == [] and "purged" in report["users_note"]
    assert report["retained_in_other_versions"] == [] and report["purged"]


def _mean_percentile(spark, ms, version, user, items):
    """Mean over ``items`` of (#items scored higher + half the ties) / (#items - 1) in ``user``'s list."""
    loaded = ms.load(spark, version)
    x = factors_dict(loaded.model.user_factors)[user]
    Y = factors_dict(loaded.model.item_factors)
    scores = {j: float(np.dot(x.astype(np.float32), y.astype(np.float32))) for j, y in Y.items()}
    out = []
    for i in items:
        higher = sum(s > scores[i] for j, s in scores.items() if j != i)
        ties = sum(s == scores[i] for j, s in scores.items() if j != i)
        out.append((higher + 0.5 * ties) / (len(scores) - 1))
    return float(np.mean(out))

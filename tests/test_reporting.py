"""The jobs' human summaries (spark_unlearn.reporting), on hand-written reports: at most 15 lines, the key facts.

No Spark: each builder is a pure function of a report dict.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from spark_unlearn.errors import OutputPathError
from spark_unlearn.reporting import (
    MAX_SUMMARY_LINES,
    audit_summary,
    demo_summary,
    ifru_summary,
    purge_summary,
    report_json,
    train_summary,
    unlearn_summary,
    write_report,
)

TRAIN = {
    "version": "v000001", "path": "/s/versions/v000001", "n_train": 1201, "n_test": 300,
    "trained_on": "1201 of 1501 ratings (300 held out for test; test_fraction 0 trains on all)",
    "params": {"rank": 10, "reg": 0.1, "alpha": 1.0, "implicit": False, "iterations": 10},
    "seconds_total": 57.12, "seconds_training": 12.09, "seconds_per_iteration": 0.442,
    "training_residual": {"p50": 0.008, "p90": 0.0119, "p99": 0.014, "max": 0.016},
    "test_rmse": 0.9687, "test_recall@20": 0.305, "test_ndcg@20": 0.224,
}

DELETION = {
    "requested_users": 1, "requested_items": 2, "requested_interactions": 5, "deleted_ratings": 73,
    "not_found_users": 0, "not_found_items": 1, "not_found_interactions": 2,
    "already_forgotten_users": 0, "already_forgotten_items": 0, "already_forgotten_interactions": 1,
    "removed_users": 1, "removed_items": 1,
}


def _unlearned(**over):
    report = {
        "status": "applied", "batch": {"batch_id": "REQ-7", "n_requests": 8, "content_hash": "ab" * 32},
        "version": "v000003", "parent": "v000002", "path": "/s/versions/v000003", "mode": "frontier",
        "requested_mode": "frontier", "engine": "targeted", "rounds": 3, "rows_solved": 52, "rows_total": 129,
        "remaining_ratings": 1128, "deletion": dict(DELETION), "withdrawn_items": [7],
        "certificate": {"max_relative_residual": 0.0105, "tolerance": 0.0119, "holds": True},
        "seconds": {"solve": 1.95, "certificate": 0.58, "measure": 31.3, "publish": 12.6, "end_to_end": 20.0},
        "training_seconds": {"solve": 12.1, "end_to_end": 40.0}, "speedup_solve_only": 4.78,
        "speedup_end_to_end": 2.0,
        "forgetting": {"defined": True, "pairs": 5, "rank_percentile_before": 0.547, "rank_percentile_after": 0.497},
        "metrics_before": {"test_rmse": 0.9687}, "metrics_after": {"test_rmse": 0.9707},
    }
    report.update(over)
    return report


def _short(lines):
    assert 0 < len(lines) <= MAX_SUMMARY_LINES, lines
    assert all(isinstance(line, str) and "\n" not in line for line in lines)
    return "\n".join(lines)


def test_unlearn_summary_says_what_was_deleted_changed_certified_and_how_fast():
    text = _short(unlearn_summary(_unlearned()))
    # requested / applied / unknown: 8 requested (1 user, 2 items, 5 interactions), 3 not in the data, 1 forgotten
    assert "4 of 8 requests applied" in text and "1 user, 2 items, 5 interactions requested" in text
    assert "73 ratings removed" in text
    assert "3 request(s) not in the data, 1 already forgotten" in text
    assert "52 of 129 rows re-solved" in text and "published v000003 (from v000002)" in text
    assert "1 user and 1 item rows left the model" in text
    assert "= 0.0105 vs tolerance 0.0119 (strict policy): holds" in text
    assert "20.0 s end to end" in text
    # the speed-up is end to end against the recorded training, and the solve ratio is labelled as such
    assert "speed-up end to end: 2.00x against the training's 40.0 s" in text and "solve only: 4.78x" in text
    assert "0.547 -> 0.497" in text and "rmse 0.9687 -> 0.9707" in text


def test_sweeps_say_how_far_the_deleted_pairs_moved_and_whether_the_forgetting_stop_was_met():
    sweeps = {"strategy": "sweeps", "sweeps": 3, "rows_total": 129, "rows_solved": 400, "presolved_rows": 12}
    met = {"pairs": 8, "scores": [0.6, 0.31, 0.305, 0.304], "share": 0.97, "target_share": 0.95, "holds": True}
    text = _short(unlearn_summary(_unlearned(**sweeps, forgetting_stop=met)))
    assert "all 129 rows re-solved in 3 warm sweep(s), 12 changed rows solved first" in text
    assert "the 8 deleted pairs' mean score 0.6 -> 0.304, an estimated 0.97 of its move made (target 0.95: met)" in text
    short = {**met, "share": 0.6, "holds": False}
    assert "(target 0.95: NOT met within the sweeps allowed)" in _short(unlearn_summary(_unlearned(**sweeps,
                                                                                                   forgetting_stop=short)))
    assert "deleted pairs" not in _short(unlearn_summary(_unlearned(**sweeps, forgetting_stop={**met, "pairs": 0})))


def test_a_retrain_on_the_driver_says_so_with_the_planners_reason():
    text = _short(unlearn_summary(_unlearned(strategy="retrain", mode="retrain", rows_total=129, iterations=10,
                                             planner={"choice": "retrain", "why": "the batch deletes 25.0% of the "
                                                      "ratings"})))
    assert ("changed: all 129 rows retrained from scratch on the driver (10 iterations; planner: the batch deletes 25.0% "
            "of the ratings)") in text


def test_a_failed_certificate_an_item_deletion_and_no_recorded_training_time_are_said_plainly():
    deletion = {"requested_items": 1, "deleted_ratings": 12, "removed_items": 1}
    report = _unlearned(
        deletion=deletion, certificate={"max_relative_residual": 0.2, "tolerance": 0.0119, "holds": False},
        forgetting={"defined": False, "note": "undefined: no deleted pair is left to rank"},
        training_seconds={"solve": 12.1, "end_to_end": None}, speedup_end_to_end=None, metrics_before=None,
        metrics_after=None, mode="full", converged=False,
        rebased=[{"based_on": "v000002", "current_was": "v000004"}],
    )
    text = _short(unlearn_summary(report))
    assert "1 of 1 requests applied (0 users, 1 item, 0 interactions requested); 12 ratings removed" in text
    assert "0 user and 1 item rows left the model" in text
    assert "= 0.2 vs tolerance 0.0119 (strict policy): DOES NOT HOLD" in text
    assert "speed-up end to end: unavailable" in text and "solve only: 4.78x" in text
    assert "full mode, fell back from frontier" in text
    assert "undefined: no deleted pair" in text
    assert "did not settle" in text and "moved from v000002 to v000004" in text


def test_unlearn_summaries_of_requests_that_change_nothing():
    done = {"status": "already_applied", "batch": {"batch_id": "REQ-1", "n_requests": 2}, "version": "v000002",
            "applied_at": "2026-01-01T00:00:00+00:00"}
    text = _short(unlearn_summary(done))
    assert "already applied in v000002" in text and "nothing recomputed" in text
    empty = {"status": "nothing_to_delete", "batch": {"batch_id": "REQ-2", "n_requests": 1}, "version": "v000001",
             "note": "no request of the batch matches a rating", "seconds": {"end_to_end": 3.2},
             "deletion": {"requested_users": 1, "not_found_users": 1, "deleted_ratings": 0}}
    text = _short(unlearn_summary(empty))
    assert "nothing to delete, nothing published" in text and "0 of 1 requests applied" in text
    assert "1 request(s) not in the data" in text and "3.2 s end to end" in text


def test_train_summary_says_what_trained_the_model_and_what_was_held_out():
    text = _short(train_summary(TRAIN))
    assert "1201 of 1501 ratings trained the model; 300 held out" in text
    assert "trained v000001" in text and "rank 10" in text and "rmse 0.9687" in text
    assert "57.1 s end to end (ALS solve 12.1 s" in text
    production = dict(TRAIN, n_train=1501, n_test=0, test_rmse=None)
    del production["test_recall@20"], production["test_ndcg@20"], production["test_rmse"]
    text = _short(train_summary(production))
    assert "all 1501 ratings trained the model (none held out" in text and "test:" not in text


def test_demo_summary_holds_training_and_unlearning_in_at_most_15_lines():
    text = _short(demo_summary({"training": TRAIN, "unlearning": _unlearned()}))
    assert "1201 of 1501 ratings trained the model" in text and "52 of 129 rows re-solved" in text
    assert "speed-up end to end" in text and "--json" in text


def _audit(n_users=40, **over):
    report = {
        "batch": {"batch_id": "AUD-1", "n_requests": 3, "content_hash": "cd" * 32}, "current_version": "v000002",
        "status": "applied", "applied": True, "version": "v000002", "version_before": "v000001",
        "applied_at": "2026-01-01", "method": "unlearn-als/frontier",
        "certificate": {"max_relative_residual": 0.01, "tolerance": 0.02, "holds": True},
        "still_present": {"pairs_in_data": 0, "erased_user_factor_rows": 0},
        "retained_in_other_versions": [{"version": "v000001", "pairs_in_data": 2}],
        "purge_command": "spark-submit jobs/purge.py --model /s --keep 1",
        "users": [{"user": u, "deleted_items": 2, "erased": u == 0, "rank_percentile_before": 0.3,
                   "rank_percentile_after": None if u == 0 else 0.6} for u in range(n_users)],
        "seconds": {"end_to_end": 9.5},
    }
    report.update(over)
    return report


def test_audit_summary_fits_many_users_into_15_lines():
    lines = audit_summary(_audit())
    text = _short(lines)
    assert "applied in v000002 (from v000001)" in text and "holds" in text
    assert "retained in 1 other version(s): v000001" in text and "jobs/purge.py" in text
    assert "user 0: 2 deleted items, rank percentile 0.3 -> erased" in text
    assert "more user(s) in the report" in lines[-2] and lines[-1] == "time: 9.5 s end to end"
    assert len(lines) == MAX_SUMMARY_LINES


def test_audit_summary_of_a_failed_verification():
    verification = {"version": "v000002", "status": "failed", "scope": "every row",
                    "recomputed": {"max": 0.5, "rows": 129}, "recorded": {"max": 0.01, "tolerance": 0.02},
                    "targets": {"source": "lineage", "why": "rows changed"},
                    "reasons": ["the recomputed maximum 0.5 exceeds the tolerance 0.02"] * 5}
    text = _short(audit_summary({"verification": verification, "seconds": {"end_to_end": 4.0}}))
    assert "certificate of v000002: failed" in text and "recomputed max 0.5, recorded 0.01, tolerance 0.02" in text
    assert "exceeds the tolerance" in text and "2 more reason(s)" in text
    both = _short(audit_summary(_audit(n_users=3, verification=verification)))
    assert "user 2" in both and "certificate of v000002: failed" in both


def test_purge_summary():
    text = _short(purge_summary({"store": "/s", "current": "v000004", "keep": 1, "purged": ["v000001", "v000002"],
                                 "removed": ["v000003"], "seconds": {"end_to_end": 0.12}}))
    assert "data of 2 older version(s) (v000001, v000002)" in text and "1 version(s) outside the lineage (v000003)" in text
    assert "current version v000004" in text and "0.12 s end to end" in text


def _ifru(**cert):
    certificate = {"status": "newton", "scale": 1.0, "merit_gradient_before": 1e-2, "merit_gradient_after": 1e-5,
                   "merit_gradient_ratio": 1e-3, "retained_objective_change": -2e-4, "validation_auc_before": 0.8,
                   "validation_auc_after": 0.81, "validation_auc_tolerance": 0.01, **cert}
    return {
        "job": "ifru", "model": "/m", "trained": True, "model_type": "lightgcn", "n_users": 30, "n_items": 90,
        "training": {"epochs": 40, "objective": 0.31, "grad_norm": 1e-3, "wall_s": 6.0},
        "deletions": {"requested": 4, "in_training": 3, "in_val_or_test": 1, "unknown": 0},
        "unlearning": {"removed_terms": 3, "parameters_updated": 240, "kept_nodes": 40, "certificate": certificate,
                       "timings_s": {"assemble_s": 0.2, "update_s": 0.3, "spark_subgraph_s": 1.0}},
        "test_auc": 0.75, "test_auc_after": 0.751, "saved_version": "/m/v-1", "wall_s": 30.0,
    }


def test_ifru_summary_with_a_certificate_that_holds_and_one_that_does_not():
    text = _short(ifru_summary(_ifru()))
    assert "3 of 4 requested pairs applied" in text and "1 only in validation/test; unknown 0" in text
    assert "240 parameters of 40 nodes updated" in text and "saved /m/v-1" in text
    assert "retained objective change -0.0002 vs tolerance 0: holds" in text
    assert "validation AUC 0.8000 -> 0.8100 (may fall by at most 0.01): holds" in text
    assert "30.0 s end to end" in text and "speed-up end to end: unavailable" in text
    assert "solve only: 12.0x" in text
    text = _short(ifru_summary(_ifru(retained_objective_change=1e-3, validation_auc_after=0.7)))
    assert text.count("DOES NOT HOLD") == 2
    trained_only = {k: v for k, v in _ifru().items() if k not in ("deletions", "unlearning", "test_auc_after")}
    text = _short(ifru_summary(trained_only))
    assert "trained a new lightgcn model" in text and "speed-up" not in text and "test AUC 0.7500" in text


def test_long_summaries_are_capped_with_a_pointer_to_the_report():
    many = _audit(n_users=3, verification={
        "version": "v2", "status": "failed", "scope": "every row", "recomputed": {"max": 1.0, "rows": 3},
        "recorded": {"max": 0.1, "tolerance": 0.2}, "targets": {"source": "s", "why": "w"}, "reasons": ["r"] * 3})
    many["rebased"] = []
    assert len(audit_summary(many)) <= MAX_SUMMARY_LINES


def test_report_json_and_atomic_write(tmp_path):
    report = {"n": np.int64(3), "x": np.float32(0.5), "path": tmp_path}
    assert json.loads(report_json(report)) == {"n": 3, "x": 0.5, "path": str(tmp_path)}
    target = tmp_path / "out" / "report.json"
    write_report(report, str(target))
    assert json.loads(target.read_text())["n"] == 3
    assert os.listdir(target.parent) == ["report.json"]  # no temp file left beside it
    with pytest.raises(OutputPathError, match="is a directory"):
        write_report(report, str(tmp_path))

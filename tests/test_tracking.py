"""MLflow tracking (spark_unlearn.tracking): what a run records, found again through MLflow's own client.

The store is MLflow's local file store (``file://`` URI), as the issue asks; the jobs run in this process on
the test session (tests/job_helpers.run_job).
"""

from __future__ import annotations

import json
import sys

import pytest

from job_helpers import run_job
from spark_unlearn.errors import ConfigError
from spark_unlearn.tracking import MlflowTracker, run_record

mlflow = pytest.importorskip("mlflow", reason="MLflow is the optional extra [mlflow] (installed with [test])")


def _runs(uri: str, experiment: str = "spark_unlearn"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    assert found is not None, f"no experiment {experiment!r} at {uri}"
    return {r.data.tags["spark_unlearn.kind"]: r for r in client.search_runs([found.experiment_id])}


def test_run_record_takes_the_metrics_params_and_tags_a_reader_compares_runs_by():
    report = {
        "status": "applied", "version": "v000002", "parent": "v000001", "path": "/s/versions/v000002",
        "mode": "frontier", "engine": "targeted", "certificate_policy": "training-precision",
        "batch": {"batch_id": "sha256:ab", "n_requests": 1, "content_hash": "ab" * 32},
        "certificate": {"max_relative_residual": 0.0123, "tolerance": 0.0125, "holds": True, "method": "incremental",
                        "per_side": {"user": 0.0123, "item": 0.01}},
        "rows_solved": 40, "spark_jobs": 0, "seconds": {"end_to_end": 2.5, "solve": 0.3},
        "metrics_before": {"test_ndcg@20": 0.22}, "metrics_after": {"test_ndcg@20": float("nan")},
        "deletion": {"deleted_ratings": 38, "removed_users": 1},
        "copy_on_write": {"ratings": {"linked": 0}},  # not a metric anyone compares: left out
    }
    params, metrics, tags = run_record("unlearn", report)
    assert metrics == {"certificate.max_relative_residual": 0.0123, "certificate.tolerance": 0.0125,
                       "certificate.holds": 1.0, "rows_solved": 40.0, "spark_jobs": 0.0,
                       "seconds.end_to_end": 2.5, "seconds.solve": 0.3, "metrics_before.test_ndcg_at_20": 0.22,
                       "deletion.deleted_ratings": 38.0, "deletion.removed_users": 1.0}
    assert params == {"mode": "frontier", "engine": "targeted", "certificate_policy": "training-precision",
                      "batch.batch_id": "sha256:ab", "batch.n_requests": "1"}
    assert tags == {"spark_unlearn.kind": "unlearn", "spark_unlearn.status": "applied",
                    "spark_unlearn.version": "v000002", "spark_unlearn.parent": "v000001",
                    "spark_unlearn.path": "/s/versions/v000002"}
    with pytest.raises(ValueError, match="kind"):
        run_record("retrain", report)


def test_train_and_unlearn_jobs_log_runs_found_with_their_metrics(spark, store_copy, tmp_path, sample_ratings_path):
    uri = (tmp_path / "mlruns").as_uri()
    code, out, err = run_job(spark, "train", ["--ratings", sample_ratings_path, "--model", str(tmp_path / "fresh"),
                                              "--maxIter", "2", "--rank", "4", "--test-fraction", "0", "--json",
                                              "--mlflow-tracking-uri", uri, "--mlflow-experiment", "e2e"])
    assert code == 0, err[-3000:]
    trained = json.loads(out)
    deletions = tmp_path / "user3.csv"
    deletions.write_text("user\n3\n")
    code, out, err = run_job(spark, "unlearn", ["--model", store_copy, "--delete", str(deletions), "--json",
                                                "--mlflow-tracking-uri", uri, "--mlflow-experiment", "e2e"])
    assert code == 0, err[-3000:]
    unlearned = json.loads(out)
    assert unlearned["status"] == "applied"
    assert f"mlflow: run {unlearned['mlflow']['run_id']}" in err  # the summary says where the run went

    runs = _runs(uri, "e2e")
    assert set(runs) == {"train", "unlearn"}
    t, u = runs["train"].data, runs["unlearn"].data
    assert runs["train"].info.status == runs["unlearn"].info.status == "FINISHED"
    assert t.params["params.rank"] == "4" and t.params["params.iterations"] == "2"
    assert t.metrics["n_train"] == 1501 and t.tags["spark_unlearn.path"] == trained["path"]
    cert = unlearned["certificate"]
    assert u.metrics["certificate.max_relative_residual"] == pytest.approx(cert["max_relative_residual"], rel=1e-12)
    assert u.metrics["certificate.tolerance"] == pytest.approx(cert["tolerance"], rel=1e-12)
    assert u.metrics["certificate.holds"] == 1.0
    assert u.metrics["rows_solved"] == unlearned["rows_solved"] > 0
    assert u.metrics["deletion.removed_users"] == 1
    assert u.metrics["seconds.end_to_end"] == pytest.approx(unlearned["seconds"]["end_to_end"])
    assert u.tags["spark_unlearn.version"] == unlearned["version"] != "v000001"
    assert u.tags["spark_unlearn.path"] == unlearned["path"]
    assert u.params["mode"] == unlearned["mode"] in ("frontier", "full")  # the strategy the planner ran


def test_a_tracking_uri_that_cannot_be_used_stops_the_job_before_any_work(spark, store_copy, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    deletions = tmp_path / "user3.csv"
    deletions.write_text("user\n3\n")
    versions = sorted(p.name for p in (tmp_path / "store" / "versions").iterdir())
    code, out, err = run_job(spark, "unlearn", ["--model", store_copy, "--delete", str(deletions),
                                                "--mlflow-tracking-uri", (blocker / "mlruns").as_uri()])
    assert code == 2 and out == ""
    assert "ConfigError" in err and "a_file" in err
    assert sorted(p.name for p in (tmp_path / "store" / "versions").iterdir()) == versions  # nothing published


def test_without_mlflow_installed_a_tracking_uri_is_a_configuration_error_naming_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)  # import mlflow.tracking now raises ImportError
    with pytest.raises(ConfigError, match=r"spark_unlearn\[mlflow\]"):
        MlflowTracker.open((tmp_path / "mlruns").as_uri())
    assert MlflowTracker.open("") is None and MlflowTracker.open(None) is None  # no URI: tracking is off


def test_a_logging_failure_after_the_work_is_reported_not_raised(monkeypatch, tmp_path):
    from mlflow.tracking import MlflowClient

    tracker = MlflowTracker.open((tmp_path / "mlruns").as_uri())

    def gone(*args, **kwargs):
        raise ConnectionError("tracking server went away")

    monkeypatch.setattr(MlflowClient, "create_run", gone)
    entry = tracker.log("train", {"version": "v000001", "n_train": 10})
    assert entry["error"] == "ConnectionError: tracking server went away" and "run_id" not in entry


def test_a_run_whose_metrics_fail_to_log_is_marked_failed_not_left_running(monkeypatch, tmp_path):
    from mlflow.tracking import MlflowClient

    uri = (tmp_path / "mlruns").as_uri()
    tracker = MlflowTracker.open(uri)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(MlflowClient, "log_batch", broken)
    entry = tracker.log("train", {"version": "v000001", "n_train": 10})
    assert entry["error"] == "OSError: disk full"
    assert MlflowClient(uri).get_run(entry["run_id"]).info.status == "FAILED"


def test_the_summary_keeps_the_mlflow_line_within_15_lines(capsys):
    from spark_unlearn.cli import emit

    report = {"mlflow": {"run_id": "abc", "experiment": "e", "tracking_uri": "file:///x"}}
    emit(report, [f"line {n}" for n in range(15)], as_json=False)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 15 and lines[-1] == "mlflow: run abc in experiment 'e' at file:///x"
    assert lines[-2].startswith("... 2 more line(s)")  # lines 13 and 14 went to the JSON report
    # A summary its builder already capped (14 lines + a marker for 6 more): the new marker counts those 6 too.
    capped = [f"line {n}" for n in range(14)] + ["... 6 more line(s): see the JSON report"]
    emit(report, capped, as_json=False)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 15 and lines[-2] == "... 7 more line(s): see the JSON report"

"""Optional MLflow tracking of train, unlearn and IFRU runs.

With the extra installed (``pip install 'spark_unlearn[mlflow]'``) and a
tracking URI given (``--mlflow-tracking-uri`` or ``[mlflow] tracking_uri``),
a job logs one MLflow run per invocation, after its work is done:

* **params**: what defined the run: the model's hyperparameters, the
  unlearning mode, engine and certificate policy, the batch id and size;
* **metrics**: the numbers a reader compares across runs: the certificate
  (maximum, tolerance, whether it holds), rows solved, Spark jobs, the
  deletion counts, bytes read and written, every ``seconds`` entry, the test
  metrics before and after, IFRU's retained-objective change, gradient norms
  and AUC;
* **tags**: ``spark_unlearn.kind`` (train / unlearn / ifru), the status, the
  version and its path (so a run leads to the published model).

The tracker is opened *before* the job works (a wrong URI or a missing
package is a :class:`~spark_unlearn.errors.ConfigError`, exit 2, nothing
done).  A failure to log *after* the work (a tracking server gone away) does
not undo a published version: the job warns, and the report's ``mlflow``
entry says what failed.

MLflow 3 refuses its file-based store unless ``MLFLOW_ALLOW_FILE_STORE`` is
set; for a ``file:`` URI or a plain path this module sets it in its own
process (the file store is what a single machine or a test uses; a team's
server is an ``http(s)://`` URI).
"""

from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from spark_unlearn.errors import ConfigError

log = logging.getLogger(__name__)

KINDS = ("train", "unlearn", "ifru")

# Per job kind: report paths (dotted; a prefix ending in "." takes every numeric leaf below it) logged as metrics.
METRIC_PATHS = {
    "train": ("n_train", "n_test", "test_", "training_residual.p90", "training_residual.max", "seconds_total",
              "seconds_training", "seconds_per_iteration"),
    "unlearn": ("certificate.max_relative_residual", "certificate.tolerance", "certificate.holds",
                "certificate.max_bound_ratio", "rows_solved", "rows_total", "rounds", "spark_jobs",
                "remaining_ratings", "deletion.", "io.", "seconds.", "speedup_end_to_end", "metrics_before.",
                "metrics_after.", "forgetting."),
    "ifru": ("n_users", "n_items", "deletions.", "unlearning.removed_terms", "unlearning.parameters_updated",
             "unlearning.kept_nodes", "unlearning.certificate.", "unlearning.timings_s.", "training.",
             "test_auc", "test_auc_after", "wall_s"),
}
PARAM_PATHS = {
    "train": ("params.",),
    "unlearn": ("mode", "requested_mode", "engine", "certificate_policy", "batch.batch_id", "batch.n_requests",
                "tolerance_source"),
    "ifru": ("model_type", "config."),
}
TAG_PATHS = ("status", "version", "parent", "path", "saved_version", "model")

_METRIC_NAME = re.compile(r"[^\w\-. /]")


def flatten(report: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``: every scalar leaf (numbers, booleans, strings) under its dotted path."""
    out: dict[str, Any] = {}
    for key, value in report.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, path + "."))
        elif isinstance(value, (bool, int, float, str)):
            out[path] = value
    return out


def _select(flat: dict[str, Any], paths: tuple[str, ...]) -> dict[str, Any]:
    return {k: v for k, v in flat.items()
            if any(k == p or (p.endswith((".", "_")) and k.startswith(p)) for p in paths)}


def run_record(kind: str, report: dict[str, Any]) -> tuple[dict[str, str], dict[str, float], dict[str, str]]:
    """``(params, metrics, tags)`` MLflow receives for a job's report.

    Metrics are the numeric leaves under :data:`METRIC_PATHS` (booleans as
    0/1; NaN and infinities left out, MLflow rejects them in some stores),
    with names MLflow accepts (``test_ndcg@20`` -> ``test_ndcg_at_20``).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    flat = flatten(report)
    metrics = {}
    for key, value in _select(flat, METRIC_PATHS[kind]).items():
        if isinstance(value, str):
            continue
        number = float(value)
        if number == number and abs(number) != float("inf"):
            metrics[_METRIC_NAME.sub("_", key.replace("@", "_at_"))] = number
    params = {k: str(v)[:500] for k, v in _select(flat, PARAM_PATHS[kind]).items()}
    tags = {"spark_unlearn.kind": kind}
    tags.update({f"spark_unlearn.{k}": str(flat[k]) for k in TAG_PATHS if k in flat})
    return params, metrics, tags


@dataclass(frozen=True)
class MlflowTracker:
    """An opened MLflow experiment; :meth:`log` records one job's report as a run."""

    tracking_uri: str
    experiment: str
    experiment_id: str

    @classmethod
    def open(cls, tracking_uri: str | None, experiment: str = "spark_unlearn") -> "MlflowTracker | None":
        """The tracker for ``tracking_uri`` (``None`` or ``""``: tracking is off), its experiment created if missing.

        Raises
        ------
        ConfigError
            MLflow is not installed, or the tracking store cannot be reached
            or written (the message names the URI).
        """
        if not tracking_uri:
            return None
        if not experiment:
            raise ConfigError("[mlflow] experiment must not be empty; give a name such as 'spark_unlearn'")
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ConfigError(f"a tracking URI was given ({tracking_uri!r}) but MLflow is not installed: "
                              "pip install 'spark_unlearn[mlflow]', or drop --mlflow-tracking-uri") from None
        if "://" not in tracking_uri or tracking_uri.startswith("file:"):
            # MLflow 3 keeps its file store behind this switch; it is what a local run or a test uses.
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        try:
            client = MlflowClient(tracking_uri)
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
        except Exception as exc:  # MLflow raises many kinds (REST, file system, URI); each is a configuration problem here
            raise ConfigError(f"MLflow tracking URI {tracking_uri!r} cannot be used: {type(exc).__name__}: {exc}") from None
        return cls(tracking_uri, experiment, experiment_id)

    def log(self, kind: str, report: dict[str, Any], run_name: str | None = None) -> dict[str, Any]:
        """Log ``report`` as one finished run; what the report's ``mlflow`` entry says (run id, or the error)."""
        params, metrics, tags = run_record(kind, report)
        entry: dict[str, Any] = {"tracking_uri": self.tracking_uri, "experiment": self.experiment}
        client = None
        try:
            from mlflow.entities import Metric, Param, RunTag
            from mlflow.tracking import MlflowClient

            client = MlflowClient(self.tracking_uri)
            run = client.create_run(self.experiment_id, run_name=run_name or f"{kind} {report.get('version', '')}".strip(),
                                    tags=tags)
            entry["run_id"] = run.info.run_id
            now = int(time.time() * 1000)
            client.log_batch(run.info.run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                             params=[Param(k, v) for k, v in params.items()],
                             tags=[RunTag(k, v) for k, v in tags.items()])
            client.set_terminated(run.info.run_id, "FINISHED")
        except Exception as exc:  # the work is done and published: a tracking failure must not turn it into an error
            log.warning("MLflow logging to %s failed (the run's work is done and kept): %s", self.tracking_uri, exc)
            entry["error"] = f"{type(exc).__name__}: {exc}"
            if client is not None and "run_id" in entry:
                try:  # a run left RUNNING would look alive forever
                    client.set_terminated(entry["run_id"], "FAILED")
                except Exception:  # the store is what failed: nothing more to do
                    pass
            return entry
        entry.update(metrics=len(metrics), params=len(params))
        log.info("MLflow run %s logged in experiment %r at %s", entry["run_id"], self.experiment, self.tracking_uri)
        return entry

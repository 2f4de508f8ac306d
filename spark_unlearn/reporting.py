"""Writing reports safely and summarising them for people.

Every job writes its full report as JSON (``--report PATH``, ``--json``) and
prints a summary of at most :data:`MAX_SUMMARY_LINES` lines on stderr: what was
deleted (requested, applied, unknown), what changed, the certificate against
its tolerance, and the times.  The summary builders here are pure functions
of the report dict, one per job kind.

Speed-ups are end to end: a job's whole wall time against the end-to-end
training time the store records (``[training] seconds_end_to_end`` in the
manifest); when the store records none, the summary says the speed-up is
unavailable.  A ratio of solve times only is labelled "solve only".
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from spark_unlearn.errors import OutputPathError


def report_json(report: dict[str, Any]) -> str:
    """``report`` as indented, sorted JSON; numpy/torch scalars as numbers, anything else unknown as text."""
    return json.dumps(report, indent=2, sort_keys=True, default=_json_default)


def _json_default(value: Any) -> Any:
    item = getattr(value, "item", None)  # numpy scalars, 0-d arrays and tensors
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError):
            pass
    return str(value)


def check_report_path(path: str | None) -> None:
    """Refuse a report path that cannot be written, *before* a job does any work.

    Raises
    ------
    OutputPathError
        ``path`` is a directory, or its folder exists but is not writable, or
        a parent of it is a file.
    """
    if path is None:
        return
    if os.path.isdir(path):
        raise OutputPathError(f"report path {path!r} is a directory; give a file name such as {os.path.join(path, 'report.json')}")
    folder = os.path.dirname(os.path.abspath(path))
    probe = folder
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise OutputPathError(f"report path {path!r}: {probe} is a file, so the folder cannot be created; choose another path")
    if not os.access(probe, os.W_OK):
        raise OutputPathError(f"report path {path!r}: folder {probe} is not writable; choose another path")


def write_report(report: dict[str, Any], path: str) -> None:
    """Write ``report`` as JSON to ``path`` atomically (temp file + rename); refuses a directory."""
    check_report_path(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".report-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(report_json(report) + "\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


MAX_SUMMARY_LINES = 15


@dataclass(frozen=True)
class JobReport:
    """A job's report for Python callers: ``data`` (the JSON-ready dict the jobs write), ``summary()``, ``to_json()``.

    Subclasses name their summary builder in ``summarise`` (one of the
    ``*_summary`` functions below).
    """

    data: dict[str, Any]
    summarise: ClassVar[Callable[[dict[str, Any]], list[str]]]

    def summary(self) -> str:
        """At most 15 lines for people: what was deleted, what changed, the certificate, the times."""
        return "\n".join(type(self).summarise(self.data))

    def to_json(self) -> str:
        return report_json(self.data)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]


def train_summary(report: dict[str, Any]) -> list[str]:
    """jobs/train.py: the version, how many ratings trained it and how many were held out, residual, test, time."""
    p = report.get("params") or {}
    lines = [f"trained {report.get('version')} ({_model_params(p)}) at {report.get('path')}",
             _training_data_line(report)]
    res = report.get("training_residual") or {}
    if res:
        lines.append(f"training residual |Ax-b|/|b|: p90 {_g(res.get('p90'))}, max {_g(res.get('max'))} "
                     "(unlearning's default tolerance is its p90)")
    metrics = _metrics(report)
    if metrics:
        lines.append("test: " + metrics)
    lines.append(f"time: {_s(report.get('seconds_total'))} end to end (ALS solve {_s(report.get('seconds_training'))}, "
                 f"{_s(report.get('seconds_per_iteration'), 2)} per iteration)")
    return cap_lines(lines)


def unlearn_summary(report: dict[str, Any]) -> list[str]:
    """jobs/unlearn.py: requested / applied / unknown, rows re-solved, new version, certificate, times, speed-up."""
    status = report.get("status")
    b = report.get("batch") or {}
    batch = f"batch {b.get('batch_id')} ({_n(b.get('n_requests'), 'request')})"
    if status == "already_applied":
        lines = [f"{batch}: already applied in {report.get('version')} ({report.get('applied_at')}); "
                 "nothing recomputed or written"]
    elif status == "nothing_to_delete":
        lines = [f"{batch}: nothing to delete, nothing published (current version {report.get('version')})"]
        if report.get("deletion"):
            lines += _deletion_lines(report["deletion"])
        if report.get("note"):
            lines.append(f"  {report['note']}")
    else:
        lines = [f"{batch}: published {report.get('version')} (from {report.get('parent')}) at {report.get('path')}"]
        lines += _deletion_lines(report.get("deletion") or {})
        lines.append(_changed_line(report))
        lines.append(_certificate_line(report.get("certificate") or {}))
        if report.get("converged") is False:
            lines.append("  the frontier did not settle within max_rounds: see the certificate above")
        check = report.get("objective_check") or {}
        if check.get("forced"):
            lines.append("  --force: the source model is not stationary under the stated objective (objective_check)")
        for r in report.get("rebased") or []:
            lines.append(f"  rebased: the store moved from {r.get('based_on')} to {r.get('current_was')} meanwhile; "
                         "the request was re-applied on it")
    sec = report.get("seconds") or {}
    if status == "applied":
        lines.append(f"time: {_s(sec.get('end_to_end'))} end to end (solve {_s(sec.get('solve'), 2)}, certificate "
                     f"{_s(sec.get('certificate'), 2)}, measuring {_s(sec.get('measure'))}, publishing {_s(sec.get('publish'))})")
        lines.append(_speedup_line(report))
        lines += _forgetting_lines(report)
    elif sec.get("end_to_end") is not None:
        lines.append(f"time: {_s(sec.get('end_to_end'))} end to end")
    return cap_lines(lines)


def audit_summary(report: dict[str, Any]) -> list[str]:
    """jobs/audit.py: the batch's status and certificate, what is still present or retained, per-user ranks;
    with ``--verify-certificate``, the recomputed certificate against the recorded one and the tolerance."""
    lines: list[str] = []
    if "batch" in report:
        b = report["batch"]
        lines.append(f"batch {b['batch_id']} ({_n(b['n_requests'], 'request')}, content sha256 {b['content_hash'][:16]}...): "
                     f"{report.get('status')}")
        if report.get("applied"):
            lines.append(f"applied in {report['version']} (from {report['version_before']}) at {report['applied_at']} "
                         f"by {report['method']}; current version {report['current_version']}")
            lines.append(_certificate_line(report.get("certificate") or {}))
        else:
            lines.append(report.get("note", ""))
        present = report.get("still_present") or {}
        lines.append("still present in the current version: "
                     + (", ".join(f"{k}={v}" for k, v in present.items() if v) or "nothing"))
        retained = report.get("retained_in_other_versions") or []
        if retained:
            lines.append(f"retained in {len(retained)} other version(s): {', '.join(r['version'] for r in retained)}; "
                         f"to remove it: {report['purge_command']}")
    v = report.get("verification")
    if v and v.get("kind") == "ifru":
        change = v["retained_objective_change"]
        lines.append(f"IFRU certificate of {v['version']} (parent {v['parent']}): {v['status']}")
        lines.append(f"retained-objective change recomputed {_g(change['recomputed'], 6)}, recorded "
                     f"{_g(change['recorded'], 6)} (tolerance {_g(change['tolerance'], 2)}); merit gradient "
                     f"{_g(v['merit_gradient_before']['recomputed'], 4)} -> {_g(v['merit_gradient_after']['recomputed'], 4)}"
                     f" over {v['changed_rows']} changed rows")
        lines += [f"  {p}" for p in v["problems"][:3]]
    elif v:
        rec, got = v["recorded"], v["recomputed"]
        lines.append(f"certificate of {v['version']}: {v['status']} ({v['scope']}, {got['rows']} rows recomputed)")
        lines.append(f"recomputed max {_g(got['max'], 6)}, recorded {_g(rec['max'], 6)}, tolerance {_g(rec['tolerance'], 6)}; "
                     f"targets {v['targets']['source']} ({v['targets']['why']})")
        lines += [f"  {reason}" for reason in v["reasons"][:3]]
        if len(v["reasons"]) > 3:
            lines.append(f"  ... {len(v['reasons']) - 3} more reason(s) in the report")
    sec = report.get("seconds") or {}
    time_line = [f"time: {_s(sec['end_to_end'])} end to end"] if sec.get("end_to_end") is not None else []
    users = report.get("users") or []
    room = max(MAX_SUMMARY_LINES - len(lines) - len(time_line), 0)
    shown = users if len(users) <= room else users[:max(room - 1, 0)]
    for u in shown:
        after = "erased (no factor row)" if u["erased"] else u["rank_percentile_after"]
        lines.append(f"  user {u['user']}: {u['deleted_items']} deleted items, rank percentile "
                     f"{u['rank_percentile_before']} -> {after}")
    if len(shown) < len(users):
        lines.append(f"  ... {len(users) - len(shown)} more user(s) in the report")
    return cap_lines(lines + time_line)


def purge_summary(report: dict[str, Any]) -> list[str]:
    """jobs/purge.py: whose data was deleted, which versions were removed, what stays whole."""
    purged, removed = report.get("purged") or [], report.get("removed") or []
    lines = [f"store {report.get('store')}: current version {report.get('current')}; the {report.get('keep', 1)} "
             "newest version(s) of its lineage stay whole"]
    lines.append(f"deleted: the data of {len(purged)} older version(s)" + (f" ({_names(purged)})" if purged else "")
                 + "; their manifests and erased ids stay for the ledger and audits")
    lines.append(f"removed: {len(removed)} version(s) outside the lineage" + (f" ({_names(removed)})" if removed else ""))
    sec = report.get("seconds") or {}
    if sec.get("end_to_end") is not None:
        lines.append(f"time: {_s(sec['end_to_end'], 2)} end to end")
    return cap_lines(lines)


def serve_summary(report: dict[str, Any]) -> list[str]:
    """jobs/serve.py: what the service settled before it stopped, and where it left the store."""
    lines = [f"service on {report.get('store')} stopped after {_s(report.get('seconds'))}; current version "
             f"{report.get('current')}"]
    lines.append(f"requests from {report.get('requests')}: {report.get('settled', 0)} settled in "
                 f"{report.get('micro_batches', 0)} micro-batch(es), {report.get('versions', 0)} version(s) published, "
                 f"{report.get('rejected', 0)} rejected, {report.get('failed', 0)} failed")
    lines.append("receipts: <requests>/receipts/<id>.json")
    return cap_lines(lines)


def ifru_summary(report: dict[str, Any]) -> list[str]:
    """jobs/ifru.py: pairs requested / applied / unknown, what the update changed, its certificate, times."""
    kind = report.get("model_type", "?")
    verb = "trained a new" if report.get("trained") else "loaded the saved"
    lines = [f"IFRU: {verb} {kind} model in {report.get('model')} ({report.get('n_users')} users, "
             f"{report.get('n_items')} items)"]
    tr = report.get("training")
    if tr:
        lines.append(f"training: {tr.get('epochs')} epochs, objective {_g(tr.get('objective'), 4)}, "
                     f"{_s(tr.get('wall_s'))}")
    d = report.get("deletions")
    u = report.get("unlearning")
    if d is not None:
        positive = (f" ({d['in_training_positive']} positive, the BPR terms)" if "in_training_positive" in d else "")
        lines.append(f"deleted: {d.get('in_training')} of {d.get('requested')} requested pairs applied (training pairs)"
                     f"{positive}; {d.get('in_val_or_test')} only in validation/test; unknown {d.get('unknown')}")
    if u:
        lines.append(f"changed: {u.get('removed_terms')} loss terms removed; {u.get('parameters_updated')} parameters "
                     f"of {u.get('kept_nodes')} nodes updated")
        lines += _ifru_certificate_lines(u.get("certificate") or {})
    elif d is not None:
        lines.append("changed: nothing (no requested pair is a remaining training term): the model is unchanged")
    if report.get("saved_version"):
        lines.append(f"saved {report['saved_version']}")
    if report.get("test_auc") is not None:
        after = f" -> {report['test_auc_after']:.4f}" if report.get("test_auc_after") is not None else ""
        lines.append(f"test AUC {report['test_auc']:.4f}{after}")
    update_s = None
    if u:
        t = u.get("timings_s") or {}
        update_s = sum(t.get(k, 0.0) for k in ("assemble_s", "update_s"))
    lines.append(f"time: {_s(report.get('wall_s'))} end to end"
                 + (f" (unlearning update {_s(update_s, 2)})" if update_s is not None else ""))
    if u:
        line = "speed-up end to end: unavailable (the model directory records no end-to-end training time)"
        if tr and tr.get("wall_s") and update_s:
            line += f"; solve only: {tr['wall_s'] / update_s:.1f}x (training {_s(tr['wall_s'])} vs update {_s(update_s, 2)})"
        lines.append(line)
    return cap_lines(lines)


def demo_summary(report: dict[str, Any]) -> list[str]:
    """jobs/demo.py (``{"training": ..., "unlearning": ...}``): the training in three lines, then the unlearning."""
    t, u = report["training"], report["unlearning"]
    lines = ["== spark_unlearn demo: ALS on pyspark's MovieLens sample, then one user erased and 5 interactions "
             "of another forgotten ==",
             f"trained {t.get('version')} ({_model_params(t.get('params') or {})})",
             _training_data_line(t),
             f"training time: {_s(t.get('seconds_total'))} end to end (ALS solve {_s(t.get('seconds_training'))})"
             + (f"; test: {_metrics(t)}" if _metrics(t) else "")]
    lines += unlearn_summary(u)
    lines.append("full report: --json (on stdout) or --report PATH")
    return cap_lines(lines)


def _model_params(p: dict[str, Any]) -> str:
    feedback = f"implicit, alpha {p.get('alpha')}" if p.get("implicit") else "explicit"
    return f"rank {p.get('rank')}, regParam {p.get('reg')}, {feedback}, {p.get('iterations')} iterations"


def _training_data_line(report: dict[str, Any]) -> str:
    n_train, n_test = report.get("n_train"), report.get("n_test") or 0
    if not n_test:
        return f"data: all {n_train} ratings trained the model (none held out, so no test metrics)"
    return (f"data: {n_train} of {n_train + n_test} ratings trained the model; {n_test} held out for test "
            "(--test-fraction 0 trains on all)")


def _metrics(report: dict[str, Any]) -> str:
    keys = sorted(k for k in report if k.startswith("test_") and isinstance(report[k], (int, float)))
    return ", ".join(f"{k[5:]} {report[k]:.4g}" for k in keys)


def _deletion_lines(d: dict[str, Any]) -> list[str]:
    kinds = ("users", "items", "interactions")
    req = {k: d.get(f"requested_{k}", 0) or 0 for k in kinds}
    not_found = sum(d.get(f"not_found_{k}", 0) or 0 for k in kinds)
    forgotten = sum(d.get(f"already_forgotten_{k}", 0) or 0 for k in kinds)
    total = sum(req.values())
    return [
        f"deleted: {total - not_found - forgotten} of {total} requests applied "
        f"({_n(req['users'], 'user')}, {_n(req['items'], 'item')}, {_n(req['interactions'], 'interaction')} "
        "requested); "
        f"{d.get('deleted_ratings', 0)} ratings removed",
        f"unknown: {not_found} request(s) not in the data, {forgotten} already forgotten by an earlier batch",
    ]


def _changed_line(report: dict[str, Any]) -> str:
    mode = f"{report.get('mode')} mode"
    if report.get("strategy") == "sweeps" and report.get("requested_mode") == "frontier":
        mode += ", the batch planner's choice"
    elif report.get("requested_mode") and report.get("requested_mode") != report.get("mode"):
        mode += f", fell back from {report['requested_mode']}"
    how = ", ".join(x for x in (mode, report.get("engine") and f"{report['engine']} engine",
                                report.get("rounds") is not None and f"{report['rounds']} rounds") if x)
    d = report.get("deletion") or {}
    left = ""
    if d.get("removed_users") or d.get("removed_items"):
        left = f"; {d.get('removed_users', 0)} user and {d.get('removed_items', 0)} item rows left the model"
    remain = f"; {report['remaining_ratings']} ratings remain" if report.get("remaining_ratings") is not None else ""
    planner = report.get("planner") or {}
    if report.get("strategy") == "retrain":
        why = f"; planner: {planner['why']}" if planner.get("why") else ""
        return (f"changed: all {report.get('rows_total')} rows retrained from scratch on the driver "
                f"({report.get('iterations')} iterations{why}){left}{remain}")
    if report.get("strategy") == "sweeps":
        # Sweeps solve every row once per sweep: the rows, the sweeps and the row solves (a frontier's before them).
        why = f"planner: {planner['why']}; " if planner.get("why") else ""
        repair = f" and {report['repaired_rows']} rows repaired" if report.get("repaired_rows") else ""
        if report.get("presolved_rows"):
            repair = f", {report['presolved_rows']} changed rows solved first{repair}"
        return (f"changed: all {report.get('rows_total')} rows re-solved in {report.get('sweeps')} warm sweep(s){repair} "
                f"on the driver ({how}; {why}{report.get('rows_solved')} row solves){left}{remain}"
                f"{_forgetting_clause(report.get('forgetting_stop'))}")
    return f"changed: {report.get('rows_solved')} of {report.get('rows_total')} rows re-solved ({how}){left}{remain}"


def _forgetting_clause(f: dict[str, Any] | None) -> str:
    """The sweeps' forgetting stop in words: the deleted pairs' mean score and the estimated share of its move."""
    if not f or not f.get("pairs") or len(f.get("scores") or []) < 2:
        return ""
    scores = f["scores"]
    verdict = ("" if not f.get("target_share") else
               f" (target {_g(f['target_share'])}: {'met' if f.get('holds') else 'NOT met within the sweeps allowed'})")
    return (f"; the {f['pairs']} deleted pairs' mean score {_g(scores[0])} -> {_g(scores[-1])}, an estimated "
            f"{_g(f.get('share'))} of its move made{verdict}")


def _certificate_line(cert: dict[str, Any]) -> str:
    verdict = "holds" if cert.get("holds") else "DOES NOT HOLD"
    policy = cert.get("policy") or {}
    if policy.get("own_residual_weight"):
        bound = f"each row's bound max({_g(policy.get('floor'))}, its training residual)"
    else:
        bound = f"tolerance {_g(cert.get('tolerance'))}"
    ratio = f", worst row at {_g(cert['max_bound_ratio'])}x its bound" if cert.get("max_bound_ratio") is not None else ""
    kind = " (an upper bound)" if cert.get("max_kind") == "upper bound" else ""
    strict = cert.get("strict") or {}
    under_strict = ""
    if policy.get("name", "strict") != "strict" and strict.get("tolerance"):
        under_strict = f"; strict policy: {_g(strict['max_ratio'])}x its tolerance {_g(strict['tolerance'])}"
    return (f"certificate: max |A'x-b'-t|/|b'| = {_g(cert.get('max_relative_residual'))}{kind} vs {bound}{ratio} "
            f"({policy.get('name', 'strict')} policy): {verdict}{under_strict}")


def _speedup_line(report: dict[str, Any]) -> str:
    training = report.get("training_seconds") or {}
    if report.get("speedup_end_to_end"):
        line = (f"speed-up end to end: {report['speedup_end_to_end']:.2f}x against the training's "
                f"{_s(training.get('end_to_end'))} (recorded: training start until publishing)")
    else:
        line = "speed-up end to end: unavailable (the store records no end-to-end training time)"
    if report.get("speedup_solve_only"):
        line += f"; solve only: {report['speedup_solve_only']:.2f}x"
    return line


def _forgetting_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    f = report.get("forgetting") or {}
    if f.get("defined") and f.get("pairs"):
        lines.append(f"forgetting: deleted items' mean rank percentile {_g(f.get('rank_percentile_before'))} -> "
                     f"{_g(f.get('rank_percentile_after'))} in their users' lists (0 = top, 1 = bottom; {f['pairs']} pairs)")
    elif f.get("defined") is False:
        lines.append(f"forgetting: {f.get('note', 'undefined')}")
    before, after = report.get("metrics_before") or {}, report.get("metrics_after") or {}
    common = sorted(set(before) & set(after))
    if common:
        lines.append("test before -> after: " + ", ".join(f"{k.removeprefix('test_')} {_g(before[k], 4)} -> "
                                                          f"{_g(after[k], 4)}" for k in common))
    return lines


def _ifru_certificate_lines(c: dict[str, Any]) -> list[str]:
    if not c:
        return []
    change = c.get("retained_objective_change")
    holds = change is not None and change <= 0
    lines = [f"certificate: {c.get('status')}, update scaled by {_g(c.get('scale'))}; merit gradient "
             f"{_g(c.get('merit_gradient_before'))} -> {_g(c.get('merit_gradient_after'))} "
             f"(ratio {_g(c.get('merit_gradient_ratio'))}); retained objective change {_g(change)} vs tolerance 0: "
             + ("holds" if holds else "DOES NOT HOLD")]
    before, after, tol = c.get("validation_auc_before"), c.get("validation_auc_after"), c.get("validation_auc_tolerance")
    if before is not None and after is not None and tol is not None:
        ok = after >= before - tol
        lines.append(f"validation AUC {before:.4f} -> {after:.4f} (may fall by at most {_g(tol)}): "
                     + ("holds" if ok else "DOES NOT HOLD"))
    return lines


_MORE = re.compile(r"^\.\.\. (\d+) more line\(s\): see the JSON report$")


def cap_lines(lines: list[str], limit: int = MAX_SUMMARY_LINES) -> list[str]:
    """At most ``limit`` lines (default :data:`MAX_SUMMARY_LINES`); what does not fit is in the JSON report.

    Capping lines that were capped before (to make room for another line)
    counts the lines the earlier marker stood for.
    """
    if len(lines) <= limit:
        return lines
    hidden = len(lines) - limit + 1
    earlier = _MORE.match(lines[-1])
    if earlier:
        hidden += int(earlier.group(1)) - 1
    return lines[:limit - 1] + [f"... {hidden} more line(s): see the JSON report"]


def _n(count: Any, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _names(names: list[str], shown: int = 5) -> str:
    return ", ".join(names[:shown]) + (f", ... ({len(names) - shown} more)" if len(names) > shown else "")


def _g(value: Any, digits: int = 3) -> str:
    """A number in ``digits`` significant digits; ``n/a`` for None or anything not a number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "n/a"
    return f"{value:.{digits}g}"


def _s(seconds: Any, decimals: int = 1) -> str:
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        return "n/a"
    return f"{seconds:.{decimals}f} s"


def mlflow_line(report: dict[str, Any]) -> list[str]:
    """The summary's line about the run's MLflow record (none when tracking is off; :mod:`spark_unlearn.tracking`)."""
    entry = report.get("mlflow")
    if not entry:
        return []
    if entry.get("error"):
        return [f"mlflow: logging failed ({entry['error']}); the run's work is done and kept"]
    return [f"mlflow: run {entry['run_id']} in experiment {entry['experiment']!r} at {entry['tracking_uri']}"]

"""Writing reports safely and summarising them for people."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from spark_unlearn.errors import OutputPathError


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
            json.dump(report, fh, indent=2, sort_keys=True, default=str)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def summary_lines(report: dict[str, Any]) -> list[str]:
    """A few lines a person reads first: what was removed, how much work, how exact, how fast."""
    d = report.get("deletion", {})
    cert = report.get("certificate", {})
    sec = report.get("seconds", {})
    lines = [
        f"removed {d.get('deleted_ratings', 0)} ratings ({d.get('requested_users', 0)} users erased, "
        f"{d.get('requested_interactions', 0)} interactions requested, {d.get('not_found_interactions', 0)} not in the data)",
        f"mode {report.get('mode')}: re-solved {report.get('rows_solved')} of {report.get('rows_total')} rows "
        f"in {report.get('rounds', report.get('sweeps', '-'))} rounds",
        f"certificate: max |A'x-b'-t|/|b'| = {cert.get('max_relative_residual', float('nan')):.3g} "
        f"(tolerance {cert.get('tolerance', float('nan')):.3g}: {'holds' if cert.get('holds') else 'DOES NOT HOLD'})",
        f"time: {sec.get('solve', 0) + sec.get('certificate', 0):.2f}s unlearning, {sec.get('end_to_end', sec.get('total', 0)):.2f}s end to end",
    ]
    if report.get("speedup_vs_training"):
        lines.append(f"speed-up over the original training ({report['training_seconds']:.1f}s): {report['speedup_vs_training']}x")
    f = report.get("forgetting") or {}
    if f.get("pairs"):
        lines.append(
            f"deleted items' mean rank percentile in their users' lists: {f['rank_percentile_before']:.3f} -> "
            f"{f['rank_percentile_after']:.3f} (0 = top, 1 = bottom; {f['pairs']} pairs)"
        )
    return lines

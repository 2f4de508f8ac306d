"""Run a spark-submit job's ``main(argv)`` in this process, on the test session, and restore what it changed."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import logging
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

#: JVM options for the short-lived Spark JVMs that tests start in subprocesses (jobs run as scripts, the
#: standalone cluster): only the C1 compiler and the serial collector, which about halve the time of a job on a
#: cold JVM on a 2-core machine (C2 and parallel-GC threads compete with the job for the cores).  C1 alone gets
#: a 48 MiB code cache, which the test session's JVM fills after a few hundred distinct queries (flushing, then
#: "CodeCache is full. Compiler has been disabled"); 256 MiB keeps it compiling (tests/test_incremental.py and
#: tests/test_unlearn_spark.py 394 s -> 363 s).  Results do not depend on them.
FAST_JVM_OPTS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC -XX:ReservedCodeCacheSize=256m"


def subprocess_env(**extra: str) -> dict[str, str]:
    """``os.environ`` plus ``extra`` for a subprocess that starts Spark, with :data:`FAST_JVM_OPTS` for its JVM.

    ``SPARK_SUBMIT_OPTS`` reaches the JVM that spark-submit (or pyspark's gateway) starts; the
    ``spark.executor.extraJavaOptions`` system property in it gives a cluster's executors the same options.
    A ``SPARK_SUBMIT_OPTS`` already set is kept.
    """
    from jvm_cds import jvm_options

    opts = jvm_options(FAST_JVM_OPTS)
    env = dict(os.environ)
    env.setdefault("SPARK_SUBMIT_OPTS", f"{opts} '-Dspark.executor.extraJavaOptions={opts}'")
    env.update(extra)
    return env


def as_marker_store(local: str) -> None:
    """Turn the plain-path store ``local``, committed by renames, into one committed by markers (the protocol of a
    file system without an atomic rename, :mod:`spark_unlearn.store.commit`): one marker naming its current version."""
    current = open(os.path.join(local, "CURRENT")).read().strip()
    os.makedirs(os.path.join(local, "commits"))
    with open(os.path.join(local, "commits", f"{1:012d}"), "w") as fh:
        fh.write(current + "\n")
    os.remove(os.path.join(local, "CURRENT"))


def run_job(spark, name: str, argv: list[str]) -> tuple[int, str, str]:
    """``jobs/<name>.py`` main(argv) -> (exit code, stdout, stderr).

    The job's get_session() returns the test session; its runtime SQL
    settings and the ``spark_unlearn`` logger are put back afterwards so
    later tests see the session and logging as the fixture made them.
    """
    import sys

    jobs_dir = str(REPO / "jobs")
    if jobs_dir not in sys.path:
        sys.path.insert(0, jobs_dir)
    spec = importlib.util.spec_from_file_location(f"job_{name}", REPO / "jobs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lib = logging.getLogger("spark_unlearn")
    saved_log = (lib.level, list(lib.handlers), lib.propagate)
    saved_conf = spark.conf.get("spark.sql.shuffle.partitions")
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            for h in lib.handlers:
                if getattr(h, "_spark_unlearn", False):
                    h.setStream(err)
            code = module.main(argv)
    finally:
        lib.setLevel(saved_log[0])
        lib.handlers[:] = saved_log[1]
        lib.propagate = saved_log[2]
        spark.conf.set("spark.sql.shuffle.partitions", saved_conf)
    return code, out.getvalue(), err.getvalue()


def tree_digest(root: str) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``root`` (to prove a store was left untouched)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out

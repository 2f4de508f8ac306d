"""A class-data-sharing archive of Spark's classes for the JVMs the test suite starts.

Every Spark JVM of the suite (the session of each pytest worker, the jobs run
as subprocesses, the standalone cluster's daemons and executors) loads and
verifies the same ~10,000 classes from Spark's jars before it does any work.
A dynamic CDS archive (Java 13+: ``-XX:ArchiveClassesAtExit`` once,
``-XX:SharedArchiveFile`` after) maps them instead: a JVM that starts a
session and runs one job took 8.8 s instead of 15.9 s on the 2-core machine.

The archive is made once per machine and Java / pyspark version, in the
background while the first tests run (JVMs started before it is ready go
without), and kept in the temp directory.  It changes no result: a JVM whose
class path or Java does not match the archive ignores it (``-Xshare:auto``,
the default), and a failure to make it only costs the saving.  ``SPARK_UNLEARN_TEST_CDS_ARCHIVE=""`` turns it off.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: Set by :func:`ensure_archive` (the pytest controller), read by :func:`jvm_options` (every process after it,
#: pytest-xdist workers included: they inherit the environment).
ENV = "SPARK_UNLEARN_TEST_CDS_ARCHIVE"

# A little of what the suite does, so that the classes it needs are the ones archived: Arrow in and out, a
# shuffle, a Python UDF over Arrow batches, Parquet written and read.
_WARM_UP = r"""
import sys
import pyarrow as pa
from pyspark.sql import SparkSession, functions as F
spark = (SparkSession.builder.master("local[2]").appName("cds-archive")
         .config("spark.ui.enabled", "false").config("spark.sql.shuffle.partitions", "2").getOrCreate())
df = spark.createDataFrame(pa.table({"user": pa.array(range(200), pa.int32()),
                                     "rating": pa.array([float(i % 5) for i in range(200)], pa.float32())}))
agg = df.groupBy((F.col("user") % 7).alias("g")).agg(F.count("*").alias("n"), F.avg("rating").alias("m"))
agg.write.mode("overwrite").parquet(sys.argv[1])
back = spark.read.parquet(sys.argv[1]).mapInArrow(lambda it: it, "g int, n long, m double")
back.join(agg, "g").toArrow()
spark.stop()
"""


def _java() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home and os.access(os.path.join(home, "bin", "java"), os.X_OK):
        return os.path.join(home, "bin", "java")
    return shutil.which("java")


def _key(base_opts: str) -> str | None:
    """What the archive depends on: the Java build, the pyspark install and its jars, the JVM options."""
    java = _java()
    if java is None:
        return None
    try:
        import pyspark

        version = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60).stderr
    except (OSError, subprocess.SubprocessError, ImportError):
        return None
    jars = Path(pyspark.__file__).parent / "jars"
    names = sorted(p.name for p in jars.glob("*.jar")) if jars.is_dir() else []
    text = "\n".join([os.path.realpath(java), version, pyspark.__file__, pyspark.__version__, base_opts, *names])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _archive_path(base_opts: str) -> Path | None:
    key = _key(base_opts)
    return Path(tempfile.gettempdir()) / "spark_unlearn_cds" / f"spark-{key}.jsa" if key else None


class _Maker:
    """The background process that makes the archive: the warm-up JVM, then an atomic rename into place."""

    def __init__(self, path: Path, base_opts: str, timeout: float):
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob("cds-*"):  # debris of a maker stopped by an earlier session's end
            if time.time() - stale.stat().st_mtime > 3600:
                shutil.rmtree(stale, ignore_errors=True)
        self.work = Path(tempfile.mkdtemp(prefix="cds-", dir=path.parent))
        partial = self.work / "archive.jsa"
        env = dict(os.environ, SPARK_SUBMIT_OPTS=f"{base_opts} -XX:ArchiveClassesAtExit={partial}")
        for var in ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET", "PYSPARK_SUBMIT_ARGS", ENV):
            env.pop(var, None)
        script = (
            "import os, subprocess, sys\n"
            "w, partial, final, timeout = sys.argv[1:5]\n"
            # Pipes, not files: the JVM outlives the Python that started it while it writes the archive, and
            # holds the pipes until it is done.
            "r = subprocess.run([sys.executable, '-c', sys.argv[5], os.path.join(w, 't.parquet')], timeout=float(timeout),"
            " capture_output=True)\n"
            "open(os.path.join(w, 'log'), 'wb').write(r.stderr)\n"
            "if r.returncode == 0 and os.path.exists(partial):\n"
            "    os.replace(partial, final)\n"  # atomic: a JVM sees a whole archive or none
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script, str(self.work), str(partial), str(path), str(timeout), _WARM_UP],
            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def stop(self) -> None:
        """Wait for a maker that is done; stop one still running (its whole process group)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.proc.wait()
        shutil.rmtree(self.work, ignore_errors=True)


_maker: _Maker | None = None


def ensure_archive(base_opts: str, timeout: float = 300) -> str | None:
    """Export the archive's path in :data:`ENV`, and start making it in the background if it is missing.

    JVMs started before it exists run without it (:func:`jvm_options` checks at each start).  Returns the
    path, or ``None`` when there can be no archive here (no Java, or turned off).
    """
    global _maker
    if ENV in os.environ:  # exported earlier in this session, or set by hand ("" turns the archive off)
        return os.environ[ENV] or None
    path = _archive_path(base_opts)
    os.environ[ENV] = str(path) if path is not None else ""
    if path is not None and not path.exists():
        try:
            _maker = _Maker(path, base_opts, timeout)
        except OSError as exc:
            log.warning("no CDS archive: %s", exc)
    return str(path) if path is not None else None


def stop_maker() -> None:
    """End of the session: leave no process behind (an unfinished archive is made again next time)."""
    global _maker
    if _maker is not None:
        _maker.stop()
        _maker = None


def jvm_options(base_opts: str) -> str:
    """``base_opts`` plus the archive, when :func:`ensure_archive` made one."""
    archive = os.environ.get(ENV)
    if not (archive and os.path.exists(archive)):
        return base_opts
    # The JVM's own warnings (an archive it cannot use, for one) go to stderr, never into a job's stdout report.
    return f"{base_opts} -XX:SharedArchiveFile={archive} -Xlog:disable -Xlog:all=warning:stderr"

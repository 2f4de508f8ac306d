"""Logging set-up for jobs: one call, library modules only use ``logging.getLogger(__name__)``.

Under ``spark-submit`` the Python driver does not have a stderr of its own:
Spark's ``PythonRunner`` merges the driver's stderr into its stdout and copies
both to spark-submit's stdout.  A job's logs and summary would then land in
the JSON that ``--json`` prints.  :func:`separate_stderr` gives the driver
spark-submit's real stderr back (through the JVM that launched it), so that
``spark-submit jobs/unlearn.py ... --json | python -m json.tool`` works.
"""

from __future__ import annotations

import io
import logging
import os
import sys

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: str | int = "INFO") -> None:
    """Send spark_unlearn's log records to stderr at ``level`` (jobs call this once).

    Under spark-submit, that is spark-submit's stderr (:func:`separate_stderr`), never the stdout the
    report goes to.
    """
    separate_stderr()
    root = logging.getLogger("spark_unlearn")
    root.setLevel(level)
    if not any(getattr(h, "_spark_unlearn", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
        handler._spark_unlearn = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.propagate = False


def separate_stderr() -> bool:
    """Under spark-submit, point ``sys.stderr`` at spark-submit's own stderr; ``True`` if it does now.

    Only when this process is a driver that spark-submit launched (``PYSPARK_GATEWAY_PORT`` is set) and its
    stdout and stderr are one stream (``PythonRunner`` merges them).  Text written to ``sys.stderr`` is then
    written by the JVM to its ``System.err`` (where Spark's own console logs go, ``conf/log4j2.properties``),
    so stdout carries only what the job prints there.  Plain ``python jobs/x.py`` keeps its stderr.  If the
    JVM cannot be reached, text goes to the original stderr.  Idempotent.
    """
    if isinstance(sys.stderr, _JvmStderr):
        return True
    if "PYSPARK_GATEWAY_PORT" not in os.environ or not _stdout_is_stderr():
        return False
    try:
        from pyspark import SparkContext

        SparkContext._ensure_initialized()
        jvm_err = SparkContext._jvm.System.err
    except Exception:  # no JVM to talk to: leave stderr as it is
        return False
    sys.stderr = _JvmStderr(jvm_err, sys.stderr)
    return True


def _stdout_is_stderr() -> bool:
    try:
        out, err = os.fstat(1), os.fstat(2)
    except OSError:
        return False
    return (out.st_dev, out.st_ino) == (err.st_dev, err.st_ino)


class _JvmStderr(io.TextIOBase):
    """A text stream written to the launching JVM's ``System.err`` (UTF-8 bytes through py4j)."""

    def __init__(self, jvm_err, fallback):
        self._err, self._fallback = jvm_err, fallback

    @property
    def encoding(self):  # type: ignore[override]
        return "utf-8"

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if not text:
            return 0
        data = text.encode("utf-8", "replace")
        try:
            self._err.write(bytearray(data), 0, len(data))
        except Exception:  # the gateway is gone (interpreter shutting down): the merged stream is all there is
            self._fallback.write(text)
        return len(text)

    def flush(self) -> None:
        try:
            self._err.flush()
        except Exception:
            self._fallback.flush()

    def fileno(self) -> int:
        return self._fallback.fileno()

    def isatty(self) -> bool:
        return False

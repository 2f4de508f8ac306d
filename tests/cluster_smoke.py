"""``tools/standalone_cluster.sh smoke`` as a background process of the test session.

The smoke spends most of its minutes waiting for JVMs (Master, Workers,
driver, executors), so ``tests/conftest.py`` starts it as soon as the
collection shows that ``tests/test_cluster.py::test_standalone_cluster_smoke``
will run, puts that test last, and the test only collects the result: the
smoke overlaps the rest of the suite instead of adding to it.

Under pytest-xdist every worker collects.  The controller names a shared work
directory (:data:`SHARED_DIR_ENV`) before the workers start; the first worker
(``gw0``) starts the smoke there, a thread of its own writes the exit code to
``rc`` when the script ends, and whichever worker gets the test waits for that
file.  Run on its own, the test starts the smoke itself.  ``stop()`` (called
when the session ends) stops a smoke that is still running; its EXIT trap
stops the cluster.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from job_helpers import FAST_JVM_OPTS, subprocess_env
from jvm_cds import jvm_options

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "standalone_cluster.sh"
# One to three minutes on an idle 2-core machine; much more when the machine is loaded (and the smoke shares
# it with the rest of the suite): a guard against a hang, not a speed check.
TIMEOUT_S = int(os.environ.get("SPARK_UNLEARN_CLUSTER_TIMEOUT", "900"))
#: Set by the xdist controller: the directory the background smoke of this session runs in.
SHARED_DIR_ENV = "SPARK_UNLEARN_SMOKE_DIR"


def skip_reason() -> str | None:
    """Why the smoke cannot run here (``None``: it can)."""
    if shutil.which("java") is None:
        return "java not on PATH: Spark standalone needs Java 17"
    if not sys.platform.startswith("linux"):
        return "the cluster script uses Linux process tools"
    return None


def smoke_env(work: Path) -> dict[str, str]:
    env = subprocess_env(
        PYTHON=sys.executable,  # driver and executors: this interpreter (has numpy, pyspark, ...)
        SPARK_UNLEARN_CLUSTER_DIR=str(work),
        SMOKE_TIMEOUT_SECONDS=str(TIMEOUT_S - 120),  # the script's own limit fires first, with logs
        CLUSTER_WAIT_SECONDS="90",
        SMOKE_TRAIN_ARGS="--iterations 3",  # the cluster path is what is tested, not convergence (default 10)
        # The test loads the versions with its own session instead of a JVM of the script's own, and the
        # unlearning job skips its before/after metrics (the train job already evaluates on the cluster).
        SMOKE_LOAD_CHECK="0",
        SMOKE_UNLEARN_ARGS=f"--config {work.parent / 'smoke_unlearn.toml'}",
    )
    # Master and Workers (spark-class) take theirs from SPARK_DAEMON_JAVA_OPTS; the driver and the executors
    # from SPARK_SUBMIT_OPTS (set by subprocess_env).
    env.setdefault("SPARK_DAEMON_JAVA_OPTS", jvm_options(FAST_JVM_OPTS))
    # A driver started by pytest's Spark fixture must not leak into the job.
    for var in ("PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET", "SPARK_HOME", "PYSPARK_SUBMIT_ARGS"):
        env.pop(var, None)
    return env


class Smoke:
    """One running ``standalone_cluster.sh smoke`` with its work dir."""

    def __init__(self, work: Path, owned_dir: Path | None = None):
        self.work = work
        self.owned_dir = owned_dir  # a temp dir of its own, removed after a success
        self.started = time.monotonic()
        # To a file, not a pipe: nobody reads while the rest of the suite runs.
        self.log = work.parent / "smoke.log"
        work.parent.mkdir(parents=True, exist_ok=True)
        # The targeted engine with every neighbour kept in Spark, no side held on the driver and no sweep there: its
        # passes (broadcast moves, Spark-summed normal equations, Gram checks) run on the two executors, not only in
        # local mode.
        (work.parent / "smoke_unlearn.toml").write_text(
            '[unlearn]\nmeasure = false\nengine = "targeted"\nfull_fallback_fraction = 1.0\ndriver_rows = 0\n'
            'hold_side_mb = 0\nsweep_driver_mb = 0\n')
        self.rc_file = work.parent / "rc"
        self.rc_file.unlink(missing_ok=True)
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                ["bash", str(SCRIPT), "smoke"],
                cwd=REPO,
                env=smoke_env(work),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        (work.parent / "started").write_text(f"{time.time()} {self.proc.pid}\n")
        # The exit code goes to a file, so a test in another xdist worker can collect it.
        threading.Thread(target=self._record_exit, daemon=True).start()
        self._result: tuple[int, str] | None = None

    def _record_exit(self) -> None:
        rc = self.proc.wait()
        tmp = self.rc_file.with_suffix(".tmp")
        tmp.write_text(f"{rc}\n")
        tmp.replace(self.rc_file)

    def _output(self) -> str:
        return self.log.read_text(errors="replace")

    def result(self) -> tuple[int, str]:
        """(exit code, output), waiting at most until ``TIMEOUT_S`` after the start.

        On time-out the script is TERMed (its trap stops the job and the cluster), then KILLed, and
        ``TimeoutError`` carries the output.
        """
        if self._result is None:
            left = max(1.0, TIMEOUT_S - (time.monotonic() - self.started))
            try:
                self.proc.wait(timeout=left)
            except subprocess.TimeoutExpired:
                self._terminate()
                out = self._output()
                raise TimeoutError(f"standalone_cluster.sh smoke timed out after {TIMEOUT_S}s:\n{out[-6000:]}")
            self._result = (self.proc.returncode, self._output())
        return self._result

    def _terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self._terminate()

    def remove_work_dir(self) -> None:
        if self.owned_dir is not None:
            shutil.rmtree(self.owned_dir, ignore_errors=True)


class SharedSmoke:
    """A smoke another xdist worker started in the session's shared directory: only its result is read."""

    def __init__(self, work: Path):
        self.work = work
        self.log = work.parent / "smoke.log"
        self.rc_file = work.parent / "rc"

    def result(self) -> tuple[int, str]:
        """(exit code, output) once the starting worker has recorded the exit; TERMs the script on time-out."""
        started = work_started(self.work)
        if started is None:
            raise TimeoutError(f"no smoke was started in {self.work.parent} (the first xdist worker starts it)")
        t0, pid = started
        while not self.rc_file.exists():
            if time.time() - t0 > TIMEOUT_S:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)  # its trap stops the job and the cluster
                raise TimeoutError(f"standalone_cluster.sh smoke timed out after {TIMEOUT_S}s:\n"
                                   f"{self.log.read_text(errors='replace')[-6000:]}")
            time.sleep(1.0)
        return int(self.rc_file.read_text()), self.log.read_text(errors="replace")

    def remove_work_dir(self) -> None:
        """After a success: the session's shared directory (kept for its logs on failure)."""
        shutil.rmtree(self.work.parent, ignore_errors=True)


def work_started(work: Path) -> tuple[float, int] | None:
    """(wall-clock start, script pid) of the smoke started in ``work``, if one was."""
    try:
        t0, pid = (work.parent / "started").read_text().split()
    except (OSError, ValueError):
        return None
    return float(t0), int(pid)


def shared_work_dir() -> Path | None:
    """The session's shared smoke work dir under xdist (set by the controller), else ``None``."""
    value = os.environ.get(SHARED_DIR_ENV)
    return Path(value) / "cluster" if value else None


_current: Smoke | None = None


def start(work: Path | None = None) -> Smoke:
    """Start the smoke in ``work`` (default: a fresh temp dir of its own)."""
    global _current
    stop()
    owned = None
    if work is None:
        owned = Path(tempfile.mkdtemp(prefix="spark_unlearn_smoke_"))
        work = owned / "cluster"
    elif work == shared_work_dir():
        owned = work.parent
    _current = Smoke(work, owned)
    return _current


def current() -> Smoke | SharedSmoke | None:
    """The smoke of this session: one this process started, or the one an xdist worker started."""
    if _current is not None:
        return _current
    shared = shared_work_dir()
    if shared is not None and work_started(shared) is not None:
        return SharedSmoke(shared)
    return None


def stop() -> None:
    """Stop a smoke that is still running (end of the session, or a new start)."""
    global _current
    if _current is not None:
        _current.stop()
        _current = None


def finish() -> None:
    """End of this process's session: let a smoke another worker waits for end, then stop what is left.

    Under xdist the worker that started the smoke can run out of tests while another still waits for the
    smoke's result; stopping it then would fail that test.  It waits (at most until the time-out) instead.
    """
    if _current is not None and shared_work_dir() == _current.work and _current.proc.poll() is None:
        with contextlib.suppress(TimeoutError):
            _current.result()
    stop()

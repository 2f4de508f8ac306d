"""File helpers of the model store, for plain local paths and Hadoop FileSystem URIs: dispatch, checksums,
durable and atomic writes, Parquet files, locking.

A plain path is served by :class:`~spark_unlearn.store.posix_files.PosixFiles`
(the operating system); a URI with a scheme (``file://``, ``hdfs://``) by
:class:`~spark_unlearn.store.hadoop_files.HadoopFiles` (Hadoop's FileSystem in
Spark's JVM).  Every function here takes either and picks the back end from
the path, so the store above is written once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import uuid
from collections.abc import Iterator

from spark_unlearn.errors import OutputPathError
from spark_unlearn.store.hadoop_files import HadoopFiles
from spark_unlearn.store.posix_files import PosixFiles

log = logging.getLogger(__name__)

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):/")
_POSIX = PosixFiles()
_HADOOP: dict[tuple, HadoopFiles] = {}


def is_uri(path: str) -> bool:
    """True if ``path`` names a scheme (``file:``, ``hdfs://``, ``hdfs:/x``): it goes through Hadoop's FileSystem.

    A relative path with a colon (``run:1/store``) is a path; anything starting ``file:`` is a URI.
    """
    if path[:5].lower() == "file:":
        return True
    m = _SCHEME.match(path)
    return m is not None and len(m.group(1)) > 1  # not a Windows drive letter


def files_for(path: str) -> PosixFiles | HadoopFiles:
    """The back end serving ``path`` (one Hadoop back end per scheme, authority and Spark context)."""
    if not is_uri(path):
        return _POSIX
    from urllib.parse import urlparse

    from pyspark import SparkContext

    parsed = urlparse(path)
    key = (parsed.scheme.lower(), parsed.netloc, id(SparkContext._active_spark_context))
    files = _HADOOP.get(key)
    if files is None:
        files = _HADOOP[key] = HadoopFiles(path)
    return files


def store_root(path: str) -> str:
    """The canonical form of a store root: an absolute local path, or the URI without a trailing slash.

    Raises
    ------
    OutputPathError
        ``path`` is empty, or a ``file:`` URI whose path is not absolute.
    """
    if not isinstance(path, str) or not path.strip():
        raise OutputPathError(f"model store path {path!r} is empty; give a directory or a file:// / hdfs:// URI")
    if not is_uri(path):
        return os.path.abspath(path)
    from urllib.parse import urlparse

    parsed = urlparse(path)
    if not parsed.path.startswith("/"):
        raise OutputPathError(f"{path!r}: a store URI needs an absolute path, e.g. file:///data/store or "
                              "hdfs://namenode:8020/models/store")
    return f"{parsed.scheme}://{parsed.netloc}{parsed.path.rstrip('/') or '/'}"


def path_key(path: str) -> str:
    """``path`` as one spelling of its file or directory: ``file:/x``, ``file:///x``, ``/x`` and a symlink to it
    give the resolved local path; other URIs their scheme and path (``hdfs:///x`` and Spark's
    ``hdfs://nn:8020/x`` are one file: a store's paths are all on one file system)."""
    from urllib.parse import unquote, urlparse

    if not is_uri(path):
        return os.path.realpath(path)
    parsed = urlparse(path)
    if parsed.scheme.lower() == "file":
        return os.path.realpath(unquote(parsed.path))
    return f"{parsed.scheme.lower()}://{unquote(parsed.path).rstrip('/')}"


def sha256_file(path: str, *, fsync: bool = False) -> str:
    """Hex SHA-256 of a file's bytes.

    ``fsync`` also flushes a local file to stable storage.  Spark/Hadoop's
    local writer never fsyncs, so the publisher does it here while it reads
    the file anyway; otherwise a crash right after publishing could leave a
    version whose checksums were computed from pages that never reached the disk.
    """
    return files_for(path).sha256(path, fsync=fsync)


def list_files(root: str) -> list[str]:
    """Every regular file under ``root``, as sorted POSIX-style paths relative to ``root``.

    Hidden files (Hadoop's ``.crc`` side files) are included: they are part of
    what was written and Hadoop's local reader checks them.
    """
    return files_for(root).walk(root)


def fsync_dir(path: str) -> None:
    """Flush a directory's entries (a rename or create is durable only after this)."""
    files_for(path).fsync_dir(path)


def read_text(path: str) -> str:
    """A file's UTF-8 text (``FileNotFoundError`` if missing)."""
    return files_for(path).read_bytes(path).decode("utf-8")


def write_text_durable(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to a new file and make it durable (``FileExistsError`` if it exists)."""
    files_for(path).write_new(path, text.encode("utf-8"))


def atomic_write_text(path: str, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers see the old or the new content, never a mix.

    Writes a temporary sibling durably, replaces ``path`` with it atomically
    and flushes the parent directory.
    """
    files = files_for(path)
    parent = os.path.dirname(path)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
    try:
        files.write_new(tmp, text.encode("utf-8"))
        files.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            files.remove(tmp)
        raise
    files.fsync_dir(parent)


def link_or_copy(src: str, dst: str) -> None:
    """Hard-link ``src`` to ``dst`` (same bytes, no copy), or copy it where the file system cannot link."""
    files_for(dst).link_or_copy(src, dst)


def link_part_file(parent_dir: str, out_dir: str, name: str) -> None:
    """:func:`link_or_copy` the part file ``name`` of ``parent_dir`` into ``out_dir``, with its ``.crc`` side file
    (Hadoop's checksum of the part, written beside it) when there is one."""
    files = files_for(out_dir)
    for side in (name, f".{name}.crc"):
        path = os.path.join(parent_dir, side)
        if side == name or files.exists(path):
            files.link_or_copy(path, os.path.join(out_dir, side))


def file_identity(path: str) -> tuple:
    """A key that is the same for a file's hard links and new when it is rewritten (the key of the process's
    checksum and block-file caches): ``(device, inode, size, mtime_ns)`` locally, ``(uri, 0, size, mtime_ms)`` on
    Hadoop (the size third in both)."""
    return files_for(path).identity(path)


def file_uri(path: str) -> str:
    """The URI Spark reads or writes ``path`` through (``file://`` + the absolute path for a plain path)."""
    return files_for(path).uri(path)


def read_parquet(path: str, **kwargs):
    """A Parquet file as an Arrow table (``pyarrow.parquet.read_table``'s keywords)."""
    import pyarrow.parquet as pq

    return pq.read_table(files_for(path).arrow_source(path), **kwargs)


def write_parquet(table, path: str, **kwargs) -> None:
    """Write an Arrow table as the new Parquet file ``path`` (``pyarrow.parquet.write_table``'s keywords)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = files_for(path)
    if isinstance(files, PosixFiles):
        pq.write_table(table, path, **kwargs)
        return
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **kwargs)
    files.write_new(path, sink.getvalue().to_pybytes())


LOCK_MODE_ENV = "SPARK_UNLEARN_STORE_LOCK"
"""``flock`` (default on local paths and ``file:`` URIs; falls back to ``lease`` where the file system refuses
flock) or ``lease``.  Other Hadoop file systems (``hdfs://``) always use the lease."""

LEASE_SECONDS = 30.0
"""A lease not renewed for this long is stale: its holder died (a live holder renews it every third of this)."""

LEASE_ENV = "SPARK_UNLEARN_STORE_LEASE_S"
"""Overrides :data:`LEASE_SECONDS` (seconds, > 0): how long a killed holder keeps others waiting."""


def lease_seconds() -> float:
    """The lease length: :data:`LEASE_ENV` if set, else :data:`LEASE_SECONDS`.

    Raises
    ------
    ConfigError
        The variable is not a positive number.
    """
    raw = os.environ.get(LEASE_ENV)
    if raw is None:
        return LEASE_SECONDS
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        from spark_unlearn.errors import ConfigError

        raise ConfigError(f"{LEASE_ENV}={raw!r}: give the lease length in seconds, a positive number such as 30")
    return value


def _flock_path(path: str) -> str | None:
    """The local file ``flock`` can lock for ``path``: itself, the path of a ``file:`` URI, or ``None`` (HDFS)."""
    if not is_uri(path):
        return path
    if path.lower().startswith("file:"):
        from urllib.parse import unquote, urlparse

        return unquote(urlparse(path).path)
    return None


@contextlib.contextmanager
def exclusive_lock(path: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` body.

    Serialises publishers of one store so two of them never pick the same
    version number, and makes the compare-and-swap of a commit (read
    ``CURRENT``, compare, replace) one step.  A plain path and a ``file:``
    URI use ``fcntl.flock`` on the local file (honoured by NFSv4; a store
    opened both ways is locked by one lock); other Hadoop file systems
    (``hdfs://``), a file system that refuses flock, or
    ``SPARK_UNLEARN_STORE_LOCK=lease`` use a lease file (:func:`lease_lock`),
    which needs only an exclusive create and a rename.
    """
    local = _flock_path(path)
    if local is None or os.environ.get(LOCK_MODE_ENV, "flock") == "lease":
        with lease_lock(path + ".lease"):
            yield
        return
    path = local
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        with lease_lock(path + ".lease"):
            yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # e.g. ENOLCK / EOPNOTSUPP on file systems without locks
            log.warning("flock refused on %s (%s): using a lease file instead", path, exc)
            os.close(fd)
            fd = -1
            with lease_lock(path + ".lease"):
                yield
            return
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        if fd >= 0:
            os.close(fd)


@contextlib.contextmanager
def lease_lock(path: str, *, lease_s: float | None = None, poll_s: float = 0.05) -> Iterator[None]:
    """Hold the lease file ``path`` for the ``with`` body: a lock that needs no ``flock``.

    Protocol (any file system with an atomic exclusive create and an atomic
    rename of one file that never replaces, as HDFS has; the back ends give
    both, :mod:`spark_unlearn.store.posix_files`):

    1. *Acquire*: create ``path`` exclusively with a random token, durably.
       If it exists, wait and retry.
    2. *Renew*: while the body runs, a thread sets the file's modification
       time every ``lease_s / 3`` seconds, so a live holder never looks stale.
    3. *Break*: a lease whose modification time is older than ``lease_s``
       belonged to a holder that died.  A waiter renames it to a unique
       tombstone (only one rename of that file can succeed), then checks that
       the tombstone holds the very token it judged stale; if a fresh lease
       was taken in between, it is renamed back into place (unless yet
       another was taken).  Then it retries step 1.
    4. *Release*: remove ``path`` if it still holds our token.

    Limits (known): a lease is judged stale by comparing the file's
    modification time with this machine's clock, so a holder paused for
    longer than ``lease_s`` or a clock far ahead of the file server's can see
    a live lease broken; two waiters breaking the same stale lease can, in a
    narrow race, break the fresh one too; and a process in ``flock`` mode
    does not exclude one in ``lease`` mode on the same plain path.  In each
    case two publishers could hold the lock at once, and the compare-and-swap,
    which runs under it, would not protect the second.  ``flock`` stays the
    default for plain paths.
    """
    import threading
    import time

    files = files_for(path)
    lease_s = lease_seconds() if lease_s is None else lease_s
    token = uuid.uuid4().hex
    while True:
        try:
            files.write_new(path, token.encode())
        except FileExistsError:
            _break_if_stale(files, path, lease_s)
            time.sleep(poll_s)
            continue
        break
    stop = threading.Event()

    def renew():
        while not stop.wait(lease_s / 3):
            with contextlib.suppress(Exception):
                files.touch(path)

    keeper = threading.Thread(target=renew, name="lease-renewal", daemon=True)
    keeper.start()
    try:
        yield
    finally:
        stop.set()
        keeper.join()
        if _read_token(files, path) == token:
            with contextlib.suppress(OSError):
                files.remove(path)


def _read_token(files, path: str) -> str | None:
    try:
        return files.read_bytes(path).decode("utf-8", "replace").strip()
    except OSError:
        return None


def _break_if_stale(files, path: str, lease_s: float) -> None:
    import time

    try:
        age = time.time() - files.mtime(path)
    except FileNotFoundError:
        return
    if age <= lease_s:
        return
    stale = _read_token(files, path)
    tomb = f"{path}.broken-{uuid.uuid4().hex}"
    try:
        files.rename(path, tomb)
    except OSError:
        return  # another waiter broke it first (or it is gone): retry the create
    if _read_token(files, tomb) != stale:
        # A fresh lease was taken between our look and our rename: put it back (fails only if yet another was taken).
        with contextlib.suppress(OSError):
            files.link_back(tomb, path)
    else:
        log.warning("broke the lease %s, not renewed for %.0f s (its holder died)", path, age)
    with contextlib.suppress(OSError):
        files.remove(tomb)


@contextlib.contextmanager
def held_lock(path: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created) for the body, and remove the file afterwards.

    Marks a piece of work (a staging directory) as in progress: another
    process can tell live work from debris left by a killed one with
    :func:`is_abandoned`.
    """
    local = _flock_path(path)
    with exclusive_lock(path):
        try:
            yield
        finally:
            if local is not None:
                with contextlib.suppress(OSError):
                    os.remove(local)


def is_abandoned(lock_path: str) -> bool:
    """True if nobody holds ``lock_path`` (so the work it marks was abandoned).

    A missing lock file counts as abandoned.  Uses the lease's age where the
    work is marked by a lease file (:func:`lease_lock`), else a non-blocking
    ``flock``.
    """
    import time

    files = files_for(lock_path)
    try:
        return time.time() - files.mtime(lock_path + ".lease") > lease_seconds()
    except FileNotFoundError:
        pass
    lock_path = _flock_path(lock_path)
    if lock_path is None:
        return True
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        return False
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return True
    finally:
        os.close(fd)

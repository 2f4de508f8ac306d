"""Small local-filesystem helpers for the model store: checksums, fsync, atomic replace, locking."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import uuid
from collections.abc import Iterator

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


def sha256_file(path: str, *, fsync: bool = False) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks.

    Parameters
    ----------
    path
        File to hash.
    fsync
        Also flush the file to stable storage.  Spark/Hadoop's local writer
        never fsyncs, so the publisher does it here while the file is open
        anyway; otherwise a crash right after publishing could leave a version
        whose checksums were computed from pages that never reached the disk.
    """
    digest = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        with os.fdopen(fd, "rb", closefd=False) as fh:
            for block in iter(lambda: fh.read(_CHUNK), b""):
                digest.update(block)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)
    return digest.hexdigest()


def list_files(root: str) -> list[str]:
    """Every regular file under ``root``, as sorted POSIX-style paths relative to ``root``.

    Hidden files (Hadoop's ``.crc`` side files) are included: they are part of
    what was written and Hadoop's local reader checks them.
    """
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            full = os.path.join(dirpath, name)
            out.append(os.path.relpath(full, root).replace(os.sep, "/"))
    return sorted(out)


def fsync_dir(path: str) -> None:
    """Flush a directory's entries (a rename or create is durable only after this)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def write_text_durable(path: str, text: str) -> None:
    """Write ``text`` (UTF-8) to a new file and fsync it."""
    with open(path, "x", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_write_text(path: str, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers see the old or the new content, never a mix.

    Writes a temporary sibling, fsyncs it, ``os.replace``-s it over ``path``
    and fsyncs the parent directory.
    """
    parent = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{uuid.uuid4().hex}")
    try:
        write_text_durable(tmp, text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    fsync_dir(parent)


@contextlib.contextmanager
def exclusive_lock(path: str) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (created if missing) for the ``with`` body.

    Serialises publishers of one store so two of them never pick the same
    version number.  Uses ``fcntl.flock`` (honoured by NFSv4); on platforms
    without ``fcntl`` it degrades to no locking.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        log.warning("fcntl unavailable: publishing to %s is not serialised between processes", path)
        yield
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def held_lock(path: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created) for the body, and remove the file afterwards.

    Marks a piece of work (a staging directory) as in progress: another
    process can tell live work from debris left by a killed one with
    :func:`is_abandoned`.
    """
    with exclusive_lock(path):
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                os.remove(path)


def is_abandoned(lock_path: str) -> bool:
    """True if nobody holds ``lock_path`` (so the work it marks was abandoned).

    A missing lock file counts as abandoned.  Uses a non-blocking
    ``flock``; without ``fcntl`` nothing is ever considered abandoned.
    """
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

"""The model store's file operations on a local or NFS path (plain paths): the operating system's calls.

One of the two back ends behind :mod:`spark_unlearn.store.fsutil` (the other
is :mod:`spark_unlearn.store.hadoop_files`).  Both offer the same methods with
the same contract, so the store above them is written once:

* ``rename`` never replaces an existing destination (``FileExistsError``);
* ``replace`` swaps a file in atomically (readers see the old or the new bytes);
* ``write_new`` creates a file exclusively and makes it durable;
* missing paths raise ``FileNotFoundError``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil

_CHUNK = 1 << 20


class PosixFiles:
    """File operations on plain local paths (``os``, ``shutil``, ``fsync``)."""

    scheme = ""

    def exists(self, path: str) -> bool:
        return os.path.lexists(path)

    def isdir(self, path: str) -> bool:
        return os.path.isdir(path)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def makedirs(self, path: str, exist_ok: bool = True) -> None:
        os.makedirs(path, exist_ok=exist_ok)

    def mkdir(self, path: str) -> None:
        os.mkdir(path)

    def remove(self, path: str) -> None:
        os.remove(path)

    def rmtree(self, path: str) -> None:
        """Remove a directory tree or a file; a missing path is not an error, any other failure raises."""
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        except FileNotFoundError:
            pass

    def rename(self, src: str, dst: str) -> None:
        """Move ``src`` to ``dst`` atomically (``rename(2)``); ``dst`` must not exist (checked first: callers rename
        to fresh names, or under a lock)."""
        if os.path.lexists(dst):
            raise FileExistsError(dst)
        os.rename(src, dst)

    def link_back(self, src: str, dst: str) -> None:
        """Put the file ``src`` back at ``dst`` unless one is there (a hard link: atomic, never replaces)."""
        os.link(src, dst)

    def replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)

    def read_bytes(self, path: str) -> bytes:
        with open(path, "rb") as fh:
            return fh.read()

    def write_new(self, path: str, data: bytes) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)

    def size(self, path: str) -> int:
        return os.path.getsize(path)

    def mtime(self, path: str) -> float:
        return os.stat(path).st_mtime

    def touch(self, path: str) -> None:
        os.utime(path)

    def identity(self, path: str) -> tuple:
        st = os.stat(path)
        return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns

    def walk(self, root: str) -> list[str]:
        out: list[str] = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in filenames:
                out.append(os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/"))
        return sorted(out)

    def link_or_copy(self, src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    def sha256(self, path: str, *, fsync: bool = False) -> str:
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

    def fsync_dir(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        except OSError:  # pragma: no cover - platforms that cannot open directories
            return
        try:
            with contextlib.suppress(OSError):  # some file systems refuse fsync on directories
                os.fsync(fd)
        finally:
            os.close(fd)

    def uri(self, path: str) -> str:
        # Explicit file:// so a cluster whose default filesystem is HDFS still uses the local/NFS path.
        return "file://" + os.path.abspath(path)

    def arrow_source(self, path: str):
        return path


__all__ = ["PosixFiles"]

"""The model store's file operations on a Hadoop FileSystem URI (``file://``, ``hdfs://``), through Spark's JVM.

The other back end behind :mod:`spark_unlearn.store.fsutil`, with the
contract stated in :mod:`spark_unlearn.store.posix_files`.  Every call goes
through ``org.apache.hadoop.fs.FileSystem`` of the running SparkSession's
Hadoop configuration, so a store is wherever Spark can write: the same
credentials, the same ``core-site.xml``.

What the store needs of a file system, and where each scheme gets it:

* an **exclusive create** (the lease lock, :func:`~spark_unlearn.store.fsutil.lease_lock`,
  and the commit markers of :mod:`spark_unlearn.store.commit`):
  HDFS's ``create(overwrite=false)`` is one NameNode operation.  Hadoop's
  local file system checks, then creates, so for ``file://`` the create is
  the operating system's ``O_CREAT | O_EXCL`` on the same file.  On an
  object store it is ``create(overwrite=false)`` too, which is atomic only
  where the connector sends a conditional write (S3's ``If-None-Match``);
* an **atomic rename that never replaces** (a version's directory moving into
  ``versions/``): HDFS's and the local ``rename``;
* an **atomic replace** of one small file (``CURRENT``, the ledger):
  HDFS's ``rename`` with ``Options.Rename.OVERWRITE``; the local ``rename(2)``;
  on an object store, an overwriting upload (an object is replaced whole).

Object stores (``s3a://``, ``gs://``, ``abfs://``) have no atomic rename
(:attr:`HadoopFiles.atomic_rename` is false): their stores commit by markers,
which need none (:class:`~spark_unlearn.store.commit.MarkerCommit`).

``file://`` is served by Hadoop's *raw* local file system: no ``.crc`` side
files for what the store writes itself, and the same bytes on disk as a
store written through a plain path (a store can be opened either way).
What the driver reads or writes itself crosses the Py4J gateway (about
20–40 MB/s here, in chunks of 16 MiB): manifests, the ledger, the touched
blocks, and every file it hashes (each file Spark writes is hashed once at
publication; a ``load(verify=True)`` hashes a version's files unless this
process already did).  Spark's own reads and writes of the tables never
cross it.
"""

from __future__ import annotations

import hashlib
import os
from urllib.parse import urlparse

from spark_unlearn.errors import ConfigError, OutputPathError

ATOMIC_RENAME_SCHEMES = ("file", "hdfs")
"""Schemes whose Hadoop file system has atomic renames (others commit by markers)."""

_NOT_FOUND = "java.io.FileNotFoundException"
_EXISTS = ("FileAlreadyExistsException", "AlreadyBeingCreatedException")  # the latter: HDFS, another client's create
_CHUNK = 16 << 20


def _java_class(exc: BaseException) -> str | None:
    java = getattr(exc, "java_exception", None)
    return None if java is None else java.getClass().getName()


def _already_exists(exc: BaseException) -> bool:
    # HDFS wraps a NameNode's exception in a RemoteException: look at its text too.
    text = f"{_java_class(exc)} {getattr(exc, 'java_exception', '')}"
    return any(name in text for name in _EXISTS)


class HadoopFiles:
    """File operations on URIs of one Hadoop file system (one scheme and authority).

    Parameters
    ----------
    uri
        Any URI on the file system (``file:///data/store``, ``hdfs://nn:8020/models``).

    Raises
    ------
    ConfigError
        No SparkSession is running (the file system comes from its Hadoop configuration).
    OutputPathError
        Spark's Hadoop has no file system for the scheme (its connector is not on the classpath).
    """

    def __init__(self, uri: str) -> None:
        from pyspark import SparkContext

        self.scheme = urlparse(uri).scheme.lower()
        self.atomic_rename = self.scheme in ATOMIC_RENAME_SCHEMES
        # The context, not the active session: a session is active per thread, and the store is used from threads.
        sc = SparkContext._active_spark_context
        if sc is None:
            raise ConfigError(f"the model store at {uri!r} is opened through Hadoop's FileSystem: start a SparkSession "
                              "first (the file system comes from its Hadoop configuration), or use a plain local path")
        self._gateway = sc._gateway
        self._jvm = sc._jvm
        self._path_class = self._jvm.org.apache.hadoop.fs.Path
        try:
            fs = self._path_class(uri).getFileSystem(sc._jsc.hadoopConfiguration())
        except Exception as exc:
            missing = (_java_class(exc) == "org.apache.hadoop.fs.UnsupportedFileSystemException"
                       or "ClassNotFoundException" in str(getattr(exc, "java_exception", "")))
            if not missing:
                raise
            raise OutputPathError(f"{uri!r}: Spark's Hadoop has no file system for {self.scheme}:// (put its connector, "
                                  "e.g. hadoop-aws for s3a://, on the classpath), or use a plain path") from None
        if self.scheme == "file":
            fs = fs.getRawFileSystem()
        self._fs = fs

    # ------------------------------------------------------------ internals
    def _p(self, path: str):
        return self._path_class(path)

    def _local(self, path: str) -> str:
        return urlparse(path).path

    def _status(self, path: str):
        try:
            return self._fs.getFileStatus(self._p(path))
        except Exception as exc:
            if _java_class(exc) == _NOT_FOUND:
                raise FileNotFoundError(path) from None
            raise

    # ------------------------------------------------------------ contract
    def exists(self, path: str) -> bool:
        return bool(self._fs.exists(self._p(path)))

    def isdir(self, path: str) -> bool:
        try:
            return bool(self._status(path).isDirectory())
        except FileNotFoundError:
            return False

    def listdir(self, path: str) -> list[str]:
        if not self._status(path).isDirectory():
            raise NotADirectoryError(path)
        return [s.getPath().getName() for s in self._fs.listStatus(self._p(path))]

    def makedirs(self, path: str, exist_ok: bool = True) -> None:
        if not exist_ok and self.exists(path):
            raise FileExistsError(path)
        if not self._fs.mkdirs(self._p(path)):
            raise OSError(f"could not create directory {path}")

    def mkdir(self, path: str) -> None:
        self.makedirs(path, exist_ok=False)

    def remove(self, path: str) -> None:
        if not self._fs.delete(self._p(path), False):
            raise FileNotFoundError(path)

    def rmtree(self, path: str) -> None:
        self._fs.delete(self._p(path), True)

    def rename(self, src: str, dst: str) -> None:
        if self.exists(dst):
            raise FileExistsError(dst)
        if not self.exists(src):
            raise FileNotFoundError(src)
        # HDFS refuses to replace an existing destination; the raw local file system does so only for a directory,
        # so for a file the check above is the guard (callers rename to fresh names, or under a lock).
        try:
            moved = self._fs.rename(self._p(src), self._p(dst))
        except Exception as exc:
            if _java_class(exc) == _NOT_FOUND:
                raise FileNotFoundError(src) from None
            raise OSError(f"could not rename {src} to {dst}: {exc}") from None
        if not moved:
            if not self.exists(src):
                raise FileNotFoundError(src)
            if self.exists(dst):
                raise FileExistsError(dst)
            raise OSError(f"could not rename {src} to {dst}")

    def link_back(self, src: str, dst: str) -> None:
        """Put the file ``src`` back at ``dst`` unless one is there (no hard links here: a checked rename)."""
        self.rename(src, dst)

    def replace(self, src: str, dst: str) -> None:
        if not self.atomic_rename:  # an object store: an upload replaces the object whole
            self._upload(dst, self.read_bytes(src))
            self._fs.delete(self._p(src), False)
            return
        if self.scheme == "file":
            os.replace(self._local(src), self._local(dst))  # rename(2): what the raw local rename calls
            return
        rename = getattr(self._jvm.org.apache.hadoop.fs, "Options$Rename")
        options = self._gateway.new_array(rename, 1)
        options[0] = rename.OVERWRITE
        self._fs.rename(self._p(src), self._p(dst), options)  # DistributedFileSystem: one NameNode operation

    def _chunks(self, path: str):
        """The file's bytes in chunks of at most 16 MiB (a Java array per chunk, never one for the whole file)."""
        size = self.size(path)
        try:
            stream = self._fs.open(self._p(path))
        except Exception as exc:
            if _java_class(exc) == _NOT_FOUND:
                raise FileNotFoundError(path) from None
            raise
        io_utils = self._jvm.org.apache.commons.io.IOUtils
        try:
            done = 0
            while done < size:
                n = min(_CHUNK, size - done)
                yield bytes(io_utils.toByteArray(stream, n))
                done += n
        finally:
            stream.close()

    def read_bytes(self, path: str) -> bytes:
        return b"".join(self._chunks(path))

    def write_new(self, path: str, data: bytes) -> None:
        if self.scheme == "file":
            # Hadoop's local create checks existence first, then opens: not exclusive between processes.
            fd = os.open(self._local(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.close(fd)
            overwrite = True
        else:
            overwrite = False
        try:
            out = self._fs.create(self._p(path), overwrite)
        except Exception as exc:
            if _already_exists(exc):
                raise FileExistsError(path) from None
            raise
        try:
            for start in range(0, len(data), 1 << 24):
                out.write(bytearray(data[start:start + (1 << 24)]))
            out.hsync()
        finally:
            out.close()

    def size(self, path: str) -> int:
        return int(self._status(path).getLen())

    def mtime(self, path: str) -> float:
        return self._status(path).getModificationTime() / 1000.0

    def _upload(self, path: str, data: bytes) -> None:
        """Write ``path`` whole, replacing it (an object store shows the new object only once it is complete)."""
        out = self._fs.create(self._p(path), True)
        try:
            for start in range(0, len(data), _CHUNK):
                out.write(bytearray(data[start:start + _CHUNK]))
        finally:
            out.close()

    def touch(self, path: str) -> None:
        import time

        if not self.atomic_rename:
            # An object has no settable modification time (setTimes may do nothing): upload the same bytes again.
            self._upload(path, self.read_bytes(path))
            return
        self._fs.setTimes(self._p(path), int(time.time() * 1000), -1)

    def identity(self, path: str) -> tuple:
        st = self._status(path)
        return self.qualified(path), 0, int(st.getLen()), int(st.getModificationTime())  # size third, as locally

    def qualified(self, path: str) -> str:
        return self._fs.makeQualified(self._p(path)).toString()

    def walk(self, root: str) -> list[str]:
        base = self.qualified(root).rstrip("/") + "/"
        out: list[str] = []
        files = self._fs.listFiles(self._p(root), True)
        while files.hasNext():
            full = files.next().getPath().toString()
            out.append(full[len(base):] if full.startswith(base) else full)
        return sorted(out)

    def link_or_copy(self, src: str, dst: str) -> None:
        # Hadoop file systems have no hard links: the bytes are copied (same bytes, same checksum).
        self.write_new(dst, self.read_bytes(src))

    def sha256(self, path: str, *, fsync: bool = False) -> str:
        digest = hashlib.sha256()
        for chunk in self._chunks(path):
            digest.update(chunk)
        digest = digest.hexdigest()
        if fsync and self.scheme == "file":  # HDFS's blocks are replicated at close; a local file needs its fsync
            fd = os.open(self._local(path), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return digest

    def fsync_dir(self, path: str) -> None:
        if self.scheme == "file":
            from spark_unlearn.store.posix_files import PosixFiles

            PosixFiles().fsync_dir(self._local(path))

    def uri(self, path: str) -> str:
        return path

    def arrow_source(self, path: str):
        import pyarrow as pa

        return pa.BufferReader(self.read_bytes(path))


__all__ = ["ATOMIC_RENAME_SCHEMES", "HadoopFiles"]

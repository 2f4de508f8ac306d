"""How a version becomes current: by an atomic rename, or by a commit marker where a file system has no rename.

:class:`~spark_unlearn.store.model_store.ModelStore` writes a version, then,
under the store lock, checks that ``CURRENT`` still names the version the
work started from (the compare-and-swap) and switches it.  Two protocols:

**rename** (plain paths, ``file://``, ``hdfs://``): the version is written
under ``.staging/<uuid>/``, renamed to ``versions/vNNNNNN`` (a rename that
never replaces) and ``CURRENT`` is replaced atomically (write a sibling,
rename it over).  A reader following ``CURRENT`` never sees a partial version.

**markers** (file systems without an atomic rename: object stores; or any
store with ``SPARK_UNLEARN_STORE_COMMIT=markers`` when it is created): no
rename anywhere in the commit.

* The version's number is *reserved* first, by creating
  ``.staging/vNNNNNN.reserved`` exclusively (a concurrent publisher takes
  the next number), and the version is written in place, in
  ``versions/vNNNNNN/``, while a lock held on ``.staging/vNNNNNN.lock``
  marks it as live work.
* The commit is the exclusive create of ``commits/<sequence>``, one more
  than the last, holding the version's name: ``CURRENT`` is the name in the
  highest marker.  A rollback is one more marker.  The markers are the
  history of ``CURRENT``.
* Until its marker exists a version is not current, whatever its files; a
  publisher killed before it leaves a version that the next job removes
  once its lock is free (:meth:`MarkerCommit.abandoned`), as it removes
  staging debris under the rename protocol.  Its number is never reused
  (``.staging/vNNNNNN.abandoned`` stays), and a publisher that was only
  paused finds its reservation gone and commits nothing.  A reserved name is
  not listed as a version until its reservation is released.

A store keeps the protocol it was created with: ``commits/`` present means
markers, a ``CURRENT`` file means rename.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
import uuid

from spark_unlearn.errors import StoreError
from spark_unlearn.store.fsutil import (
    atomic_write_text,
    files_for,
    held_lock,
    is_abandoned,
    is_uri,
    lease_seconds,
    read_text,
)

log = logging.getLogger(__name__)

CURRENT_FILE = "CURRENT"
COMMITS_DIR = "commits"
VERSIONS_DIR = "versions"
STAGING_DIR = ".staging"
COMMIT_ENV = "SPARK_UNLEARN_STORE_COMMIT"
"""``markers`` creates new stores with commit markers even where a rename exists (tests, slow renames)."""

VERSION_RE = re.compile(r"^v(\d{6,})$")
_MARKER_RE = re.compile(r"^(\d{12})$")
_RESERVED = ".reserved"
_ABANDONED = ".abandoned"


def version_name(number: int) -> str:
    return f"v{number:06d}"


def version_names(names) -> list[str]:
    """The version names among ``names``, oldest first."""
    found = [(int(m.group(1)), n) for n in names if (m := VERSION_RE.match(n))]
    return [n for _, n in sorted(found)]


def _check_name(name: str) -> None:
    if not isinstance(name, str) or not VERSION_RE.match(name):
        raise StoreError(f"{name!r} is not a version name like 'v000001'; CURRENT was not changed")


class RenameCommit:
    """``CURRENT`` replaced atomically; versions staged under ``.staging/<uuid>/`` and renamed into place."""

    name = "rename"

    def __init__(self, root: str) -> None:
        self.root = root
        self.files = files_for(root)

    def current(self) -> str | None:
        path = os.path.join(self.root, CURRENT_FILE)
        try:
            name = read_text(path).strip()
        except FileNotFoundError:
            return None
        if not VERSION_RE.match(name):
            raise StoreError(f"{path} holds {name!r}, not a version name like 'v000001'; the store is corrupt")
        return name

    @contextlib.contextmanager
    def workspace(self):
        """``(directory to write the version in, its name or None)``, held as live work for the ``with`` body."""
        staging_dir = os.path.join(self.root, STAGING_DIR)
        self.files.makedirs(staging_dir)
        self.files.makedirs(os.path.join(self.root, VERSIONS_DIR))
        staging = os.path.join(staging_dir, uuid.uuid4().hex)
        with held_lock(staging + ".lock"):
            self.files.mkdir(staging)
            try:
                yield staging, None
            except BaseException:
                self.files.rmtree(staging)
                raise

    def place(self, work: str, name: str) -> str:
        """Move the written version to ``versions/<name>`` (under the store lock); returns its directory."""
        versions = os.path.join(self.root, VERSIONS_DIR)
        final = os.path.join(versions, name)
        self.files.fsync_dir(work)
        if self.files.exists(final):
            raise StoreError(f"{final} already exists although the store lock is held; refusing to overwrite")
        self.files.rename(work, final)
        self.files.fsync_dir(versions)
        return final

    def switch(self, name: str, placed: str | None = None, work: str | None = None) -> None:
        """Make ``name`` current (under the store lock).  If that fails, a version ``placed`` by :meth:`place` is
        moved back to ``work`` (or removed), so a failed publish leaves no trace."""
        _check_name(name)
        try:
            atomic_write_text(os.path.join(self.root, CURRENT_FILE), name + "\n")
        except BaseException:
            if placed is not None:
                try:
                    self.files.rename(placed, work)
                except OSError:
                    with contextlib.suppress(OSError):
                        self.files.rmtree(placed)
            raise

    def hidden(self) -> set[str]:
        """Directories in ``versions/`` that are not versions yet: none (work is staged elsewhere)."""
        return set()

    def is_live(self, name: str) -> bool:
        """Whether a publisher is still writing ``versions/<name>``: never (work is staged elsewhere)."""
        return False

    def _listdir(self, path: str) -> list[str]:
        """The names in directory ``path``; none if it does not exist."""
        try:
            return self.files.listdir(path)
        except FileNotFoundError:
            return []

    def _drop_lock(self, lock: str) -> None:
        for path in (lock, lock + ".lease"):  # flock's file, or the stale lease
            with contextlib.suppress(OSError):
                self.files.remove(path)

    def abandoned(self) -> list[str]:
        """Remove the staging debris of killed publishers; returns what was removed."""
        staging_dir = os.path.join(self.root, STAGING_DIR)
        removed = []
        for name in self._listdir(staging_dir):
            if name.endswith((".lock", ".lease")):
                continue
            lock = os.path.join(staging_dir, name + ".lock")
            if is_abandoned(lock):
                log.warning("removing %s, left by a publish that was interrupted", os.path.join(staging_dir, name))
                with contextlib.suppress(OSError):
                    self.files.rmtree(os.path.join(staging_dir, name))
                self._drop_lock(lock)
                removed.append(name)
        return removed


class MarkerCommit(RenameCommit):
    """``CURRENT`` as the highest commit marker; versions reserved by number and written in place."""

    name = "markers"

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self._tokens: dict[str, str] = {}  # reservations this process holds

    def _markers(self) -> list[str]:
        return sorted(n for n in self._listdir(os.path.join(self.root, COMMITS_DIR)) if _MARKER_RE.match(n))

    def current(self) -> str | None:
        for marker in reversed(self._markers()):
            path = os.path.join(self.root, COMMITS_DIR, marker)
            try:
                name = read_text(path).strip()
            except FileNotFoundError:
                continue
            if VERSION_RE.match(name):
                return name
            # An object store shows a marker only once it is complete; elsewhere one being written may be empty.
            log.warning("commit marker %s holds %r, not a version name: skipped", path, name)
        return None

    def _reserve(self, token: str) -> str:
        staging_dir = os.path.join(self.root, STAGING_DIR)
        taken = [n.rsplit(".", 1)[0] for n in self.files.listdir(staging_dir) if n.endswith((_RESERVED, _ABANDONED))]
        taken += self._listdir(os.path.join(self.root, VERSIONS_DIR))
        existing = version_names(taken)
        number = int(existing[-1][1:]) + 1 if existing else 1
        while True:
            name = version_name(number)
            try:
                self.files.write_new(os.path.join(staging_dir, name + _RESERVED), token.encode())
            except FileExistsError:
                number += 1  # a concurrent publisher reserved it first
                continue
            if self.files.exists(os.path.join(self.root, VERSIONS_DIR, name)):
                number += 1  # a version left by an older publisher under this number
                continue
            return name

    @contextlib.contextmanager
    def workspace(self):
        staging_dir = os.path.join(self.root, STAGING_DIR)
        self.files.makedirs(staging_dir)
        self.files.makedirs(os.path.join(self.root, COMMITS_DIR))
        token = uuid.uuid4().hex
        name = self._reserve(token)
        self._tokens[name] = token
        work = os.path.join(self.root, VERSIONS_DIR, name)
        with held_lock(os.path.join(staging_dir, name + ".lock")):
            try:
                self.files.makedirs(work)
                yield work, name
            except BaseException:
                if name not in self.committed():  # not committed: its files go
                    with contextlib.suppress(OSError):
                        self.files.rmtree(work)
                raise
            finally:
                self._tokens.pop(name, None)
                if self._holds(name, token):
                    with contextlib.suppress(OSError):
                        self.files.remove(os.path.join(staging_dir, name + _RESERVED))

    def _holds(self, name: str, token: str) -> bool:
        try:
            return read_text(os.path.join(self.root, STAGING_DIR, name + _RESERVED)).strip() == token
        except FileNotFoundError:
            return False

    def place(self, work: str, name: str) -> str:
        del name
        self.files.fsync_dir(work)
        return work  # written in place: nothing moves

    def switch(self, name: str, placed: str | None = None, work: str | None = None) -> None:
        del placed, work  # a failed switch leaves the version uncommitted; workspace() removes it
        _check_name(name)
        token = self._tokens.get(name)
        if token is not None and not self._holds(name, token):
            raise StoreError(f"version {name} of {self.root} lost its reservation while it was written (its lock went "
                             "stale, e.g. the process was paused, and another job removed it); nothing was published")
        markers = self._markers()
        seq = int(markers[-1]) + 1 if markers else 1
        path = os.path.join(self.root, COMMITS_DIR, f"{seq:012d}")
        try:
            self.files.write_new(path, (name + "\n").encode())
        except FileExistsError:
            raise StoreError(f"commit marker {path} appeared while the store lock was held: another publisher "
                             "does not take the lock; nothing was published") from None

    def abandoned(self) -> list[str]:
        """Remove reserved versions whose publisher died before committing them (and their reservations)."""
        staging_dir = os.path.join(self.root, STAGING_DIR)
        removed = []
        for entry in self._listdir(staging_dir):
            if not entry.endswith(_RESERVED):
                continue
            name = entry[: -len(_RESERVED)]
            if self.is_live(name):
                continue
            # Read after the lock was found free: a publisher commits before it lets go of its lock.
            if name not in self.committed():
                log.warning("removing version %s of %s: its publisher was interrupted before committing it",
                            name, self.root)
                with contextlib.suppress(OSError):
                    self.files.rmtree(os.path.join(self.root, VERSIONS_DIR, name))
                removed.append(name)
                # The number is never handed out again (a paused publisher may still write under it).
                with contextlib.suppress(OSError):
                    self.files.write_new(os.path.join(staging_dir, name + _ABANDONED), b"")
            with contextlib.suppress(OSError):
                self.files.remove(os.path.join(staging_dir, entry))
            self._drop_lock(os.path.join(staging_dir, name + ".lock"))
        return removed

    def is_live(self, name: str) -> bool:
        """Whether a publisher may still be writing ``versions/<name>``: its reservation exists and either its lock is
        held or the reservation is younger than a lease (the lock is taken just after the reservation)."""
        staging_dir = os.path.join(self.root, STAGING_DIR)
        reserved = os.path.join(staging_dir, name + _RESERVED)
        try:
            age = time.time() - self.files.mtime(reserved)
        except FileNotFoundError:
            return False
        return age < lease_seconds() or not is_abandoned(os.path.join(staging_dir, name + ".lock"))

    def hidden(self) -> set[str]:
        """Reserved names: versions being written, or left by a dead publisher until :meth:`abandoned` removes them."""
        return {n[: -len(_RESERVED)] for n in self._listdir(os.path.join(self.root, STAGING_DIR))
                if n.endswith(_RESERVED)}

    def committed(self) -> set[str]:
        """Every version a marker ever named."""
        out = set()
        for marker in self._markers():
            with contextlib.suppress(FileNotFoundError):
                out.add(read_text(os.path.join(self.root, COMMITS_DIR, marker)).strip())
        return out



def commit_protocol(root: str) -> RenameCommit:
    """The protocol of the store at ``root``: the one it was created with, else the one its file system needs."""
    files = files_for(root)
    if files.exists(os.path.join(root, COMMITS_DIR)):
        return MarkerCommit(root)
    if files.exists(os.path.join(root, CURRENT_FILE)):
        return RenameCommit(root)
    atomic = not is_uri(root) or getattr(files, "atomic_rename", True)
    if not atomic or os.environ.get(COMMIT_ENV, "rename") == "markers":
        return MarkerCommit(root)
    return RenameCommit(root)


__all__ = ["COMMITS_DIR", "COMMIT_ENV", "CURRENT_FILE", "MarkerCommit", "RenameCommit", "STAGING_DIR", "VERSIONS_DIR",
           "VERSION_RE", "commit_protocol", "version_name", "version_names"]

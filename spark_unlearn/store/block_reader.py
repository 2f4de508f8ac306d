"""Reading rows of a blocked version on the driver: only the files that hold the wanted ids' blocks.

A blocked table (:mod:`spark_unlearn.store.blocked`) keys each row to block
``id mod B`` and the manifest maps every file to the blocks it holds, so the
rows of a few ids are in a few known files.  :class:`BlockReader` reads
those files with pyarrow (no Spark job) and selects the rows.

Files are immutable once published, and a version shares its unchanged
files with its parent by hard links (the same inode).  Read files are kept
in one process-wide cache keyed by ``(device, inode, size, mtime)``
(:class:`FileCache`), bounded in bytes, least recently used first out: a
resident service keeps its hot blocks in memory across versions, and a
one-off job reads each file at most once.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from spark_unlearn.errors import StoreError
from spark_unlearn.store.blocked import BLOCKS_KEY, recorded_table_blocks, touched_files
from spark_unlearn.store.fsutil import file_identity, files_for, read_parquet
from spark_unlearn.store.spark_layout import ITEM_FACTORS, USER_FACTORS
from spark_unlearn.store.tables import HOLDOUT_DIR, ITEM_OFFSETS, RATINGS_BY_ITEM_DIR, RATINGS_DIR, USER_OFFSETS

CACHE_BYTES = 2 << 30
"""Default bound of the process-wide cache of read block files (decoded Arrow bytes)."""

# Each table: the side whose blocks key it and its key column.
TABLE_KEYS = {
    USER_FACTORS: ("user", "id"), ITEM_FACTORS: ("item", "id"),
    USER_OFFSETS: ("user", "id"), ITEM_OFFSETS: ("item", "id"),
    RATINGS_DIR: ("user", "user"), HOLDOUT_DIR: ("user", "user"), RATINGS_BY_ITEM_DIR: ("item", "item"),
}


class FileCache:
    """Decoded Parquet files with their key column as numpy, least recently used out beyond ``max_bytes``."""

    def __init__(self, max_bytes: int = CACHE_BYTES):
        self.max_bytes = int(max_bytes)
        self._entries: OrderedDict[tuple, tuple[Any, dict[str, np.ndarray], int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0
        self.bytes_read = 0  # bytes of files read from disk (not served from the cache)

    def get(self, path: str, key: str):
        """``(table, key column as int64)`` of the Parquet file ``path``."""
        ident = file_identity(path)
        with self._lock:
            hit = self._entries.get(ident)
            if hit is not None:
                self._entries.move_to_end(ident)
                self.hits += 1
                table, keys, _ = hit
                if key not in keys:
                    keys[key] = table.column(key).to_numpy().astype(np.int64)
                return table, keys[key]
        table = read_parquet(path)
        with self._lock:
            self.misses += 1
            self.bytes_read += ident[2]
        return table, self._remember(ident, table, key)

    def put(self, path: str, table, key: str) -> None:
        """Remember a file this process just wrote (``table`` is its content): the next version's reader hits."""
        self._remember(file_identity(path), table, key)

    def _remember(self, ident: tuple, table, key: str) -> np.ndarray:
        """Keep ``table`` under ``ident`` (unless already there); returns its key column."""
        keys = {key: table.column(key).to_numpy().astype(np.int64)}
        with self._lock:
            if ident not in self._entries:
                self._entries[ident] = (table, keys, int(table.nbytes) + keys[key].nbytes)
                self._bytes += self._entries[ident][2]
                self._evict()
        return keys[key]

    def _evict(self) -> None:
        while self._bytes > self.max_bytes and len(self._entries) > 1:
            _, (_, _, dropped) = self._entries.popitem(last=False)
            self._bytes -= dropped

    @property
    def nbytes(self) -> int:
        return self._bytes

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._bytes = 0


FILE_CACHE = FileCache()
"""The process-wide cache :class:`BlockReader` uses by default."""


@dataclass(frozen=True)
class TableFiles:
    """One table's files through a :class:`FileCache` (what :func:`~spark_unlearn.store.blocked.rewrite_touched`
    reads and writes): a copy-on-write reads its parent's touched files from memory when they are there, and the
    files it writes are remembered for the next version."""

    key: str
    cache: FileCache = field(default_factory=lambda: FILE_CACHE)

    def read(self, path: str):
        before = self.cache.bytes_read
        table, _ = self.cache.get(path, self.key)
        return table, self.cache.bytes_read - before

    def wrote(self, path: str, table) -> None:
        self.cache.put(path, table, self.key)


def table_files(table: str) -> TableFiles:
    """The cached file access of a blocked table of a version (see :data:`TABLE_KEYS`)."""
    return TableFiles(TABLE_KEYS[table][1])


@dataclass
class BlockReader:
    """Rows of a blocked version's tables by id, read from the files holding their blocks.

    Attributes
    ----------
    path
        The version directory.
    n_blocks
        Blocks per side (``{"user": B_u, "item": B_i}``).
    table_n_blocks
        Tables with their own block count (the ratings copies and holdout,
        :func:`~spark_unlearn.store.blocked.data_blocks_for`); others use
        their side's.
    files
        Per table, the manifest's file map (``{file: {"blocks", "rows"}}``).
    """

    path: str
    n_blocks: dict[str, int]
    files: dict[str, dict[str, dict]]
    cache: FileCache = field(default_factory=lambda: FILE_CACHE)
    files_read: int = 0
    table_n_blocks: dict[str, int] = field(default_factory=dict)  # ratings tables' own block counts

    @classmethod
    def of(cls, path: str, manifest: dict[str, Any], cache: FileCache | None = None) -> "BlockReader | None":
        """The reader of a version whose manifest maps every table a request reads, else ``None``.

        Those are the factor and offsets tables and the ratings blocked by user
        and by item; a version written before they were all blocked, or
        purged, has no reader (the request then scans with Spark).
        """
        blocks = manifest.get(BLOCKS_KEY)
        if not blocks or manifest.get("purged"):
            return None
        files = blocks.get("files") or {}
        need = (USER_FACTORS, ITEM_FACTORS, USER_OFFSETS, ITEM_OFFSETS, RATINGS_DIR, RATINGS_BY_ITEM_DIR)
        if any(t not in files for t in need):
            return None
        return cls(path, {s: int(blocks["n_blocks"][s]) for s in ("user", "item")}, files,
                   cache if cache is not None else FILE_CACHE,
                   table_n_blocks=recorded_table_blocks(blocks))

    def has(self, table: str) -> bool:
        return table in self.files

    def read_file(self, table: str, name: str):
        """``(pyarrow Table, its key column)`` of the file ``name`` of ``table``, through the cache."""
        path = os.path.join(self.path, table, name)
        if not files_for(path).exists(path):
            raise StoreError(f"{path} is listed in the manifest but missing; the version is damaged "
                             "(check it with jobs/audit.py --verify-certificate)")
        self.files_read += 1
        return self.cache.get(path, TABLE_KEYS[table][1])

    def rows(self, table: str, ids: np.ndarray, columns: list[str] | None = None):
        """The rows of ``table`` whose key is in ``ids`` (a pyarrow Table; ``columns``: a projection)."""
        import pyarrow as pa

        side = TABLE_KEYS[table][0]
        ids = np.unique(np.asarray(ids, np.int64))
        if table not in self.files:
            raise StoreError(f"{self.path}: the manifest maps no files of {table}")
        parts = []
        for name in touched_files(self.files[table], self.table_n_blocks.get(table, self.n_blocks[side]), ids):
            data, keys = self.read_file(table, name)
            sel = np.flatnonzero(np.isin(keys, ids))
            if sel.size:
                got = data.take(pa.array(sel))
                parts.append(got.select(columns) if columns else got)
        if not parts:
            return None
        return pa.concat_tables(parts) if len(parts) > 1 else parts[0]

    def table_rows(self, table: str) -> int:
        """Rows of ``table`` in this version, from the manifest's file map (no read)."""
        return sum(int(f["rows"]) for f in self.files.get(table, {}).values())

    def whole(self, table: str, columns: list[str]):
        """Every row of ``table`` (a pyarrow Table of ``columns``): each of its files, through the cache."""
        import pyarrow as pa

        if table not in self.files:
            raise StoreError(f"{self.path}: the manifest maps no files of {table}")
        parts = []
        for name in sorted(self.files[table]):
            parts.append(self.read_file(table, name)[0].select(columns))
        return pa.concat_tables(parts) if parts else None

    def ratings(self, users: np.ndarray, items: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every stored rating of ``users`` (from the user-blocked copy) or ``items`` (the item-blocked one).

        Returns ``(user, item, rating)`` as int64/int64/float32 arrays, each
        pair once.
        """
        us, its, rs = [], [], []
        for table, ids in ((RATINGS_DIR, users), (RATINGS_BY_ITEM_DIR, items)):
            if len(ids) == 0:
                continue
            got = self.rows(table, ids, ["user", "item", "rating"])
            if got is None:
                continue
            us.append(got.column("user").to_numpy().astype(np.int64))
            its.append(got.column("item").to_numpy().astype(np.int64))
            rs.append(got.column("rating").to_numpy().astype(np.float32))
        if not us:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        from spark_unlearn.als.selection import unique_ratings

        return unique_ratings(np.concatenate(us), np.concatenate(its), np.concatenate(rs))


__all__ = ["BlockReader", "CACHE_BYTES", "FILE_CACHE", "FileCache", "TABLE_KEYS", "TableFiles", "table_files"]

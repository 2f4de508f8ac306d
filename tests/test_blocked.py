"""Blocked tables and their copy-on-write: the driver's patch against a slow reference, on pyarrow files.

The Spark side (a full blocked write read back by ``ALSModel.load``, and a
published version patched instead of rewritten) is in tests/test_store.py.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_unlearn.store.blocked import (
    RowFilter,
    TableDelta,
    apply_delta,
    block_of,
    blocks_for,
    filter_blocked,
    patch_blocked,
    patch_reference,
    touched_files,
)

SCHEMA = pa.schema([
    pa.field("id", pa.int32(), nullable=False),
    pa.field("features", pa.list_(pa.field("element", pa.float32(), nullable=False))),
    pa.field("bnorm", pa.float64()),
])


def _table(ids, rng, rank=3):
    ids = np.sort(np.asarray(ids))
    feats = rng.standard_normal((ids.size, rank)).astype(np.float32)
    return pa.Table.from_pydict({"id": ids.astype(np.int32), "features": [list(f) for f in feats],
                                 "bnorm": rng.random(ids.size)}, schema=SCHEMA)


def _rows(table):
    d = table.to_pydict()
    return {i: {"features": np.asarray(f, np.float32), "bnorm": b} for i, f, b in zip(d["id"], d["features"], d["bnorm"])}


def _blocked_dir(path, ids, n_blocks, rng, per_file=2):
    """A table directory whose files hold whole blocks (``per_file`` blocks each), as write_blocked writes it."""
    os.makedirs(path)
    files = {}
    ids = np.asarray(ids)
    blocks = list(range(n_blocks))
    for k in range(0, n_blocks, per_file):
        mine = blocks[k:k + per_file]
        sel = ids[np.isin(block_of(ids, n_blocks), mine)]
        if sel.size == 0:
            continue
        name = f"part-{k:05d}-x-c000.snappy.parquet"
        pq.write_table(_table(sel, rng), os.path.join(path, name))
        files[name] = {"blocks": mine, "rows": int(sel.size)}
    return files


def _read_dir(path):
    return _rows(pq.read_table(path, schema=SCHEMA))


def test_blocks_per_side():
    assert blocks_for(0) == 1 and blocks_for(4096) == 1 and blocks_for(4097) == 2
    assert block_of(np.array([0, 5, 9]), 4).tolist() == [0, 1, 1]


def test_apply_delta_matches_the_reference_on_random_deltas():
    rng = np.random.default_rng(0)
    for trial in range(30):
        ids = rng.choice(200, size=rng.integers(1, 60), replace=False)
        table = _table(ids, rng)
        removed = rng.choice(ids, size=min(ids.size - 1, int(rng.integers(0, 5))), replace=False)
        kept = np.setdiff1d(ids, removed)
        upd = rng.choice(kept, size=min(kept.size, int(rng.integers(0, 6))), replace=False)
        feats = rng.standard_normal((upd.size, 3)).astype(np.float32)
        upd2 = rng.choice(kept, size=min(kept.size, 3), replace=False)
        delta = TableDelta(removed=removed, updates=((upd, {"features": feats}), (upd2, {"bnorm": rng.random(upd2.size)})))
        got = _rows(apply_delta(table, delta.removed, list(delta.updates)))
        want = patch_reference(_rows(table), delta)
        assert sorted(got) == sorted(want), trial
        for i in got:
            np.testing.assert_array_equal(got[i]["features"], np.asarray(want[i]["features"], np.float32))
            assert got[i]["bnorm"] == want[i]["bnorm"]


def test_an_update_of_an_unknown_id_is_ignored_as_the_engines_left_join_does():
    rng = np.random.default_rng(1)
    table = _table([1, 2, 3], rng)
    out = apply_delta(table, np.array([2]), [(np.array([2, 3, 9]), {"bnorm": np.array([5.0, 6.0, 7.0])})])
    assert out.column("id").to_pylist() == [1, 3] and out.column("bnorm").to_pylist()[1] == 6.0
    assert out.schema == table.schema


def test_patch_rewrites_only_the_files_of_touched_blocks_and_links_the_rest(tmp_path):
    rng = np.random.default_rng(2)
    ids = np.arange(0, 300, 3)
    files = _blocked_dir(tmp_path / "parent", ids, 8, rng)
    before = _read_dir(tmp_path / "parent")
    delta = TableDelta(removed=np.array([9]), updates=((np.array([12, 30]), {"bnorm": np.array([7.0, 8.0])}),))
    hit = touched_files(files, 8, delta.ids())
    new_files, stats = patch_blocked(str(tmp_path / "parent"), files, 8, delta, str(tmp_path / "child"))

    after = _read_dir(tmp_path / "child")
    want = patch_reference(before, delta)
    assert sorted(after) == sorted(want) and after[12]["bnorm"] == 7.0 and 9 not in after
    assert stats["files_written"] == len(hit) and stats["files_linked"] == len(files) - len(hit)
    for name in files:
        child = tmp_path / "child" / name
        if name in hit:
            assert not child.exists()
        else:
            assert os.stat(child).st_ino == os.stat(tmp_path / "parent" / name).st_ino
    assert sum(v["rows"] for v in new_files.values()) == len(after)
    for name, info in new_files.items():  # each file still holds whole blocks, sorted by id
        got = pq.read_table(tmp_path / "child" / name).column("id").to_numpy()
        assert set(block_of(got, 8).tolist()) <= set(info["blocks"]) and (np.diff(got) > 0).all()


def test_an_update_in_a_block_no_file_holds_changes_nothing(tmp_path):
    rng = np.random.default_rng(3)
    files = _blocked_dir(tmp_path / "parent", np.array([0, 8, 16]), 8, rng, per_file=1)  # only block 0 exists
    new_files, stats = patch_blocked(str(tmp_path / "parent"), files, 8,
                                     TableDelta(updates=((np.array([3]), {"bnorm": np.array([1.0])}),)),
                                     str(tmp_path / "child"))
    assert new_files == files and stats["files_written"] == 0


RATINGS = pa.schema([pa.field("user", pa.int32(), nullable=False), pa.field("item", pa.int32(), nullable=False),
                     pa.field("rating", pa.float32())])


def _ratings_dir(path, rows, n_blocks):
    """A ratings directory blocked by user, one file per block."""
    os.makedirs(path)
    files = {}
    rows = np.asarray(rows)
    for b in range(n_blocks):
        mine = rows[rows[:, 0] % n_blocks == b]
        if mine.size == 0:
            continue
        name = f"part-{b:05d}-r-c000.snappy.parquet"
        pq.write_table(pa.Table.from_pydict({"user": mine[:, 0].astype(np.int32), "item": mine[:, 1].astype(np.int32),
                                             "rating": mine[:, 2].astype(np.float32)}, schema=RATINGS), path / name)
        files[name] = {"blocks": [b], "rows": int(len(mine))}
    return files


def test_row_filter_matches_the_batch_semantics_and_names_the_blocks_it_can_touch():
    f = RowFilter(users=np.array([3]), items=np.zeros(0, np.int64), pairs=np.array([[5, 7]]))
    keep = f.keep(np.array([3, 5, 5, 6]), np.array([1, 7, 8, 7]))
    assert keep.tolist() == [False, False, True, True]
    assert f.keys().tolist() == [3, 5]
    assert RowFilter(items=np.array([7])).keys() is None  # a withdrawn item can be in any block


def test_filter_blocked_rewrites_only_the_named_users_blocks(tmp_path):
    rng = np.random.default_rng(4)
    rows = np.array([(u, i, float(rng.integers(1, 6))) for u in range(40) for i in rng.choice(50, 5, replace=False)])
    files = _ratings_dir(tmp_path / "parent", rows, 8)
    rule = RowFilter(users=np.array([3]), pairs=np.array([[12, int(rows[rows[:, 0] == 12][0, 1])]]))
    new_files, io = filter_blocked(str(tmp_path / "parent"), files, 8, rule, str(tmp_path / "child"))
    got = pq.read_table(tmp_path / "child").to_pydict()
    kept = {(u, i) for u, i in zip(got["user"], got["item"])}
    want = {(int(u), int(i)) for u, i, _ in rows if rule.keep(np.array([u]), np.array([i]))[0]}
    assert kept == want and io["files_written"] == 2 and io["files_linked"] == len(files) - 2  # blocks 3 and 4
    assert sum(v["rows"] for v in new_files.values()) == len(want)
    with pytest.raises(ValueError, match="touched files"):
        filter_blocked(str(tmp_path / "parent"), files, 8, RowFilter(items=np.array([1])), str(tmp_path / "other"))


# --------------------------------------------------------------------------- reading by block (store/block_reader)


def _ratings_copy(path, rows, key, n_blocks):
    """A ratings table blocked by ``key`` (one file per block), as the store writes it; returns its file map."""
    os.makedirs(path)
    files = {}
    cols = {"user": 0, "item": 1}
    for b in range(n_blocks):
        mine = sorted(r for r in rows if r[cols[key]] % n_blocks == b)
        if not mine:
            continue
        name = f"part-{b:05d}.parquet"
        pq.write_table(pa.table({"user": pa.array([r[0] for r in mine], pa.int32()),
                                 "item": pa.array([r[1] for r in mine], pa.int32()),
                                 "rating": pa.array([r[2] for r in mine], pa.float32())}), os.path.join(path, name))
        files[name] = {"blocks": [b], "rows": len(mine)}
    return files


def test_a_block_reader_reads_only_the_files_of_the_wanted_blocks_and_finds_every_rating(tmp_path):
    from spark_unlearn.store.block_reader import BlockReader, FileCache

    rng = np.random.default_rng(5)
    rows = list({(int(u), int(i)): (int(u), int(i), float(r)) for u, i, r in
                 zip(rng.integers(0, 40, 500), rng.integers(0, 60, 500), rng.integers(1, 6, 500))}.values())
    files = {"ratings": _ratings_copy(str(tmp_path / "ratings"), rows, "user", 4),
             "ratings_by_item": _ratings_copy(str(tmp_path / "ratings_by_item"), rows, "item", 6)}
    files["userFactors"] = _blocked_dir(str(tmp_path / "userFactors"), np.arange(40), 4, rng, per_file=1)
    cache = FileCache()
    reader = BlockReader(str(tmp_path), {"user": 4, "item": 6}, files, cache)
    users, items = np.array([3, 7]), np.array([5])
    u, i, r = reader.ratings(users, items)
    got = sorted(zip(u.tolist(), i.tolist(), r.tolist()))
    assert got == sorted(x for x in rows if x[0] in (3, 7) or x[1] == 5)  # each pair once
    # Users 3 and 7 sit in block 3 of 4, item 5 in block 5 of 6: two files read, nothing else.
    assert cache.misses == 2 and reader.files_read == 2
    table = reader.rows("userFactors", np.array([1, 5, 9]), ["id", "features"])
    assert sorted(table.column("id").to_pylist()) == [1, 5, 9] and cache.misses == 3
    reader.ratings(users, items)
    assert cache.misses == 3 and cache.hits == 2  # the second read comes from memory


def test_the_file_cache_stays_within_its_bound_and_knows_files_it_wrote(tmp_path):
    from spark_unlearn.store.block_reader import FileCache, TableFiles

    rng = np.random.default_rng(6)
    paths = []
    for k in range(4):
        p = str(tmp_path / f"f{k}.parquet")
        pq.write_table(_table(np.arange(k * 100, k * 100 + 100), rng), p)
        paths.append(p)
    one = pq.read_table(paths[0]).nbytes
    cache = FileCache(max_bytes=int(2.5 * one))
    for p in paths:
        cache.get(p, "id")
    assert cache.nbytes <= 2.5 * one and cache.misses == 4
    cache.get(paths[0], "id")  # evicted (least recently used): read again
    assert cache.misses == 5
    files = TableFiles("id", cache)
    new = str(tmp_path / "new.parquet")
    table = _table(np.arange(7), rng)
    pq.write_table(table, new)
    files.wrote(new, table)
    before = cache.bytes_read
    got, from_disk = files.read(new)
    assert from_disk == 0 and cache.bytes_read == before and got.equals(table)
    os.utime(new, ns=(1, 1))  # a file changed in place is a new identity: read again from disk
    assert files.read(new)[1] == os.path.getsize(new)

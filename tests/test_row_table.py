"""RowTable / RaggedTable / csr_by against plain dict references (property tests)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from spark_unlearn.als.row_table import RaggedTable, RowTable, csr_by

ids_lists = st.lists(st.lists(st.integers(-5, 40), max_size=12), max_size=6)


@settings(max_examples=60, deadline=None)
@given(ids_lists)
def test_row_table_matches_a_dict(batches):
    table = RowTable({"v": (np.float64, 2, -1.0), "n": (np.int64, None, 7)})
    ref: dict[int, tuple] = {}
    for j, batch in enumerate(batches):
        ids = np.unique(np.asarray(batch, np.int64))
        vals = np.stack([np.array([i, j], float) for i in ids.tolist()]) if ids.size else np.zeros((0, 2))
        if j % 2:
            table.put(ids, v=vals)
            for i, v in zip(ids.tolist(), vals):
                ref[i] = (v, ref.get(i, (None, 7))[1])
        else:
            pos = table.ensure(ids)
            table["n"][pos] += 1
            for i in ids.tolist():
                v, n = ref.get(i, (np.array([-1.0, -1.0]), 7))
                ref[i] = (v, n + 1)
    assert table.ids.tolist() == sorted(ref)
    for i, (v, n) in ref.items():
        np.testing.assert_array_equal(table.take("v", [i])[0], v)
        assert table.take("n", [i])[0] == n
    absent = np.array([-100, 1000], np.int64)
    assert (table.positions(absent) == -1).all()
    with pytest.raises(KeyError, match="-100"):
        table.take("v", absent)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 50), st.integers(1, 5)), max_size=40), st.lists(st.integers(0, 12), max_size=8))
def test_csr_by_groups_like_a_loop(entries, wanted):
    keys = np.array([e[0] for e in entries], np.int64)
    wanted = np.unique(np.asarray(wanted, np.int64))
    indptr, order = csr_by(keys, wanted)
    for j, w in enumerate(wanted.tolist()):
        assert order[indptr[j]:indptr[j + 1]].tolist() == [p for p, k in enumerate(keys.tolist()) if k == w]


def test_ragged_table_replaces_and_gathers_in_request_order():
    t = RaggedTable()
    t.add(np.array([3, 1]), np.array([0, 2, 3]), np.array([10, 11, 12]), np.array([1.0, 2.0, 3.0]))
    t.add(np.array([3, 5]), np.array([0, 1, 1]), np.array([20]), np.array([4.0]))  # 3 replaced, 5 has no entries
    indptr, src, val = t.gather(np.array([5, 1, 3]))
    assert indptr.tolist() == [0, 0, 1, 2]
    assert src.tolist() == [12, 20] and val.tolist() == [3.0, 4.0]
    assert t.counts(np.array([1, 3, 5])).tolist() == [1, 1, 0]
    with pytest.raises(KeyError, match="4"):
        t.gather(np.array([4]))

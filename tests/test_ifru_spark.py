"""IFRU's Spark side (data preparation, pruning scores, influenced subgraph) against torch/pandas references."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from spark_unlearn.ifru.pruning import (
    kept_from_scores,
    kept_nodes,
    node_counts_spark,
    node_scores_spark,
    node_scores_torch,
    subgraph_spark,
    subgraph_torch,
)

N_USERS, N_ITEMS = 9, 12


@pytest.fixture(scope="module")
def tiny(spark):
    rng = np.random.default_rng(11)
    pairs = rng.choice(N_USERS * N_ITEMS, size=55, replace=False)
    u, i = pairs // N_ITEMS, pairs % N_ITEMS
    label = (rng.random(55) < 0.6).astype(int)
    removed = np.zeros(55, dtype=bool)
    removed[rng.choice(55, size=6, replace=False)] = True
    pdf = pd.DataFrame({"u": u.astype("int32"), "i": i.astype("int32"), "label": label.astype("int32"), "removed": removed})
    df = spark.createDataFrame(pdf).cache()
    t = (torch.tensor(u), torch.tensor(i), torch.tensor(label, dtype=torch.float64), torch.tensor(removed))
    return df, t


def test_spark_node_counts_match_a_count_of_the_terms(tiny):
    df, (u, i, label, removed) = tiny
    got = node_counts_spark(df, N_USERS, N_ITEMS)
    a, b = u.numpy(), i.numpy() + N_USERS
    lab, rem = label.numpy() > 0, removed.numpy()
    for name, mask in [("terms", np.ones(len(a), bool)), ("removed", rem), ("pos", lab), ("pos_kept", lab & ~rem)]:
        ref = [int(((a == v) & mask).sum() + ((b == v) & mask).sum()) for v in range(N_USERS + N_ITEMS)]
        assert getattr(got, name).tolist() == ref, name
    seeds = sorted(set(a[lab & rem].tolist()) | set(b[lab & rem].tolist()))
    assert np.flatnonzero(got.seeds).tolist() == seeds


@pytest.mark.parametrize("hops", [0, 2])
def test_spark_scores_and_kept_match_torch(tiny, hops):
    df, (u, i, label, removed) = tiny
    counts = node_counts_spark(df, N_USERS, N_ITEMS)
    scores = node_scores_spark(df, counts, N_USERS, hops)
    ref = node_scores_torch(u, i, removed, N_USERS, N_ITEMS, hops)
    has = torch.bincount(torch.cat([u, i + N_USERS]), minlength=N_USERS + N_ITEMS) > 0
    assert np.flatnonzero(counts.terms > 0).tolist() == torch.nonzero(has).reshape(-1).tolist()
    assert np.abs(scores - ref.numpy()).max() <= 1e-12
    assert (scores[~has.numpy()] == 0).all()
    for q in (0.5, 0.8):
        kept, thr = kept_nodes(scores, counts.terms > 0, q)
        assert kept.tolist() == kept_from_scores(ref, has, q).tolist()
        assert thr == pytest.approx(float(np.quantile(ref[has].numpy(), q)))


def _canon(sub):
    terms = sorted(
        zip(sub.term_u.tolist(), sub.term_i.tolist(), sub.term_label.tolist(), sub.term_removed.tolist(), sub.term_changed.tolist())
    )

    def edges(e):
        return sorted((a, b, round(w, 12)) for a, b, w in zip(e[0].tolist(), e[1].tolist(), e[2].tolist()))

    rem = sorted(zip(sub.removed_u.tolist(), sub.removed_i.tolist(), sub.removed_label.tolist()))
    kept = None if sub.kept is None else sub.kept.tolist()
    return kept, terms, edges(sub.edges_g), edges(sub.edges_gp), rem


@pytest.mark.parametrize("layers,pruned", [(0, False), (0, True), (1, False), (1, True), (2, True)])
def test_spark_subgraph_matches_torch(spark, tiny, layers, pruned):
    df, (u, i, label, removed) = tiny
    kept_t = torch.tensor([2, N_USERS + 5]) if pruned else None
    got = subgraph_spark(df, N_USERS, N_ITEMS, layers, None if kept_t is None else kept_t.numpy())
    ref = subgraph_torch(u, i, label, removed, N_USERS, N_ITEMS, layers, kept_t)
    assert _canon(got) == _canon(ref)
    if pruned:
        assert got.num_terms < len(u)


def test_kcore_dense_ids_and_split(spark):
    from spark_unlearn.ifru.data import kcore, prepare

    rng = np.random.default_rng(0)
    rows = set()
    while len(rows) < 400:
        rows.add((int(rng.integers(1, 40)) * 3, int(rng.zipf(1.6)) % 70 + 100))
    pdf = pd.DataFrame(sorted(rows), columns=["user", "item"])
    pdf["rating"] = rng.integers(1, 6, len(pdf)).astype("float32")
    df = spark.createDataFrame(pdf.astype({"user": "int32", "item": "int32"}), "user int, item int, rating float")
    ref = pdf.copy()
    while True:
        n = len(ref)
        ref = ref[ref.groupby("user")["user"].transform("size") >= 5]
        ref = ref[ref.groupby("item")["item"].transform("size") >= 5]
        if len(ref) == n:
            break
    got, _ = kcore(df, 5)
    assert sorted(map(tuple, got.select("user", "item").collect())) == sorted(zip(ref.user, ref.item))
    prep = prepare(df, threshold=4.0, k=5, fractions=(0.6, 0.2, 0.2), seed=1)
    assert prep.user_ids.tolist() == sorted(ref.user.unique().tolist())
    assert prep.item_ids.tolist() == sorted(ref.item.unique().tolist())
    parts = [p.toPandas() for p in (prep.train, prep.val, prep.test)]
    allp = pd.concat(parts)
    assert len(allp) == len(ref) and not allp.duplicated(["user", "item"]).any()
    assert (allp.u.map(lambda k: prep.user_ids[k]) == allp.user).all()
    assert (allp.i.map(lambda k: prep.item_ids[k]) == allp.item).all()
    assert ((allp.rating >= 4).astype(int) == allp.label).all()
    assert 0.5 < len(parts[0]) / len(allp) < 0.7


def test_sampled_negatives_are_unobserved_pairs_labelled_zero(spark):
    """Implicit data: prepare(negatives=2) adds label-0 pairs that no user observed, at most 2 per observed pair."""
    from spark_unlearn.ifru.data import prepare

    rng = np.random.default_rng(4)
    pairs = rng.choice(12 * 30, size=150, replace=False)
    pdf = pd.DataFrame({"user": (pairs // 30 + 100).astype("int32"), "item": (pairs % 30 + 500).astype("int32"),
                        "rating": np.ones(150, dtype="float32")})
    ratings = spark.createDataFrame(pdf)
    prep = prepare(ratings, threshold=1.0, k=2, fractions=(0.6, 0.2, 0.2), seed=3, negatives=2)
    rows = pd.concat([p.toPandas() for p in (prep.train, prep.val, prep.test)])
    pos, neg = rows[rows.label == 1], rows[rows.label == 0]
    observed = set(zip(pdf.user, pdf.item))
    assert len(pos) == 150 and set(zip(pos.user, pos.item)) == observed
    assert len(neg) > 0 and not (set(zip(neg.user, neg.item)) & observed)
    assert not neg.duplicated(["user", "item"]).any() and (neg.rating == 0).all()
    assert len(neg) <= 2 * 150
    per_user = neg.groupby("user").size()
    assert (per_user <= 2 * pos.groupby("user").size().reindex(per_user.index)).all()
    # dense ids agree with the raw ids of the positives
    assert (np.asarray(prep.item_ids)[neg.i.to_numpy()] == neg.item.to_numpy()).all()
    again = prepare(ratings, threshold=1.0, k=2, fractions=(0.6, 0.2, 0.2), seed=3, negatives=2)
    assert set(zip(again.train.toPandas().user, again.train.toPandas().item)) == set(
        zip(prep.train.toPandas().user, prep.train.toPandas().item))

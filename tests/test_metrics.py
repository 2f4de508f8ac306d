"""Oracle tests of spark_unlearn.eval: every metric against a brute-force numpy reference.

One small model (7 users, 11 items, rank 3) mixing exact dyadic factors,
which produce ties, with random float factors; the references build the
whole score matrix in numpy.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from pyspark.sql import functions as F

from spark_unlearn.als.model import FactorModel
from spark_unlearn.als.params import ALSParams
from spark_unlearn.errors import SchemaError
from spark_unlearn.eval import forgetting, metrics, topk
from spark_unlearn.schema import FACTORS_SCHEMA, RATINGS_SCHEMA

RANK = 3
USER_IDS = np.array([3, 5, 10, 11, 20, 21, 40])
ITEM_IDS = np.array([1, 2, 4, 7, 8, 13, 14, 30, 31, 50, 64])
UNKNOWN_USER, UNKNOWN_ITEM = 99, 999
TOL = 1e-9


# --------------------------------------------------------------------------
# fixture data
# --------------------------------------------------------------------------


class Case:
    """One model plus train/test ratings, as numpy (for the oracle) and Spark."""

    def __init__(self, spark, U: np.ndarray, V: np.ndarray, seed: int):
        self.U = U.astype(np.float32).astype(np.float64)
        self.V = V.astype(np.float32).astype(np.float64)
        self.S = self.U @ self.V.T
        self.train, self.test = _split(np.random.default_rng(seed))
        # Cached single-partition inputs: sized tables (as read from Parquet)
        # let Spark broadcast them, which keeps these tiny jobs fast.
        self.user_factors = _cached(_factors(spark, USER_IDS, self.U))
        self.item_factors = _cached(_factors(spark, ITEM_IDS, self.V))
        self.train_df = _cached(spark.createDataFrame(self.train, RATINGS_SCHEMA))
        self.test_df = _cached(spark.createDataFrame(self.test, RATINGS_SCHEMA))

    def score(self, user: int, item: int) -> float:
        if user not in USER_IDS or item not in ITEM_IDS:
            return float("nan")
        return float(self.S[_pos(USER_IDS, user), _pos(ITEM_IDS, item)])


def _pos(ids: np.ndarray, value: int) -> int:
    return int(np.flatnonzero(ids == value)[0])


def _cached(df):
    df = df.coalesce(1).cache()
    df.count()
    return df


def _factors(spark, ids, matrix):
    return spark.createDataFrame([(int(i), [float(x) for x in row]) for i, row in zip(ids, matrix)], FACTORS_SCHEMA)


def _split(rng) -> tuple[list, list]:
    """Disjoint train/test pairs; user 40 has no test rows, unknown ids appear in test."""
    train, test = [], []
    for u in USER_IDS:
        items = rng.permutation(ITEM_IDS)
        n_train = int(rng.integers(0, 5))
        n_test = 0 if u == 40 else int(rng.integers(1, 4))
        train += [(int(u), int(i), float(rng.integers(1, 6))) for i in items[:n_train]]
        test += [(int(u), int(i), float(rng.integers(1, 6))) for i in items[n_train : n_train + n_test]]
    test += [
        (UNKNOWN_USER, int(ITEM_IDS[0]), 4.0),  # unknown user
        (int(USER_IDS[0]), UNKNOWN_ITEM, 5.0),  # unknown item: relevant but unretrievable
        (int(USER_IDS[1]), int(ITEM_IDS[-1]), 0.0),  # never relevant (rating 0)
    ]
    test = [row for i, row in enumerate(test) if row[:2] not in {r[:2] for r in test[:i]}]
    train_pairs = {r[:2] for r in train}
    return train, [r for r in test if r[:2] not in train_pairs]


@pytest.fixture(scope="module")
def case(spark):
    """Dyadic users (one all-zero), items half dyadic (two identical) and half random floats.

    Dyadic scores are exact in any summation order, so the oracle sees the
    same ties as Spark: the identical items tie for every user and the zero
    user ties everything.  The float items exercise inexact arithmetic.
    """
    rng = np.random.default_rng(11)
    U = rng.integers(-2, 3, size=(len(USER_IDS), RANK)) / 2.0
    U[4] = 0.0
    V = rng.normal(size=(len(ITEM_IDS), RANK))
    V[:6] = rng.integers(-1, 2, size=(6, RANK)) / 2.0
    V[3] = V[5]
    return Case(spark, U, V, seed=2)


# --------------------------------------------------------------------------
# numpy references
# --------------------------------------------------------------------------


def _relevant(case: Case, threshold) -> dict[int, set[int]]:
    cut = 0.0 if threshold is None else threshold
    rel: dict[int, set[int]] = {}
    for u, i, r in case.test:
        if r > cut:
            rel.setdefault(u, set()).add(i)
    return rel


def _train_items(case: Case, user: int) -> set[int]:
    return {i for u, i, _ in case.train if u == user}


def _ranked_items(case: Case, user: int, exclude: set[int]) -> list[int]:
    row = case.S[_pos(USER_IDS, user)]
    allowed = [(-row[j], int(item)) for j, item in enumerate(ITEM_IDS) if int(item) not in exclude]
    return [item for _, item in sorted(allowed)]


def oracle_ranking(case: Case, k: int, threshold=None) -> dict:
    recalls, plains, ndcgs, unknown = [], [], [], 0
    for user, rel in sorted(_relevant(case, threshold).items()):
        if user not in USER_IDS:
            unknown += 1
            continue
        top = _ranked_items(case, user, _train_items(case, user))[:k]
        hit_ranks = [r + 1 for r, item in enumerate(top) if item in rel]
        recalls.append(len(hit_ranks) / min(k, len(rel)))
        plains.append(len(hit_ranks) / len(rel))
        idcg = sum(1 / math.log2(r + 1) for r in range(1, min(k, len(rel)) + 1))
        ndcgs.append(sum(1 / math.log2(r + 1) for r in hit_ranks) / idcg)
    return {
        f"recall@{k}": float(np.mean(recalls)),
        f"recall_plain@{k}": float(np.mean(plains)),
        f"ndcg@{k}": float(np.mean(ndcgs)),
        "n_users": len(recalls),
        "n_users_unknown": unknown,
    }


def oracle_per_user_auc(case: Case, threshold=None) -> dict[int, tuple[float, int, int]]:
    out = {}
    for user, rel in _relevant(case, threshold).items():
        positives = [i for i in rel if i in ITEM_IDS]
        if user not in USER_IDS or not positives:
            out[user] = (float("nan"), 0, 0)
            continue
        seen = _train_items(case, user) | {i for u, i, _ in case.test if u == user}
        negatives = [case.score(user, j) for j in ITEM_IDS if int(j) not in seen]
        per_pos = [
            (sum(n < case.score(user, p) for n in negatives) + 0.5 * sum(n == case.score(user, p) for n in negatives))
            / len(negatives)
            for p in positives
        ]
        out[user] = (float(np.mean(per_pos)) if negatives else float("nan"), len(positives), len(negatives))
    return out


def oracle_percentile(case: Case, user: int, item: int) -> float:
    if user not in USER_IDS or item not in ITEM_IDS:
        return float("nan")
    s = case.score(user, item)
    others = [case.score(user, j) for j in ITEM_IDS if j != item]
    return (sum(o > s for o in others) + 0.5 * sum(o == s for o in others)) / (len(ITEM_IDS) - 1)


def oracle_auc(scores, labels) -> float:
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    return sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / (len(pos) * len(neg))


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= TOL


# --------------------------------------------------------------------------
# numpy kernels (no Spark)
# --------------------------------------------------------------------------


def test_block_and_row_scores_are_bit_identical():
    rng = np.random.default_rng(3)
    U = rng.normal(size=(5, 8)).astype(np.float32).astype(np.float64)
    V = rng.normal(size=(9, 8)).astype(np.float32).astype(np.float64)
    S = topk.score_block(U, V)
    a, b = np.meshgrid(np.arange(5), np.arange(9), indexing="ij")
    rows = topk.score_rows(U[a.ravel()], V[b.ravel()]).reshape(5, 9)
    assert np.array_equal(S, rows)
    np.testing.assert_allclose(S, U @ V.T, rtol=0, atol=1e-12)


def _user_table(ids, feats, exclude):
    return pa.table(
        {
            "id": pa.array(ids, pa.int32()),
            "features": pa.array(feats, pa.list_(pa.float32())),
            "exclude": pa.array(exclude, pa.list_(pa.int32())),
        }
    )


def _item_table(ids, feats):
    return pa.table({"id": pa.array(ids, pa.int32()), "features": pa.array(feats, pa.list_(pa.float32()))})


def test_top_k_kernel_breaks_ties_by_item_and_excludes():
    users = _user_table([1, 2], [[1.0, 0.0], [0.0, 1.0]], [[5], None])
    items = _item_table([9, 7, 5, 3, 8], [[1.0, 0.0], [1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
    out = topk._top_k_kernel(2, users, items).to_pylist()
    # user 1: 5 excluded, scores 9,7,3 tie at 1 -> 3, 7; user 2: all 0 -> 3, 5
    assert [(r["user"], r["item"], r["score"]) for r in out] == [(1, 3, 1.0), (1, 7, 1.0), (2, 3, 0.0), (2, 5, 0.0)]


def test_features_matrix_rejects_ragged_vectors():
    with pytest.raises(ValueError, match="unequal lengths"):
        topk.features_matrix(pa.array([[1.0, 2.0], [1.0]], pa.list_(pa.float32())))


# --------------------------------------------------------------------------
# predict / rmse
# --------------------------------------------------------------------------


def test_predict_and_rmse_match_oracle(case):
    rows = metrics.predict(case.test_df, case.user_factors, case.item_factors).collect()
    assert len(rows) == len(case.test)
    for r in rows:
        assert _same(r["prediction"], case.score(r["user"], r["item"])), r
    assert math.isnan(next(r for r in rows if r["user"] == UNKNOWN_USER)["prediction"])
    assert math.isnan(next(r for r in rows if r["item"] == UNKNOWN_ITEM)["prediction"])

    errors = [(rating - case.score(u, i)) ** 2 for u, i, rating in case.test if not math.isnan(case.score(u, i))]
    model = FactorModel(case.user_factors, case.item_factors, ALSParams(rank=RANK))
    value, n_scored, n_dropped = metrics.rmse_with_coverage(model, case.test_df)
    assert (n_scored, n_dropped) == (len(errors), 2)
    assert abs(value - math.sqrt(np.mean(errors))) <= TOL


# --------------------------------------------------------------------------
# ranking metrics
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "k, threshold, blocks",
    [
        (3, None, (2, 3)),  # several user and item blocks to merge
        (50, 3.0, (512, 4096)),  # k beyond the catalogue, one block pair
    ],
)
def test_ranking_metrics_match_oracle(case, k, threshold, blocks):
    got = metrics.ranking_metrics(
        case.user_factors,
        case.item_factors,
        case.train_df,
        case.test_df,
        k=k,
        relevance_threshold=threshold,
        user_block_size=blocks[0],
        item_block_size=blocks[1],
    )
    want = oracle_ranking(case, k, threshold)
    assert set(got) == set(want)
    assert (got["n_users"], got["n_users_unknown"]) == (want["n_users"], want["n_users_unknown"])
    for key in (f"recall@{k}", f"recall_plain@{k}", f"ndcg@{k}"):
        assert abs(got[key] - want[key]) <= TOL, (key, got, want)


def test_top_k_lists_match_oracle_with_ties(case):
    users = metrics.relevant_pairs(case.test_df).select("user").distinct()
    exclude = case.train_df.groupBy("user").agg(F.collect_list("item").alias("exclude"))
    frame = (
        users.join(case.user_factors.withColumnRenamed("id", "user"), "user")
        .join(exclude, "user", "left")
        .withColumnRenamed("user", "id")
    )
    rows = topk.top_k(frame, case.item_factors, k=4, user_block_size=3, item_block_size=2).collect()
    got: dict[int, list[tuple[int, int]]] = {}
    for r in rows:
        got.setdefault(r["user"], []).append((r["rank"], r["item"]))
    assert set(got) == {u for u in _relevant(case, None) if u in USER_IDS}
    for user, ranked in got.items():
        want = _ranked_items(case, user, _train_items(case, user))[:4]
        assert [item for _, item in sorted(ranked)] == want, user
    zero_user = int(USER_IDS[4])  # all scores tie: the list is the smallest allowed ids
    assert [item for _, item in sorted(got[zero_user])] == sorted(set(ITEM_IDS) - _train_items(case, zero_user))[:4]


# --------------------------------------------------------------------------
# AUC
# --------------------------------------------------------------------------


def test_auc_hand_computed_and_ties(spark):
    hand = spark.createDataFrame([(0.1, 0), (0.4, 0), (0.35, 1), (0.8, 1)], "score double, label int")
    assert abs(metrics.auc(hand) - 0.75) <= TOL

    rng = np.random.default_rng(5)
    scores = (rng.integers(0, 6, size=40) / 4.0).tolist()  # many ties
    labels = rng.integers(0, 2, size=40).tolist()
    frame = spark.createDataFrame(list(zip(labels, scores)), "y int, s double")
    assert abs(metrics.auc(frame, label_col="y", score_col="s") - oracle_auc(scores, labels)) <= TOL


def test_auc_edge_cases(spark):
    one_class = spark.createDataFrame([(0.2, 1), (0.3, 1)], "score double, label int")
    assert math.isnan(metrics.auc(one_class))
    with pytest.raises(SchemaError, match="not 0 or 1"):
        metrics.auc(spark.createDataFrame([(0.2, 1), (0.3, 2)], "score double, label int"))


def test_per_user_auc_matches_oracle(case):
    frame = metrics.per_user_auc_frame(
        case.user_factors, case.item_factors, case.train_df, case.test_df, user_block_size=2, item_block_size=4
    )
    got = {r["user"]: (r["auc"], r["n_pos"], r["n_neg"]) for r in frame.collect()}
    want = oracle_per_user_auc(case)
    assert set(got) == set(want)
    for user, (value, n_pos, n_neg) in want.items():
        assert _same(got[user][0], value), (user, got[user], want[user])
        assert got[user][1:] == (n_pos, n_neg), user
    defined = [v for v, _, _ in want.values() if not math.isnan(v)]
    mean = metrics.per_user_auc(case.user_factors, case.item_factors, case.train_df, case.test_df)
    assert abs(mean - float(np.mean(defined))) <= TOL


# --------------------------------------------------------------------------
# forgetting
# --------------------------------------------------------------------------


def test_rank_percentile_matches_oracle(case, spark):
    pairs_list = [(u, i) for u, i, _ in case.test] + [(int(USER_IDS[2]), int(ITEM_IDS[3]))] * 2
    pairs = spark.createDataFrame(pairs_list, "user int, item int")
    rows = forgetting.rank_percentile(
        case.user_factors, case.item_factors, pairs, user_block_size=2, item_block_size=3
    ).collect()
    assert len(rows) == len(pairs_list)
    for r in rows:
        assert _same(r["percentile"], oracle_percentile(case, r["user"], r["item"])), r

    zero_user = int(USER_IDS[4])  # every item ties: the middle of the list
    assert all(r["percentile"] == 0.5 for r in rows if r["user"] == zero_user)
    assert any(r["user"] == zero_user for r in rows)

    want = [oracle_percentile(case, u, i) for u, i in pairs_list]
    mean = forgetting.mean_rank_percentile(case.user_factors, case.item_factors, pairs)
    assert abs(mean - float(np.nanmean(want))) <= TOL


def test_rank_counts_kernel_hand_computed():
    # user 1 ranks item 3 (score 2) > items 2 and 4 (score 1, a tie) > item 1 (score 0).
    users = _user_table([1], [[1.0, 0.0]], [None]).append_column(
        "target_items", pa.array([[1, 2, 3]], pa.list_(pa.int32()))
    )
    users = users.append_column(
        "target_features", pa.array([[[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]]], pa.list_(pa.list_(pa.float32())))
    )
    items = _item_table([1, 2, 4, 3], [[0.0, 0.0], [1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    got = {r["target_item"]: r for r in topk._rank_counts_kernel(users, items).to_pylist()}
    # counts exclude the target itself: 3 other items each
    assert {t: (r["n_greater"], r["n_equal"], r["n_candidates"]) for t, r in got.items()} == {
        1: (3, 0, 3),
        2: (1, 1, 3),
        3: (0, 0, 3),
    }


def test_driver_rank_percentiles_equal_the_pair_by_pair_reference_with_ties():
    """The driver's forgetting kernel against a loop over every item; integer vectors make ties exact, and equal
    item vectors tie (half a place each), as in Spark's measure."""
    from spark_unlearn.eval.forgetting import rank_percentiles, rank_percentiles_reference

    rng = np.random.default_rng(3)
    for _ in range(20):
        n_items, k = int(rng.integers(2, 40)), int(rng.integers(1, 5))
        items = rng.integers(-2, 3, size=(n_items, k)).astype(np.float64)
        items[rng.integers(0, n_items, 3)] = items[0]  # duplicated vectors
        users = rng.integers(-2, 3, size=(int(rng.integers(1, 30)), k)).astype(np.float64)
        targets = rng.integers(0, n_items, users.shape[0])
        got = rank_percentiles(users, items, targets, chunk=7)
        np.testing.assert_allclose(got, rank_percentiles_reference(users, items, targets), rtol=0, atol=1e-15)
    assert np.isnan(rank_percentiles(np.ones((2, 3)), np.ones((1, 3)), np.zeros(2, np.int64))).all()

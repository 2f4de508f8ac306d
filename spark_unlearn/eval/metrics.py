"""Accuracy and ranking metrics of a factor model, computed in Spark.

Only scalars and per-user aggregates leave the cluster: no ratings table,
factor table or score matrix is collected.

Conventions
-----------
* Score / prediction ``s_ui = x_u . y_i`` in float64 (see
  :mod:`spark_unlearn.eval.topk` for the exact arithmetic).
* Ratings columns ``user``, ``item``, ``rating``; factor tables ``id``,
  ``features`` (:mod:`spark_unlearn.schema`).
* Relevant test items: test rows with ``rating > relevance_threshold``, or
  ``rating > 0`` when no threshold is given.
"""

from __future__ import annotations

import logging
import math

from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from spark_unlearn.als.model import FactorModel
from spark_unlearn.errors import SchemaError
from spark_unlearn.eval import topk
from spark_unlearn.schema import ITEM, RATING, USER

log = logging.getLogger(__name__)

FactorsLike = FactorModel | tuple[DataFrame, DataFrame]


def _factor_tables(model_or_factors: FactorsLike) -> tuple[DataFrame, DataFrame]:
    if isinstance(model_or_factors, FactorModel):
        return model_or_factors.user_factors, model_or_factors.item_factors
    if isinstance(model_or_factors, tuple) and len(model_or_factors) == 2:
        return model_or_factors
    raise TypeError(
        f"expected a FactorModel or a (user_factors, item_factors) tuple, got {type(model_or_factors).__name__}"
    )


def _require_columns(df: DataFrame, columns: tuple[str, ...], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise SchemaError(f"{what} lacks column(s) {missing}; it has {df.columns}")


def _dot(u, v):
    """Spark SQL ``x . y`` in double, summed in factor order like the numpy kernels."""
    products = F.zip_with(u, v, lambda a, b: a.cast("double") * b.cast("double"))
    return F.aggregate(products, F.lit(0.0).cast("double"), lambda acc, p: acc + p)


# --------------------------------------------------------------------------
# rating prediction
# --------------------------------------------------------------------------


def predict(
    ratings: DataFrame,
    user_factors: DataFrame,
    item_factors: DataFrame,
    prediction_col: str = "prediction",
) -> DataFrame:
    """``ratings`` plus ``prediction = x_user . y_item`` (double).

    Rows whose user or item has no factor vector get ``NaN`` (left joins; the
    behaviour of Spark's ``coldStartStrategy="nan"``).  All input columns and
    rows are kept.

    Raises
    ------
    SchemaError
        If ``ratings`` lacks ``user`` or ``item``.  A rank mismatch between a
        user and an item vector fails the Spark job (``raise_error``).
    """
    _require_columns(ratings, (USER, ITEM), "ratings")
    uf = user_factors.select(F.col("id").alias("__pred_uid"), F.col("features").alias("__pred_uf"))
    itf = item_factors.select(F.col("id").alias("__pred_iid"), F.col("features").alias("__pred_if"))
    joined = ratings.join(uf, F.col(USER) == F.col("__pred_uid"), "left").join(
        itf, F.col(ITEM) == F.col("__pred_iid"), "left"
    )
    u, v = F.col("__pred_uf"), F.col("__pred_if")
    prediction = (
        F.when(u.isNull() | v.isNull(), F.lit(float("nan")))
        .when(
            F.size(u) != F.size(v),
            F.raise_error(F.lit("user and item factor vectors have different ranks")),
        )
        .otherwise(_dot(u, v))
    )
    return joined.select(*[joined[c] for c in ratings.columns], prediction.cast("double").alias(prediction_col))


def rmse_with_coverage(model_or_factors: FactorsLike, test: DataFrame) -> tuple[float, int, int]:
    """RMSE over the test rows the model can score, and how many it could not.

    ``rmse = sqrt(mean((rating - prediction)^2))`` over rows with a finite
    prediction; rows with an unknown user or item are dropped (Spark's
    ``coldStartStrategy="drop"``).

    Returns
    -------
    (rmse, n_scored, n_dropped)
        ``rmse`` is ``NaN`` when no row could be scored.
    """
    _require_columns(test, (USER, ITEM, RATING), "test")
    user_factors, item_factors = _factor_tables(model_or_factors)
    scored = predict(test.select(USER, ITEM, RATING), user_factors, item_factors)
    is_scored = ~F.isnan("prediction")
    row = scored.agg(
        F.sum(F.when(is_scored, F.pow(F.col(RATING).cast("double") - F.col("prediction"), 2))).alias("sse"),
        F.count(F.when(is_scored, 1)).alias("n_scored"),
        F.count(F.when(~is_scored, 1)).alias("n_dropped"),
    ).first()
    n_scored, n_dropped = int(row["n_scored"]), int(row["n_dropped"])
    if n_scored == 0:
        log.warning("RMSE undefined: none of the %d test rows has a known user and item", n_dropped)
        return float("nan"), 0, n_dropped
    value = math.sqrt(row["sse"] / n_scored)
    log.info("RMSE %.6f over %d rows; %d rows dropped (unknown user or item)", value, n_scored, n_dropped)
    return value, n_scored, n_dropped


def rmse(model_or_factors: FactorsLike, test: DataFrame) -> float:
    """RMSE of the scorable test rows (see :func:`rmse_with_coverage`)."""
    return rmse_with_coverage(model_or_factors, test)[0]


# --------------------------------------------------------------------------
# top-k ranking
# --------------------------------------------------------------------------


def relevant_pairs(test: DataFrame, relevance_threshold: float | None = None) -> DataFrame:
    """Distinct ``(user, item)`` of test rows with ``rating > threshold`` (``> 0`` if ``None``)."""
    _require_columns(test, (USER, ITEM, RATING), "test")
    return test.where(_is_relevant(relevance_threshold)).select(USER, ITEM).distinct()


def _is_relevant(relevance_threshold: float | None):
    threshold = 0.0 if relevance_threshold is None else float(relevance_threshold)
    return F.col(RATING) > F.lit(threshold)


def _user_lists(
    user_factors: DataFrame, train: DataFrame, test: DataFrame, relevance_threshold: float | None
) -> DataFrame:
    """One row per user with a relevant test item, from a single shuffle of train and test.

    Columns: ``user``; ``train_items`` and ``test_items`` (distinct item
    lists; ``test_items`` whatever the rating); ``relevant`` (distinct
    relevant test items, non-empty); ``features`` (null when the model does
    not know the user).
    """
    _require_columns(train, (USER, ITEM), "train")
    _require_columns(test, (USER, ITEM, RATING), "test")
    rows = train.select(USER, ITEM, F.lit(True).alias("in_train"), F.lit(False).alias("rel")).unionByName(
        test.select(USER, ITEM, F.lit(False).alias("in_train"), _is_relevant(relevance_threshold).alias("rel"))
    )
    in_train = F.col("in_train")
    lists = (
        rows.groupBy(USER)
        .agg(
            F.collect_set(F.when(in_train, F.col(ITEM))).alias("train_items"),
            F.collect_set(F.when(~in_train, F.col(ITEM))).alias("test_items"),
            F.collect_set(F.when(F.col("rel"), F.col(ITEM))).alias("relevant"),
        )
        .where(F.size("relevant") > 0)
    )
    return lists.join(user_factors.select(F.col("id").alias(USER), "features"), USER, "left")


def _ideal_dcg(n_relevant, k: int):
    """``sum_{r=1}^{min(k, n)} 1 / log2(r + 1)``."""
    positions = F.sequence(F.lit(1), F.least(F.lit(k), n_relevant))
    return F.aggregate(positions, F.lit(0.0), lambda acc, r: acc + F.lit(1.0) / F.log2(r + F.lit(1)))


def ranking_metrics(
    user_factors: DataFrame,
    item_factors: DataFrame,
    train: DataFrame,
    test: DataFrame,
    k: int = 20,
    relevance_threshold: float | None = None,
    *,
    user_block_size: int = topk.DEFAULT_USER_BLOCK_SIZE,
    item_block_size: int = topk.DEFAULT_ITEM_BLOCK_SIZE,
) -> dict[str, float | int]:
    """Recall@k and NDCG@k of full-catalogue top-k lists, averaged over users.

    For every user with at least one relevant test item (``R_u``) and a
    factor vector: score every item in ``item_factors``, drop the user's
    train items, rank by score descending (ties by ascending item id) and
    keep the first ``k`` (``L_u``; shorter if fewer items remain).  With
    ``h_u = |L_u ∩ R_u|``:

    * ``recall@k = h_u / min(k, |R_u|)``: the capped recall of most
      Spark-free recsys libraries, reaching 1 whenever the list is filled
      with relevant items;
    * ``recall_plain@k = h_u / |R_u|``;
    * ``ndcg@k = DCG / IDCG`` with binary gains,
      ``DCG = sum_{hits at 1-based rank r} 1 / log2(r + 1)`` and
      ``IDCG = sum_{r=1}^{min(k, |R_u|)} 1 / log2(r + 1)``.

    ``R_u`` keeps relevant items the model does not know and relevant items
    that are also train items: neither can be retrieved, but dropping them
    would let models with different catalogues be scored on different
    targets.  Users without a factor vector are skipped (``n_users_unknown``).

    Cost: one blocked pass over all ``evaluated users x items`` scores
    (:mod:`spark_unlearn.eval.topk`): ``O(U * I * rank)`` flops on the
    executors and ``O(U * n_item_blocks * k)`` merged candidates.

    Returns
    -------
    dict
        ``recall@k``, ``recall_plain@k``, ``ndcg@k`` (``NaN`` when no user is
        evaluated), ``n_users`` (users averaged over) and
        ``n_users_unknown`` (users with relevant items but no factors).
    """
    # Read three times below (and counted once for blocking): compute it once.
    lists = _user_lists(user_factors, train, test, relevance_threshold).persist()
    try:
        return _ranking_metrics(lists, item_factors, k, user_block_size, item_block_size)
    finally:
        lists.unpersist()


def _ranking_metrics(
    lists: DataFrame, item_factors: DataFrame, k: int, user_block_size: int, item_block_size: int
) -> dict[str, float | int]:
    users = lists.where(F.col("features").isNotNull()).select(
        F.col(USER).alias("id"), "features", F.col("train_items").alias("exclude")
    )
    top = topk.top_k(users, item_factors, k, user_block_size, item_block_size)
    hits = (
        top.join(lists.select(USER, "relevant"), USER)
        .where(F.array_contains("relevant", F.col(ITEM)))
        .groupBy(USER)
        .agg(
            F.count(F.lit(1)).alias("hits"),
            F.sum(F.lit(1.0) / F.log2(F.col("rank") + F.lit(1))).alias("dcg"),
        )
    )
    per_user = (
        lists.select(USER, F.size("relevant").alias("n_rel"), F.col("features").isNotNull().alias("known"))
        .join(hits, USER, "left")
        .fillna({"hits": 0, "dcg": 0.0})
    )
    known, n_rel = F.col("known"), F.col("n_rel")
    row = per_user.agg(
        F.avg(F.when(known, F.col("hits") / F.least(F.lit(k), n_rel))).alias("recall"),
        F.avg(F.when(known, F.col("hits") / n_rel)).alias("recall_plain"),
        F.avg(F.when(known, F.col("dcg") / _ideal_dcg(n_rel, k))).alias("ndcg"),
        F.count(F.when(known, 1)).alias("n_users"),
        F.count(F.when(~known, 1)).alias("n_users_unknown"),
    ).first()
    result = {
        f"recall@{k}": _float_or_nan(row["recall"]),
        f"recall_plain@{k}": _float_or_nan(row["recall_plain"]),
        f"ndcg@{k}": _float_or_nan(row["ndcg"]),
        "n_users": int(row["n_users"]),
        "n_users_unknown": int(row["n_users_unknown"]),
    }
    if result["n_users_unknown"]:
        log.warning("%d users with relevant test items have no factors and were skipped", result["n_users_unknown"])
    if result["n_users"] == 0:
        log.warning("no user with relevant test items is known to the model; ranking metrics are NaN")
    log.info("ranking metrics: %s", result)
    return result


def _float_or_nan(value) -> float:
    return float("nan") if value is None else float(value)


# --------------------------------------------------------------------------
# AUC
# --------------------------------------------------------------------------


def auc(scores: DataFrame, label_col: str = "label", score_col: str = "score") -> float:
    """Global ROC AUC of ``score`` separating ``label == 1`` from ``label == 0``.

    ``AUC = P(s+ > s-) + 0.5 P(s+ = s-)`` over all (positive, negative) pairs,
    computed exactly (Spark's ROC without down-sampling, ``numBins=0``; tied
    scores form one ROC segment, i.e. half credit).  Rows with a null or NaN
    score are dropped and logged.

    Returns
    -------
    float
        ``NaN`` when there are no positives or no negatives.

    Raises
    ------
    SchemaError
        On missing columns or labels other than 0 and 1.
    """
    _require_columns(scores, (label_col, score_col), "scores")
    labelled = scores.select(
        F.col(label_col).cast("double").alias("label"), F.col(score_col).cast("double").alias("score")
    )
    valid_score = F.col("score").isNotNull() & ~F.isnan("score")
    row = labelled.agg(
        F.count(F.when(~valid_score, 1)).alias("no_score"),
        F.count(F.when(valid_score & (F.col("label") == 1.0), 1)).alias("pos"),
        F.count(F.when(valid_score & (F.col("label") == 0.0), 1)).alias("neg"),
        F.count(F.when(F.col("label").isNull() | ~F.col("label").isin(0.0, 1.0), 1)).alias("bad"),
    ).first()
    if row["bad"]:
        raise SchemaError(f"{row['bad']} rows of {label_col!r} are not 0 or 1; AUC needs binary labels")
    if row["no_score"]:
        log.warning("AUC: dropped %d rows with a null or NaN score", row["no_score"])
    if row["pos"] == 0 or row["neg"] == 0:
        log.warning("AUC undefined with %d positives and %d negatives", row["pos"], row["neg"])
        return float("nan")
    evaluator = BinaryClassificationEvaluator(
        rawPredictionCol="score", labelCol="label", metricName="areaUnderROC", numBins=0
    )
    return float(evaluator.evaluate(labelled.where(valid_score)))


def per_user_auc_frame(
    user_factors: DataFrame,
    item_factors: DataFrame,
    train: DataFrame,
    test: DataFrame,
    relevance_threshold: float | None = None,
    *,
    user_block_size: int = topk.DEFAULT_USER_BLOCK_SIZE,
    item_block_size: int = topk.DEFAULT_ITEM_BLOCK_SIZE,
) -> DataFrame:
    """Per-user AUC of ranking test positives above non-interacted items.

    For user ``u`` with positives ``P_u`` (relevant test items the model
    knows) and negatives ``N_u`` (items the model knows that ``u`` has in
    neither ``train`` nor ``test``, whatever the rating)::

        AUC_u = mean_{p in P_u} ( |{n in N_u: s_un < s_up}| + 0.5 |{n in N_u: s_un = s_up}| ) / |N_u|

    Exact, not sampled: every (user, item) score is computed once in a
    blocked pass (:mod:`spark_unlearn.eval.topk`): ``O(U * I * rank)`` flops
    plus a sort of each user's scores per item block
    (``O(U * I * log B_i)``).  ml-latest-small (610 users x 9.7k items) takes
    seconds on a laptop; the cost grows with ``U * I``.

    Returns
    -------
    DataFrame
        ``user``, ``auc`` (double, NaN when undefined), ``n_pos``, ``n_neg``,
        one row per user with a relevant test item.  Users the model does
        not know, or whose positives are all unknown, have ``n_pos = 0``,
        ``n_neg = 0`` and ``auc = NaN``; users with no negative have
        ``auc = NaN``.
    """
    lists = _user_lists(user_factors, train, test, relevance_threshold)
    return _per_user_auc_from_lists(lists, item_factors, user_block_size, item_block_size)


def _per_user_auc_from_lists(
    lists: DataFrame, item_factors: DataFrame, user_block_size: int, item_block_size: int
) -> DataFrame:
    known = lists.where(F.col("features").isNotNull())
    positives = known.select(USER, F.explode("relevant").alias(ITEM))
    scored = known.select(
        F.col(USER).alias("id"), "features", F.array_union("train_items", "test_items").alias("exclude")
    )
    users = topk.with_targets(scored, item_factors, positives)
    counts = topk.rank_counts(users, item_factors, user_block_size, item_block_size)
    n = F.col("n_candidates")
    n_below = n - F.col("n_greater") - F.col("n_equal")
    per_positive = counts.select(
        USER,
        F.when(n > 0, (n_below + F.lit(0.5) * F.col("n_equal")) / n).alias("auc_p"),
        n.alias("n_neg"),
    )
    per_user = per_positive.groupBy(USER).agg(
        F.avg("auc_p").alias("auc"), F.count(F.lit(1)).alias("n_pos"), F.max("n_neg").alias("n_neg")
    )
    return (
        lists.select(USER)
        .join(per_user, USER, "left")
        .select(
            USER,
            F.coalesce(F.col("auc"), F.lit(float("nan"))).cast("double").alias("auc"),
            F.coalesce(F.col("n_pos"), F.lit(0)).cast("long").alias("n_pos"),
            F.coalesce(F.col("n_neg"), F.lit(0)).cast("long").alias("n_neg"),
        )
    )


def per_user_auc(
    user_factors: DataFrame,
    item_factors: DataFrame,
    train: DataFrame,
    test: DataFrame,
    relevance_threshold: float | None = None,
    *,
    user_block_size: int = topk.DEFAULT_USER_BLOCK_SIZE,
    item_block_size: int = topk.DEFAULT_ITEM_BLOCK_SIZE,
) -> float:
    """Mean over users of :func:`per_user_auc_frame`'s ``AUC_u``.

    Users whose AUC is undefined (unknown to the model, no known positive,
    or no negative) are left out of the mean and counted in the log.
    Returns ``NaN`` when no user has a defined AUC.
    """
    lists = _user_lists(user_factors, train, test, relevance_threshold).persist()
    try:
        frame = _per_user_auc_from_lists(lists, item_factors, user_block_size, item_block_size)
        defined = ~F.isnan("auc")
        row = frame.agg(
            F.avg(F.when(defined, F.col("auc"))).alias("auc"),
            F.count(F.when(defined, 1)).alias("n_users"),
            F.count(F.when(~defined, 1)).alias("n_skipped"),
        ).first()
    finally:
        lists.unpersist()
    if row["n_skipped"]:
        log.warning(
            "per-user AUC: skipped %d users (unknown to the model, no known positive or no negative)",
            row["n_skipped"],
        )
    value = _float_or_nan(row["auc"])
    log.info("per-user AUC %.6f over %d users", value, row["n_users"])
    return value

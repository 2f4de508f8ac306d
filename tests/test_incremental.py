"""The targeted engine against the layout engine and against residuals recomputed from the ratings (oracle)."""

from __future__ import annotations

import numpy as np
import pytest

from als_helpers import factors_dict, load_sample
from spark_unlearn.als.params import ALSParams
from spark_unlearn.als.train import ALSState, offsets_for, train_als
from spark_unlearn.als.unlearn import remove_batch, unlearn_als


def batch(spark, rows):
    return spark.createDataFrame(rows, "user int, item int, kind string")


def _offsets_dict(df):
    return {int(r["id"]): (np.asarray(r["residual"]), float(r["bnorm"])) for r in df.collect()}


@pytest.fixture(scope="module", params=[False, True], ids=["explicit", "implicit"])
def trained(request, spark):
    ratings = load_sample(spark).cache()
    params = ALSParams(rank=4, reg=0.1, alpha=2.0, implicit=request.param, iterations=6, seed=4, num_blocks=2)
    res = train_als(ratings, params)
    state = ALSState.build(ratings, 2)
    offsets = offsets_for(state, res.model)
    return ratings, res.model, offsets


def test_targeted_offsets_and_certificate_match_a_recomputation(spark, trained):
    ratings, model, offsets = trained
    present = [(r[0], r[1]) for r in ratings.filter("user in (1, 2) and item < 40").orderBy("user", "item").limit(3).collect()]
    rows = [(7, None, "user"), (None, 50, "item"), (3, 99999, "interaction")] + [(u, i, "interaction") for u, i in present]
    out = unlearn_als(ratings, model, offsets, batch(spark, rows), tol=5e-2, engine="targeted", full_fallback_fraction=1.0)
    rep = out.report
    assert rep["engine"] == "targeted" and rep["certificate"]["method"] == "incremental"
    assert rep["deletion"]["not_found_interactions"] == 1

    # Oracle: residuals of every row of the new model, recomputed from the remaining ratings.
    remaining = remove_batch(ratings, batch(spark, rows))
    state = ALSState.build(remaining, 2)
    true_u, true_i = (_offsets_dict(df) for df in offsets_for(state, out.model))
    got_u, got_i = _offsets_dict(out.offsets[0]), _offsets_dict(out.offsets[1])
    assert got_u.keys() == true_u.keys() and got_i.keys() == true_i.keys()  # removed rows are gone, no others
    assert 7 not in got_u and 50 not in got_i
    for got, true in ((got_u, true_u), (got_i, true_i)):
        for r, (res_true, b_true) in true.items():
            res_got, b_got = got[r]
            # The next version's offsets are the rows' current residuals A'x - b'.
            assert np.linalg.norm(res_got - res_true) <= 1e-6 * max(b_true, 1.0), r
            # |b'| is stored as a lower bound, exact for rows whose b did not move.
            assert b_got <= b_true * (1 + 1e-9) + 1e-12 and b_got >= 0.5 * b_true, r

    assert rep["certificate"]["holds"] and rep["certificate"]["max_relative_residual"] <= 5e-2


def test_targeted_and_layout_engines_agree(spark, trained):
    ratings, model, offsets = trained
    rows = [(11, None, "user")] + [(r[0], r[1], "interaction") for r in ratings.filter("user = 4").limit(1).collect()]
    a = unlearn_als(ratings, model, offsets, batch(spark, rows), tol=5e-2, engine="targeted", full_fallback_fraction=1.0)
    b = unlearn_als(ratings, model, offsets, batch(spark, rows), tol=5e-2, engine="layout", full_fallback_fraction=1.0)
    assert a.report["rows_solved"] == b.report["rows_solved"]
    assert a.report["deletion"]["deleted_ratings"] == b.report["deletion"]["deleted_ratings"]
    for side in ("user_factors", "item_factors"):
        fa, fb = factors_dict(getattr(a.model, side)), factors_dict(getattr(b.model, side))
        assert fa.keys() == fb.keys()
        assert max(np.abs(fa[i] - fb[i]).max() for i in fa) <= 1e-5
    # The layout engine's certificate is recomputed from the ratings: the targeted one must not be below it.
    assert a.report["certificate"]["max_relative_residual"] >= b.report["certificate"]["max_relative_residual"] - 1e-6
    b.release()

"""The targeted engine against the layout engine and against residuals recomputed from the ratings (oracle)."""

from __future__ import annotations

import numpy as np
import pytest

from als_helpers import factors_dict, load_sample
from spark_unlearn.als.params import ALSParams
from spark_unlearn.als.train import ALSState, offsets_for, train_als
from spark_unlearn.als.plan import remove_batch
from spark_unlearn.als.options import UnlearnOptions, VersionFacts
from spark_unlearn.als.ratio_watch import empty_drift_watches
from spark_unlearn.als.unlearn import unlearn_als


def batch(spark, rows):
    return spark.createDataFrame(rows, "user int, item int, kind string")


def _offsets_dict(df):
    """{id: (target, |b|, drift)} of a small offsets table (tests only)."""
    return {int(r["id"]): (np.asarray(r["residual"]), float(r["bnorm"]), np.asarray(r["drift"])) for r in df.collect()}


def _check_offsets(got: dict, true: dict, targets: dict):
    """Stored target + drift equals the recomputed residual A'x - b'; the target is the one the row is owed."""
    assert got.keys() == true.keys()  # removed rows are gone, no others
    worst = 0.0
    for r, (res_true, b_true, _) in true.items():
        t_got, b_got, d_got = got[r]
        assert np.linalg.norm(t_got + d_got - res_true) <= 1e-6 * max(b_true, 1.0), r
        assert np.allclose(t_got, targets[r], rtol=0, atol=1e-12), r
        # |b'| is stored as a lower bound, exact for rows whose b did not move.
        assert b_got <= b_true * (1 + 1e-9) + 1e-12 and b_got >= 0.5 * b_true, r
        worst = max(worst, np.linalg.norm(res_true - targets[r]) / b_true)
    return worst


@pytest.fixture(scope="module", params=[False, True], ids=["explicit", "implicit"])
def trained(request, spark):
    ratings = load_sample(spark).cache()
    params = ALSParams(rank=4, reg=0.1, alpha=2.0, implicit=request.param, iterations=6, seed=4, num_blocks=2)
    res = train_als(ratings, params)
    state = ALSState.build(ratings, 2)
    offsets = offsets_for(state, res.model)
    return ratings, res.model, offsets


def test_targeted_offsets_and_certificate_match_a_recomputation(spark, trained, monkeypatch):
    ratings, model, offsets = trained
    # Implicit: an empty watch leaves every row to one bound (max |x|/|b|), which fails here, so the certificate
    # takes the pass over every row; the other implicit tests keep the default watch (it lists every row here).
    monkeypatch.setattr("spark_unlearn.als.ratio_watch.WATCH_SIZE", 0)
    present = [(r[0], r[1]) for r in ratings.filter("user in (1, 2) and item < 40").orderBy("user", "item").limit(3).collect()]
    rows = [(7, None, "user"), (None, 50, "item"), (3, 99999, "interaction")] + [(u, i, "interaction") for u, i in present]
    out = unlearn_als(ratings, model, offsets, batch(spark, rows), options=UnlearnOptions(tol=5e-2, engine="targeted", full_fallback_fraction=1.0))
    rep = out.report
    if model.params.implicit:
        assert any(how.startswith("exact") for how in rep["certificate"]["untouched_rows"].values())
    assert rep["engine"] == "targeted" and rep["certificate"]["method"] == "incremental"
    assert rep["deletion"]["not_found_interactions"] == 1

    # Oracle: residuals of every row of the new model, recomputed from the remaining ratings.
    remaining = remove_batch(ratings, batch(spark, rows))
    state = ALSState.build(remaining, 2)
    true_u, true_i = (_offsets_dict(df) for df in offsets_for(state, out.model))
    got_u, got_i = _offsets_dict(out.offsets[0]), _offsets_dict(out.offsets[1])
    assert 7 not in got_u and 50 not in got_i
    train = [_offsets_dict(df) for df in offsets]
    changed = [set(rep_rows) for rep_rows in _changed_rows(ratings, rows)]
    worst = 0.0
    for side, (got, true) in enumerate(((got_u, true_u), (got_i, true_i))):
        targets = {r: 0.0 * train[side][r][0] if r in changed[side] else train[side][r][0] for r in true}
        worst = max(worst, _check_offsets(got, true, targets))
    cert = rep["certificate"]
    assert cert["holds"] and worst <= cert["max_relative_residual"] + 1e-9 <= 5e-2 + 1e-9
    if not model.params.implicit:  # explicit: the maximum is exact (training offsets: nothing untouched drifts)
        assert cert["max_kind"] == "exact" and abs(cert["max_relative_residual"] - worst) <= 1e-6, cert


def _changed_rows(ratings, rows):
    """Users and items any of whose ratings a batch deletes (driver-side, tiny data)."""
    users, items = set(), set()
    pairs = {(u, i) for u, i, k in rows if k == "interaction"}
    erased = {u for u, _, k in rows if k == "user"}
    withdrawn = {i for _, i, k in rows if k == "item"}
    for r in ratings.select("user", "item").collect():
        if (r[0], r[1]) in pairs or r[0] in erased or r[1] in withdrawn:
            users.add(r[0])
            items.add(r[1])
    return users, items


def test_sequential_requests_never_absorb_drift(spark, trained, monkeypatch):
    """Drift left below tol by one request is still owed by the next: the certificate holds against the first targets.

    The requests pass the version's table sizes, as jobs do, so reads of most of a side scan it whole and the
    Gram checks and (implicit, no watch) the certificate of untouched rows come from the driver's caches.
    """
    ratings, model, offsets = trained
    monkeypatch.setattr("spark_unlearn.als.ratio_watch.WATCH_SIZE", 0)

    def no_pass(*args):
        raise AssertionError("a pass over a side the driver already holds")

    monkeypatch.setattr("spark_unlearn.als.targeted_certificate.gram_moved", no_pass)
    monkeypatch.setattr("spark_unlearn.als.table_source.gram_moved", no_pass)
    train = [_offsets_dict(df) for df in offsets]
    tol = 8e-2  # loose, so that many rows keep sub-tolerance drift between requests
    data, cur_model, cur_offsets, changed = ratings, model, offsets, (set(), set())
    left_drift = 0.0
    hows = set()
    drift_watch = empty_drift_watches()  # a training version's: nothing drifts yet
    for user in (3, 5, 8, 12):
        rows = [(user, None, "user")]
        c = _changed_rows(data, rows)
        changed = (changed[0] | c[0], changed[1] | c[1])
        counts = {"n_ratings": data.count(), "n_users": cur_model.user_factors.count(), "n_items": cur_model.item_factors.count()}
        out = unlearn_als(data, cur_model, cur_offsets, batch(spark, rows), options=UnlearnOptions(tol=tol, engine="targeted", full_fallback_fraction=1.0), facts=VersionFacts(counts=counts, drift_watch=drift_watch))
        assert out.report["certificate"]["holds"]
        drift_watch = out.drift_watch
        if not model.params.implicit:  # explicit: every record exact, the untouched rows' term from the drift watch
            assert out.report["certificate"]["max_kind"] == "exact", out.report["certificate"]
        hows.update(out.report["certificate"]["untouched_rows"].values())
        data = remove_batch(data, batch(spark, rows)).cache()
        cur_model, cur_offsets = out.model, tuple(df.cache() for df in out.offsets)
        left_drift = max(left_drift, *(np.linalg.norm(v[2]) / v[1] for df in cur_offsets for v in _offsets_dict(df).values()))
    assert left_drift > 0.25 * tol  # the sequence really leaves drift behind (else the test proves nothing)
    if model.params.implicit:
        assert any(h.startswith("exact") and "from the driver" in h for h in hows)  # the driver-side pass ran

    true = [_offsets_dict(df) for df in offsets_for(ALSState.build(data, 2), cur_model)]
    worst = 0.0
    for side in (0, 1):
        got = _offsets_dict(cur_offsets[side])
        targets = {r: 0.0 * train[side][r][0] if r in changed[side] else train[side][r][0] for r in true[side]}
        worst = max(worst, _check_offsets(got, true[side], targets))
    # Every row, against the target it was owed from the start: within tol, and within the reported certificate.
    assert worst <= tol
    assert worst <= out.report["certificate"]["max_relative_residual"] + 1e-9
    if not model.params.implicit:
        assert abs(worst - out.report["certificate"]["max_relative_residual"]) <= 1e-6



def test_full_sweeps_stopped_above_tol_are_finished_by_the_frontier(spark, trained):
    """One full sweep leaves rows off their targets; the frontier repair re-solves them and the offsets stay exact."""
    ratings, model, offsets = trained
    rows = [(3, None, "user"), (9, None, "user")]
    # One sweep leaves 0.018 (explicit) / 0.024 (implicit); tighter tolerances make the repair outgrow its budget
    # on these 128 densely coupled rows (the frontier is meant for sparse data).
    tol = 2e-2 if model.params.implicit else 1e-2
    out = unlearn_als(ratings, model, offsets, batch(spark, rows), options=UnlearnOptions(mode="full", full_iterations=1, tol=tol, full_fallback_fraction=1.0))
    rep = out.report
    assert rep["mode"] == "full" and rep["sweeps"] == 1
    assert rep["repair"]["certificates"][0] > tol  # the sweep alone stopped above tol (else the test proves nothing)
    assert rep["certificate"]["holds"] and rep["certificate"]["max_relative_residual"] <= tol
    assert 0 < rep["repair"]["rows_solved"] < rep["rows_total"]  # fewer solves than one more sweep

    # Oracle: every row's stored target + drift is its residual recomputed from the remaining ratings.
    remaining = remove_batch(ratings, batch(spark, rows))
    true = [_offsets_dict(df) for df in offsets_for(ALSState.build(remaining, 2), out.model)]
    train = [_offsets_dict(df) for df in offsets]
    changed = _changed_rows(ratings, rows)
    worst = 0.0
    for side in (0, 1):
        targets = {r: 0.0 * train[side][r][0] if r in changed[side] else train[side][r][0] for r in true[side]}
        worst = max(worst, _check_offsets(_offsets_dict(out.offsets[side]), true[side], targets))
    assert worst <= tol
    out.release()

@pytest.mark.parametrize("sweeps, tol", [(1, 1.0), (2, 1e-5)], ids=["converged-after-1", "stopped-after-2"])
def test_the_certificate_computed_inside_the_sweeps_equals_a_recomputation(spark, trained, sweeps, tol):
    """Full sweeps check each row inside the solve stages; the certificate and the offsets they store are exact.

    tol 1.0 holds after the first sweep; tol 1e-5 (the float32 floor) does not, so both sweeps run and the frontier repair, with a
    budget of one row, gives up and keeps the sweeps' factors and certificate.
    """
    ratings, model, offsets = trained
    rows = [(3, None, "user"), (None, 10, "item"), (5, 7, "interaction")]
    out = unlearn_als(ratings, model, offsets, batch(spark, rows), options=UnlearnOptions(mode="full", full_iterations=2, tol=tol, full_fallback_fraction=1e-9))
    rep = out.report
    assert rep["mode"] == "full" and rep["sweeps"] == sweeps
    assert rep.get("repair", {"converged": False})["converged"] is False
    n_items = out.model.item_factors.count()
    # every sweep solves every row, and the last certificate costs one more item half-solve
    swept = rep["rows_solved"] - rep.get("repair", {}).get("rows_solved", 0)  # a repair that gave up still counts its solves
    assert swept == sweeps * rep["rows_total"] + n_items

    remaining = remove_batch(ratings, batch(spark, rows))
    true = [_offsets_dict(df) for df in offsets_for(ALSState.build(remaining, 2), out.model)]
    train = [_offsets_dict(df) for df in offsets]
    changed = _changed_rows(ratings, rows)
    per_side = []
    for side in (0, 1):
        targets = {r: 0.0 * train[side][r][0] if r in changed[side] else train[side][r][0] for r in true[side]}
        per_side.append(_check_offsets(_offsets_dict(out.offsets[side]), true[side], targets))
    cert = rep["certificate"]
    assert cert["per_side"]["user"] == pytest.approx(per_side[0], rel=1e-5, abs=1e-9)
    assert cert["per_side"]["item"] == pytest.approx(per_side[1], rel=1e-5, abs=1e-9)
    assert cert["max_relative_residual"] == pytest.approx(max(per_side), rel=1e-5, abs=1e-9)
    assert cert["holds"] is (sweeps == 1)
    out.release()


def test_the_papers_method_is_a_warm_started_training_equal_to_numpy_sweeps_and_no_longer_a_mode(spark, trained):
    """Xu et al.'s Unlearn-ALS (the benchmarks' baseline): plain ALS sweeps from the trained factors on the remaining
    data, every row, as ``train_als(..., init=model)``; checked against a numpy oracle.  It never certifies, so it is
    no unlearning mode: asking for it says what to use instead."""
    from dataclasses import replace

    from als_helpers import csr_from_pairs
    from spark_unlearn.als.kernels import SolveSpec, gram, solve_rows_reference
    from spark_unlearn.errors import ConfigError

    ratings, model, offsets = trained
    rows = [(3, None, "user"), (None, 10, "item")]
    with pytest.raises(ConfigError, match="'paper' was removed.*mode 'full'.*init=model"):
        UnlearnOptions(mode="paper")
    out = train_als(remove_batch(ratings, batch(spark, rows)), replace(model.params, iterations=2), init=model)

    pdf = remove_batch(ratings, batch(spark, rows)).toPandas()
    u, i, r = pdf.user.to_numpy(), pdf.item.to_numpy(), pdf.rating.to_numpy()
    uid, iid = np.unique(u), np.unique(i)
    by_user = csr_from_pairs(u, i, r, uid, {x: k for k, x in enumerate(iid)})
    by_item = csr_from_pairs(i, u, r, iid, {x: k for k, x in enumerate(uid)})
    U0, V0 = factors_dict(model.user_factors), factors_dict(model.item_factors)
    U = np.stack([U0[x] for x in uid]).astype(np.float32)
    V = np.stack([V0[x] for x in iid]).astype(np.float32)
    p = model.params
    spec = SolveSpec(p.reg, p.implicit, p.alpha)
    for _ in range(2):
        V = solve_rows_reference(*by_item, U, spec, gram(U) if p.implicit else None).astype(np.float32)
        U = solve_rows_reference(*by_user, V, spec, gram(V) if p.implicit else None).astype(np.float32)
    got_u, got_v = factors_dict(out.model.user_factors), factors_dict(out.model.item_factors)
    assert sorted(got_u) == uid.tolist() and sorted(got_v) == iid.tolist()  # erased user and item are gone
    assert max(np.abs(got_u[x] - U[k]).max() for k, x in enumerate(uid)) < 1e-4
    assert max(np.abs(got_v[x] - V[k]).max() for k, x in enumerate(iid)) < 1e-4


def test_targeted_and_layout_engines_agree(spark, trained):
    ratings, model, offsets = trained
    rows = [(11, None, "user")] + [(r[0], r[1], "interaction") for r in ratings.filter("user = 4").limit(1).collect()]
    a = unlearn_als(ratings, model, offsets, batch(spark, rows), options=UnlearnOptions(tol=5e-2, engine="targeted", full_fallback_fraction=1.0))
    b = unlearn_als(ratings, model, offsets, batch(spark, rows), options=UnlearnOptions(tol=5e-2, engine="layout", full_fallback_fraction=1.0))
    assert a.report["rows_solved"] == b.report["rows_solved"]
    assert a.report["deletion"]["deleted_ratings"] == b.report["deletion"]["deleted_ratings"]
    for side in ("user_factors", "item_factors"):
        fa, fb = factors_dict(getattr(a.model, side)), factors_dict(getattr(b.model, side))
        assert fa.keys() == fb.keys()
        assert max(np.abs(fa[i] - fb[i]).max() for i in fa) <= 1e-5
    # The layout engine's certificate is recomputed from the ratings: the targeted one must not be below it.
    assert a.report["certificate"]["max_relative_residual"] >= b.report["certificate"]["max_relative_residual"] - 1e-6
    b.release()


def _row_ratios(factors, offsets) -> dict[int, float]:
    """|x|/|b| of every row of a (tiny) version side."""
    rows = factors.join(offsets.select("id", "bnorm"), "id").collect()
    return {int(r["id"]): float(np.linalg.norm(np.asarray(r["features"], np.float64)) / max(r["bnorm"], 1e-300))
            for r in rows}


def test_an_implicit_version_records_its_grams_and_unlearns_from_them(spark, tmp_path, monkeypatch):
    """Training stores F^T F per side (implicit); the targeted engine then starts from them instead of two passes."""
    from spark_unlearn.als import ratio_watch
    from spark_unlearn.als.factor_passes import gram_of
    from spark_unlearn.store.model_store import ModelStore
    from spark_unlearn.train_model import run_training
    from spark_unlearn.unlearn_model import UnlearnRequest, run_unlearning
    from als_helpers import sample_movielens_path

    monkeypatch.setattr(ratio_watch, "WATCH_SIZE", 5)  # the sample has 30 users: list a few, bound the rest
    store_dir = str(tmp_path / "store")
    params = ALSParams(rank=3, reg=0.1, alpha=2.0, implicit=True, iterations=2, seed=2, num_blocks=2)
    run_training(spark, ratings_path=sample_movielens_path(), store_path=store_dir, params=params)
    store = ModelStore(store_dir)
    manifest = store.read_manifest(store.current())
    loaded = store.load(spark)
    for side, table in (("user", loaded.model.user_factors), ("item", loaded.model.item_factors)):
        want = gram_of(table)
        assert np.allclose(np.asarray(manifest["grams"][side]), want, rtol=1e-9, atol=1e-9 * np.abs(want).max())
    assert manifest["drift_max"] == {"user": 0.0, "item": 0.0}
    pair = loaded.ratings.orderBy("user", "item").first()
    report = run_unlearning(spark, UnlearnRequest(model_path=store_dir, batch=batch(spark, [(pair[0], pair[1], "interaction")]), measure=False, options=UnlearnOptions(tol=5e-2)))
    assert report["engine"] == "targeted" and report["certificate"]["holds"]
    after = store.read_manifest(report["version"])
    assert after["drift_max"] == report["certificate"]["per_side"]
    # max |x|/|b| per side: exact at training, an upper bound carried by each request (it decides the Gram checks).
    new = store.load(spark)
    offsets = (loaded.offsets[0], loaded.offsets[1]), (new.offsets[0], new.offsets[1])
    for k, side in enumerate(("user", "item")):
        before = _row_ratios((loaded.model.user_factors, loaded.model.item_factors)[k], offsets[0][k])
        now = _row_ratios((new.model.user_factors, new.model.item_factors)[k], offsets[1][k])
        assert manifest["x_ratio"][side] == pytest.approx(max(before.values()), rel=1e-12)
        exact = max(now.values())
        assert exact - 1e-12 <= after["x_ratio"][side] <= 1.5 * exact
        # The watch: exact at training (the 5 largest ratios, rest = the 6th), a valid bound of every row after.
        w0 = manifest["x_watch"][side]
        top = sorted(before.items(), key=lambda kv: (-kv[1], kv[0]))
        assert w0["ids"] == [i for i, _ in top[:5]] and w0["ratios"] == pytest.approx([r for _, r in top[:5]], rel=1e-12)
        assert w0["rest"] == pytest.approx(top[5][1], rel=1e-12)
        w1 = after["x_watch"][side]
        listed = dict(zip(w1["ids"], w1["ratios"]))
        assert len(listed) == 5 and set(listed) <= set(now)
        assert all(r <= listed.get(i, w1["rest"]) + 1e-12 for i, r in now.items())

def test_id_selection_gives_the_same_rows_as_a_filter_and_as_a_join(spark, monkeypatch):
    from spark_unlearn.als import selection as table_source

    df = spark.range(0, 50).selectExpr("cast(id as int) as id", "cast(id * 2 as int) as v")
    ids = [3, 7, 7, 48, 99]
    as_filter = sorted(r[0] for r in table_source.select_ids(df, "id", ids).collect())
    dropped = sorted(r[0] for r in table_source.select_ids(df, "id", ids, keep=False).collect())
    monkeypatch.setattr(table_source, "ISIN_MAX", 2)
    as_join = sorted(r[0] for r in table_source.select_ids(df, "id", ids).collect())
    dropped_join = sorted(r[0] for r in table_source.select_ids(df, "id", ids, keep=False).collect())
    assert as_filter == as_join == [3, 7, 48]
    assert dropped == dropped_join == sorted(set(range(50)) - {3, 7, 48})

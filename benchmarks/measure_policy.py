"""Measure how warm offset sweeps approach the unlearned fixed point, row by row, against the training residual.

Issue 32 asks for a row-wise certificate policy ("training-precision") chosen
from measurements.  This script, pure numpy with the product's row kernels
(``spark_unlearn.als.kernels``), on one machine:

1. trains implicit ALS the way Spark does (random init, ``--iterations``
   iterations, items then users in each), rank ``--rank``;
2. records every row's training offset ``e_r = A_r x_r - b_r`` and relative
   training residual ``rho_r = |e_r| / |b_r|``;
3. deletes a batch (``--deletion``: ``random1pct`` of the interactions, or
   ``users:FILE`` for every interaction of the users listed in a CURE4Rec
   unlearn_set file, ids + ``--id-offset``);
4. runs warm offset sweeps (targets ``t_r = e_r``, ``t_r = 0`` on rows whose own
   data changed, solved exactly) and after each sweep measures every row's
   deviation ``dev_r = |A'_r x_r - b'_r - t_r| / |b'_r|``;
5. reports, per sweep, the deviation's quantiles against the training
   residual's, and the rows violating candidate policies:
   ``strict`` (``dev_r <= p90`` of the pooled training residual, today's rule) and
   ``row q`` (``dev_r <= max(rho_r, Q_q)``, ``Q_q`` the ``q``-quantile of the
   training residual of the side solved first, whose residual training leaves
   non-zero; the side solved last has ``rho = 0`` up to rounding);
6. NDCG@20 and Recall@20 on held-out interactions of the swept model against a
   cold retrain on the remaining data (same seed), and the forgetting of the
   deleted interactions (mean rank percentile, original / swept / retrain).

The warm sweeps' row solver is ``--solver``: ``cholesky`` (the exact
``solve_rows``, the reference) or ``cg`` (``--cg-steps`` warm conjugate-gradient
steps per row from its current factors, ``spark_unlearn.als.cg``; rows whose
own data changed are still solved exactly, so nothing of the deleted data
survives in them).  ``--anderson M`` (M > 0) accelerates whole sweeps
(``spark_unlearn.als.anderson``): both sides' factors, flattened, are the
fixed-point variable and a sweep is the map; the extrapolated point is only
the next sweep's input, and each sweep's own output is what is measured (its
changed rows are exact, its last side solved).  Training and the retrain
always use Cholesky.

Usage::

    python benchmarks/measure_policy.py --ratings ../shared/data/ml-latest-small/ratings.csv \\
        --out docs/bench/policy_ml-latest-small.json
    python benchmarks/measure_policy.py --ratings ../shared/data/adm/train.csv --test ../shared/data/adm/test.csv \\
        --columns uid,iid,val --out docs/bench/policy_adm_random1pct.json
    python benchmarks/measure_policy.py ... --solver cg --cg-steps 3 --anderson 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

from spark_unlearn.als.anderson import Anderson  # noqa: E402
from spark_unlearn.als.cg import cg_solve_rows  # noqa: E402
from spark_unlearn.als.kernels import SolveSpec, gram, residuals, solve_rows  # noqa: E402

QUANTILES = (0.25, 0.5, 0.75, 0.9)


def csr(rows: np.ndarray, cols: np.ndarray, vals: np.ndarray, n_rows: int):
    order = np.lexsort((cols, rows))
    indptr = np.searchsorted(rows[order], np.arange(n_rows + 1)).astype(np.int64)
    return indptr, cols[order].astype(np.int64), vals[order].astype(np.float32)


class Data:
    """Both CSR views of one interaction set over fixed dense ids."""

    def __init__(self, u, i, r, n_users, n_items):
        self.u, self.i, self.r = u, i, r
        self.side = {"user": csr(u, i, r, n_users), "item": csr(i, u, r, n_items)}


class WarmSolver:
    """How a warm sweep solves rows: Cholesky everywhere, or CG on the rows whose own data did not change.

    ``exact`` maps each side to the boolean mask of its rows solved exactly
    even under CG (their own data changed); :meth:`side` narrows it to one
    side's mask.  ``cg_steps`` is the number of CG steps from the current factors.
    """

    def __init__(self, name: str = "cholesky", cg_steps: int = 3, exact: dict | None = None):
        self.name, self.cg_steps, self.exact = name, cg_steps, exact

    def solve(self, indptr, src, rat, Y, spec, X, offsets):
        G = gram(Y)
        if self.name == "cholesky":
            return solve_rows(indptr, src, rat, Y, spec, gram=G, offsets=offsets).astype(np.float32)
        out = np.empty_like(X)
        for rows, exact in ((np.flatnonzero(self.exact), True), (np.flatnonzero(~self.exact), False)):
            e = None if offsets is None else offsets[rows]
            if exact:
                out[rows] = solve_rows(indptr, src, rat, Y, spec, gram=G, rows=rows, offsets=e)
            else:
                out[rows] = cg_solve_rows(indptr, src, rat, Y, spec, X[rows], gram=G, rows=rows, offsets=e,
                                          steps=self.cg_steps)
        return out

    def side(self, side: str) -> "WarmSolver":
        return self if self.exact is None else WarmSolver(self.name, self.cg_steps, self.exact[side])


def half_step(data: Data, side: str, F: dict, spec: SolveSpec, targets: dict | None, solver: WarmSolver | None = None):
    other = "item" if side == "user" else "user"
    indptr, src, rat = data.side[side]
    Y = F[other].astype(np.float32)
    t = None if targets is None else targets[side]
    return (solver or WarmSolver()).side(side).solve(indptr, src, rat, Y, spec, F[side], t)


def sweep(data, F, spec, targets=None, solver=None):
    F = dict(F)
    for side in ("item", "user"):  # Spark's order: items from users, then users from items
        F[side] = half_step(data, side, F, spec, targets, solver)
    return F


def flat(F: dict) -> np.ndarray:
    """Both sides' factors as one vector (Anderson's fixed-point variable)."""
    return np.concatenate([F["user"].ravel(), F["item"].ravel()])


def unflat(v: np.ndarray, like: dict) -> dict:
    n = like["user"].size
    return {"user": v[:n].reshape(like["user"].shape).astype(np.float32),
            "item": v[n:].reshape(like["item"].shape).astype(np.float32)}


def sweep_flops(data: Data, rank: int, solver: WarmSolver) -> dict:
    """Multiply-add model of one warm sweep's row solves (both sides), per row with ``n`` ratings at rank ``k``.

    Cholesky, as ``solve_rows`` computes it (``w`` = ``n`` rounded up to a
    power of two): a row with ``w <= k / 2`` solves its ``w x w`` system
    (``w^2 k + w^3 / 3``) and rotates into and out of the Gram's eigenbasis
    (``2 k^2``); a longer row forms ``A`` (``w k^2``) and solves it
    (``k^3 / 3``).  CG: gather and ``b`` ``2 n k``, then per product ``2 n k +
    k^2`` (the implicit Gram), one for the starting residual and one per step.
    """
    k, total = rank, 0.0
    for side in ("user", "item"):
        n = np.diff(data.side[side][0]).astype(np.float64)
        w = np.where(n > 0, 2.0 ** np.ceil(np.log2(np.maximum(n, 1))), 0.0)
        exact = np.where(2 * w <= k, w * w * k + w ** 3 / 3 + 2 * k * k, w * k * k + k ** 3 / 3)
        if solver.name == "cholesky":
            total += exact.sum()
            continue
        changed = solver.exact[side]
        warm = 2 * n * k + (1 + solver.cg_steps) * (2 * n * k + k * k)
        total += exact[changed].sum() + warm[~changed].sum()
    return {"per_sweep": total, "formula": sweep_flops.__doc__.split("\n\n")[1].strip()}


def first_sweep_holding(sweeps: list, key) -> int | None:
    """The first sweep from which a policy holds on every later measured sweep, or None."""
    holding = None
    for entry in sweeps:
        if key(entry) == 0:
            holding = entry["sweep"] if holding is None else holding
        else:
            holding = None
    return holding


def residual_of(data, F, spec):
    out = {}
    for side, other in (("user", "item"), ("item", "user")):
        indptr, src, rat = data.side[side]
        Y = F[other].astype(np.float32)
        out[side] = residuals(F[side], indptr, src, rat, Y, spec, gram=gram(Y))
    return out


def rank_metrics(F, train: Data, test_u, test_i, n_items, k=20, max_users=3000, seed=0):
    """NDCG@k and Recall@k over (up to ``max_users`` sampled) test users, training items excluded."""
    users = np.unique(test_u)
    rng = np.random.default_rng(seed)
    if users.size > max_users:
        users = np.sort(rng.choice(users, max_users, replace=False))
    indptr, src, _ = train.side["user"]
    t_indptr, t_src, _ = csr(test_u, test_i, np.ones(test_u.size), F["user"].shape[0])
    ndcg = recall = 0.0
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    for start in range(0, users.size, 512):
        ub = users[start:start + 512]
        s = F["user"][ub].astype(np.float64) @ F["item"].astype(np.float64).T
        for row, uu in enumerate(ub):
            s[row, src[indptr[uu]:indptr[uu + 1]]] = -np.inf
        top = np.argpartition(-s, k, axis=1)[:, :k]
        top = np.take_along_axis(top, np.argsort(-np.take_along_axis(s, top, 1), axis=1), 1)
        for row, uu in enumerate(ub):
            rel = set(t_src[t_indptr[uu]:t_indptr[uu + 1]].tolist())
            hits = np.array([x in rel for x in top[row]], dtype=float)
            ideal = disc[: min(len(rel), k)].sum()
            ndcg += float((hits * disc).sum() / ideal)
            recall += float(hits.sum() / len(rel))
    return {"ndcg@20": ndcg / users.size, "recall@20": recall / users.size, "users": int(users.size)}


def rank_percentile(F, du, di):
    """Mean over deleted pairs of the fraction of items scored above the deleted one (0 = top)."""
    s = F["user"][du].astype(np.float64) @ F["item"].astype(np.float64).T
    target = s[np.arange(du.size), di]
    return float(((s > target[:, None]).sum(1) / s.shape[1]).mean())


def read(path, columns):
    import pandas as pd

    df = pd.read_csv(path)
    uc, ic, rc = columns
    return df[uc].to_numpy(), df[ic].to_numpy(), df[rc].to_numpy(np.float32)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ratings", default=os.path.join(_REPO, "..", "shared", "data", "ml-latest-small", "ratings.csv"))
    ap.add_argument("--test", default=None, help="held-out interactions (default: a seeded 20 %% of --ratings)")
    ap.add_argument("--columns", default="userId,movieId,rating")
    ap.add_argument("--deletion", default="random1pct", help="random1pct | users:FILE (CURE4Rec unlearn_set)")
    ap.add_argument("--id-offset", type=int, default=1)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--reg", type=float, default=0.1)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--sweeps", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--solver", choices=("cholesky", "cg"), default="cholesky",
                    help="row solver of the warm sweeps (rows whose own data changed: always Cholesky)")
    ap.add_argument("--cg-steps", type=int, default=3, help="CG steps per row per sweep (--solver cg)")
    ap.add_argument("--anderson", type=int, default=0, help="Anderson memory across whole sweeps (0 = off)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    cols = args.columns.split(",")
    rng = np.random.default_rng(args.seed)
    u_raw, i_raw, r = read(args.ratings, cols)
    if args.test:
        tu_raw, ti_raw, _ = read(args.test, cols)
        held = None
    else:
        held = rng.random(u_raw.size) < 0.2
        tu_raw, ti_raw = u_raw[held], i_raw[held]
        u_raw, i_raw, r = u_raw[~held], i_raw[~held], r[~held]
    uid, u = np.unique(u_raw, return_inverse=True)
    iid, i = np.unique(i_raw, return_inverse=True)
    n_users, n_items = uid.size, iid.size
    keep_t = np.isin(tu_raw, uid) & np.isin(ti_raw, iid)
    test_u, test_i = np.searchsorted(uid, tu_raw[keep_t]), np.searchsorted(iid, ti_raw[keep_t])
    spec = SolveSpec(reg=args.reg, implicit=True, alpha=args.alpha)
    full = Data(u, i, r, n_users, n_items)
    t0 = time.perf_counter()
    F = {"user": (rng.normal(size=(n_users, args.rank)) / np.sqrt(args.rank)).astype(np.float32),
         "item": (rng.normal(size=(n_items, args.rank)) / np.sqrt(args.rank)).astype(np.float32)}
    F0 = dict(F)
    for _ in range(args.iterations):
        F = sweep(full, F, spec)
    train_s = time.perf_counter() - t0
    res = residual_of(full, F, spec)
    rho = {s: np.linalg.norm(res[s][0], axis=1) / np.maximum(res[s][1], 1e-300) for s in res}
    pooled_p90 = float(np.quantile(np.concatenate([rho["user"], rho["item"]]), 0.9))
    first = "item"  # solved first in every iteration: the side whose training residual is not ~0

    if args.deletion == "random1pct":
        gone = np.zeros(u.size, dtype=bool)
        gone[rng.choice(u.size, max(1, u.size // 100), replace=False)] = True
    elif args.deletion.startswith("users:"):
        import pandas as pd

        users = np.unique(pd.read_csv(args.deletion[6:])["uid"].to_numpy() + args.id_offset)
        gone = np.isin(u_raw, users)
        keep_t &= ~np.isin(tu_raw, users)
        test_u, test_i = np.searchsorted(uid, tu_raw[keep_t]), np.searchsorted(iid, ti_raw[keep_t])
    else:
        raise SystemExit(f"unknown --deletion {args.deletion!r}")
    kept = Data(u[~gone], i[~gone], r[~gone], n_users, n_items)
    changed = {"user": np.zeros(n_users, bool), "item": np.zeros(n_items, bool)}
    changed["user"][u[gone]] = True
    changed["item"][i[gone]] = True
    targets = {s: np.where(changed[s][:, None], 0.0, res[s][0]) for s in res}

    def deviation(Fx):
        rx = residual_of(kept, Fx, spec)
        return {s: np.linalg.norm(rx[s][0] - targets[s], axis=1) / np.maximum(rx[s][1], 1e-300) for s in rx}

    floors = {q: float(np.quantile(rho[first], q)) for q in QUANTILES}
    out = {"command": " ".join(sys.argv), "machine": platform.platform(), "data": {
        "ratings": os.path.abspath(args.ratings), "users": int(n_users), "items": int(n_items), "train": int(u.size),
        "test": int(test_u.size), "deleted": int(gone.sum()), "deletion": args.deletion,
        "rows_changed": {s: int(changed[s].sum()) for s in changed}},
        "params": {k: v for k, v in vars(args).items()}, "train_s": train_s,
        "training_residual": {s: {f"p{int(q * 100)}": float(np.quantile(rho[s], q)) for q in (0.5, 0.9, 0.99, 1.0)}
                              for s in rho},
        "strict_tolerance": pooled_p90, "row_floors": {str(q): floors[q] for q in QUANTILES}, "sweeps": []}
    rows_total = n_users + n_items
    solver = WarmSolver(args.solver, args.cg_steps, changed)
    accelerator = Anderson(memory=args.anderson) if args.anderson > 0 else None
    out["solver"] = {"name": args.solver, "cg_steps": args.cg_steps if args.solver == "cg" else None,
                     "anderson_memory": args.anderson, "changed_rows": "cholesky",
                     "flops_model": sweep_flops(kept, args.rank, solver)}
    Fs = dict(F)
    x = dict(F)  # the next sweep's input: Fs, or Anderson's extrapolation
    for s in range(1, args.sweeps + 1):
        t_sweep, cpu_sweep = time.perf_counter(), time.process_time()
        Fs = sweep(kept, x, spec, targets, solver)
        x = Fs if accelerator is None else unflat(accelerator.update(flat(x), flat(Fs)), Fs)
        sweep_s = time.perf_counter() - t_sweep
        # CPU seconds (all threads) are less sensitive than wall seconds to other work on the machine.
        entry = {"sweep": s, "row_solves_per_row": float(s), "sweep_s": sweep_s,
                 "sweep_cpu_s": time.process_time() - cpu_sweep}
        dev = deviation(Fs)
        for side in dev:
            d = dev[side]
            entry[side] = {"p50": float(np.quantile(d, 0.5)), "p90": float(np.quantile(d, 0.9)),
                           "p99": float(np.quantile(d, 0.99)), "max": float(d.max())}
        all_dev = np.concatenate([dev["user"], dev["item"]])
        entry["strict_violators"] = int((all_dev > pooled_p90).sum())
        entry["row_violators"] = {str(q): int(sum((dev[sd] > np.maximum(rho[sd], floors[q])).sum() for sd in dev))
                                  for q in QUANTILES}
        entry["own_residual_violators"] = int(sum((dev[sd] > rho[sd]).sum() for sd in dev))
        out["sweeps"].append(entry)
        print(f"sweep {s} ({sweep_s:.2f} s): strict violators {entry['strict_violators']}/{rows_total}, row-q "
              f"violators {entry['row_violators']}, user dev p90 {entry['user']['p90']:.3g}", flush=True)
    out["solver"]["anderson_restarts"] = None if accelerator is None else accelerator.restarts
    for key in ("sweep_s", "sweep_cpu_s"):
        out["solver"][key + "_mean"] = float(np.mean([e[key] for e in out["sweeps"]]))
    out["holds_from_sweep"] = {
        "training-precision": first_sweep_holding(out["sweeps"], lambda e: e["row_violators"]["0.9"]),
        "strict": first_sweep_holding(out["sweeps"], lambda e: e["strict_violators"])}
    t1 = time.perf_counter()
    Fr = dict(F0)
    for _ in range(args.iterations):
        Fr = sweep(kept, Fr, spec)
    retrain_s = time.perf_counter() - t1
    du, di = u[gone], i[gone]
    if du.size > 5000:
        pick = rng.choice(du.size, 5000, replace=False)
        du, di = du[pick], di[pick]
    out["quality"] = {name: {**rank_metrics(Fx, kept, test_u, test_i, n_items), "deleted_rank_pct": rank_percentile(Fx, du, di)}
                      for name, Fx in (("original", F), ("swept", Fs), ("retrain", Fr))}
    out["retrain_s"] = retrain_s
    q = out["quality"]
    forget = q["retrain"]["deleted_rank_pct"] - q["original"]["deleted_rank_pct"]
    out["gap_closed"] = None if forget == 0 else (q["swept"]["deleted_rank_pct"] - q["original"]["deleted_rank_pct"]) / forget
    text = json.dumps(out, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(json.dumps(out["quality"], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

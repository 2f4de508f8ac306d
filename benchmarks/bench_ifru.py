"""IFRU benchmark on ml-latest-small: the paper's protocol and a concentrated deletion.

Scenarios (``--scenario``):

* ``random`` (Zhang et al., IFRU): label = rating >= 4, 5-core, 60/20/20 split,
  2 % of the training labels flipped; those noisy pairs are the unusable data
  ``D_u``, so good unlearning raises test AUC towards the retrain's.
* ``concentrated`` ("forget my history"): the same split without flips;
  ``D_u`` = every positive training pair of ``--forget-users`` users.  The
  forgetting measure is the deleted items' mean rank percentile in their
  users' lists (0 = top; the retrain no longer ranks them high).

For each model (MF, LightGCN) the script trains the original model and compares:

* ``original``   the model trained with ``D_u``;
* ``retrain``    the same full-batch training from the same initialisation
                 without ``D_u`` (LightGCN on ``G'``), run to a small gradient;
* ``retrain_seed{s}`` the same from other initialisations (spread of the reference);
* ``retrain_warm`` Adam (small lr) from the original on the remaining data;
* ``retrain_paper`` the authors' retrain protocol (github.com/baiyimeng/IFRU,
                 retrain_mf_*.py / retrain_lightgcn_*.py): Adam, lr 1e-4, batch 2048,
                 up to 5,000 epochs from a fresh initialisation, stopping after 11
                 epochs without a validation-AUC gain and keeping the best epoch
                 (the speed-up reference of the paper; our objective and init);
* ``finetune``   the original trained a few more epochs on the remaining data;
* ``ifru``       the influence update without pruning (targets the retrain's objective);
* ``ifru_paper_normaliser`` the paper's ``(1/n) H^-1 grad U`` (objective averaged over ``n``);
* ``ifru_cg_tol*``, ``ifru_newton*`` cheaper / more exact solves (safeguarded: every
                 Newton step must lower the retained-data objective);
* ``ifru_pruned_q*`` the influence update restricted to the important nodes.

Loss (``--loss``): ``bce`` (default) is the paper's pointwise BCE, every labelled
training pair a term.  ``bpr`` uses the package's BPR path (``IFRUConfig.loss =
"bpr"``, docs/IFRU.md section 6): ``--bpr-negatives`` negatives per positive training pair
(label 1 after the flips) drawn once with the model seed
(``models.bpr_negatives``), the objective the fixed sum of those triples; every
method trains on them (``unlearn.fit_triples``; the retrains keep the remaining
positives' negatives, other seeds change only the initialisation) and IFRU
unlearns through ``compute_unlearning``, which removes every triple of a removed
positive.  Only positive pairs are BPR terms, so ``D_u`` is the flipped pairs that
are training positives (disliked pairs flipped to liked) in ``random`` and every
positive of the chosen users in ``concentrated``; a liked pair flipped to
"disliked" has no triple (it only becomes an eligible negative) and there is
nothing to unlearn for it.  The evaluation (test AUC on the rated test pairs,
Recall@20) is the same for both losses.

Metrics: test AUC, AUC on the test pairs touching a user or item of ``D_u``,
Recall@20 (training and validation pairs excluded), wall and CPU seconds,
HVPs and where IFRU's time goes, ``gap_closed = (auc - auc_original) /
(auc_retrain - auc_original)`` (also against the mean of the retrains and the
warm-started one), ``score_gap_closed`` (the same in score space over the test
pairs) and, for the concentrated scenario, ``forget_gap_closed`` on the rank
percentile.  Membership inference: ``mia_auc``, the AUC of a loss-threshold
attack telling the deleted pairs from comparable held-out pairs
(``membership_sets``; 0.5 = they look unseen, as after a retrain), and
``mia_gap_closed`` on it.  torch runs on one thread.

Usage::

    python benchmarks/bench_ifru.py --ratings ../shared/data/ml-latest-small/ratings.csv \
        --scenario random --out docs/bench/ifru_ml-latest-small.json
    python benchmarks/bench_ifru.py --ratings ../shared/data/ml-latest-small/ratings.csv \
        --scenario concentrated --out docs/bench/ifru_ml-latest-small_concentrated.json
    python benchmarks/bench_ifru.py --ratings ../shared/data/ml-latest-small/ratings.csv \
        --scenario random --loss bpr --out docs/bench/ifru_ml-latest-small_bpr.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)

import torch  # noqa: E402

from spark_unlearn.logs import configure_logging  # noqa: E402

log = logging.getLogger("spark_unlearn.bench_ifru")

DEFAULTS = {
    "mf": {"dim": 64, "reg": 1e-4, "lr": 0.01, "epochs": 200},
    "lightgcn": {"dim": 64, "reg": 1e-4, "lr": 0.01, "epochs": 200, "layers": 1},
}


class Clock:
    """Wall and CPU (this process, all threads) seconds of a block."""

    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.w
        self.cpu = time.process_time() - self.c


def evaluate(model_h, n_users, test, excl, affected_mask, auc, recall_at_k, forget=None, mia=None):
    s = (model_h[test["u"]] * model_h[test["i"] + n_users]).sum(1)
    pos = test["label"] > 0
    out = {
        "test_auc": auc(s, test["label"]),
        "affected_auc": auc(s[affected_mask], test["label"][affected_mask]),
        "recall@20": recall_at_k(model_h, n_users, test["u"][pos], test["i"][pos], excl[0], excl[1], k=20),
        "test_scores": s,
    }
    if forget is not None:
        out["forget_rank_pct"] = rank_percentile(model_h, n_users, *forget)
    if mia is not None:
        from spark_unlearn.ifru.evaluate import membership_auc

        out["mia_auc"] = membership_auc(model_h, n_users, *mia)
    return out


def membership_sets(scenario, tr, va, te, removed):
    """``(members, nonmembers)`` for the membership-inference check, each ``(u, i, label)``.

    Members are the deleted training pairs with the labels they were trained
    on.  Non-members are held-out (validation and test) pairs no model saw,
    made comparable: in ``concentrated`` the deleted users' own held-out
    pairs; in ``random`` (the deleted pairs are label noise) every held-out
    pair with its label flipped, so that both sides are pairs labelled
    against the data.
    """
    members = (tr["u"][removed], tr["i"][removed], tr["label"][removed])
    u, i, y = (torch.cat([va[k], te[k]]) for k in ("u", "i", "label"))
    if scenario == "random":
        return members, (u, i, 1.0 - y)
    mine = torch.isin(u, torch.unique(members[0]))
    return members, (u[mine], i[mine], y[mine])


def rank_percentile(h, n_users, del_u, del_i, rem_u, rem_i):
    """Mean over deleted pairs of the fraction of candidate items scored above the deleted item (0 = top).

    Candidates: every item except the user's remaining training pairs (the deleted item itself included).
    """
    users = torch.unique(del_u)
    row = torch.full((n_users,), -1, dtype=torch.long)
    row[users] = torch.arange(users.numel())
    scores = h[users].double() @ h[n_users:].double().T
    m = row[rem_u] >= 0
    scores[row[rem_u[m]], rem_i[m]] = float("nan")
    target = scores[row[del_u], del_i]
    cand = scores[row[del_u]]
    valid = ~torch.isnan(cand)
    above = ((cand > target.unsqueeze(1)) & valid).sum(1).double()
    return float((above / valid.sum(1).double()).mean())


def removal_scenario(scenario, tr, nu, args):
    """Boolean mask of the training pairs to unlearn, and the labels the original model is trained on.

    With ``--loss bpr`` only positive pairs are terms (their triples), so a flipped pair is unlearned only if it is a
    training positive; the package's BPR path would ignore the others (``unlearn.select_subgraph_bpr``).
    """
    if scenario == "random":
        removed = tr["noisy"].clone()
        if args.loss == "bpr":
            removed &= tr["label"] > 0
        return removed, tr["label"]
    pos = tr["label"] > 0
    if scenario == "users":  # every training term of the listed users (CURE4Rec's user deletion)
        chosen = torch.zeros(nu, dtype=torch.bool)
        chosen[args.forget_dense_users] = True
        removed = chosen[tr["u"]]
        return (removed & pos if args.loss == "bpr" else removed), tr["label"]
    counts = torch.bincount(tr["u"][pos], minlength=nu)
    eligible = torch.nonzero(counts >= args.min_user_positives).reshape(-1)
    gen = torch.Generator().manual_seed(args.seed)
    users = eligible[torch.randperm(eligible.numel(), generator=gen)[: args.forget_users]]
    chosen = torch.zeros(nu, dtype=torch.bool)
    chosen[users] = True
    return chosen[tr["u"]] & pos, tr["label"]


def run_model(kind, args, spark, prepared, train_df, tensors):
    from spark_unlearn.ifru.config import IFRUConfig
    from spark_unlearn.ifru.evaluate import auc, recall_at_k
    from spark_unlearn.ifru.models import bpr_negatives, build_graph, layer_mean
    from spark_unlearn.ifru.state import IFRUModel
    from spark_unlearn.ifru.unlearn import apply_unlearning, compute_unlearning, fit_tensors, fit_triples

    hp = dict(DEFAULTS[kind])
    for key in ("dim", "reg", "lr", "epochs"):
        if getattr(args, key) is not None:
            hp[key] = getattr(args, key)
    cfg = IFRUConfig(
        model_type=kind, layers=hp.get("layers", 1), dim=hp["dim"], reg=hp["reg"], lr=hp["lr"], epochs=hp["epochs"],
        damping=args.damping, cg_tol=args.cg_tol, cg_max_iter=args.cg_max_iter, influence_dtype=args.dtype,
        hessian=args.hessian, precondition=args.precondition, loss=args.loss, bpr_negatives=args.bpr_negatives,
    )
    nu, ni = prepared.n_users, prepared.n_items
    tr, te, va = tensors["train"], tensors["test"], tensors["val"]
    removed = tr["removed"]
    keep = ~removed
    excl = (torch.cat([tr["u"], va["u"]]), torch.cat([tr["i"], va["i"]]))
    aff_u = torch.zeros(nu, dtype=torch.bool)
    aff_i = torch.zeros(ni, dtype=torch.bool)
    aff_u[tr["u"][removed]] = True
    aff_i[tr["i"][removed]] = True
    affected = aff_u[te["u"]] | aff_i[te["i"]]
    L = cfg.model_layers
    forget = None
    if args.scenario in ("concentrated", "users"):
        gone = removed & (tr["label"] > 0)
        forget = (tr["u"][gone], tr["i"][gone], tr["u"][keep], tr["i"][keep])
    mia = membership_sets(args.scenario, tr, tensors.get("val_all", va), tensors.get("test_all", te), removed)

    def h_of(e0, u, i, label):
        g = build_graph(u[label > 0], i[label > 0], nu, ni) if L else None
        with torch.no_grad():
            return layer_mean(e0, g, L)

    results = {}
    scores = {}

    def record(name, e0, graph_terms, clock, extra=None):
        h = h_of(e0, *graph_terms)
        entry = {"wall_s": clock.wall, "cpu_s": clock.cpu, **evaluate(h, nu, te, excl, affected, auc, recall_at_k, forget, mia)}
        scores[name] = entry.pop("test_scores")
        entry.update(extra or {})
        results[name] = entry
        log.info("%s %s: %s", kind, name, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in entry.items()
                                           if not isinstance(v, dict)})

    # labelled pairs: the LightGCN graphs (built from their positives) and, for BCE, the training terms
    full_terms = (tr["u"], tr["i"], tr["label"])
    kept_terms = (tr["u"][keep], tr["i"][keep], tr["label"][keep])
    pos = tr["label"] > 0
    if cfg.loss == "bpr":
        # the package's fixed triples: negatives drawn once (seeded), kept by every retrain; removing a positive removes
        # all its triples, so the remaining objective is the training sum minus D_u (docs/IFRU.md section 6)
        if not bool(pos[removed].all()):
            raise ValueError("with loss='bpr' only positive training pairs can be unlearned")
        pos_u, pos_i, neg_j = bpr_negatives(tr["u"][pos], tr["i"][pos], ni, cfg.bpr_negatives, cfg.seed)
        gone = torch.isin(pos_u * ni + pos_i, tr["u"][removed] * ni + tr["i"][removed])
        fit = fit_triples
        full_data, kept_data = (pos_u, pos_i, neg_j), (pos_u[~gone], pos_i[~gone], neg_j[~gone])
        removed_terms = int(neg_j[gone].numel())
        model_terms = {"pos_u": pos_u, "pos_i": pos_i, "n_terms": int(neg_j.numel()), "neg_j": neg_j}
    else:
        fit, full_data, kept_data = fit_tensors, full_terms, kept_terms
        removed_terms = int(removed.sum())
        model_terms = {"pos_u": tr["u"][pos], "pos_i": tr["i"][pos], "n_terms": int(tr["u"].numel())}
    with Clock() as c:
        orig = fit(cfg, nu, ni, *full_data)
    record("original", orig.e0, full_terms, c, {"epochs": cfg.epochs, "grad_norm": orig.grad_norm})
    with Clock() as c:
        re = fit(cfg, nu, ni, *kept_data)
    record("retrain", re.e0, kept_terms, c, {"epochs": cfg.epochs, "grad_norm": re.grad_norm, "gradient_steps": re.steps})
    # how reproducible is the reference? other initialisations, and a retrain warm-started from the original
    for s in args.retrain_seeds:
        with Clock() as c:
            r = fit(cfg.replace(seed=s), nu, ni, *kept_data)
        record(f"retrain_seed{s}", r.e0, kept_terms, c, {"grad_norm": r.grad_norm})
    if args.warm_epochs:
        with Clock() as c:
            w = fit(cfg.replace(lr=args.warm_lr), nu, ni, *kept_data, e0=orig.e0, epochs=args.warm_epochs)
        record("retrain_warm", w.e0, kept_terms, c, {"epochs": args.warm_epochs, "lr": args.warm_lr, "grad_norm": w.grad_norm})
    # the authors' retrain protocol: mini-batch Adam, early stopping on validation AUC
    if args.paper_epochs:
        gv = build_graph(kept_terms[0][kept_terms[2] > 0], kept_terms[1][kept_terms[2] > 0], nu, ni) if L else None

        def val_auc(e0):
            h = layer_mean(e0, gv, L)
            return auc((h[va["u"]] * h[va["i"] + nu]).sum(1), va["label"])

        pcfg = cfg.replace(batch_size=args.paper_batch, lr=args.paper_lr)
        with Clock() as c:
            pr = fit(pcfg, nu, ni, *kept_data, epochs=args.paper_epochs, monitor=val_auc, patience=args.paper_patience)
        record("retrain_paper", pr.e0, kept_terms, c, {
            "epochs": pr.epochs, "best_epoch": pr.best_epoch, "gradient_steps": pr.steps, "batch_size": args.paper_batch,
            "lr": args.paper_lr, "patience": args.paper_patience, "best_val_auc": max(pr.monitor_history),
        })
    ft_epochs = max(1, int(round(cfg.epochs * args.finetune_fraction)))
    with Clock() as c:
        ft = fit(cfg, nu, ni, *kept_data, e0=orig.e0, epochs=ft_epochs)
    record("finetune", ft.e0, kept_terms, c, {"epochs": ft_epochs})

    model = IFRUModel(
        config=cfg, e0=orig.e0, user_ids=prepared.user_ids, item_ids=prepared.item_ids,
        removed_u=torch.zeros(0, dtype=torch.long), removed_i=torch.zeros(0, dtype=torch.long), **model_terms,
    )
    runs = [("ifru", {}), ("ifru_paper_normaliser", {"normaliser": "training"})]
    runs += [(f"ifru_cg_tol{t:g}", {"cg_tol": t}) for t in args.extra_cg_tols]
    runs += [(f"ifru_newton{k}", {"newton_steps": k}) for k in args.newton_steps if k > 1]
    runs += [(f"ifru_pruned_q{q:g}" + ("" if h == "reach" else f"_{h}"), {"prune_quantile": q, "hessian_terms": h})
             for h in args.pruned_hessian_terms for q in args.quantiles]
    for name, over in runs:
        run_cfg = cfg.replace(prune_hops=args.prune_hops, **over)
        with Clock() as c:
            plan = compute_unlearning(train_df, model, run_cfg, validation=va)
            new = apply_unlearning(model, plan)
        rep = plan.report()
        t = rep["timings_s"]
        extra = {
            "hvps": rep["hvps"], "cg_iterations": rep["cg_iterations"], "cg_relative_residual": rep["cg_relative_residual"],
            "parameters_updated": rep["parameters_updated"], "kept_nodes": rep["kept_nodes"],
            "subgraph_terms": rep["subgraph_terms"], "spillover_terms": rep["spillover_terms"],
            "hvp_term_evaluations": rep["hvps"] * rep["subgraph_terms"],
            "driver_s": t["update_s"] + t["assemble_s"], "cg_s": t["driver_cg_s"],
            "s_per_hvp": t["driver_cg_s"] / max(rep["hvps"], 1), "spark_subgraph_s": t["spark_subgraph_s"],
            "timings_s": t, "settings": over, "cg_converged": rep["cg_converged"],
            "certificate": rep["certificate"],
        }
        record(name, new.e0, kept_terms, c, extra)

    def closed(value, a, b):
        return (value - a) / (b - a) if b != a else float("nan")

    base, ref = results["original"]["test_auc"], results["retrain"]["test_auc"]
    abase, aref = results["original"]["affected_auc"], results["retrain"]["affected_auc"]
    retrains = [k for k in results if k == "retrain" or k.startswith("retrain_seed")]
    ref_mean = sum(results[k]["test_auc"] for k in retrains) / len(retrains)
    s0, s_ref = scores["original"], scores["retrain"]
    for name, entry in results.items():
        entry["gap_closed"] = closed(entry["test_auc"], base, ref)
        entry["affected_gap_closed"] = closed(entry["affected_auc"], abase, aref)
        entry["gap_closed_vs_mean_retrain"] = closed(entry["test_auc"], base, ref_mean)
        if "retrain_warm" in results:
            entry["gap_closed_vs_warm_retrain"] = closed(entry["test_auc"], base, results["retrain_warm"]["test_auc"])
        # score space: 1 - |s - s_retrain| / |s_original - s_retrain| over the test pairs
        entry["score_gap_closed"] = 1.0 - float((scores[name] - s_ref).norm() / (s0 - s_ref).norm())
        entry["mia_gap_closed"] = closed(entry["mia_auc"], results["original"]["mia_auc"], results["retrain"]["mia_auc"])
        if forget is not None:
            entry["forget_gap_closed"] = closed(entry["forget_rank_pct"], results["original"]["forget_rank_pct"],
                                                results["retrain"]["forget_rank_pct"])
        for ref_name in ("retrain", "retrain_paper"):
            if ref_name in results:
                entry[f"speedup_cpu_vs_{ref_name}"] = results[ref_name]["cpu_s"] / max(entry["cpu_s"], 1e-9)
                entry[f"speedup_wall_vs_{ref_name}"] = results[ref_name]["wall_s"] / max(entry["wall_s"], 1e-9)
    key = "forget_gap_closed" if forget is not None else "gap_closed"
    u = results["ifru"]
    for name, e in results.items():
        if name.startswith("ifru"):
            e["speedup_wall_without_spark_vs_retrain"] = results["retrain"]["wall_s"] / max(e["wall_s"] - e["spark_subgraph_s"], 1e-9)
            e["hvp_cost_ratio_vs_unpruned"] = u["hvp_term_evaluations"] / max(e["hvp_term_evaluations"], 1)
            e["recovered_gap_kept"] = e[key] / u[key] if u[key] else float("nan")
    ifru_names = [k for k in results if k.startswith("ifru")]
    summary = {
        "ifru_min_test_auc_change": min(results[k]["test_auc"] for k in ifru_names) - base,
        "ifru_below_original": [k for k in ifru_names if results[k]["test_auc"] < base],
        "gap": ref - base,
        "retrain_auc_spread": max(results[k]["test_auc"] for k in retrains) - min(results[k]["test_auc"] for k in retrains),
        "ifru_gap_closed": u["gap_closed"],
        "gap_measure_for_pruning": key,
        "affected_test_fraction": float(affected.double().mean()),
        "removed_terms": removed_terms,
        "mia_members": int(mia[0][0].numel()),
        "mia_nonmembers": int(mia[1][0].numel()),
    }
    if cfg.loss == "bpr":
        summary["removed_pairs"] = int(removed.sum())
    return {"config": cfg.to_dict(), "methods": results, "summary": summary}


def warm_up_torch_func(loss: str = "bce") -> None:
    """First use of torch.func in a process costs seconds of one-off initialisation; pay it outside the timings."""
    from spark_unlearn.ifru.influence import compute_update
    from spark_unlearn.ifru.models import bpr_negatives
    from spark_unlearn.ifru.problem import assemble_problem, graphs_before_after
    from spark_unlearn.ifru.pruning import subgraph_torch, subgraph_triples_torch

    u, i = torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 0])
    label, removed = torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([True, False, False, False])
    g, gp = graphs_before_after(u[label > 0], i[label > 0], u[removed], i[removed], 3, 2)
    for layers in (0, 1):
        sub = subgraph_torch(u, i, label, removed, 3, 2, layers, None)
        prob = assemble_problem(sub, torch.randn(5, 2), g, gp, n_users=3, n_items=2, layers=layers, reg=0.1, n=4)
        for dt in (torch.float32, torch.float64):
            compute_update(prob, dtype=dt, damping=0.1)
    if loss == "bpr":
        pu, pi, nj = bpr_negatives(u[label > 0], i[label > 0], 2, 1, 0)
        gone = (pu == 0) & (pi == 0)
        for layers in (0, 1):
            sub = subgraph_triples_torch(pu, pi, nj, gone, 3, 2, layers, None)
            prob = assemble_problem(sub, torch.randn(5, 2), g, gp, n_users=3, n_items=2, layers=layers, reg=0.1,
                                    n=int(nj.numel()), loss="bpr")
            for dt in (torch.float32, torch.float64):
                compute_update(prob, dtype=dt, damping=0.1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratings", default=os.path.join(_REPO, "..", "shared", "data", "ml-latest-small", "ratings.csv"))
    ap.add_argument("--out", default=None, help="write the JSON results here")
    ap.add_argument("--models", default="mf,lightgcn")
    ap.add_argument("--flip-fraction", type=float, default=0.02)
    ap.add_argument("--threshold", type=float, default=4.0, help="label = rating >= threshold (1 for implicit data)")
    ap.add_argument("--kcore", type=int, default=5)
    ap.add_argument("--format", default="auto", help="format of --ratings (parquet for benchmarks/expand_data.py output)")
    ap.add_argument("--columns", default=None, help="the file's column names, e.g. user=uid,item=iid,rating=val (adm)")
    ap.add_argument("--negatives", type=int, default=0,
                    help="implicit data: unobserved pairs drawn per observed pair, label 0 (data.sample_negatives)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dim", type=int)
    ap.add_argument("--reg", type=float)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--loss", default="bce", choices=("bce", "bpr"),
                    help="training objective of every method: pointwise BCE (the paper's) or BPR on fixed seeded triples")
    ap.add_argument("--bpr-negatives", type=int, default=1, help="--loss bpr: negatives drawn per positive training pair")
    ap.add_argument("--finetune-fraction", type=float, default=0.1, help="fine-tune epochs as a fraction of training epochs")
    ap.add_argument("--damping", type=float, default=1e-5)
    ap.add_argument("--cg-tol", type=float, default=1e-3)
    ap.add_argument("--cg-max-iter", type=int, default=500)
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--precondition", action="store_true", help="block-Jacobi preconditioned CG")
    ap.add_argument("--quantiles", default="0.5,0.8,0.95", help="pruned IFRU entries, one per quantile")
    ap.add_argument("--extra-cg-tols", default="1e-2", help="unpruned IFRU entries with these CG tolerances")
    ap.add_argument("--scenario", default="random", choices=("random", "concentrated", "users"),
                    help="random: 2%% of training labels flipped (the paper's); concentrated: all positive training "
                         "pairs of --forget-users users, labels unchanged ('forget my history'); users: every training "
                         "pair of the users in --forget-file (CURE4Rec's user deletion), their held-out pairs leave "
                         "the evaluation")
    ap.add_argument("--forget-file", default=None, help="users scenario: CSV with a uid column (e.g. CURE4Rec's "
                    "unlearn_set/core_data_5%%.csv)")
    ap.add_argument("--id-offset", type=int, default=0,
                    help="added to the --forget-file ids to match --ratings (CURE4Rec's unlearn_set: 1)")
    ap.add_argument("--forget-users", type=int, default=10)
    ap.add_argument("--min-user-positives", type=int, default=20, help="concentrated: only users with this many positives")
    ap.add_argument("--retrain-seeds", default="1,2", help="extra retrains from other initialisations (reference spread)")
    ap.add_argument("--warm-epochs", type=int, default=200, help="retrain warm-started from the original (0: skip)")
    ap.add_argument("--warm-lr", type=float, default=1e-3)
    ap.add_argument("--paper-epochs", type=int, default=5000,
                    help="retrain_paper (the authors' protocol): max epochs (0: skip)")
    ap.add_argument("--paper-batch", type=int, default=2048, help="retrain_paper batch size (authors: 2048)")
    ap.add_argument("--paper-lr", type=float, default=1e-4, help="retrain_paper Adam step (authors: 1e-4)")
    ap.add_argument("--paper-patience", type=int, default=11,
                    help="retrain_paper: epochs without a validation-AUC gain before stopping (authors: 11)")
    ap.add_argument("--hessian", default="remaining", choices=("remaining", "full"))
    ap.add_argument("--newton-steps", default="2,3", help="also run unpruned IFRU with these Newton step budgets")
    ap.add_argument("--prune-hops", type=int, default=1)
    ap.add_argument("--pruned-hessian-terms", default="reach",
                    help="pruned entries for each of these hessian_terms settings (reach, kept; comma-separated)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on the driver")
    args = ap.parse_args(argv)
    args.quantiles = [float(q) for q in args.quantiles.split(",") if q.strip()]
    args.pruned_hessian_terms = [h.strip() for h in args.pruned_hessian_terms.split(",") if h.strip()]
    args.extra_cg_tols = [float(q) for q in args.extra_cg_tols.split(",") if q.strip()]
    args.retrain_seeds = [int(q) for q in args.retrain_seeds.split(",") if q.strip()]
    args.newton_steps = [int(q) for q in args.newton_steps.split(",") if q.strip()]
    configure_logging("INFO")
    torch.set_num_threads(args.threads)

    from spark_unlearn.data.readers import read_ratings
    from spark_unlearn.ifru.data import flip_labels, prepare, to_tensors
    from pyspark.sql import functions as F

    from spark_unlearn.session import get_session

    spark = get_session("bench_ifru", master="local[2]", conf={"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false", "spark.sql.shuffle.partitions": "4"})
    spark.sparkContext.setLogLevel("ERROR")
    with Clock() as prep_clock:
        columns = dict(kv.split("=", 1) for kv in args.columns.split(",")) if args.columns else None
        ratings = read_ratings(spark, args.ratings, format=args.format, columns=columns)
        prepared = prepare(ratings, threshold=args.threshold, k=args.kcore, fractions=(0.6, 0.2, 0.2), seed=args.seed,
                           negatives=args.negatives)
        train = flip_labels(prepared.train, args.flip_fraction if args.scenario == "random" else 0.0, args.seed)
        tensors = {
            "train": to_tensors(train.orderBy("u", "i"), ["u", "i", "label", "noisy"]),
            "val": to_tensors(prepared.val.orderBy("u", "i"), ["u", "i", "label"]),
            "test": to_tensors(prepared.test.orderBy("u", "i"), ["u", "i", "label"]),
        }
    for part in tensors.values():
        part["u"], part["i"] = part["u"].long(), part["i"].long()
        part["label"] = part["label"].float()
    tensors["train"]["noisy"] = tensors["train"]["noisy"].bool()
    tr = tensors["train"]
    forget_users = {}
    if args.scenario == "users":
        import numpy as np
        import pandas as pd

        raw = np.unique(pd.read_csv(args.forget_file)["uid"].to_numpy() + args.id_offset)
        ids = np.asarray(prepared.user_ids)
        pos_ = np.searchsorted(ids, raw).clip(0, max(len(ids) - 1, 0))
        found = ids[pos_] == raw
        args.forget_dense_users = pos_[found].tolist()
        forget_users = {"forget_file": os.path.abspath(args.forget_file), "users_in_file": int(raw.size),
                        "users_after_kcore": int(found.sum())}
        chosen = torch.zeros(prepared.n_users, dtype=torch.bool)
        chosen[args.forget_dense_users] = True
        for part in ("val", "test"):  # CURE4Rec: a deleted user's interactions leave the test data too
            tensors[f"{part}_all"] = dict(tensors[part])
            keep_ = ~chosen[tensors[part]["u"]]
            tensors[part] = {k: v[keep_] for k, v in tensors[part].items()}
    tr["removed"], _ = removal_scenario(args.scenario, tr, prepared.n_users, args)
    flags = spark.createDataFrame(
        [(int(a), int(b)) for a, b in zip(tr["u"][tr["removed"]].tolist(), tr["i"][tr["removed"]].tolist())], "u int, i int"
    ).withColumn("removed", F.lit(True))
    train_df = (train.join(flags, ["u", "i"], "left").select("u", "i", "label", F.coalesce("removed", F.lit(False)).alias("removed"))
                .localCheckpoint())
    data = {
        "ratings": os.path.abspath(args.ratings),
        "n_users": prepared.n_users,
        "n_items": prepared.n_items,
        "kcore_rounds": prepared.kcore_rounds,
        "train": int(tensors["train"]["u"].numel()),
        "val": int(tensors["val"]["u"].numel()),
        "test": int(tensors["test"]["u"].numel()),
        "removed": int(tr["removed"].sum()),
        "removed_users": int(torch.unique(tr["u"][tr["removed"]]).numel()),
        "flipped": int(tr["noisy"].sum()),
        "spark_prepare_s": prep_clock.wall,
        **forget_users,
    }
    log.info("data: %s", data)
    prep = f"label=rating>={args.threshold:g}, {args.kcore}-core, " + (
        f"{args.negatives} sampled negative(s) per observed pair, " if args.negatives else "")
    protocol = {"random": f"{prep}60/20/20 per user, {args.flip_fraction:.0%} train labels flipped = D_u",
                "concentrated": f"{prep}60/20/20 per user, D_u = all positive training pairs of "
                                f"{args.forget_users} users with >= {args.min_user_positives} positives",
                "users": f"{prep}60/20/20 per user, D_u = every training pair of the users in {args.forget_file} "
                         f"(ids + {args.id_offset}); their validation and test pairs are left out of the evaluation"}[args.scenario]
    if args.loss == "bpr":
        protocol += (f"; BPR loss on fixed triples ({args.bpr_negatives} seeded negative(s) per positive training pair), "
                     "D_u = the triples of the removed pairs that are training positives")
    out = {"scenario": args.scenario, "loss": args.loss, "protocol": protocol, "command": " ".join(sys.argv),
           "params": {k: v for k, v in vars(args).items() if k != "forget_dense_users"}, "data": data,
           "torch_threads": args.threads, "load_avg_start": os.getloadavg(), "models": {}}
    with Clock() as warm:
        warm_up_torch_func(args.loss)
    out["torch_func_warmup_s"] = {"wall": warm.wall, "cpu": warm.cpu}
    for kind in args.models.split(","):
        out["models"][kind] = run_model(kind.strip(), args, spark, prepared, train_df, tensors)
    out["load_avg_end"] = os.getloadavg()
    text = json.dumps(out, indent=2, default=float)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    print(text)
    spark.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

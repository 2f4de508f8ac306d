"""IFRU benchmark on ml-latest-small with the paper's protocol.

Protocol (Zhang et al., IFRU): label = rating >= 4, 5-core, 60/20/20 split,
2 % of the training labels flipped; those noisy pairs are the unusable data
``D_u``.  For each model (MF, LightGCN) the script trains the original model on
the noisy training split and compares:

* ``original``   the noisy model;
* ``retrain``    the same training from the same initialisation on the training
                 split without ``D_u`` (LightGCN on ``G'``);
* ``finetune``   the original trained a few more epochs on the remaining data;
* ``ifru``       the influence update without pruning;
* ``ifru_pruned`` the influence update restricted to the important nodes.

Metrics: test AUC, AUC on the test pairs touching a user or item of ``D_u``,
Recall@20 (training and validation pairs excluded), wall and CPU seconds,
HVPs, and ``gap_closed = (auc - auc_original) / (auc_retrain - auc_original)``.

Usage::

    python benchmarks/bench_ifru.py --ratings ../shared/data/ml-latest-small/ratings.csv --out bench_ifru.json
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


def evaluate(model_h, n_users, test, excl, affected_mask, auc, recall_at_k):
    s = (model_h[test["u"]] * model_h[test["i"] + n_users]).sum(1)
    pos = test["label"] > 0
    return {
        "test_auc": auc(s, test["label"]),
        "affected_auc": auc(s[affected_mask], test["label"][affected_mask]),
        "recall@20": recall_at_k(model_h, n_users, test["u"][pos], test["i"][pos], excl[0], excl[1], k=20),
    }


def run_model(kind, args, spark, prepared, train_df, tensors):
    from spark_unlearn.ifru.config import IFRUConfig
    from spark_unlearn.ifru.evaluate import auc, recall_at_k
    from spark_unlearn.ifru.models import build_graph, layer_mean
    from spark_unlearn.ifru.state import IFRUModel
    from spark_unlearn.ifru.unlearn import apply_unlearning, compute_unlearning, fit_tensors

    hp = dict(DEFAULTS[kind])
    for key in ("dim", "reg", "lr", "epochs"):
        if getattr(args, key) is not None:
            hp[key] = getattr(args, key)
    cfg = IFRUConfig(
        model_type=kind, layers=hp.get("layers", 1), dim=hp["dim"], reg=hp["reg"], lr=hp["lr"], epochs=hp["epochs"],
        damping=args.damping, cg_tol=args.cg_tol, cg_max_iter=args.cg_max_iter, influence_dtype=args.dtype,
        hessian=args.hessian, precondition=args.precondition,
    )
    nu, ni = prepared.n_users, prepared.n_items
    tr, te = tensors["train"], tensors["test"]
    noisy = tr["noisy"]
    keep = ~noisy
    excl = (torch.cat([tr["u"], tensors["val"]["u"]]), torch.cat([tr["i"], tensors["val"]["i"]]))
    aff_u = torch.zeros(nu, dtype=torch.bool)
    aff_i = torch.zeros(ni, dtype=torch.bool)
    aff_u[tr["u"][noisy]] = True
    aff_i[tr["i"][noisy]] = True
    affected = aff_u[te["u"]] | aff_i[te["i"]]
    L = cfg.model_layers

    def h_of(e0, u, i, label):
        g = build_graph(u[label > 0], i[label > 0], nu, ni) if L else None
        with torch.no_grad():
            return layer_mean(e0, g, L)

    results = {}

    def record(name, e0, graph_terms, clock, extra=None):
        h = h_of(e0, *graph_terms)
        entry = {"wall_s": clock.wall, "cpu_s": clock.cpu, **evaluate(h, nu, te, excl, affected, auc, recall_at_k)}
        entry.update(extra or {})
        results[name] = entry
        log.info("%s %s: %s", kind, name, {k: (round(v, 4) if isinstance(v, float) else v) for k, v in entry.items()})

    full_terms = (tr["u"], tr["i"], tr["label"])
    kept_terms = (tr["u"][keep], tr["i"][keep], tr["label"][keep])
    with Clock() as c:
        orig = fit_tensors(cfg, nu, ni, *full_terms)
    record("original", orig.e0, full_terms, c, {"epochs": cfg.epochs, "grad_norm": orig.grad_norm})
    with Clock() as c:
        re = fit_tensors(cfg, nu, ni, *kept_terms)
    record("retrain", re.e0, kept_terms, c, {"epochs": cfg.epochs, "grad_norm": re.grad_norm})
    ft_epochs = max(1, int(round(cfg.epochs * args.finetune_fraction)))
    with Clock() as c:
        ft = fit_tensors(cfg, nu, ni, *kept_terms, e0=orig.e0, epochs=ft_epochs)
    record("finetune", ft.e0, kept_terms, c, {"epochs": ft_epochs})

    pos = tr["label"] > 0
    model = IFRUModel(
        config=cfg, e0=orig.e0, user_ids=prepared.user_ids, item_ids=prepared.item_ids,
        pos_u=tr["u"][pos], pos_i=tr["i"][pos], removed_u=torch.zeros(0, dtype=torch.long),
        removed_i=torch.zeros(0, dtype=torch.long), n_terms=int(tr["u"].numel()),
    )
    runs = [("ifru", None), ("ifru_pruned", args.prune_quantile)]
    runs += [(f"ifru_pruned_q{q:g}", q) for q in args.extra_quantiles if q != args.prune_quantile]
    runs = [(name, q, 1) for name, q in runs]
    if args.newton_steps > 1:
        runs.append((f"ifru_newton{args.newton_steps}", None, args.newton_steps))
    for name, q, steps in runs:
        run_cfg = cfg.replace(prune_quantile=q, prune_hops=args.prune_hops, newton_steps=steps)
        with Clock() as c:
            plan = compute_unlearning(train_df, model, run_cfg)
            new = apply_unlearning(model, plan)
        rep = plan.report()
        extra = {
            "hvps": rep["hvps"], "cg_iterations": rep["cg_iterations"], "cg_relative_residual": rep["cg_relative_residual"],
            "parameters_updated": rep["parameters_updated"], "kept_nodes": rep["kept_nodes"],
            "subgraph_terms": rep["subgraph_terms"], "spillover_terms": rep["spillover_terms"],
            "hvp_term_evaluations": rep["hvps"] * rep["subgraph_terms"],
            "driver_s": rep["timings_s"]["update_s"] + rep["timings_s"]["assemble_s"],
            "cg_s": rep["timings_s"]["driver_cg_s"], "spark_subgraph_s": rep["timings_s"]["spark_subgraph_s"],
            "timings_s": rep["timings_s"], "prune_quantile": q, "newton_steps": steps,
            "cg_converged": rep["cg_converged"],
        }
        record(name, new.e0, kept_terms, c, extra)

    base, ref = results["original"]["test_auc"], results["retrain"]["test_auc"]
    abase, aref = results["original"]["affected_auc"], results["retrain"]["affected_auc"]
    for entry in results.values():
        entry["gap_closed"] = (entry["test_auc"] - base) / (ref - base) if ref != base else float("nan")
        entry["affected_gap_closed"] = (entry["affected_auc"] - abase) / (aref - abase) if aref != abase else float("nan")
        entry["speedup_wall_vs_retrain"] = results["retrain"]["wall_s"] / entry["wall_s"]
        entry["speedup_cpu_vs_retrain"] = results["retrain"]["cpu_s"] / max(entry["cpu_s"], 1e-9)
    for name, e in results.items():
        if name.startswith("ifru"):
            e["speedup_driver_cpu_vs_retrain"] = results["retrain"]["cpu_s"] / max(e["cpu_s"], 1e-9)
            e["speedup_wall_without_spark_vs_retrain"] = results["retrain"]["wall_s"] / max(e["wall_s"] - e["spark_subgraph_s"], 1e-9)
            e["hvp_cost_ratio_vs_unpruned"] = results["ifru"]["hvp_term_evaluations"] / max(e["hvp_term_evaluations"], 1)
            e["recovered_gap_kept"] = e["gap_closed"] / results["ifru"]["gap_closed"] if results["ifru"]["gap_closed"] else float("nan")
    u, p = results["ifru"], results["ifru_pruned"]
    summary = {
        "gap": ref - base,
        "ifru_gap_closed": u["gap_closed"],
        "pruned_gap_closed": p["gap_closed"],
        "pruned_keeps_fraction_of_recovered_gap": p["gap_closed"] / u["gap_closed"] if u["gap_closed"] else float("nan"),
        "hvp_cost_ratio_terms": u["hvp_term_evaluations"] / max(p["hvp_term_evaluations"], 1),
        "hvp_cost_ratio_cg_s": u["cg_s"] / max(p["cg_s"], 1e-9),
        "affected_test_fraction": float(affected.double().mean()),
    }
    return {"config": cfg.to_dict(), "methods": results, "summary": summary}


def warm_up_torch_func() -> None:
    """First use of torch.func in a process costs seconds of one-off initialisation; pay it outside the timings."""
    from spark_unlearn.ifru.influence import compute_update
    from spark_unlearn.ifru.problem import assemble_problem, graphs_before_after
    from spark_unlearn.ifru.pruning import subgraph_torch

    u, i = torch.tensor([0, 0, 1, 2]), torch.tensor([0, 1, 1, 0])
    label, removed = torch.tensor([1.0, 0.0, 1.0, 1.0]), torch.tensor([True, False, False, False])
    g, gp = graphs_before_after(u[label > 0], i[label > 0], u[removed], i[removed], 3, 2)
    for layers in (0, 1):
        sub = subgraph_torch(u, i, label, removed, 3, 2, layers, None)
        prob = assemble_problem(sub, torch.randn(5, 2), g, gp, n_users=3, n_items=2, layers=layers, reg=0.1, n=4)
        for dt in (torch.float32, torch.float64):
            compute_update(prob, dtype=dt, damping=0.1)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratings", default=os.path.join(_REPO, "..", "shared", "data", "ml-latest-small", "ratings.csv"))
    ap.add_argument("--out", default=None, help="write the JSON results here")
    ap.add_argument("--models", default="mf,lightgcn")
    ap.add_argument("--flip-fraction", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dim", type=int)
    ap.add_argument("--reg", type=float)
    ap.add_argument("--lr", type=float)
    ap.add_argument("--epochs", type=int)
    ap.add_argument("--finetune-fraction", type=float, default=0.1, help="fine-tune epochs as a fraction of training epochs")
    ap.add_argument("--damping", type=float, default=1e-5)
    ap.add_argument("--cg-tol", type=float, default=1e-3)
    ap.add_argument("--cg-max-iter", type=int, default=500)
    ap.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    ap.add_argument("--precondition", action="store_true", help="block-Jacobi preconditioned CG")
    ap.add_argument("--prune-quantile", type=float, default=0.8, help="the 'ifru_pruned' entry")
    ap.add_argument("--extra-quantiles", default="0.5,0.95", help="more pruned entries (trade-off curve)")
    ap.add_argument("--hessian", default="remaining", choices=("remaining", "full"))
    ap.add_argument("--newton-steps", type=int, default=2, help="also run unpruned IFRU with this many Newton steps (1: skip)")
    ap.add_argument("--prune-hops", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="torch threads on the driver")
    args = ap.parse_args(argv)
    args.extra_quantiles = [float(q) for q in args.extra_quantiles.split(",") if q.strip()]
    configure_logging("INFO")
    torch.set_num_threads(args.threads)

    from spark_unlearn.data.readers import read_ratings
    from spark_unlearn.ifru.data import flip_labels, prepare, to_tensors
    from spark_unlearn.session import get_session

    spark = get_session("bench_ifru", master="local[2]", conf={"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false", "spark.sql.shuffle.partitions": "4"})
    spark.sparkContext.setLogLevel("ERROR")
    with Clock() as prep_clock:
        ratings = read_ratings(spark, args.ratings)
        prepared = prepare(ratings, threshold=4.0, k=5, fractions=(0.6, 0.2, 0.2), seed=args.seed)
        train = flip_labels(prepared.train, args.flip_fraction, args.seed)
        train_df = train.select("u", "i", "label", train["noisy"].alias("removed")).localCheckpoint()
        tensors = {
            "train": to_tensors(train.orderBy("u", "i"), ["u", "i", "label", "noisy"]),
            "val": to_tensors(prepared.val.orderBy("u", "i"), ["u", "i", "label"]),
            "test": to_tensors(prepared.test.orderBy("u", "i"), ["u", "i", "label"]),
        }
    for part in tensors.values():
        part["u"], part["i"] = part["u"].long(), part["i"].long()
        part["label"] = part["label"].float()
    tensors["train"]["noisy"] = tensors["train"]["noisy"].bool()
    data = {
        "ratings": os.path.abspath(args.ratings),
        "n_users": prepared.n_users,
        "n_items": prepared.n_items,
        "kcore_rounds": prepared.kcore_rounds,
        "train": int(tensors["train"]["u"].numel()),
        "val": int(tensors["val"]["u"].numel()),
        "test": int(tensors["test"]["u"].numel()),
        "noisy": int(tensors["train"]["noisy"].sum()),
        "spark_prepare_s": prep_clock.wall,
    }
    log.info("data: %s", data)
    out = {"protocol": "label=rating>=4, 5-core, 60/20/20 per user, 2% train labels flipped = D_u", "data": data,
           "torch_threads": args.threads, "load_avg_start": os.getloadavg(), "models": {}}
    with Clock() as warm:
        warm_up_torch_func()
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

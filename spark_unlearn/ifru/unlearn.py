"""IFRU orchestration: train a model from prepared data, and unlearn training pairs from it.

Spark finds what to unlearn and the influenced subgraph; the driver computes
the update (:mod:`spark_unlearn.ifru.influence`) and applies it.  Computing and
applying are separate: :func:`compute_unlearning` returns an
:class:`UnlearningPlan` and changes nothing; :func:`apply_unlearning` returns a
new :class:`IFRUModel`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from spark_unlearn.errors import ConfigError, EmptyInputError
from spark_unlearn.ifru.config import IFRUConfig
from spark_unlearn.ifru.influence import InfluenceUpdate, apply_update, compute_update
from spark_unlearn.ifru.models import Terms, bpr_negatives, bpr_terms, build_graph, init_embeddings
from spark_unlearn.ifru.problem import assemble_problem, graphs_before_after
from spark_unlearn.ifru.pruning import (
    Subgraph,
    kept_nodes,
    node_scores_torch,
    select_subgraph_spark,
    subgraph_triples_torch,
)
from spark_unlearn.ifru.state import IFRUModel
from spark_unlearn.ifru.train import TrainResult, train

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


# --------------------------------------------------------------------------- training


def terms_from_tensors(t: dict[str, torch.Tensor], n_users: int) -> Terms:
    """Dense ``u``, ``i``, ``label`` tensors -> training terms on global node ids."""
    return Terms(t["u"].long(), t["i"].long() + n_users, t["label"].float())


def fit_tensors(
    cfg: IFRUConfig, n_users: int, n_items: int, u: torch.Tensor, i: torch.Tensor, label: torch.Tensor, e0: torch.Tensor | None = None,
    epochs: int | None = None, monitor=None, patience: int = 10,
) -> TrainResult:
    """Train from ``e0`` (default: the seeded initialisation) on dense pairs; the graph is built from the positives.

    ``monitor`` / ``patience``: early stopping, see :func:`spark_unlearn.ifru.train.train`.
    """
    if cfg.loss != "bce":
        raise ConfigError(f"training from labelled pairs needs loss='bce'; got {cfg.loss!r} "
                          "(for 'bpr' draw the fixed triples with models.bpr_negatives and use fit_triples)")
    pos = label > 0
    return _fit(cfg, n_users, n_items, Terms(u.long(), i.long() + n_users, label.float()), u[pos], i[pos], e0, epochs,
                monitor, patience)


def fit_triples(
    cfg: IFRUConfig, n_users: int, n_items: int, pos_u: torch.Tensor, pos_i: torch.Tensor, neg_j: torch.Tensor,
    e0: torch.Tensor | None = None, epochs: int | None = None, monitor=None, patience: int = 10,
) -> TrainResult:
    """Train with ``loss='bpr'`` on fixed triples (dense ids; see :func:`~spark_unlearn.ifru.models.bpr_negatives`).

    ``neg_j`` (``len(pos_u)`` x ``m``) holds the negatives of each positive
    pair; the objective is the mean over the ``len(pos_u) * m`` triples plus
    the L2 term, and the LightGCN graph is built from the positive pairs.  A
    leave-out retrain passes the remaining rows with the *same* negatives.
    """
    if cfg.loss != "bpr":
        raise ConfigError(f"training from BPR triples needs loss='bpr'; got {cfg.loss!r}")
    if neg_j.dim() != 2 or neg_j.shape[0] != pos_u.numel():
        raise ValueError(f"neg_j must have one row per positive pair; got shape {tuple(neg_j.shape)} for {pos_u.numel()} pairs")
    return _fit(cfg, n_users, n_items, bpr_terms(pos_u, pos_i, neg_j, n_users), pos_u, pos_i, e0, epochs, monitor, patience)


def _fit(cfg, n_users, n_items, terms: Terms, pos_u, pos_i, e0, epochs, monitor, patience) -> TrainResult:
    graph = build_graph(pos_u, pos_i, n_users, n_items) if cfg.model_layers else None
    start = init_embeddings(n_users + n_items, cfg.dim, cfg.seed) if e0 is None else e0
    return train(
        start,
        graph,
        cfg.model_layers,
        terms,
        loss=cfg.loss,
        reg=cfg.reg,
        lr=cfg.lr,
        epochs=cfg.epochs if epochs is None else epochs,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        monitor=monitor,
        patience=patience,
    )


def train_model(prepared, cfg: IFRUConfig, *, fingerprint: str = "") -> tuple[IFRUModel, TrainResult]:
    """Collect the training split as tensors and train a new model on the driver."""
    from spark_unlearn.ifru.data import sorted_terms

    t = sorted_terms(prepared.train)
    if t["u"].numel() == 0:
        raise EmptyInputError("the training split is empty; nothing to train on")
    pos = t["label"] > 0
    pos_u, pos_i, neg_j = t["u"][pos].long(), t["i"][pos].long(), None
    if cfg.loss == "bpr":
        if pos_u.numel() == 0:
            raise EmptyInputError("the training split has no positive pair; BPR has nothing to train on")
        try:
            pos_u, pos_i, neg_j = bpr_negatives(pos_u, pos_i, prepared.n_items, cfg.bpr_negatives, cfg.seed)
        except ValueError as exc:
            raise ConfigError(f"cannot draw BPR negatives: {exc}; raise kcore or use loss='bce'") from exc
        res = fit_triples(cfg, prepared.n_users, prepared.n_items, pos_u, pos_i, neg_j)
        n_terms = int(neg_j.numel())
    else:
        res = fit_tensors(cfg, prepared.n_users, prepared.n_items, t["u"], t["i"], t["label"])
        n_terms = int(t["u"].numel())
    model = IFRUModel(
        config=cfg,
        e0=res.e0.float(),
        user_ids=np.asarray(prepared.user_ids, dtype=np.int64),
        item_ids=np.asarray(prepared.item_ids, dtype=np.int64),
        pos_u=pos_u,
        pos_i=pos_i,
        removed_u=torch.zeros(0, dtype=torch.long),
        removed_i=torch.zeros(0, dtype=torch.long),
        n_terms=n_terms,
        fingerprint=fingerprint,
        neg_j=neg_j,
    )
    log.info("trained %s: %d users, %d items, %d terms, objective %.5f, |grad| %.2e, %.1f s",
             cfg.model_type, model.n_users, model.n_items, model.n_terms, res.final_loss, res.grad_norm, res.wall_s)
    return model, res


# --------------------------------------------------------------------------- unlearning


@dataclass
class UnlearningPlan:
    """A computed (not applied) unlearning: the update and how it was obtained."""

    update: InfluenceUpdate
    subgraph: Subgraph
    removed_u: torch.Tensor  # dense ids of the newly removed training pairs
    removed_i: torch.Tensor
    removed_positive: int
    kept_nodes: int
    prune_threshold: float | None
    timings: dict[str, float] = field(default_factory=dict)
    removed_terms: int = -1  # objective terms removed (|D_u|): the pairs (BCE) or their triples (BPR)
    driver_memory: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.removed_terms < 0:
            self.removed_terms = int(self.removed_u.numel())

    def report(self) -> dict[str, Any]:
        u = self.update
        return {
            "removed_terms": self.removed_terms,
            "removed_pairs": int(self.removed_u.numel()),
            "removed_positive_edges": self.removed_positive,
            "kept_nodes": self.kept_nodes,
            "prune_threshold": self.prune_threshold,
            "parameters_updated": u.num_params,
            "subgraph_terms": u.hess_terms,
            "spillover_terms": u.spill_terms,
            "hvps": u.hvps,
            "cg_iterations": u.cg_iterations,
            "newton_steps": u.newton_steps,
            "merit_gradient_norms": u.step_residuals,
            "cg_relative_residual": u.cg.rel_residual,
            "cg_converged": u.cg.converged,
            "grad_norm": u.grad_norm,
            "update_norm": float(torch.linalg.vector_norm(u.delta)),
            "certificate": u.certificate,
            "driver_memory_mib": self.driver_memory,
            "timings_s": {**self.timings, **{f"driver_{k}": v for k, v in u.timings.items()}},
        }


def select_subgraph_bpr(model: IFRUModel, removed_u: torch.Tensor, removed_i: torch.Tensor, cfg: IFRUConfig
                        ) -> tuple[Subgraph, float | None]:
    """Driver: kept nodes and the influenced subgraph of a BPR model's fixed triples, removing pairs (dense ids).

    The triples live with the model on the driver (``len(pos) * m`` integers),
    so they are selected in torch (:func:`~spark_unlearn.ifru.pruning.subgraph_triples_torch`).
    Only positive pairs are terms: a requested pair that is not a remaining
    positive of the model has no triple and is ignored.  Pruning scores are
    computed on the interaction graph of the positive pairs.
    """
    if model.neg_j is None:
        raise ConfigError("the model was trained with loss='bce' and holds no BPR triples; unlearn it with loss='bce'")
    n_users, n_items = model.n_users, model.n_items
    key = model.pos_u.long() * n_items + model.pos_i.long()
    removed = torch.isin(key, removed_u.long() * n_items + removed_i.long())
    kept = thr = None
    if cfg.prune_quantile is not None:
        scores = node_scores_torch(model.pos_u, model.pos_i, removed, n_users, n_items, cfg.prune_hops)
        has = torch.bincount(torch.cat([model.pos_u.long(), model.pos_i.long() + n_users]), minlength=n_users + n_items) > 0
        kept_ids, thr = kept_nodes(scores.double().numpy(), has.numpy(), cfg.prune_quantile)
        kept = torch.from_numpy(kept_ids)
    sub = subgraph_triples_torch(model.pos_u, model.pos_i, model.neg_j, removed, n_users, n_items, model.layers, kept)
    log.info("BPR: %d of %d requested pairs are positive training pairs (%d triples removed)",
             int(removed.sum()), int(removed_u.numel()), sub.removed_terms)
    return sub, thr


def select_subgraph(train_terms, model: IFRUModel, cfg: IFRUConfig) -> tuple[Subgraph, float | None]:
    """Spark: importance scores, kept nodes and the influenced subgraph of ``train_terms`` (``u, i, label, removed``)."""
    return select_subgraph_spark(train_terms, model.n_users, model.n_items, model.layers, cfg.prune_quantile,
                                 cfg.prune_hops)


def validation_auc(model: IFRUModel, graphs: tuple | None, nodes: torch.Tensor, validation: dict[str, torch.Tensor]):
    """``(delta -> validation AUC of the updated model, the original's validation AUC, its standard error)``.

    The updated model is ``E0[nodes] += delta`` on the graph without the
    removed pairs (``G'``); the original is the model as served, on ``G``.
    ``graphs`` is ``(G, G')`` as the update uses them (``None`` for MF).
    ``validation`` holds dense ``u``, ``i``, ``label``.  Each call propagates
    the whole graph once (LightGCN) and scores every validation pair.
    """
    from spark_unlearn.ifru.evaluate import auc, auc_standard_error
    from spark_unlearn.ifru.models import layer_mean, term_logits

    vu, vi, vl = validation["u"].long(), validation["i"].long() + model.n_users, validation["label"]
    graph_before, graph_after = (None, None) if graphs is None else (g.to(torch.float64) for g in graphs)
    e0 = model.e0.double()

    def validate(delta: torch.Tensor) -> float:
        e = e0.index_add(0, nodes, delta.to(torch.float64))
        with torch.no_grad():
            return auc(term_logits(layer_mean(e, graph_after, model.layers), vu, vi), vl)

    with torch.no_grad():
        baseline = auc(term_logits(layer_mean(e0, graph_before, model.layers), vu, vi), vl)
    n_pos = int((vl > 0).sum())
    return validate, baseline, auc_standard_error(baseline, n_pos, int(vl.numel()) - n_pos)


def tensor_mib(obj: Any, seen: set[int] | None = None) -> float:
    """MiB held by the torch tensors reachable through ``obj``'s fields (dataclasses, lists, tuples, dicts)."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return 0.0
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size() / 2**20
    if isinstance(obj, dict):
        return sum(tensor_mib(v, seen) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_mib(v, seen) for v in obj)
    if hasattr(obj, "__dict__"):
        return sum(tensor_mib(v, seen) for v in vars(obj).values())
    return 0.0


def peak_rss_mib() -> float:
    """The driver process's peak resident memory so far (MiB; ``ru_maxrss`` is KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def plan_from_subgraph(model: IFRUModel, sub: Subgraph, cfg: IFRUConfig, prune_threshold: float | None = None,
                       validation: dict[str, torch.Tensor] | None = None) -> UnlearningPlan:
    """Driver: assemble the reduced problem of ``sub`` and solve for the update (the model is not changed).

    With ``validation`` (dense ``u``, ``i``, ``label``) and
    ``cfg.validation_guard``, the update's validation AUC is never lower than
    the original's by more than that AUC's standard error (Hanley & McNeil):
    a smaller drop cannot be told from noise on the validation set, and a
    deletion of genuine data may lower the AUC of the retrain itself by that
    much (:func:`validation_auc`).
    """
    t0 = time.perf_counter()
    n_users, n_items = model.n_users, model.n_items
    ru = sub.removed_u.long()
    ri = sub.removed_i.long() - n_users
    if ru.numel() == 0:
        raise EmptyInputError("none of the pairs to delete is a training pair of the model; nothing to unlearn")
    dtype = _DTYPES[cfg.influence_dtype]
    if model.layers:
        g, gp = graphs_before_after(model.pos_u, model.pos_i, ru, ri, n_users, n_items, dtype)
        if not cfg.spillover:
            sub = Subgraph(**{**sub.__dict__, "term_changed": torch.zeros_like(sub.term_changed)})
    else:
        g = gp = None
    problem = assemble_problem(
        sub, model.e0, g, gp, n_users=n_users, n_items=n_items, layers=model.layers, reg=cfg.reg, n=model.n_terms,
        loss=cfg.loss, dtype=dtype, hessian_terms=cfg.hessian_terms,
    )
    t1 = time.perf_counter()
    validate = baseline = None
    tolerance = 0.0
    if validation is not None and cfg.validation_guard and validation["u"].numel():
        nodes = problem.local_nodes.index_select(0, problem.kept)
        validate, baseline, tolerance = validation_auc(model, (g, gp) if model.layers else None, nodes, validation)
        if tolerance != tolerance:  # one label class only: AUC undefined, no guard possible
            validate = baseline = None
            tolerance = 0.0
    update = compute_update(
        problem, damping=cfg.damping, tol=cfg.cg_tol, max_iter=cfg.cg_max_iter, precondition=cfg.precondition, dtype=dtype,
        hessian=cfg.hessian, newton_steps=cfg.newton_steps, normaliser=cfg.normaliser, first_order_steps=cfg.fallback_steps,
        validate=validate, validate_baseline=baseline, validate_tolerance=tolerance,
    )
    cert = update.certificate
    if cert["status"] != "newton" or cert["scale"] < 1:
        log.warning("IFRU safeguard: %s after %d trust-region trial(s), update scaled by %g (%s)", cert["status"],
                    len(cert["trials"]), cert["scale"], cert["scaled_by"] or "no scaling")
    if not update.cg.converged:
        log.warning("CG stopped at relative residual %.2e after %d iterations (tol %.1e)",
                    update.cg.rel_residual, update.cg.iterations, cfg.cg_tol)
    kept_nodes = n_users + n_items if sub.kept is None else int(sub.kept.numel())
    return UnlearningPlan(
        update=update,
        subgraph=sub,
        removed_u=ru,
        removed_i=ri,
        removed_positive=int((sub.removed_label > 0).sum()),
        kept_nodes=kept_nodes,
        prune_threshold=prune_threshold,
        timings={"assemble_s": t1 - t0, "update_s": time.perf_counter() - t1},
        removed_terms=sub.removed_terms,
        # what the request holds on the driver (bounded by the subgraph) and the process's peak so far
        driver_memory={"subgraph_problem": round(tensor_mib(problem), 3), "model": round(tensor_mib(model), 3),
                       "process_peak_rss": round(peak_rss_mib(), 1)},
    )


def compute_unlearning(train_terms, model: IFRUModel, cfg: IFRUConfig | None = None,
                       validation: dict[str, torch.Tensor] | None = None) -> UnlearningPlan:
    """Spark subgraph + driver update for the training pairs flagged ``removed`` in ``train_terms``.

    ``loss="bce"``: every flagged pair is a removed term and Spark selects the
    subgraph.  ``loss="bpr"``: only the flagged pairs are collected; the
    removed terms are every triple whose positive is a flagged pair, and the
    subgraph is selected on the driver from the model's fixed triples
    (:func:`select_subgraph_bpr`).  ``validation``: see :func:`plan_from_subgraph`.
    """
    cfg = cfg or model.config
    if cfg.loss != model.config.loss:
        raise ConfigError(f"the model was trained with loss={model.config.loss!r}; it cannot be unlearned with "
                          f"loss={cfg.loss!r} (the update differentiates the training objective)")
    t0 = time.perf_counter()
    if cfg.loss == "bpr":
        from spark_unlearn.ifru.data import to_tensors

        req = to_tensors(train_terms.where("removed"), ["u", "i"])
        sub, thr = select_subgraph_bpr(model, req["u"].long(), req["i"].long(), cfg)
    else:
        sub, thr = select_subgraph(train_terms, model, cfg)
    t1 = time.perf_counter()
    plan = plan_from_subgraph(model, sub, cfg, thr, validation)
    plan.timings["spark_subgraph_s"] = t1 - t0
    return plan


def apply_unlearning(model: IFRUModel, plan: UnlearningPlan) -> IFRUModel:
    """A new model: updated embedding rows, graph ``G'`` (removed pairs dropped), ``n`` reduced.

    For BPR the removed positives' rows of ``neg_j`` (all their triples) are dropped too.
    """
    n_items = model.n_items
    key = model.pos_u * n_items + model.pos_i
    gone = torch.isin(key, plan.removed_u * n_items + plan.removed_i)
    if model.neg_j is not None and plan.removed_terms != int(model.neg_j[gone].numel()):
        raise ValueError("the plan's removed triples do not match the model's (was it computed for another model?)")
    return IFRUModel(
        config=model.config,
        e0=apply_update(model.e0, plan.update).float(),
        user_ids=model.user_ids,
        item_ids=model.item_ids,
        pos_u=model.pos_u[~gone],
        pos_i=model.pos_i[~gone],
        removed_u=torch.cat([model.removed_u, plan.removed_u]),
        removed_i=torch.cat([model.removed_i, plan.removed_i]),
        n_terms=model.n_terms - plan.removed_terms,
        fingerprint=model.fingerprint,
        history=model.history + [plan.report()],
        neg_j=None if model.neg_j is None else model.neg_j[~gone],
    )

"""Turning a collected :class:`~spark_unlearn.ifru.pruning.Subgraph` into a :class:`ReducedProblem` on the driver."""

from __future__ import annotations

import torch

from spark_unlearn.ifru.config import HESSIAN_TERMS
from spark_unlearn.ifru.influence import ReducedProblem
from spark_unlearn.ifru.models import Terms
from spark_unlearn.ifru.models import Graph, build_graph, layer_mean
from spark_unlearn.ifru.pruning import Subgraph


def graphs_before_after(
    pos_u: torch.Tensor, pos_i: torch.Tensor, removed_u: torch.Tensor, removed_i: torch.Tensor, n_users: int, n_items: int,
    dtype: torch.dtype = torch.float64,
) -> tuple[Graph, Graph]:
    """``G`` from the positive training edges (dense ids) and ``G'`` without the removed pairs (dense ids)."""
    g = build_graph(pos_u, pos_i, n_users, n_items, dtype)
    if removed_u.numel():
        key = pos_u.long() * n_items + pos_i.long()
        gone = torch.isin(key, removed_u.long() * n_items + removed_i.long())
        gp = build_graph(pos_u[~gone], pos_i[~gone], n_users, n_items, dtype)
    else:
        gp = g
    return g, gp


def assemble_problem(
    sub: Subgraph,
    e0: torch.Tensor,
    graph_g: Graph | None,
    graph_gp: Graph | None,
    *,
    n_users: int,
    n_items: int,
    layers: int,
    reg: float,
    n: int,
    loss: str = "bce",
    dtype: torch.dtype = torch.float64,
    hessian_terms: str = "reach",
) -> ReducedProblem:
    """Local re-numbering of the subgraph plus current representations ``h0`` on ``G`` and ``G'``.

    ``graph_g`` / ``graph_gp`` are the model's full propagation graphs (``None``
    for MF); ``h0`` is evaluated on them once, on the whole table, and then
    only the local rows are kept.  ``loss="bpr"`` needs a subgraph of triples
    (``sub.term_j``, from :func:`~spark_unlearn.ifru.pruning.subgraph_triples_torch`).

    ``hessian_terms="kept"`` (pruned subgraphs only) keeps in the Hessian only
    the terms with an endpoint in ``sub.kept``; the gradient of ``U`` still
    uses every removed and spillover term of the subgraph.  For MF every term
    of the subgraph already has one, so nothing changes.
    """
    if (loss == "bpr") != (sub.term_j is not None):
        raise ValueError(f"loss={loss!r} needs a subgraph of {'triples (term_j)' if loss == 'bpr' else 'labelled pairs'}")
    num_nodes = n_users + n_items
    e0 = e0.to(dtype)
    kept_global = torch.arange(num_nodes) if sub.kept is None else sub.kept.long()
    pieces = [kept_global, sub.term_u, sub.term_i, sub.edges_g[0], sub.edges_g[1], sub.edges_gp[0], sub.edges_gp[1]]
    if sub.term_j is not None:
        pieces.append(sub.term_j)
    local_nodes = torch.unique(torch.cat([p.long() for p in pieces]))

    def loc(x: torch.Tensor) -> torch.Tensor:
        return torch.searchsorted(local_nodes, x.long())

    if layers and graph_g is not None:
        h_g = layer_mean(e0, graph_g.to(dtype), layers)
        h_gp = layer_mean(e0, (graph_gp or graph_g).to(dtype), layers)
    else:
        h_g = h_gp = e0
    nl = int(local_nodes.numel())

    def prop(edges) -> Graph:
        src, dst, w = edges
        return Graph(nl, loc(src), loc(dst), w.to(dtype))

    tu, ti = loc(sub.term_u), loc(sub.term_i)
    if sub.term_j is None:
        all_terms = Terms(tu, ti, sub.term_label.to(dtype))
    else:
        all_terms = Terms(tu, ti, None, loc(sub.term_j))
    removed = sub.term_removed.bool()
    spill = sub.term_changed.bool() & ~removed
    if not layers:
        spill = torch.zeros_like(spill)
    in_hessian = torch.ones_like(removed)
    if hessian_terms == "kept" and sub.kept is not None:
        # A term reached only through aggregation weighs 1/sqrt(deg_u deg_i) on a kept row:
        # over all such terms of a kept node ~1/deg of its own terms' curvature.
        ends = [sub.term_u, sub.term_i] + ([] if sub.term_j is None else [sub.term_j])
        in_hessian = torch.zeros_like(removed)
        for e in ends:
            in_hessian |= torch.isin(e.long(), sub.kept.long())
    elif hessian_terms not in HESSIAN_TERMS:
        raise ValueError(f"hessian_terms must be one of {HESSIAN_TERMS}, got {hessian_terms!r}")
    return ReducedProblem(
        local_nodes=local_nodes,
        kept=loc(kept_global),
        theta0=e0.index_select(0, kept_global).clone(),
        h0_g=h_g.index_select(0, local_nodes),
        h0_gp=h_gp.index_select(0, local_nodes),
        prop_g=prop(sub.edges_g),
        prop_gp=prop(sub.edges_gp),
        hess_terms=all_terms.select(in_hessian),
        removed_terms=all_terms.select(removed),
        spill_terms=all_terms.select(spill),
        n=int(n),
        reg=float(reg),
        layers=int(layers),
        loss=loss,
        remaining_terms=all_terms.select(in_hessian & ~removed),
        n_removed=sub.removed_terms,
    )

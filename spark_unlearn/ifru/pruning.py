"""Importance-based pruning and the k-hop influenced subgraph, in Spark and as torch references.

Node ids are global: user ``u`` is node ``u``, item ``i`` is node ``n_users + i``.

Importance score (DESIGN §3), on the *interaction graph* of the training terms
(every labelled training pair is an edge, whatever its label)::

    s_0(v)     = (#removed terms of v) / deg(v)
    s_{k+1}(w) = (1 / deg(w)) * sum_{v in N(w) ∪ {w}} s_k(v)

The kept set is ``{v : s_hops(v) > quantile_q(s_hops) and s_hops(v) > 0}``
(exact quantile with linear interpolation over the nodes that have training
terms, numpy's default), so ``q = 0.9`` keeps about the top 10 %.

Influenced subgraph of a kept set ``S`` for a ``K``-layer model on the
propagation graph ``G`` (positive training terms; ``G'`` is ``G`` without the
removed terms):

* ``reach_k(S)``: nodes within ``k`` hops of ``S`` on ``G``;
* terms: every training term with an endpoint in ``reach_K(S)`` (flagged
  ``removed`` if in ``D_u`` and ``changed`` if an endpoint lies within ``K``
  hops of an endpoint of a removed positive edge, i.e. its representation
  differs between ``G`` and ``G'``);
* edges of ``G`` and of ``G'`` whose source lies in ``reach_{K-1}(S)``, with
  their globally normalised weights ``1/sqrt(deg(src) deg(dst))``.

The Spark functions compute these in passes over the terms table, which
stays in Spark: node-level vectors (counts, scores, reach masks; one number
per node, like a column of the embeddings the driver holds) are broadcast
and summed back per partition, and only the subgraph is collected (through
Arrow) to the driver.  Their numpy kernels are in
:mod:`~spark_unlearn.ifru.graph_kernels`; the torch functions here are the
slow, obvious references the tests compare them with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from spark_unlearn.ifru.graph_kernels import (
    KIND_G,
    KIND_GP,
    KIND_REMOVED,
    KIND_TERM,
    SUBGRAPH_SCHEMA,
    NodeCounts,
    counts_kernel,
    reach_hop_kernel,
    score_hop_kernel,
    subgraph_rows,
    term_arrays,
)

log = logging.getLogger(__name__)


@dataclass
class Subgraph:
    """The part of the training data an IFRU update needs, on global node ids.

    ``kept`` is ``None`` when nothing is pruned (every node is a variable).
    ``removed_u`` / ``removed_i`` / ``removed_label`` are the removed training
    pairs.  For BPR (:func:`subgraph_triples_torch`) the terms are triples:
    ``term_j`` holds their negatives and ``n_removed_terms`` the number of
    removed triples; both are ``None`` for BCE (one term per pair).
    """

    kept: torch.Tensor | None
    term_u: torch.Tensor
    term_i: torch.Tensor
    term_label: torch.Tensor
    term_removed: torch.Tensor
    term_changed: torch.Tensor
    edges_g: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    edges_gp: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    removed_u: torch.Tensor
    removed_i: torch.Tensor
    removed_label: torch.Tensor
    term_j: torch.Tensor | None = None
    n_removed_terms: int | None = None

    @property
    def num_terms(self) -> int:
        return int(self.term_u.numel())

    @property
    def removed_terms(self) -> int:
        """``|D_u|`` over the whole training set: the removed pairs (BCE), or their triples (BPR)."""
        return int(self.removed_u.numel()) if self.n_removed_terms is None else int(self.n_removed_terms)


# =========================================================================== torch references


def node_scores_torch(u: torch.Tensor, i: torch.Tensor, removed: torch.Tensor, n_users: int, n_items: int, hops: int) -> torch.Tensor:
    """Importance scores of all ``n_users + n_items`` nodes (0 for nodes without training terms)."""
    n = n_users + n_items
    a = u.long()
    b = i.long() + n_users
    deg = torch.bincount(torch.cat([a, b]), minlength=n).double()
    rem = torch.bincount(torch.cat([a[removed], b[removed]]), minlength=n).double()
    safe = deg.clamp(min=1)
    s = torch.where(deg > 0, rem / safe, torch.zeros_like(deg))
    for _ in range(hops):
        acc = s.clone()
        acc.index_add_(0, a, s[b])
        acc.index_add_(0, b, s[a])
        s = torch.where(deg > 0, acc / safe, torch.zeros_like(deg))
    return s


def kept_from_scores(scores: torch.Tensor, has_terms: torch.Tensor, quantile: float) -> torch.Tensor:
    """Sorted node ids with ``score > quantile_q(scores of nodes with terms)`` and ``score > 0``."""
    vals = scores[has_terms].double().numpy()
    thr = float(np.quantile(vals, quantile)) if vals.size else 0.0
    keep = has_terms & (scores > thr) & (scores > 0)
    return torch.nonzero(keep).reshape(-1)


def reach_torch(seeds: torch.Tensor, src: torch.Tensor, dst: torch.Tensor, n: int, hops: int) -> list[torch.Tensor]:
    """Boolean masks ``reach_0 .. reach_hops`` of nodes within k hops of ``seeds`` along ``src -> dst``."""
    cur = torch.zeros(n, dtype=torch.bool)
    cur[seeds] = True
    out = [cur.clone()]
    for _ in range(hops):
        nxt = cur.clone()
        nxt[dst[cur[src]]] = True
        cur = nxt
        out.append(cur.clone())
    return out


def _normalised_edges(pu: torch.Tensor, pi: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    deg = torch.bincount(torch.cat([pu, pi]), minlength=n).double()
    w = (deg[pu] * deg[pi]).rsqrt()
    return torch.cat([pi, pu]), torch.cat([pu, pi]), torch.cat([w, w])


def _selection_torch(
    pos_a: torch.Tensor, pos_b: torch.Tensor, rem_pos: torch.Tensor, n: int, layers: int, kept: torch.Tensor | None
):
    """What :func:`subgraph_torch` and :func:`subgraph_triples_torch` share, from the positive edges (global ids).

    Returns the edges of ``G`` and ``G'`` with their selection masks, the nodes
    whose representation changes from ``G`` to ``G'`` and the nodes within
    ``layers`` hops of ``kept`` (``None``: every node).
    """
    src, dst, w = _normalised_edges(pos_a, pos_b, n)
    src_p, dst_p, w_p = _normalised_edges(pos_a[~rem_pos], pos_b[~rem_pos], n)
    seeds = torch.cat([pos_a[rem_pos], pos_b[rem_pos]])
    changed_nodes = reach_torch(seeds, src, dst, n, layers)[-1] if layers else torch.zeros(n, dtype=torch.bool)
    reach = None if kept is None else reach_torch(kept, src, dst, n, layers)
    reach_all = torch.ones(n, dtype=torch.bool) if reach is None else reach[-1]
    # No layers: predictions use no edge.  Otherwise the edges out of nodes within layers-1 hops of kept.
    if layers == 0:
        e_sel, e_sel_p = torch.zeros_like(src, dtype=torch.bool), torch.zeros_like(src_p, dtype=torch.bool)
    elif reach is None:
        e_sel, e_sel_p = torch.ones_like(src, dtype=torch.bool), torch.ones_like(src_p, dtype=torch.bool)
    else:
        e_sel, e_sel_p = reach[-2][src], reach[-2][src_p]
    edges_g = (src[e_sel], dst[e_sel], w[e_sel])
    edges_gp = (src_p[e_sel_p], dst_p[e_sel_p], w_p[e_sel_p])
    return edges_g, edges_gp, changed_nodes, reach_all


def subgraph_torch(
    u: torch.Tensor,
    i: torch.Tensor,
    label: torch.Tensor,
    removed: torch.Tensor,
    n_users: int,
    n_items: int,
    layers: int,
    kept: torch.Tensor | None,
) -> Subgraph:
    """Reference influenced subgraph from full term tensors (dense ids ``u``, ``i``)."""
    n = n_users + n_items
    a = u.long()
    b = i.long() + n_users
    pos = label > 0
    edges_g, edges_gp, changed_nodes, reach = _selection_torch(a[pos], b[pos], removed[pos], n, layers, kept)
    sel = reach[a] | reach[b]
    changed = changed_nodes[a] | changed_nodes[b]
    return _selected(kept, sel, a, b, label.float(), removed, changed, edges_g, edges_gp, a[removed], b[removed],
                     label[removed].float())


def _selected(kept, sel, tu, ti, label, t_removed, changed, edges_g, edges_gp, removed_u, removed_i, removed_label,
              tj=None, n_removed_terms=None) -> Subgraph:
    """The :class:`Subgraph` of the terms flagged in ``sel`` (``changed`` is cleared on removed terms)."""
    return Subgraph(
        kept=None if kept is None else torch.sort(kept.long()).values,
        term_u=tu[sel],
        term_i=ti[sel],
        term_label=label[sel],
        term_removed=t_removed[sel],
        term_changed=changed[sel] & ~t_removed[sel],
        edges_g=edges_g,
        edges_gp=edges_gp,
        removed_u=removed_u,
        removed_i=removed_i,
        removed_label=removed_label,
        term_j=None if tj is None else tj[sel],
        n_removed_terms=n_removed_terms,
    )


def subgraph_triples_torch(
    pos_u: torch.Tensor,
    pos_i: torch.Tensor,
    neg_j: torch.Tensor,
    removed: torch.Tensor,
    n_users: int,
    n_items: int,
    layers: int,
    kept: torch.Tensor | None,
) -> Subgraph:
    """Influenced subgraph of a BPR objective (fixed triples), on the driver.

    Parameters
    ----------
    pos_u, pos_i, neg_j
        The model's positive training pairs (dense ids) and their negatives
        (``len(pos_u)`` x ``m``), as in :class:`~spark_unlearn.ifru.state.IFRUModel`.
    removed
        Boolean per positive pair: unlearn it.
    n_users, n_items, layers, kept
        As in :func:`subgraph_torch`.

    Returns
    -------
    Subgraph
        Terms are the triples (``term_j`` set, ``term_label`` all ones): a
        triple is removed iff its positive pair is removed (all ``m`` triples
        of that pair), selected iff one of ``u``, ``i``, ``j`` lies within
        ``layers`` hops of ``kept`` on ``G``, and changed (``D_c``) iff it
        remains and one of them lies within ``layers`` hops of an endpoint of
        a removed positive edge.  ``G`` / ``G'`` are built from the positive
        pairs as for BCE.  ``removed_u`` / ``removed_i`` list the removed
        *pairs*; ``n_removed_terms`` counts the removed triples.
    """
    n = n_users + n_items
    a = pos_u.long()
    b = pos_i.long() + n_users
    removed = removed.bool()
    m = int(neg_j.shape[1])
    edges_g, edges_gp, changed_nodes, reach = _selection_torch(a, b, removed, n, layers, kept)
    tu, ti = a.repeat_interleave(m), b.repeat_interleave(m)
    tj = neg_j.reshape(-1).long() + n_users
    t_removed = removed.repeat_interleave(m)
    changed = changed_nodes[tu] | changed_nodes[ti] | changed_nodes[tj]
    sel = reach[tu] | reach[ti] | reach[tj]
    return _selected(kept, sel, tu, ti, torch.ones(tu.numel()), t_removed, changed, edges_g, edges_gp, a[removed], b[removed],
                     torch.ones(int(removed.sum())), tj=tj, n_removed_terms=int(removed.sum()) * m)


# =========================================================================== Spark
#
# The terms table stays in Spark.  What crosses to the driver is node-level (one number per node, the size of one
# column of the embeddings the driver already holds) and the selected subgraph.  Each hop is one job: the driver
# broadcasts a node vector and every partition returns its partial sums over its terms (a broadcast join by dense
# lookup, with no shuffle), so a one-layer LightGCN subgraph with pruning is four jobs.


def _terms_frame(terms):
    from pyspark.sql import functions as F  # noqa: N812

    return terms.select(F.col("u").cast("int"), F.col("i").cast("int"), F.col("label").cast("int"),
                        F.col("removed").cast("boolean"))


def _node_pass(terms, n_users: int, n: int, kernel, value=None, width: int = 1) -> np.ndarray:
    """One Spark job: ``kernel(a, b, label, removed, n, value)`` summed over every batch of ``terms``, ``(width, n)``.

    ``value`` (a node vector or masks) is broadcast; each partition returns
    one partial sum, added up here.
    """
    from spark_unlearn.worker_heap import freeze_worker_heap

    spark = terms.sparkSession
    shipped = spark.sparkContext.broadcast(value) if value is not None else None

    def part(batches):
        freeze_worker_heap()
        import pyarrow as pa

        v = shipped.value if shipped is not None else None
        acc = np.zeros((width, n))
        for batch in batches:
            if batch.num_rows:
                acc += kernel(*term_arrays(batch, n_users), n, v)
        yield pa.RecordBatch.from_arrays([pa.array([acc.tobytes()], pa.binary())], names=["acc"])

    try:
        rows = _terms_frame(terms).mapInArrow(part, "acc binary").collect()
    finally:
        if shipped is not None:
            shipped.destroy()
    total = np.zeros((width, n))
    for r in rows:
        total += np.frombuffer(r[0], np.float64).reshape(width, n)
    return total


def node_counts_spark(terms, n_users: int, n_items: int) -> NodeCounts:
    """:class:`NodeCounts` of ``terms`` (``u``, ``i``, ``label``, ``removed``; dense ids), in one Spark job."""
    c = _node_pass(terms, n_users, n_users + n_items, counts_kernel, width=5)
    return NodeCounts(terms=c[0], removed=c[1], pos=c[2], pos_kept=c[3], seeds=c[4] > 0)


def node_scores_spark(terms, counts: NodeCounts, n_users: int, hops: int) -> np.ndarray:
    """Importance scores of every node (0 for nodes without terms), one Spark job per hop.

    Equal to :func:`node_scores_torch`.
    """
    deg = counts.terms
    has = deg > 0
    safe = np.maximum(deg, 1.0)
    s = np.where(has, counts.removed / safe, 0.0)
    for _ in range(hops):
        acc = s + _node_pass(terms, n_users, deg.size, score_hop_kernel, s)[0]
        s = np.where(has, acc / safe, 0.0)
    return s


def kept_nodes(scores: np.ndarray, has_terms: np.ndarray, quantile: float) -> tuple[np.ndarray, float]:
    """Sorted node ids with ``score > quantile_q(scores of nodes with terms)`` and ``score > 0``, and that threshold.

    The exact quantile with linear interpolation (numpy's default).
    """
    vals = scores[has_terms]
    thr = float(np.quantile(vals, quantile)) if vals.size else 0.0
    return np.flatnonzero(has_terms & (scores > thr) & (scores > 0)).astype(np.int64), thr


def _reach_spark(terms, n_users: int, seeds: list[np.ndarray], hops: int) -> list[list[np.ndarray]]:
    """Per seed mask, the masks ``reach_0 .. reach_hops`` along ``G``; all seed sets advance in one job per hop."""
    cur = [np.asarray(m, bool) for m in seeds]
    out = [[m] for m in cur]
    for _ in range(hops):
        hit = _node_pass(terms, n_users, cur[0].size, reach_hop_kernel, np.stack(cur).astype(np.float64), len(cur))
        cur = [m | (h > 0) for m, h in zip(cur, hit)]
        for o, m in zip(out, cur):
            o.append(m)
    return out


def subgraph_spark(terms, n_users: int, n_items: int, layers: int, kept: np.ndarray | None,
                   counts: NodeCounts | None = None) -> Subgraph:
    """The influenced subgraph of ``kept`` (sorted node ids, or ``None`` for no pruning), selected in Spark.

    ``terms`` has columns ``u``, ``i`` (dense ids), ``label`` (0/1) and
    ``removed`` (bool).  ``counts``: :func:`node_counts_spark` of ``terms``
    if already computed (``layers > 0`` needs it).  Jobs: the counts, one
    per layer (both reach sets advance together) and one that collects the
    selected terms, the removed terms and the selected edges of ``G`` and
    ``G'``; with no layer and no pruning, one collect of the terms.  Equal to
    :func:`subgraph_torch`.
    """
    import pyarrow as pa

    from spark_unlearn.worker_heap import freeze_worker_heap

    n = n_users + n_items
    kept = None if kept is None else np.unique(np.asarray(kept, np.int64))
    sel = changed = src_sel = None
    if layers or kept is not None:
        if layers and counts is None:
            counts = node_counts_spark(terms, n_users, n_items)
        seeds = [counts.seeds] if layers else []
        if kept is not None:
            km = np.zeros(n, bool)
            km[kept] = True
            seeds.append(km)
        reach = _reach_spark(terms, n_users, seeds, layers)
        if layers:
            changed = reach[0][-1]
        if kept is not None:
            sel = reach[-1][-1]
            src_sel = reach[-1][-2] if layers else None
    names = ["kind", "a", "b", "label", "removed", "changed", "w"]
    if not layers and kept is None:
        # Every term, no edge: one collect with no Python task (the first Python task of a process starts its
        # workers, ~2 s), as MF without pruning needs nothing else.
        table = pa.Table.from_arrays(subgraph_rows(*term_arrays(_terms_frame(terms).toArrow(), n_users),
                                                   None, None, None, None, None), names=names)
        return _subgraph_of(table, kept)
    edge_degrees = (counts.pos, counts.pos_kept) if layers else (None, None)
    shipped = terms.sparkSession.sparkContext.broadcast((sel, changed, src_sel) + edge_degrees)

    def part(batches):
        freeze_worker_heap()
        v = shipped.value
        for batch in batches:
            if batch.num_rows:
                cols = subgraph_rows(*term_arrays(batch, n_users), *v)
                yield pa.RecordBatch.from_arrays([pa.array(c) for c in cols], names=names)

    try:
        table = _terms_frame(terms).mapInArrow(part, SUBGRAPH_SCHEMA).toArrow()
    finally:
        shipped.destroy()
    return _subgraph_of(table, kept)


def _subgraph_of(table, kept: np.ndarray | None) -> Subgraph:
    """The :class:`Subgraph` of rows in the columns of ``SUBGRAPH_SCHEMA`` (an Arrow table)."""
    col = {c: table.column(c).to_numpy(zero_copy_only=False) for c in table.column_names}

    def of(kind, c, dtype):
        return torch.from_numpy(np.ascontiguousarray(col[c][col["kind"] == kind]).astype(dtype))

    def edges(kind):
        return of(kind, "a", np.int64), of(kind, "b", np.int64), of(kind, "w", np.float64)

    return Subgraph(
        kept=None if kept is None else torch.from_numpy(kept),
        term_u=of(KIND_TERM, "a", np.int64),
        term_i=of(KIND_TERM, "b", np.int64),
        term_label=of(KIND_TERM, "label", np.float32),
        term_removed=of(KIND_TERM, "removed", bool),
        term_changed=of(KIND_TERM, "changed", bool),
        edges_g=edges(KIND_G),
        edges_gp=edges(KIND_GP),
        removed_u=of(KIND_REMOVED, "a", np.int64),
        removed_i=of(KIND_REMOVED, "b", np.int64),
        removed_label=of(KIND_REMOVED, "label", np.float32),
    )


def select_subgraph_spark(terms, n_users: int, n_items: int, layers: int, prune_quantile: float | None,
                          prune_hops: int) -> tuple[Subgraph, float | None]:
    """Importance scores, kept nodes (``prune_quantile``; ``None``: no pruning) and the influenced subgraph, in Spark.

    Returns the subgraph and the score threshold (``None`` without pruning).
    The node counts are computed once, for the scores and the reach alike.
    """
    kept = thr = counts = None
    if prune_quantile is not None or layers:
        counts = node_counts_spark(terms, n_users, n_items)
    if prune_quantile is not None:
        scores = node_scores_spark(terms, counts, n_users, prune_hops)
        kept, thr = kept_nodes(scores, counts.terms > 0, prune_quantile)
    return subgraph_spark(terms, n_users, n_items, layers, kept, counts), thr

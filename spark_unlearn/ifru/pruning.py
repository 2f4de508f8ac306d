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

The Spark functions compute these with joins, so that only the subgraph is
collected (through Arrow) to the driver; the torch functions are the slow,
obvious references the tests compare them with.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

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


def _spark():
    from pyspark.sql import functions as F  # noqa: N812

    return F


def node_table(terms, n_users: int):
    """``terms`` (``u``, ``i``, ``label``, ``removed``) with global node columns ``a`` (user) and ``b`` (item)."""
    F = _spark()
    return terms.select(
        F.col("u").cast("long").alias("a"),
        (F.col("i").cast("long") + F.lit(n_users)).alias("b"),
        F.col("label").cast("int").alias("label"),
        F.col("removed").cast("boolean").alias("removed"),
    )


def _both_directions(pairs):
    """Undirected pair table (``a``, ``b``) as directed edges ``src -> dst`` both ways."""
    F = _spark()
    return pairs.select(F.col("a").alias("src"), F.col("b").alias("dst")).unionByName(
        pairs.select(F.col("b").alias("src"), F.col("a").alias("dst"))
    )


def node_scores_spark(terms, n_users: int, hops: int):
    """DataFrame (``node``, ``score``) of the importance score of every node with training terms."""
    F = _spark()
    t = node_table(terms, n_users)
    edges = _both_directions(t.select("a", "b").distinct())
    rem = t.where("removed").select("a", "b")
    rem_cnt = _both_directions(rem).groupBy(F.col("src").alias("node")).agg(F.count("*").alias("r"))
    deg = edges.groupBy(F.col("src").alias("node")).agg(F.count("*").cast("double").alias("deg"))
    s = deg.join(rem_cnt, "node", "left").select(
        "node", "deg", (F.coalesce(F.col("r"), F.lit(0)) / F.col("deg")).alias("score")
    )
    s = s.localCheckpoint()
    for _ in range(hops):
        neigh = edges.join(s.select(F.col("node").alias("src"), F.col("score").alias("ns")), "src").groupBy(
            F.col("dst").alias("node")
        ).agg(F.sum("ns").alias("nsum"))
        s = (
            s.join(neigh, "node", "left")
            .select("node", "deg", ((F.col("score") + F.coalesce(F.col("nsum"), F.lit(0.0))) / F.col("deg")).alias("score"))
            .localCheckpoint()
        )
    return s.select("node", "score")


def kept_nodes_spark(scores, quantile: float):
    """Kept node ids (DataFrame ``node``) above the exact ``quantile`` of the scores, and the threshold."""
    F = _spark()
    thr = scores.agg(F.percentile(F.col("score"), F.lit(float(quantile))).alias("t")).first()["t"]
    thr = 0.0 if thr is None else float(thr)
    kept = scores.where((F.col("score") > F.lit(thr)) & (F.col("score") > 0)).select("node")
    return kept, thr


def _reach_spark(seeds, edges, hops: int) -> list:
    """``reach_0 .. reach_hops`` (DataFrames ``node``) along ``edges`` (``src``, ``dst``)."""
    F = _spark()
    out = [seeds.distinct().localCheckpoint()]
    cur = out[0]
    for _ in range(hops):
        nxt = cur.unionByName(edges.join(cur.select(F.col("node").alias("src")), "src").select(F.col("dst").alias("node")))
        cur = nxt.distinct().localCheckpoint()
        out.append(cur)
    return out


def _flag(df, nodes, col: str, name: str):
    """``df`` with boolean ``name`` = ``df[col]`` is in ``nodes``."""
    F = _spark()
    tagged = nodes.select(F.col("node").alias(col), F.lit(True).alias(name))
    return df.join(tagged, col, "left").withColumn(name, F.coalesce(F.col(name), F.lit(False)))


def _weighted(pairs):
    """Normalised directed edges (``src``, ``dst``, ``w``) of an undirected pair table (``a``, ``b``)."""
    F = _spark()
    e = _both_directions(pairs)
    deg = e.groupBy(F.col("src").alias("node")).agg(F.count("*").cast("double").alias("deg"))
    e = e.join(deg.select(F.col("node").alias("src"), F.col("deg").alias("ds")), "src").join(
        deg.select(F.col("node").alias("dst"), F.col("deg").alias("dd")), "dst"
    )
    return e.select("src", "dst", (F.lit(1.0) / F.sqrt(F.col("ds") * F.col("dd"))).alias("w"))


def _to_tensors(df, columns: list[str]) -> dict[str, torch.Tensor]:
    table = df.select(*columns).toArrow()
    out = {}
    for c in columns:
        arr = table.column(c).to_numpy(zero_copy_only=False) if table.num_rows else np.zeros(0)
        out[c] = torch.from_numpy(np.array(arr, copy=True))
    return out


def subgraph_spark(terms, n_users: int, layers: int, kept) -> Subgraph:
    """The influenced subgraph of ``kept`` (DataFrame ``node`` or ``None`` for no pruning), computed with joins.

    ``terms`` has columns ``u``, ``i`` (dense ids), ``label`` (0/1) and
    ``removed`` (bool).  Only the selected terms, the local edges and the
    removed terms are collected to the driver.
    """
    F = _spark()
    t = node_table(terms, n_users).localCheckpoint()
    pos = t.where(F.col("label") > 0).select("a", "b")
    pos_kept = t.where((F.col("label") > 0) & ~F.col("removed")).select("a", "b")
    adj = _both_directions(pos)
    if layers:
        rem_pos = t.where((F.col("label") > 0) & F.col("removed"))
        seeds = _both_directions(rem_pos.select("a", "b")).select(F.col("src").alias("node"))
        changed = _reach_spark(seeds, adj, layers)[-1]
        t = _flag(_flag(t, changed, "a", "ca"), changed, "b", "cb").withColumn(
            "changed", (F.col("ca") | F.col("cb")) & ~F.col("removed")
        )
    else:
        t = t.withColumn("changed", F.lit(False))
    if kept is None:
        sel = t
        e_g = _weighted(pos) if layers else None
        e_gp = _weighted(pos_kept) if layers else None
        kept_t = None
    else:
        reach = _reach_spark(kept.select(F.col("node").cast("long").alias("node")), adj, layers)
        sel = _flag(_flag(t, reach[-1], "a", "ra"), reach[-1], "b", "rb").where(F.col("ra") | F.col("rb"))
        if layers:
            src_nodes = reach[-2].select(F.col("node").alias("src"))
            e_g = _weighted(pos).join(src_nodes, "src", "left_semi")
            e_gp = _weighted(pos_kept).join(src_nodes, "src", "left_semi")
        else:
            e_g = e_gp = None
        kept_t = torch.sort(_to_tensors(kept, ["node"])["node"].long()).values
    terms_t = _to_tensors(sel, ["a", "b", "label", "removed", "changed"])
    rem_t = _to_tensors(t.where("removed"), ["a", "b", "label"])
    empty = (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.float64))

    def edges(df):
        if df is None:
            return empty
        e = _to_tensors(df, ["src", "dst", "w"])
        return e["src"].long(), e["dst"].long(), e["w"].double()

    return Subgraph(
        kept=kept_t,
        term_u=terms_t["a"].long(),
        term_i=terms_t["b"].long(),
        term_label=terms_t["label"].float(),
        term_removed=terms_t["removed"].bool(),
        term_changed=terms_t["changed"].bool(),
        edges_g=edges(e_g),
        edges_gp=edges(e_gp),
        removed_u=rem_t["a"].long(),
        removed_i=rem_t["b"].long(),
        removed_label=rem_t["label"].float(),
    )

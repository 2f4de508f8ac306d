"""Numpy kernels of IFRU's Spark passes over the training terms: node counts, hops and the subgraph's rows.

Node ids are global (user ``u`` is node ``u``, item ``i`` is node
``n_users + i``); definitions in :mod:`spark_unlearn.ifru.pruning`.  Each
kernel takes one batch of terms as arrays and returns arrays; the Spark code
in :mod:`~spark_unlearn.ifru.pruning` only moves batches to them.  This
module imports numpy only: the Python workers that run the kernels never
import torch (2-4 s per worker).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class NodeCounts:
    """Per-node counts over the training terms (global node ids, length ``n_users + n_items``).

    ``terms``: degree in the interaction graph (every labelled pair);
    ``removed``: removed terms; ``pos`` / ``pos_kept``: degree in ``G`` /
    ``G'``; ``seeds``: endpoints of removed positive pairs (the nodes whose
    representation changes first).
    """

    terms: np.ndarray
    removed: np.ndarray
    pos: np.ndarray
    pos_kept: np.ndarray
    seeds: np.ndarray


def term_arrays(batch, n_users: int):
    """``a`` (user node), ``b`` (item node), ``label``, ``removed`` of an Arrow batch of the terms table."""
    col = lambda c: batch.column(c).to_numpy(zero_copy_only=False)  # noqa: E731
    a = col("u").astype(np.int64)
    return a, col("i").astype(np.int64) + n_users, col("label").astype(np.float64), col("removed").astype(bool)


def counts_kernel(a, b, label, removed, n, _):
    """``(5, n)``: the columns of :class:`NodeCounts` over one batch of terms."""
    def deg(mask):
        return np.bincount(a[mask], minlength=n) + np.bincount(b[mask], minlength=n)

    pos = label > 0
    every = np.ones(a.size, bool)
    return np.stack([deg(every), deg(removed), deg(pos), deg(pos & ~removed), deg(pos & removed)]).astype(np.float64)


def score_hop_kernel(a, b, label, removed, n, s):
    """``(1, n)``: sum of the neighbours' scores ``s`` over the interaction graph's edges in one batch."""
    return (np.bincount(a, weights=s[b], minlength=n) + np.bincount(b, weights=s[a], minlength=n))[None]


def reach_hop_kernel(a, b, label, removed, n, masks):
    """``(m, n)``: per mask, how many edges of ``G`` (positive terms) in one batch lead into each node from it."""
    pos = label > 0
    a, b = a[pos], b[pos]
    return np.stack([np.bincount(b, weights=m[a], minlength=n) + np.bincount(a, weights=m[b], minlength=n) for m in masks])


KIND_TERM, KIND_REMOVED, KIND_G, KIND_GP = 0, 1, 2, 3
SUBGRAPH_SCHEMA = "kind tinyint, a long, b long, label float, removed boolean, changed boolean, w double"


def subgraph_rows(a, b, label, removed, sel, changed, src_sel, deg_g, deg_gp):
    """The rows of one batch of terms that the subgraph needs, as the columns of ``SUBGRAPH_SCHEMA``.

    ``sel`` / ``changed`` / ``src_sel``: node masks (``None``: every node /
    none / every node); ``deg_g`` is ``None`` when no edge is needed.
    """
    parts = []

    def add(kind, x, y, lab, rem, chg, w):
        parts.append((np.full(x.size, kind, np.int8), x, y, lab.astype(np.float32), rem, chg, w))

    nan = np.full(a.size, np.nan)
    t = np.ones(a.size, bool) if sel is None else sel[a] | sel[b]
    chg = np.zeros(a.size, bool) if changed is None else (changed[a] | changed[b]) & ~removed
    add(KIND_TERM, a[t], b[t], label[t], removed[t], chg[t], nan[t])
    add(KIND_REMOVED, a[removed], b[removed], label[removed], removed[removed], chg[removed], nan[removed])
    if deg_g is not None:
        pos = label > 0
        for kind, keep, deg in ((KIND_G, pos, deg_g), (KIND_GP, pos & ~removed, deg_gp)):
            x, y = a[keep], b[keep]
            w = 1.0 / np.sqrt(deg[x] * deg[y])
            src, dst, ww = np.concatenate([y, x]), np.concatenate([x, y]), np.concatenate([w, w])
            e = np.ones(src.size, bool) if src_sel is None else src_sel[src]
            z = np.zeros(int(e.sum()), bool)
            add(kind, src[e], dst[e], np.zeros(int(e.sum())), z, z, ww[e])
    return [np.concatenate(c) for c in zip(*parts)]

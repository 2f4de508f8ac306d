"""MF and LightGCN as pure torch functions of their embedding tables.

Conventions
-----------
* Nodes are numbered users first, then items: user ``u`` is node ``u`` and
  item ``i`` is node ``n_users + i``.  ``E0`` (``n_users + n_items`` x ``dim``)
  is the stacked table of base embeddings, the only parameters of both models.
* MF scores a pair by ``<E0[u], E0[n_users + i]>`` (no biases).
* LightGCN propagates ``E_{k+1} = A_hat E_k`` over the symmetric normalised
  bipartite graph ``A_hat = D^-1/2 A D^-1/2`` built from the *positive*
  training interactions only (no self-loops), and scores with the mean of the
  layer embeddings ``H = (E_0 + ... + E_K) / (K + 1)``.
* The training loss is pointwise BCE with logits on ``<h_u, h_i>`` (or BPR on
  ``<h_u, h_i> - <h_u, h_j>`` for fixed sampled negatives ``j``, see
  :func:`bpr_negatives`), averaged over the ``n`` training terms, plus
  ``reg / 2 * ||E0||^2``.

Everything here is a pure function of tensors (no modules, no state), so the
same code serves training, ``torch.func`` Hessian-vector products and the
dense-Hessian references in the tests.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

MODEL_TYPES = ("mf", "lightgcn")
LOSSES = ("bce", "bpr")


@dataclass(frozen=True)
class Graph:
    """A sparse propagation operator as a directed edge list ``dst <- src`` with weights.

    ``propagate`` computes ``out[dst] += weight * x[src]``; for the LightGCN
    graph every undirected edge appears in both directions.
    """

    num_nodes: int
    src: torch.Tensor  # int64
    dst: torch.Tensor  # int64
    weight: torch.Tensor  # float

    @property
    def num_edges(self) -> int:
        return int(self.src.numel())

    def to(self, dtype: torch.dtype) -> "Graph":
        return Graph(self.num_nodes, self.src, self.dst, self.weight.to(dtype))


def empty_graph(num_nodes: int, dtype: torch.dtype = torch.float32) -> Graph:
    z = torch.zeros(0, dtype=torch.long)
    return Graph(num_nodes, z, z, torch.zeros(0, dtype=dtype))


def build_graph(
    users: torch.Tensor, items: torch.Tensor, n_users: int, n_items: int, dtype: torch.dtype = torch.float32
) -> Graph:
    """Symmetric normalised bipartite graph of the given (positive) interactions.

    ``weight(u, i) = 1 / sqrt(deg(u) * deg(i))`` with degrees counted in this
    edge set; duplicate pairs are counted once.
    """
    n = n_users + n_items
    users = users.to(torch.long)
    items = items.to(torch.long)
    if users.numel():
        key = torch.unique(users * n_items + items)
        users, items = key // n_items, key % n_items
    inodes = items + n_users
    deg = torch.bincount(torch.cat([users, inodes]), minlength=n).to(torch.float64)
    w = (deg[users] * deg[inodes]).rsqrt().to(dtype)
    src = torch.cat([inodes, users])
    dst = torch.cat([users, inodes])
    return Graph(n, src, dst, torch.cat([w, w]))


def propagate(x: torch.Tensor, graph: Graph) -> torch.Tensor:
    """``A x`` for the edge list: ``out[dst] += weight * x[src]`` (differentiable, torch.func friendly)."""
    out = torch.zeros((graph.num_nodes,) + tuple(x.shape[1:]), dtype=x.dtype)
    if graph.num_edges == 0:
        return out
    w = graph.weight.to(x.dtype)
    return out.index_add(0, graph.dst, x.index_select(0, graph.src) * w.unsqueeze(-1))


def layer_mean(e0: torch.Tensor, graph: Graph | None, layers: int) -> torch.Tensor:
    """LightGCN output ``(E_0 + A E_0 + ... + A^K E_0) / (K + 1)``; ``E_0`` itself for MF (``layers == 0``)."""
    if layers == 0 or graph is None:
        return e0
    acc = e0
    cur = e0
    for _ in range(layers):
        cur = propagate(cur, graph)
        acc = acc + cur
    return acc / (layers + 1)


def term_logits(h: torch.Tensor, u: torch.Tensor, i: torch.Tensor, j: torch.Tensor | None = None) -> torch.Tensor:
    """``<h_u, h_i>`` (BCE) or ``<h_u, h_i> - <h_u, h_j>`` (BPR); ``u``, ``i``, ``j`` are node ids."""
    hu = h.index_select(0, u)
    s = (hu * h.index_select(0, i)).sum(-1)
    if j is not None:
        s = s - (hu * h.index_select(0, j)).sum(-1)
    return s


def term_losses(logits: torch.Tensor, labels: torch.Tensor | None, loss: str) -> torch.Tensor:
    """Per-term loss: BCE with logits against ``labels``, or BPR ``-log sigmoid(logits)``."""
    if loss == "bce":
        return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")
    if loss == "bpr":
        return -F.logsigmoid(logits)
    raise ValueError(f"unknown loss {loss!r}; expected one of {LOSSES}")


def objective(
    e0: torch.Tensor,
    graph: Graph | None,
    layers: int,
    u: torch.Tensor,
    i: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    loss: str = "bce",
    reg: float = 0.0,
    j: torch.Tensor | None = None,
    n: int | None = None,
) -> torch.Tensor:
    """Training objective ``(1/n) sum_t loss_t + reg/2 ||E0||^2`` (``n`` defaults to the number of terms)."""
    h = layer_mean(e0, graph, layers)
    per = term_losses(term_logits(h, u, i, j), labels, loss)
    norm = per.numel() if n is None else n
    return per.sum() / max(norm, 1) + 0.5 * reg * (e0 * e0).sum()


def init_embeddings(num_nodes: int, dim: int, seed: int, std: float = 0.1, dtype=torch.float32) -> torch.Tensor:
    """Gaussian initial embeddings from a private generator (reproducible, independent of global RNG)."""
    gen = torch.Generator().manual_seed(int(seed))
    return (torch.randn(num_nodes, dim, generator=gen, dtype=torch.float64) * std).to(dtype)


@dataclass
class Terms:
    """Training terms on node ids (global, or local to a subgraph): BCE pairs ``(u, i, label)`` or BPR triples ``(u, i, j)``."""

    u: torch.Tensor
    i: torch.Tensor
    label: torch.Tensor | None
    j: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.u.numel())

    def select(self, mask: torch.Tensor) -> "Terms":
        return Terms(
            self.u[mask],
            self.i[mask],
            None if self.label is None else self.label[mask],
            None if self.j is None else self.j[mask],
        )


# --------------------------------------------------------------------------- BPR triples


def bpr_negatives(
    pos_u: torch.Tensor, pos_i: torch.Tensor, n_items: int, negatives: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fixed BPR triples of a set of positive pairs: ``negatives`` seeded negatives per positive.

    Parameters
    ----------
    pos_u, pos_i
        Dense user and item ids of the positive training pairs (any order;
        duplicates count once).
    n_items
        Number of items.
    negatives
        Negatives drawn per positive pair (``m``).
    seed
        Seed of a private generator (the global RNG is neither used nor changed).

    Returns
    -------
    (pos_u, pos_i, neg_j)
        The distinct positives sorted by ``(u, i)`` and ``neg_j`` (``n_pos`` x
        ``m``, dense item ids): the triples are ``(u_r, i_r, neg_j[r, k])``.

    Notes
    -----
    The BPR objective is the *fixed* sum over these triples: they are drawn
    once, at training time, and kept with the model, so that the objective the
    influence function differentiates is a fixed sum of terms (a per-epoch
    resampled BPR has no fixed objective).  Every negative of user ``u`` is
    drawn uniformly, with replacement, from the items that are **not** a
    positive training item of ``u`` (items ``u`` rated below the threshold, or
    never rated, are eligible).  The draw depends only on the set of positives
    and ``seed`` (the positives are sorted first), not on the input order.

    Removing an interaction ``(u, i)`` removes every triple whose positive is
    ``(u, i)`` and nothing else: the remaining triples keep their negatives.
    Because negatives exclude all of ``u``'s positives at training time, a
    removed positive never is (and never becomes) a negative of ``u`` in the
    remaining objective, which is what the retrain reference minimises.  We
    do not resample negatives for the remaining data: a deleted interaction
    turned into a negative would teach the model "``u`` dislikes ``i``" from
    the deletion itself, and the remaining objective would no longer be the
    training sum minus the removed terms (the influence function's premise).

    Sampling is exact without rejection: with ``p_0 < p_1 < ...`` the sorted
    positives of ``u`` and ``q_r = p_r - r``, the ``k``-th non-positive item
    (``k`` uniform in ``[0, n_items - deg u)``) is ``k + #{r : q_r <= k}``.
    """
    if negatives < 1:
        raise ValueError(f"negatives must be >= 1, got {negatives}")
    key = torch.unique(pos_u.long() * n_items + pos_i.long())  # sorted, distinct
    u, i = key // n_items, key % n_items
    n_pos = int(key.numel())
    if n_pos == 0:
        return u, i, torch.zeros((0, negatives), dtype=torch.long)
    users, counts = torch.unique_consecutive(u, return_counts=True)
    free = n_items - counts
    if bool((free <= 0).any()):
        bad = users[free <= 0].tolist()[:5]
        raise ValueError(f"users {bad} have every item as a positive: no BPR negative can be drawn")
    start = torch.cumsum(counts, 0) - counts
    seg = torch.repeat_interleave(torch.arange(users.numel()), counts)
    rank = torch.arange(n_pos) - start[seg]
    stride = n_items + 1
    q = seg * stride + (i - rank)  # sorted: segments ascending, q_r non-decreasing within a segment
    gen = torch.Generator().manual_seed(int(seed))
    draw = torch.rand((n_pos, negatives), generator=gen, dtype=torch.float64)
    k = (draw * free[seg].unsqueeze(1).double()).long().clamp(max=(free[seg] - 1).unsqueeze(1))
    below = torch.searchsorted(q, seg.unsqueeze(1) * stride + k, right=True) - start[seg].unsqueeze(1)
    return u, i, k + below


def bpr_terms(pos_u: torch.Tensor, pos_i: torch.Tensor, neg_j: torch.Tensor, n_users: int) -> "Terms":
    """BPR triples on global node ids, row-major: term ``r * m + k`` is ``(u_r, i_r, neg_j[r, k])``."""
    m = int(neg_j.shape[1]) if neg_j.dim() == 2 else 1
    u = pos_u.long().repeat_interleave(m)
    i = pos_i.long().repeat_interleave(m) + n_users
    return Terms(u, i, None, neg_j.reshape(-1).long() + n_users)

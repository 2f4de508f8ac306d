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
  ``<h_u, h_i> - <h_u, h_j>`` for fixed sampled negatives ``j``), averaged over
  the ``n`` training terms, plus ``reg / 2 * ||E0||^2``.

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

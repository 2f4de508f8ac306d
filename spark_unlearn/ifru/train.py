"""Training MF / LightGCN on the driver with Adam on the IFRU objective.

The objective is exactly the one the influence update differentiates
(:func:`spark_unlearn.ifru.models.objective`): mean pointwise BCE (or BPR)
over the training terms plus ``reg/2 ||E0||^2``.  Full-batch training (the
default, ``batch_size = 0``) is deterministic, so the original model and the
retrain reference differ only by their data.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from spark_unlearn.ifru.models import Graph, Terms, layer_mean, term_logits, term_losses

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Outcome of :func:`train`.

    ``e0`` is the last table, or with a ``monitor`` the one of the best
    monitored epoch (``best_epoch``, 1-based; ``monitor_history`` holds every
    value).  ``final_loss`` and ``grad_norm`` are the full objective and its
    gradient norm at the returned table.
    """

    e0: torch.Tensor
    epochs: int
    final_loss: float
    grad_norm: float
    wall_s: float
    history: list[float] = field(default_factory=list)
    steps: int = 0
    best_epoch: int = 0
    monitor_history: list[float] = field(default_factory=list)


def full_objective(e0: torch.Tensor, graph: Graph | None, layers: int, terms: Terms, loss: str, reg: float) -> torch.Tensor:
    h = layer_mean(e0, graph, layers)
    per = term_losses(term_logits(h, terms.u, terms.i, terms.j), terms.label, loss)
    return per.mean() + 0.5 * reg * (e0 * e0).sum()


def train(
    e0: torch.Tensor,
    graph: Graph | None,
    layers: int,
    terms: Terms,
    *,
    loss: str = "bce",
    reg: float = 1e-4,
    lr: float = 0.01,
    epochs: int = 200,
    batch_size: int = 0,
    seed: int = 0,
    log_every: int = 0,
    monitor: Callable[[torch.Tensor], float] | None = None,
    patience: int = 10,
) -> TrainResult:
    """Adam on the objective from ``e0`` (copied, never modified); returns the trained table.

    Parameters
    ----------
    e0, graph, layers, terms
        Start table, propagation graph (``None`` for MF), layers, training terms.
    loss, reg, lr
        Objective and Adam step size.
    epochs
        Epochs to run (the most, with ``monitor``).
    batch_size
        ``0`` trains full-batch (one step per epoch); otherwise each epoch
        visits the terms in a seeded random order in batches (the ``reg`` term
        is applied in every step, as in the objective).
    monitor, patience
        Early stopping: ``monitor(e0)`` (higher is better, e.g. validation
        AUC) is evaluated after every epoch; training stops after ``patience``
        epochs without improvement and the best table is returned.
    """
    if patience < 1:
        raise ValueError(f"patience must be >= 1, got {patience}")
    start = time.perf_counter()
    param = e0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([param], lr=lr)
    gen = torch.Generator().manual_seed(int(seed))
    n = len(terms)
    history: list[float] = []
    watched: list[float] = []
    best = (float("-inf"), 0, None)
    steps = 0
    for epoch in range(epochs):
        if batch_size and batch_size < n:
            order = torch.randperm(n, generator=gen)
            batches = [order[k : k + batch_size] for k in range(0, n, batch_size)]
        else:
            batches = [None]
        total = 0.0
        for idx in batches:
            batch = terms if idx is None else terms.select(idx)
            opt.zero_grad(set_to_none=True)
            value = full_objective(param, graph, layers, batch, loss, reg)
            value.backward()
            opt.step()
            steps += 1
            total += float(value.detach()) * (1 if idx is None else len(batch) / n)
        history.append(total)
        if log_every and (epoch + 1) % log_every == 0:
            log.info("epoch %d objective %.6f", epoch + 1, total)
        if monitor is not None:
            with torch.no_grad():
                watched.append(float(monitor(param.detach())))
            if watched[-1] > best[0]:
                best = (watched[-1], epoch + 1, param.detach().clone())
            elif epoch + 1 - best[1] >= patience:
                break
    out = param.detach() if best[2] is None else best[2]
    final = out.clone().requires_grad_(True)
    value = full_objective(final, graph, layers, terms, loss, reg)
    (g,) = torch.autograd.grad(value, final)
    return TrainResult(
        e0=final.detach(),
        epochs=len(history),
        final_loss=float(value.detach()),
        grad_norm=float(torch.linalg.vector_norm(g)),
        wall_s=time.perf_counter() - start,
        history=history,
        steps=steps,
        best_epoch=best[1] if monitor is not None else len(history),
        monitor_history=watched,
    )

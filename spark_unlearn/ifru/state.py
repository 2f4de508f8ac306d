"""The in-memory state of a trained IFRU model (everything needed to predict and to unlearn again)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from spark_unlearn.ifru.config import IFRUConfig
from spark_unlearn.ifru.models import Graph, Terms, bpr_terms, build_graph, layer_mean, term_logits


@dataclass
class IFRUModel:
    """Base embeddings plus the data facts the model depends on.

    Attributes
    ----------
    config
        Settings the model was prepared and trained with.
    e0
        Base embeddings, users then items (``n_users + n_items`` x ``dim``), float32.
    user_ids, item_ids
        Raw id of each dense index (int64 arrays).
    pos_u, pos_i
        Dense ids of the positive training pairs that remain (the LightGCN
        graph; after unlearning this is ``G'``).
    removed_u, removed_i
        Dense ids of every training pair unlearned so far.
    n_terms
        Number of training terms the current parameters correspond to (the
        normaliser ``n`` of the objective).
    fingerprint
        Fingerprint of the prepared training split the model was trained on.
    history
        One record per unlearning run (counts, not data).
    neg_j
        ``loss="bpr"`` only: the fixed negatives (``len(pos_u)`` x ``m``, dense
        item ids) drawn at training time; row ``r`` belongs to the positive
        ``(pos_u[r], pos_i[r])`` and the objective is the sum over the triples
        :func:`~spark_unlearn.ifru.models.bpr_terms` builds from them
        (``n_terms`` = their number).  Unlearning a positive drops its row.
        ``None`` for BCE.
    """

    config: IFRUConfig
    e0: torch.Tensor
    user_ids: np.ndarray
    item_ids: np.ndarray
    pos_u: torch.Tensor
    pos_i: torch.Tensor
    removed_u: torch.Tensor
    removed_i: torch.Tensor
    n_terms: int
    fingerprint: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)
    neg_j: torch.Tensor | None = None

    @property
    def n_users(self) -> int:
        return int(self.user_ids.size)

    @property
    def n_items(self) -> int:
        return int(self.item_ids.size)

    @property
    def layers(self) -> int:
        return self.config.model_layers

    def graph(self, dtype: torch.dtype = torch.float32) -> Graph | None:
        """The propagation graph of the current positive pairs (``None`` for MF)."""
        if not self.layers:
            return None
        return build_graph(self.pos_u, self.pos_i, self.n_users, self.n_items, dtype)

    def bpr_terms(self) -> Terms:
        """The BPR triples of the current objective on global node ids (``loss="bpr"`` models only)."""
        if self.neg_j is None:
            raise ValueError("this model has no BPR negatives (it was trained with loss='bce')")
        return bpr_terms(self.pos_u, self.pos_i, self.neg_j, self.n_users)

    def representations(self) -> torch.Tensor:
        """Final node representations ``h`` (users then items) on the model's current graph."""
        with torch.no_grad():
            return layer_mean(self.e0, self.graph(self.e0.dtype), self.layers)

    def score(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        """Logits of dense (user, item) pairs."""
        h = self.representations()
        return term_logits(h, u.long(), i.long() + self.n_users)

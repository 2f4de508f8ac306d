"""Driver-side metrics of an IFRU model: global AUC over labelled pairs and Recall@K."""

from __future__ import annotations

import torch


def auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of ``scores`` for binary ``labels`` (ties count one half); NaN if one class is absent."""
    s = scores.detach().double().reshape(-1)
    y = labels.reshape(-1) > 0
    n_pos = int(y.sum())
    n_neg = int(y.numel() - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(s)
    ss = s[order]
    # average ranks (1-based) of tied groups
    uniq, inverse, counts = torch.unique_consecutive(ss, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    starts = ends - counts.double() + 1
    avg = ((starts + ends) / 2)[inverse]
    ranks = torch.empty_like(avg)
    ranks[order] = avg
    rank_sum = float(ranks[y].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def auc_standard_error(value: float, n_pos: int, n_neg: int) -> float:
    """Standard error of an AUC estimated from ``n_pos`` positives and ``n_neg`` negatives (Hanley & McNeil 1982).

    ``SE^2 = (A(1-A) + (n_pos-1)(Q1 - A^2) + (n_neg-1)(Q2 - A^2)) / (n_pos n_neg)``
    with ``Q1 = A/(2-A)`` and ``Q2 = 2A^2/(1+A)``: the sampling noise of the
    validation AUC, below which two models cannot be told apart on that set.
    NaN when a class is empty or ``value`` is NaN.
    """
    if n_pos == 0 or n_neg == 0 or value != value:
        return float("nan")
    a = value
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return max(var, 0.0) ** 0.5


def recall_at_k(
    h: torch.Tensor,
    n_users: int,
    test_u: torch.Tensor,
    test_i: torch.Tensor,
    exclude_u: torch.Tensor,
    exclude_i: torch.Tensor,
    k: int = 20,
    block: int = 256,
) -> float:
    """Mean over users with test positives of ``|top-k ∩ test positives| / |test positives|``.

    ``h`` is the representation table (users first, then items); ``test_*``
    are the positive test pairs (dense ids) and ``exclude_*`` the pairs never
    to recommend (the user's training and validation pairs).
    """
    n_items = h.shape[0] - n_users
    users = torch.unique(test_u)
    if users.numel() == 0:
        return float("nan")
    hu, hi = h[:n_users].double(), h[n_users:].double()
    pos_count = torch.bincount(test_u, minlength=n_users)
    total = 0.0
    for start in range(0, users.numel(), block):
        ub = users[start : start + block]
        row = torch.full((n_users,), -1, dtype=torch.long)
        row[ub] = torch.arange(ub.numel())
        scores = hu[ub] @ hi.T
        m = row[exclude_u] >= 0
        scores[row[exclude_u[m]], exclude_i[m]] = float("-inf")
        top = torch.topk(scores, min(k, n_items), dim=1).indices
        hit = torch.zeros_like(scores, dtype=torch.bool)
        mt = row[test_u] >= 0
        hit[row[test_u[mt]], test_i[mt]] = True
        hits = hit.gather(1, top).sum(1).double()
        total += float((hits / pos_count[ub].double()).sum())
    return total / users.numel()


def label_confidence(h: torch.Tensor, n_users: int, u: torch.Tensor, i: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """The model's confidence in each pair's label: ``s = h_u . h_i`` for label 1, ``-s`` for label 0.

    Pointwise BCE on a pair is a decreasing function of this value (and BPR
    ranks positives by ``s``), so a pair the model was fitted to tends to get
    a higher confidence than one it never saw.
    """
    s = (h[u].double() * h[i + n_users].double()).sum(1)
    return torch.where(label > 0, s, -s)


def membership_auc(
    h: torch.Tensor,
    n_users: int,
    members: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    nonmembers: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> float:
    """AUC of a loss-threshold membership-inference attack (Yeom et al. 2018) telling ``members`` from ``nonmembers``.

    Each set is ``(u, i, label)`` (dense ids, labels in {0, 1}).  The attack
    calls a pair a training member when :func:`label_confidence` is high;
    its AUC is ``P(conf(member) > conf(nonmember))`` (ties one half),
    computed within each label class and averaged with weights equal to the
    members of the class, so a different mix of labels in the two sets
    cannot pass for memorisation.  For unlearning, ``members`` are the
    deleted pairs with the labels they were trained on and ``nonmembers``
    comparable pairs no model saw (held-out test pairs): about 0.5 means the
    deleted pairs look like data the model never saw, as after a retrain;
    above 0.5 means the model still remembers them.  NaN when no label class
    has both members and non-members.
    """
    cm = label_confidence(h, n_users, *members)
    cn = label_confidence(h, n_users, *nonmembers)
    ym, yn = members[2] > 0, nonmembers[2] > 0
    total, weight = 0.0, 0
    for cls in (False, True):
        a, b = cm[ym == cls], cn[yn == cls]
        if a.numel() == 0 or b.numel() == 0:
            continue
        value = auc(torch.cat([a, b]), torch.cat([torch.ones(a.numel()), torch.zeros(b.numel())]))
        total += value * a.numel()
        weight += a.numel()
    return total / weight if weight else float("nan")

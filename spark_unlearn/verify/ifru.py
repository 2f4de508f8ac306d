"""Recompute an IFRU version's certificate from its files and the ratings, with numpy only.

An IFRU request records (``history[-1]["certificate"]`` of the version it
saved, see :func:`spark_unlearn.ifru.influence.compute_update`) how the
retained-data objective and the merit gradient moved.  This module checks
those claims against the saved parameters of the version and of its parent,
with its own objective and gradient (no torch, nothing of the update path):

* MF / LightGCN representation ``h = (1/(K+1)) sum_k A^k E0`` with
  ``A = D^-1/2 Adj D^-1/2`` of the version's positive pairs (degrees at least 1);
* BCE ``log(1 + e^s) - y s`` of ``s = h_u . h_i`` over labelled pairs, or BPR
  ``log(1 + e^-(s_ui - s_uj))`` over the fixed triples, averaged over the
  normaliser, plus ``reg/2 ||E0||^2``;
* ``L`` is the parent's objective (its terms, its graph, its ``n``), ``L'`` the
  version's retained-data objective (averaged over the version's ``n`` or,
  with ``normaliser = "training"``, the parent's), and the merit gradient
  ``grad L'(theta) - grad L(theta_parent)`` over the rows the update changed.

Agreement is judged against the float32 rounding of the saved table: the
objective by the first-order bound ``sum |g_k| |theta_k| 2^-24``, the gradient
by the measured effect of a perturbation of that size.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from spark_unlearn.errors import StoreError

EPS32 = 2.0 ** -24


def _mean_propagation(pos_u: np.ndarray, pos_i: np.ndarray, n_users: int, n_nodes: int, layers: int):
    """``x -> (1/(K+1)) sum_k A^k x``; symmetric, so it is also its own transpose."""
    if layers == 0:
        return lambda x: x
    src = np.concatenate([pos_u, pos_i + n_users])
    dst = np.concatenate([pos_i + n_users, pos_u])
    deg = np.maximum(np.bincount(src, minlength=n_nodes), 1).astype(np.float64)
    w = 1.0 / np.sqrt(deg[src] * deg[dst])

    def apply(x: np.ndarray) -> np.ndarray:
        acc, cur = x.copy(), x
        for _ in range(layers):
            nxt = np.zeros_like(x)
            np.add.at(nxt, dst, w[:, None] * cur[src])
            acc += nxt
            cur = nxt
        return acc / (layers + 1)

    return apply


class Objective:
    """``(value, gradient)`` of one objective: terms, graph, normaliser, L2 weight."""

    def __init__(self, terms: dict[str, np.ndarray], pos_u, pos_i, n_users: int, n_nodes: int, layers: int,
                 reg: float, norm: int, loss: str):
        self.t, self.n_users, self.reg, self.norm, self.loss = terms, n_users, reg, float(norm), loss
        self.prop = _mean_propagation(np.asarray(pos_u), np.asarray(pos_i), n_users, n_nodes, layers)

    def __call__(self, e: np.ndarray) -> tuple[float, np.ndarray]:
        h = self.prop(e)
        t, nu = self.t, self.n_users
        hu, hi = h[t["u"]], h[t["i"] + nu]
        if self.loss == "bce":
            s = (hu * hi).sum(1)
            value = float((np.logaddexp(0.0, s) - t["label"] * s).sum())
            ds = (0.5 * (1 + np.tanh(s / 2)) - t["label"]) / self.norm
            gh = np.zeros_like(h)
            np.add.at(gh, t["u"], ds[:, None] * hi)
            np.add.at(gh, t["i"] + nu, ds[:, None] * hu)
        else:
            hj = h[t["j"] + nu]
            s = (hu * (hi - hj)).sum(1)
            value = float(np.logaddexp(0.0, -s).sum())
            ds = -(0.5 * (1 + np.tanh(-s / 2))) / self.norm
            gh = np.zeros_like(h)
            np.add.at(gh, t["u"], ds[:, None] * (hi - hj))
            np.add.at(gh, t["i"] + nu, ds[:, None] * hu)
            np.add.at(gh, t["j"] + nu, -ds[:, None] * hu)
        value = value / self.norm + 0.5 * self.reg * float((e * e).sum())
        return value, self.prop(gh) + self.reg * e


def _terms(model, labelled: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """The model's objective terms: BPR triples from its own tensors, or the labelled pairs not removed from it."""
    if model.neg_j is not None:
        m = model.neg_j.shape[1]
        return {"u": np.repeat(model.pos_u.numpy(), m), "i": np.repeat(model.pos_i.numpy(), m),
                "j": model.neg_j.numpy().reshape(-1)}
    key = labelled["u"].astype(np.int64) * model.n_items + labelled["i"]
    gone = np.isin(key, model.removed_u.numpy() * model.n_items + model.removed_i.numpy())
    return {k: v[~gone] for k, v in labelled.items()}


def check_ifru_claims(parent, child, labelled: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Recompute the last certificate of ``child`` (an IFRUModel derived from ``parent``).

    ``labelled`` (BCE models): every training pair of the split, dense ``u``,
    ``i``, float ``label``.  Returns the recomputed figures, the recorded ones,
    the tolerances and ``problems`` (empty when the claims hold).
    """
    problems: list[str] = []
    if not child.history:
        raise StoreError("the version records no IFRU request (a training version has no certificate to check)")
    cert = child.history[-1].get("certificate")
    if cert is None:
        raise StoreError("the version's last request has no certificate (saved before the safeguarded update)")
    for m in (parent, child):
        if m.neg_j is not None and m.neg_j.shape[0] != m.pos_u.numel():
            raise StoreError("a BPR model must hold one row of negatives per positive pair; the files are inconsistent")
    cfg = child.config
    n_users, n_nodes = child.n_users, child.n_users + child.n_items
    t_parent, t_child = _terms(parent, labelled), _terms(child, labelled)
    if len(t_child["u"]) != child.n_terms:
        problems.append(f"the version claims {child.n_terms} training terms; its data gives {len(t_child['u'])}")
    if len(t_parent["u"]) != parent.n_terms:
        problems.append(f"the parent claims {parent.n_terms} training terms; the data gives {len(t_parent['u'])}")
    removed = set(zip(child.removed_u.tolist(), child.removed_i.tolist()))
    if not set(zip(parent.removed_u.tolist(), parent.removed_i.tolist())) <= removed:
        problems.append("the version has brought back pairs its parent had removed")
    still = removed & set(zip(child.pos_u.tolist(), child.pos_i.tolist()))
    if still:
        problems.append(f"{len(still)} removed pair(s) are still edges of the version's graph, e.g. {sorted(still)[:3]}")
    norm = parent.n_terms if cfg.normaliser == "training" else child.n_terms
    l_full = Objective(t_parent, parent.pos_u, parent.pos_i, n_users, n_nodes, cfg.model_layers, cfg.reg,
                       parent.n_terms, cfg.loss)
    l_kept = Objective(t_child, child.pos_u, child.pos_i, n_users, n_nodes, cfg.model_layers, cfg.reg, norm, cfg.loss)
    theta_p, theta_c = parent.e0.double().numpy(), child.e0.double().numpy()
    _, g_full = l_full(theta_p)
    v_p, g_p = l_kept(theta_p)
    v_c, g_c = l_kept(theta_c)
    change = v_c - v_p
    obj_tol = 2 * EPS32 * float((np.abs(g_c) * np.abs(theta_c)).sum()) + 1e-12 * (abs(v_c) + 1)
    rows = np.flatnonzero(np.any(theta_c != theta_p, axis=1))
    merit_before = float(np.linalg.norm((g_p - g_full)[rows]))
    merit_after = float(np.linalg.norm((g_c - g_full)[rows]))
    probe = theta_c * (1 + EPS32 * np.sign(np.sin(np.arange(theta_c.size))).reshape(theta_c.shape))
    grad_tol = 3 * float(np.linalg.norm((l_kept(probe)[1] - g_c)[rows])) + 1e-12
    out = {
        "retained_objective_change": {"recomputed": change, "recorded": cert.get("retained_objective_change"),
                                      "tolerance": obj_tol},
        "merit_gradient_before": {"recomputed": merit_before, "recorded": cert.get("merit_gradient_before")},
        "merit_gradient_after": {"recomputed": merit_after, "recorded": cert.get("merit_gradient_after"),
                                 "tolerance": grad_tol},
        "changed_rows": int(rows.size),
        "updated_rows_recorded": cert.get("updated_rows"),
        "status_recorded": cert.get("status"),
    }
    rec = cert.get("retained_objective_change")
    if rec is None or not abs(change - rec) <= obj_tol:
        problems.append(f"retained-objective change recomputed {change:.6g}, recorded {rec} (tolerance {obj_tol:.2g})")
    if not change <= obj_tol:
        problems.append(f"the update raised the retained-data objective by {change:.6g}")
    if cert.get("updated_rows") == rows.size:
        for name, value, tol in (("merit_gradient_before", merit_before, grad_tol), ("merit_gradient_after", merit_after, grad_tol)):
            rec = cert.get(name)
            if rec is None or not abs(value - rec) <= tol + 1e-9 * abs(rec):
                problems.append(f"{name} recomputed {value:.6g}, recorded {rec} (tolerance {tol:.2g})")
    else:
        out["note"] = (f"{cert.get('updated_rows')} rows were updated, {rows.size} changed: the gradient norms are "
                       "recomputed over the changed rows and not compared")
    out["problems"] = problems
    out["holds"] = not problems
    return out


def is_ifru_model(path: str) -> bool:
    """Whether ``path`` is an IFRU model directory (its live version's meta has the IFRU format)."""
    from spark_unlearn.ifru import persist

    if not persist.exists(path):
        return False
    try:
        return persist.version_meta(path, persist.current_version(path)).get("format") == persist.FORMAT
    except StoreError:
        return False


def verify_ifru_version(spark, model_dir: str, ratings_path: str | None = None, version: str | None = None,
                        columns: dict[str, str] | None = None) -> dict[str, Any]:
    """Check the certificate of ``version`` (default: the live one) of the IFRU model in ``model_dir``.

    BCE models need ``ratings_path``, the ratings the model was trained on
    (the labels of the training pairs are not saved with the model); the
    split is rebuilt with the model's own settings and must match the
    fingerprint the model recorded.  BPR models carry their triples.
    """
    from spark_unlearn.data.readers import read_ratings
    from spark_unlearn.errors import ConfigError
    from spark_unlearn.ifru import persist
    from spark_unlearn.ifru.data import prepare, sorted_terms
    from spark_unlearn.ifru.run import fingerprint  # the data's identity as the model recorded it

    name = version or persist.current_version(model_dir)
    meta = persist.version_meta(model_dir, name)
    parent_name = meta.get("parent")
    if not parent_name:
        raise StoreError(f"version {name} of {model_dir} has no parent version: a training version has no "
                         "IFRU certificate to check")
    child = persist.load_model(model_dir, name)
    try:
        parent = persist.load_model(model_dir, parent_name)
    except StoreError as exc:
        raise StoreError(f"the parent {parent_name} of {name} is no longer in {model_dir} ({exc}); only a version "
                         "whose parent is kept can be verified") from exc
    labelled = None
    if child.neg_j is None:
        if not ratings_path:
            raise ConfigError("a BCE model does not save the labels of its training pairs: pass --ratings, the "
                              "ratings the model was trained on")
        cfg = child.config
        prepared = prepare(read_ratings(spark, ratings_path, columns=columns), threshold=cfg.threshold, k=cfg.kcore,
                           fractions=cfg.fractions, seed=cfg.split_seed)
        if child.fingerprint and fingerprint(prepared.train) != child.fingerprint:
            raise StoreError(f"--ratings {ratings_path} does not give the training split the model was trained on")
        t = sorted_terms(prepared.train)
        labelled = {"u": t["u"].long().numpy(), "i": t["i"].long().numpy(), "label": t["label"].double().numpy()}
    out = check_ifru_claims(parent, child, labelled)
    return {"kind": "ifru", "model": model_dir, "version": name, "parent": parent_name,
            "status": "verified" if out["holds"] else "failed", **out}

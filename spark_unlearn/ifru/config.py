"""IFRU settings: data preparation, model, training and unlearning, as one validated record."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from spark_unlearn.errors import ConfigError
from spark_unlearn.ifru.models import LOSSES, MODEL_TYPES

DTYPES = ("float32", "float64")
HESSIAN_TERMS = ("reach", "kept")


@dataclass(frozen=True)
class IFRUConfig:
    """Every IFRU knob.  Read once (TOML ``[ifru]`` table in jobs) and passed as plain values.

    Data preparation
        ``threshold`` (label = rating >= threshold), ``kcore``, ``fractions``
        (train/val/test), ``split_seed``.
    Model and training
        ``model_type`` (``mf`` | ``lightgcn``), ``layers`` (LightGCN only),
        ``dim``, ``loss`` (``bce``: pointwise, every labelled training pair is
        a term; ``bpr``: the fixed triples ``(u, i, j)`` of the positive
        training pairs, ``bpr_negatives`` negatives per positive drawn once with
        ``seed`` from the items that are not a positive training item of ``u``,
        kept with the model; unlearning ``(u, i)`` removes exactly the triples
        whose positive is ``(u, i)``; see
        :func:`spark_unlearn.ifru.models.bpr_negatives`), ``bpr_negatives``,
        ``reg`` (L2 weight ``reg/2 ||E0||^2`` in the objective), ``lr``,
        ``epochs``, ``batch_size`` (0 = full batch), ``seed`` (initialisation,
        mini-batch order and BPR negatives).
    Unlearning
        ``damping`` (added to the Hessian), ``cg_tol`` (relative residual),
        ``cg_max_iter``, ``precondition`` (block-Jacobi), ``influence_dtype``,
        ``prune_quantile`` (``None`` = no pruning; else keep nodes whose score
        exceeds this quantile), ``prune_hops``, ``hessian_terms`` (which
        terms the pruned Hessian sums: ``reach``, the default, every term whose
        score moves with the kept rows, so the restricted Hessian is exact;
        ``kept``, only terms with an endpoint in the kept set, which for
        LightGCN drops the terms reached through neighbour aggregation (weights
        ``1/sqrt(deg_u deg_i)``): cheaper HVPs, an approximate Hessian; the
        same as ``reach`` for MF), ``spillover`` (LightGCN's
        ``G -> G'`` term), ``hessian`` (``remaining``: Hessian of the objective
        without ``D_u`` on ``G'``, one exact Newton step; ``full``: of the
        training objective, the textbook influence function), ``newton_steps``
        (1 = the IFRU update; more continue Newton on the remaining objective),
        ``normaliser`` (``remaining``: the update targets the retrain's
        objective, remaining terms averaged over ``n - |D_u|``; ``training``:
        over ``n``, the paper's ``(1/n) H^-1 grad U``), ``fallback_steps`` (gradient
        steps taken when no trust-region Newton step lowers the retained-data
        objective), ``validation_guard`` (halve the update until the validation
        AUC is not below the original's; see
        :func:`spark_unlearn.ifru.influence.compute_update`).
    """

    threshold: float = 4.0
    kcore: int = 5
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    split_seed: int = 0
    model_type: str = "mf"
    layers: int = 1
    dim: int = 64
    loss: str = "bce"
    bpr_negatives: int = 1
    reg: float = 1e-4
    lr: float = 0.01
    epochs: int = 200
    batch_size: int = 0
    seed: int = 0
    damping: float = 1e-5
    cg_tol: float = 1e-3
    cg_max_iter: int = 500
    precondition: bool = False
    influence_dtype: str = "float32"
    prune_quantile: float | None = None
    prune_hops: int = 1
    hessian_terms: str = "reach"
    spillover: bool = True
    hessian: str = "remaining"
    newton_steps: int = 1
    normaliser: str = "remaining"
    fallback_steps: int = 10
    validation_guard: bool = True

    def __post_init__(self) -> None:
        def num(name: str, lo: float | None = None, strict: bool = False) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"{name} must be a finite number, got {v!r}")
            if lo is not None and (v <= lo if strict else v < lo):
                raise ConfigError(f"{name} must be {'>' if strict else '>='} {lo}, got {v!r}")

        def integer(name: str, lo: int) -> None:
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"{name} must be an integer >= {lo}, got {v!r}")

        num("threshold")
        integer("kcore", 0)
        fr = self.fractions
        if (
            not isinstance(fr, (tuple, list))
            or len(fr) != 3
            or any(isinstance(f, bool) or not isinstance(f, (int, float)) for f in fr)
            or not (fr[0] > 0 and fr[1] >= 0 and fr[2] > 0)
            or abs(sum(fr) - 1.0) > 1e-9
        ):
            raise ConfigError(f"fractions must be three numbers (train > 0, val >= 0, test > 0) summing to 1, got {fr!r}")
        object.__setattr__(self, "fractions", tuple(float(f) for f in fr))
        integer("split_seed", 0)
        if self.model_type not in MODEL_TYPES:
            raise ConfigError(f"model_type must be one of {MODEL_TYPES}, got {self.model_type!r}")
        integer("layers", 1)
        integer("dim", 1)
        if self.loss not in LOSSES:
            raise ConfigError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        integer("bpr_negatives", 1)
        num("reg", 0.0)
        num("lr", 0.0, strict=True)
        integer("epochs", 0)
        integer("batch_size", 0)
        integer("seed", 0)
        num("damping", 0.0)
        num("cg_tol", 0.0, strict=True)
        integer("cg_max_iter", 1)
        if not isinstance(self.precondition, bool):
            raise ConfigError(f"precondition must be true or false, got {self.precondition!r}")
        if self.influence_dtype not in DTYPES:
            raise ConfigError(f"influence_dtype must be one of {DTYPES}, got {self.influence_dtype!r}")
        q = self.prune_quantile
        if q is not None and (isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 <= q < 1):
            raise ConfigError(f"prune_quantile must be None or a number in [0, 1), got {q!r}")
        integer("prune_hops", 0)
        if self.hessian_terms not in HESSIAN_TERMS:
            raise ConfigError(f"hessian_terms must be one of {HESSIAN_TERMS}, got {self.hessian_terms!r}")
        integer("newton_steps", 1)
        if self.hessian not in ("remaining", "full"):
            raise ConfigError(f"hessian must be 'remaining' or 'full', got {self.hessian!r}")
        if self.normaliser not in ("remaining", "training"):
            raise ConfigError(f"normaliser must be 'remaining' or 'training', got {self.normaliser!r}")
        integer("fallback_steps", 0)
        if not isinstance(self.validation_guard, bool):
            raise ConfigError(f"validation_guard must be true or false, got {self.validation_guard!r}")
        if not isinstance(self.spillover, bool):
            raise ConfigError(f"spillover must be true or false, got {self.spillover!r}")

    @property
    def model_layers(self) -> int:
        """Propagation layers actually used: 0 for MF."""
        return self.layers if self.model_type == "lightgcn" else 0

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fractions"] = list(self.fractions)
        return d

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "IFRUConfig":
        """Build from plain values, rejecting unknown keys (a typo must not be silently ignored)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"unknown IFRU setting(s) {unknown}; known: {sorted(known)}")
        vals = dict(values)
        if "fractions" in vals and isinstance(vals["fractions"], list):
            vals["fractions"] = tuple(vals["fractions"])
        return cls(**vals)

    def replace(self, **changes: Any) -> "IFRUConfig":
        d = self.to_dict()
        d.update(changes)
        return IFRUConfig.from_dict(d)

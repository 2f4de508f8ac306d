"""TOML configuration: read once by a job, checked against a schema, handed on as plain values.

Every key has a type; an unknown section or key is an error (a typo such as
``iteratons = 50`` must not silently fall back to a default).  Command-line
flags override the file; the file overrides the built-in defaults below.
"""

from __future__ import annotations

import copy
import logging
import sys
from typing import Any

from spark_unlearn.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

log = logging.getLogger(__name__)

# section -> key -> (type(s), default).  None default = "not set".
_ANY = object()
SCHEMA: dict[str, dict[str, tuple[Any, Any]]] = {
    "data": {
        "ratings": (str, ""),  # "" = pyspark's embedded MovieLens sample
        "format": (str, "auto"),
        "duplicates": (str, "error"),
        "test_fraction": (float, 0.2),
        "split_seed": (int, 0),
        "columns": (dict, None),
    },
    "als": {
        "rank": (int, 10),
        "reg": (float, 0.1),
        "alpha": (float, 1.0),
        "implicit": (bool, False),
        "iterations": (int, 10),
        "seed": (int, 0),
        "num_blocks": (int, None),
        "checkpoint_interval": (int, 10),
    },
    "eval": {"k": (int, 20)},
    "store": {"path": (str, "out/model_store")},
    "unlearn": {
        "mode": (str, "frontier"),
        "fallback": (str, "retrain"),  # what a frontier beyond full_fallback_fraction falls back to: retrain | full
        "engine": (str, "auto"),  # auto | targeted | layout (frontier mode)
        "tol": (float, None),  # None = relative to the model's own training residual
        "tol_factor": (float, 1.0),
        "certificate_policy": (str, "training-precision"),  # training-precision | strict (spark_unlearn.als.policy)
        "strict": (bool, False),
        "max_rounds": (int, 50),
        "full_fallback_fraction": (float, 0.5),
        "full_iterations": (int, 10),
        "min_sweeps": (int, 1),  # sweeps on the driver: the fewest before the certificate may stop them
        "retrain_share": (float, 0.08),  # a batch deleting this share of the ratings is retrained on the driver
        "forgetting_share": (float, 0.95),  # sweeps on the driver: the deleted pairs' estimated move made first (0: off)
        "measure": (bool, True),  # false: no before/after metrics or forgetting ranks in the report
        "driver_rows": (int, None),  # targeted engine: neighbours beyond this stay in Spark (None: 20,000)
        "hold_side_mb": (int, 256),  # implicit, blocked store: a side whose rows fit this (MiB) is held on the driver
        "sweep_driver_mb": (int, 1024),  # blocked store: the planner may sweep a version that fits this (MiB) on the driver
        "max_rebases": (int, 3),  # re-apply a request on a store that moved at most this many times
    },
    "serve": {  # jobs/serve.py (spark_unlearn.service.serve.ServiceOptions)
        "max_batch": (int, 100),  # at most this many queued requests per micro-batch (one version)
        "poll_seconds": (float, 1.0),
        "max_attempts": (int, 3),  # a request failing for a non-data reason is retried this often
        "measure": (bool, False),  # before/after metrics per micro-batch
        "cache_mb": (int, 2048),  # the driver's cache of block files (read and written), MiB
    },
    "mlflow": {  # optional run tracking (spark_unlearn.tracking); off while tracking_uri is ""
        "tracking_uri": (str, ""),
        "experiment": (str, "spark_unlearn"),
    },
    # [ifru] is validated by spark_unlearn.ifru.config.IFRUConfig (one source of truth for its keys).
    "ifru": {},
    "logging": {"level": (str, "INFO")},
    "spark": {},  # free-form Spark properties, checked separately
}


def defaults() -> dict[str, dict[str, Any]]:
    """The built-in configuration (every section, every key)."""
    return {section: {k: copy.deepcopy(v[1]) for k, v in keys.items()} for section, keys in SCHEMA.items()}


def _check_type(section: str, key: str, value: Any, expected: Any) -> Any:
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, bool):
        raise ConfigError(f"[{section}] {key} must be an integer, got {value!r}")
    if not isinstance(value, expected):
        name = getattr(expected, "__name__", str(expected))
        raise ConfigError(f"[{section}] {key} must be of type {name}, got {value!r} ({type(value).__name__})")
    return value


def validate(raw: dict[str, Any], source: str = "config") -> dict[str, dict[str, Any]]:
    """Merge ``raw`` over the defaults, rejecting unknown sections/keys and wrong types."""
    cfg = defaults()
    unknown_sections = sorted(set(raw) - set(SCHEMA))
    if unknown_sections:
        raise ConfigError(f"{source}: unknown section(s) {unknown_sections}; known sections: {sorted(SCHEMA)}")
    for section, values in raw.items():
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: [{section}] must be a table, got {values!r}")
        if section == "ifru":
            from spark_unlearn.ifru.config import IFRUConfig

            try:
                IFRUConfig.from_dict(values)
            except ConfigError as exc:
                raise ConfigError(f"{source}: [ifru] {exc}") from None
            cfg["ifru"] = dict(values)
            continue
        if section == "spark":
            for key, value in values.items():
                if not key.startswith("spark."):
                    raise ConfigError(f"{source}: [spark] keys are Spark properties and start with 'spark.', got {key!r}")
                if not isinstance(value, (str, int, float, bool)):
                    raise ConfigError(f"{source}: [spark] {key} must be a string, number or boolean, got {value!r}")
                cfg["spark"][key] = str(value).lower() if isinstance(value, bool) else str(value)
            continue
        keys = SCHEMA[section]
        unknown = sorted(set(values) - set(keys))
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {unknown} in [{section}]; known keys: {sorted(keys)}")
        for key, value in values.items():
            cfg[section][key] = _check_type(section, key, value, keys[key][0])
    return cfg


def load_config(path: str | None) -> dict[str, dict[str, Any]]:
    """Read and validate a TOML file (``None``: the defaults)."""
    if path is None:
        return defaults()
    try:
        with open(path, "rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} does not exist; pass --config conf/local.toml or omit it") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path!r} is not valid TOML: {exc}") from None
    log.info("config read from %s", path)
    return validate(raw, source=path)


OBJECTIVE_KEYS = ("rank", "reg", "alpha", "implicit")
"""[als] keys that define a trained model's objective (checked against a model before unlearning it)."""


def stated_objective(path: str | None) -> dict[str, Any]:
    """The objective keys a config file sets *explicitly* in ``[als]`` (defaults are not statements)."""
    if path is None:
        return {}
    with open(path, "rb") as fh:
        raw = tomllib.load(fh)
    cfg = validate(raw, source=path)
    return {k: cfg["als"][k] for k in OBJECTIVE_KEYS if k in raw.get("als", {})}


def override(cfg: dict[str, dict[str, Any]], section: str, **values: Any) -> dict[str, dict[str, Any]]:
    """Apply command-line overrides (``None`` = flag not given) with the same type checks."""
    out = copy.deepcopy(cfg)
    for key, value in values.items():
        if value is None:
            continue
        if key not in SCHEMA[section]:
            raise ConfigError(f"unknown key {key!r} for [{section}]")
        out[section][key] = _check_type(section, key, value, SCHEMA[section][key][0])
    return out

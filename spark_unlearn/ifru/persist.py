"""Saving and loading IFRU models safely.

Layout of a model directory::

    DIR/CURRENT              name of the live version (replaced atomically)
    DIR/v-<time>-<rand>/weights.pt   torch.save of a dict of tensors only
    DIR/v-<time>-<rand>/meta.json    config, counts, history, sha256 of weights.pt

A save writes a complete new version next to the live one and then switches
``CURRENT`` with ``os.replace``: a run that fails before the switch leaves the
previously saved model untouched and loadable.  Loading uses
``torch.load(..., weights_only=True)`` (no pickled code is ever executed) and
checks the checksum and every shape before anything is used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import shutil
import time

import numpy as np
import torch

from spark_unlearn.errors import OutputPathError, StoreError
from spark_unlearn.ifru.config import IFRUConfig
from spark_unlearn.ifru.state import IFRUModel
from spark_unlearn.store.fsutil import is_uri

log = logging.getLogger(__name__)

FORMAT = "spark_unlearn.ifru/1"
CURRENT = "CURRENT"
WEIGHTS = "weights.pt"
META = "meta.json"
_TENSORS = ("e0", "user_ids", "item_ids", "pos_u", "pos_i", "removed_u", "removed_i")
_OPTIONAL = ("neg_j",)  # BPR models only


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _local_dir(model_dir: str) -> str:
    """``model_dir`` itself; a URI is refused (IFRU models are saved with ``torch.save`` on a local or NFS path).

    Raises
    ------
    OutputPathError
        ``model_dir`` names a scheme (``file://``, ``hdfs://``, ...).
    """
    if isinstance(model_dir, str) and is_uri(model_dir):
        raise OutputPathError(f"{model_dir!r}: an IFRU model directory must be a local or NFS path (URIs through "
                              "Hadoop's FileSystem are supported by the ALS model store only; docs/LIMITS.md)")
    return model_dir


def exists(model_dir: str) -> bool:
    """Whether ``model_dir`` holds a saved IFRU model (never a URI: those are ALS model stores)."""
    if isinstance(model_dir, str) and is_uri(model_dir):
        return False
    return os.path.isfile(os.path.join(model_dir, CURRENT))


def save_model(model: IFRUModel, model_dir: str, keep_previous: int = 1) -> str:
    """Write ``model`` as a new version of ``model_dir`` and make it live; returns the version path.

    Refuses a ``model_dir`` that exists, is non-empty and is not an IFRU model
    directory.  Older versions beyond ``keep_previous`` are deleted after the
    switch.
    """
    model_dir = _local_dir(model_dir)
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise OutputPathError(f"model path {model_dir!r} exists and is not a directory; choose another --model")
    if os.path.isdir(model_dir) and os.listdir(model_dir) and not exists(model_dir):
        raise OutputPathError(
            f"{model_dir!r} is a non-empty directory that holds no IFRU model (no {CURRENT} file); "
            "refusing to write into it, choose an empty or new --model directory"
        )
    os.makedirs(model_dir, exist_ok=True)
    parent = current_version(model_dir) if exists(model_dir) else None
    name = f"v-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(4)}"
    tmp = os.path.join(model_dir, f".tmp-{name}")
    final = os.path.join(model_dir, name)
    os.makedirs(tmp)
    try:
        tensors = {
            "e0": model.e0.detach().float().contiguous(),
            "user_ids": torch.from_numpy(np.asarray(model.user_ids, dtype=np.int64).copy()),
            "item_ids": torch.from_numpy(np.asarray(model.item_ids, dtype=np.int64).copy()),
            "pos_u": model.pos_u.long().contiguous(),
            "pos_i": model.pos_i.long().contiguous(),
            "removed_u": model.removed_u.long().contiguous(),
            "removed_i": model.removed_i.long().contiguous(),
        }
        if model.neg_j is not None:
            tensors["neg_j"] = model.neg_j.long().contiguous()
        wpath = os.path.join(tmp, WEIGHTS)
        with open(wpath, "wb") as f:
            torch.save(tensors, f)
            f.flush()
            os.fsync(f.fileno())
        meta = {
            "format": FORMAT,
            "config": model.config.to_dict(),
            "n_users": model.n_users,
            "n_items": model.n_items,
            "n_terms": int(model.n_terms),
            "fingerprint": model.fingerprint,
            "history": model.history,
            "parent": parent,
            "shapes": {k: list(v.shape) for k, v in tensors.items()},
            "weights_sha256": _sha256(wpath),
        }
        with open(os.path.join(tmp, META), "w") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        os.replace(tmp, final)
        pointer_tmp = os.path.join(model_dir, f".{CURRENT}.{secrets.token_hex(4)}")
        with open(pointer_tmp, "w") as f:
            f.write(name + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(pointer_tmp, os.path.join(model_dir, CURRENT))
        _fsync_dir(model_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _prune_versions(model_dir, name, keep_previous)
    log.info("saved IFRU model version %s in %s", name, model_dir)
    return final


def _prune_versions(model_dir: str, live: str, keep_previous: int) -> None:
    versions = sorted(d for d in os.listdir(model_dir) if d.startswith("v-") and d != live)
    for old in versions[: max(0, len(versions) - keep_previous)]:
        shutil.rmtree(os.path.join(model_dir, old), ignore_errors=True)
    for d in os.listdir(model_dir):
        if d.startswith(".tmp-"):
            shutil.rmtree(os.path.join(model_dir, d), ignore_errors=True)


def current_version(model_dir: str) -> str:
    """Name of the live version (``v-...``) of ``model_dir``."""
    model_dir = _local_dir(model_dir)
    pointer = os.path.join(model_dir, CURRENT)
    if not os.path.isfile(pointer):
        raise StoreError(f"no IFRU model in {model_dir!r} (missing {CURRENT}); train one first")
    with open(pointer) as f:
        name = f.read().strip()
    if not name.startswith("v-") or "/" in name or os.sep in name:
        raise StoreError(f"{pointer} names an invalid version {name!r}")
    return name


def version_meta(model_dir: str, version: str) -> dict:
    """The ``meta.json`` of one version (``parent``: the version it was derived from, ``None`` for a training)."""
    if not version.startswith("v-") or "/" in version or os.sep in version:
        raise StoreError(f"invalid IFRU model version {version!r} (expected a name like v-20260101T000000-abcd1234)")
    mpath = os.path.join(model_dir, version, META)
    try:
        with open(mpath) as f:
            return json.load(f)
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read {mpath}: {exc}; list the versions in {model_dir}") from exc


def load_model(model_dir: str, version: str | None = None) -> IFRUModel:
    """Load the live version of ``model_dir``, or ``version`` (``weights_only=True``, checksum and shapes checked)."""
    model_dir = _local_dir(model_dir)
    name = current_version(model_dir) if version is None else version
    if not name.startswith("v-") or "/" in name or os.sep in name:
        raise StoreError(f"invalid IFRU model version {name!r} (expected a name like v-20260101T000000-abcd1234)")
    vdir = os.path.join(model_dir, name)
    wpath, mpath = os.path.join(vdir, WEIGHTS), os.path.join(vdir, META)
    if not (os.path.isfile(wpath) and os.path.isfile(mpath)):
        raise StoreError(f"model version {vdir!r} is incomplete (needs {WEIGHTS} and {META})")
    try:
        with open(mpath) as f:
            meta = json.load(f)
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read {mpath}: {exc}") from exc
    if meta.get("format") != FORMAT:
        raise StoreError(f"{mpath} has format {meta.get('format')!r}, expected {FORMAT!r}")
    digest = _sha256(wpath)
    if digest != meta.get("weights_sha256"):
        raise StoreError(f"{wpath} does not match the checksum in {META} (corrupt or tampered); restore it or retrain")
    try:
        tensors = torch.load(wpath, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a store problem
        raise StoreError(f"cannot load {wpath} with weights_only=True: {exc}") from exc
    if not isinstance(tensors, dict) or not set(_TENSORS) <= set(tensors) <= set(_TENSORS + _OPTIONAL):
        raise StoreError(f"{wpath} must hold exactly the tensors {list(_TENSORS)} (and {list(_OPTIONAL)} for BPR)")
    for k, v in tensors.items():
        if not isinstance(v, torch.Tensor) or list(v.shape) != meta["shapes"].get(k):
            raise StoreError(f"{wpath}: tensor {k!r} has an unexpected type or shape")
    config = IFRUConfig.from_dict(meta["config"])
    e0 = tensors["e0"]
    n_nodes = meta["n_users"] + meta["n_items"]
    if e0.dim() != 2 or e0.shape != (n_nodes, config.dim) or not torch.isfinite(e0).all():
        raise StoreError(f"{wpath}: embeddings must be finite and {n_nodes} x {config.dim}")
    neg_j = tensors.get("neg_j")
    if (config.loss == "bpr") != (neg_j is not None):
        raise StoreError(f"{wpath}: a model trained with loss={config.loss!r} must "
                         f"{'hold' if config.loss == 'bpr' else 'not hold'} BPR negatives 'neg_j'")
    if neg_j is not None and (neg_j.dim() != 2 or neg_j.shape[0] != tensors["pos_u"].shape[0]
                              or int(meta["n_terms"]) != neg_j.numel()):
        raise StoreError(f"{wpath}: 'neg_j' must have one row per positive pair and n_terms entries")
    return IFRUModel(
        config=config,
        e0=e0,
        user_ids=tensors["user_ids"].numpy(),
        item_ids=tensors["item_ids"].numpy(),
        pos_u=tensors["pos_u"],
        pos_i=tensors["pos_i"],
        removed_u=tensors["removed_u"],
        removed_i=tensors["removed_i"],
        n_terms=int(meta["n_terms"]),
        fingerprint=str(meta.get("fingerprint", "")),
        history=list(meta.get("history", [])),
        neg_j=neg_j,
    )

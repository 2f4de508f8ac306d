"""A version's ``manifest.json``: its fixed keys, and reading and verifying it.

The manifest is the store's own record of a version: format version, params,
the conventions the factors follow, counts, what the version contains and the
SHA-256 of every other file of the version.  This module reads and checks a
manifest, verifies the files of a version against its checksums, checks the
params and conventions a version is loaded with and refuses caller-supplied
manifest keys that the store fills itself.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from spark_unlearn.als.params import ALSParams
from spark_unlearn.errors import ConfigError, StoreError
from spark_unlearn.store.fsutil import file_identity, list_files, read_text, sha256_file

log = logging.getLogger(__name__)

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1

CONVENTIONS: dict[str, str] = {
    "prediction": "r_ui ~ x_u . y_i",
    "confidence": "c = 1 + alpha*|r|",
    "regularisation": "reg * n_ratings",
    "factor_dtype": "float32",
    "id_dtype": "int32",
    "offsets": "per-row target t_r (training residual e_r = A_r x_r - b_r, or 0 once the row's data changed), "
    "|b_r| and drift d_r = A_r x_r - b_r - t_r, float64",
}

# Earlier wordings of CONVENTIONS["offsets"] whose tables still load (their drift is zero).
_LEGACY_OFFSETS = frozenset({"per-row training residual e_r = A_r x_r - b_r, float64"})

# Keys publish() fills itself; a caller's manifest may add keys but not replace these.
_RESERVED_KEYS = frozenset(
    {
        "format_version",
        "version",
        "parent",
        "created_at",
        "params",
        "rank",
        "conventions",
        "counts",
        "contents",
        "spark_version",
        "files",
        "request",
        "blocks",
    }
)


def read_manifest_at(name: str, path: str) -> dict:
    """The parsed ``manifest.json`` of version ``name`` in directory ``path``.

    Raises
    ------
    StoreError
        If it is missing, unreadable, not a JSON object or names another version.
    """
    mpath = os.path.join(path, MANIFEST_FILE)
    try:
        manifest = json.loads(read_text(mpath))
    except FileNotFoundError as exc:
        raise StoreError(f"version {name} at {path} has no {MANIFEST_FILE}: it is incomplete") from exc
    except (OSError, ValueError) as exc:
        raise StoreError(f"cannot read {mpath}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise StoreError(f"{mpath} does not hold a JSON object")
    if manifest.get("version") != name:
        raise StoreError(f"{mpath} says version {manifest.get('version')!r} but sits in directory {name!r}")
    return manifest


def loadable_params(manifest: dict, path: str) -> ALSParams:
    """The params of the version at ``path``, once its conventions and rank are checked against this release's.

    Raises
    ------
    StoreError
        Invalid ``params``, conventions of another tool or release, or a
        ``rank`` that disagrees with ``params.rank``.
    """
    try:
        params = ALSParams.from_dict(manifest["params"])
    except (KeyError, TypeError, ConfigError) as exc:
        raise StoreError(f"{os.path.join(path, MANIFEST_FILE)} has invalid 'params': {exc}") from exc
    conventions = manifest.get("conventions")
    if isinstance(conventions, dict) and conventions.get("offsets") in _LEGACY_OFFSETS:
        # Written before the drift was kept apart: readable, the drift loads as zero (see with_drift).
        conventions = {**conventions, "offsets": CONVENTIONS["offsets"]}
    if conventions != CONVENTIONS:
        differ = sorted(k for k in set(CONVENTIONS) | set(conventions or {}) if (conventions or {}).get(k) != CONVENTIONS.get(k))
        raise StoreError(
            f"{os.path.join(path, MANIFEST_FILE)}: the model's conventions differ from this release's in {differ} "
            f"(model: {[(conventions or {}).get(k) for k in differ]}, expected: {[CONVENTIONS.get(k) for k in differ]}); "
            "it was written by another tool or release: retrain it with jobs/train.py"
        )
    if manifest.get("rank") != params.rank:
        raise StoreError(
            f"{os.path.join(path, MANIFEST_FILE)}: rank {manifest.get('rank')!r} "
            f"disagrees with params.rank {params.rank}"
        )
    return params


def check_extra_manifest(manifest: dict | None) -> dict[str, Any]:
    """A copy of the caller's extra manifest keys, refused unless they are JSON and none is reserved.

    Raises
    ------
    ConfigError
        ``manifest`` is not a dict, replaces a key the store fills, has a
        non-string key or is not JSON-serialisable.
    """
    if manifest is None:
        return {}
    if not isinstance(manifest, dict):
        raise ConfigError(f"manifest must be a dict, got {type(manifest).__name__}")
    clash = sorted(k for k in manifest if k in _RESERVED_KEYS)
    if clash:
        raise ConfigError(f"manifest keys {clash} are filled by the store and cannot be given")
    bad = [k for k in manifest if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"manifest keys must be strings, got {bad}")
    try:
        json.dumps(manifest, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"manifest is not JSON-serialisable (plain dict/list/str/int/float/bool/None, no NaN): {exc}"
        ) from exc
    return dict(manifest)


def verify_files(name: str, path: str, manifest: dict, *, cached: bool = True) -> None:
    """Recompute the checksum of every file of version ``name`` at ``path``; raise :class:`StoreError` on any difference.

    ``cached``: a file this process already hashed, unchanged in identity, size and mtime, is not read again
    (:func:`_checksum`); ``False`` reads every byte.
    """
    expected = manifest.get("files")
    if not isinstance(expected, dict) or not (expected or manifest.get("purged")):
        raise StoreError(f"{os.path.join(path, MANIFEST_FILE)} has no 'files' checksums; cannot verify version {name}")
    actual = set(list_files(path)) - {MANIFEST_FILE}
    missing = sorted(set(expected) - actual)
    if missing:
        raise StoreError(f"version {name} at {path} is missing file(s) {_short(missing)}")
    extra = sorted(actual - set(expected))
    if extra:
        raise StoreError(f"version {name} at {path} holds file(s) not in its manifest: {_short(extra)}")
    digest = _checksum if cached else sha256_file
    changed = [rel for rel in sorted(expected) if digest(os.path.join(path, rel)) != expected[rel]]
    if changed:
        raise StoreError(
            f"version {name} at {path}: checksum mismatch (file modified or truncated) in {_short(changed)}"
        )
    log.debug("verified %d files of %s", len(expected), name)


_VERIFIED: dict[tuple[int, int, int, int], str] = {}
_VERIFIED_MAX = 200_000


def _checksum(path: str) -> str:
    """SHA-256 of ``path``, remembered per file identity (device, inode, size, mtime) for this process.

    Versions share their unchanged block files by hard links, so a long-lived
    driver (jobs/serve.py) that loads each new version would otherwise hash
    the whole store again per request.  A file rewritten in place changes
    its size or mtime and is hashed again; a file replaced is a new inode.
    What this does not see (bytes changed with the mtime restored) the
    independent verifier, which always reads, does.
    """
    key = file_identity(path)
    digest = _VERIFIED.get(key)
    if digest is None:
        digest = _remember(key, sha256_file(path))
    return digest


def _remember(key: tuple[int, int, int, int], digest: str) -> str:
    if len(_VERIFIED) >= _VERIFIED_MAX:
        _VERIFIED.clear()
    _VERIFIED[key] = digest
    return digest


def checksum_written(path: str) -> str:
    """SHA-256 of a file this process just wrote, flushed to stable storage, and remembered as :func:`_checksum`
    would (the next load of its version in this process does not read it again)."""
    digest = sha256_file(path, fsync=True)
    return _remember(file_identity(path), digest)


def _short(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


__all__ = [
    "CONVENTIONS",
    "checksum_written",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "check_extra_manifest",
    "loadable_params",
    "read_manifest_at",
    "verify_files",
]

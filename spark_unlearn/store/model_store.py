"""A versioned, checksummed model store on a local or NFS filesystem path.

Layout::

    STORE/
      CURRENT                  name of the current version (replaced atomically)
      .lock                    advisory lock serialising publishers
      versions/
        v000001/               loadable by pyspark.ml.recommendation.ALSModel.load
          metadata/            Spark ALSModel metadata (part-00000 + _SUCCESS)
          userFactors/         Parquet: id int, features array<float>
          itemFactors/         Parquet: id int, features array<float>
          offsets/users/       optional Parquet, OFFSETS_SCHEMA
          offsets/items/       optional Parquet, OFFSETS_SCHEMA
          ratings/             optional Parquet, RATINGS_SCHEMA
          holdout/             optional Parquet, RATINGS_SCHEMA (held-out test split)
          forgotten/           optional Parquet, DELETIONS_SCHEMA: what this version's deletion batch removed
          manifest.json        ours: params, conventions, counts, SHA-256 of every file
      ledger.jsonl             append-only log of applied deletion batches (spark_unlearn.store.ledger)
      .staging/                in-progress writes; never read (debris of killed writers is removed)

A version is written completely under ``.staging/<uuid>/``, checksummed,
renamed into ``versions/`` and only then made current, so a reader following
``CURRENT`` never sees a partial version.

Spark's ``ALSModel`` metadata holds only the *model's* params (``userCol``,
``itemCol``, ``predictionCol``, ``coldStartStrategy``, ``blockSize``); Spark's
reader rejects any other name in ``paramMap`` (``Param regParam does not
exist``).  The training hyperparameters therefore go into an extra top-level
key, :data:`SPARK_UNLEARN_PARAM_KEY`, which Spark ignores, as well as into
``manifest.json``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import (
    ArrayType,
    ByteType,
    DoubleType,
    FloatType,
    IntegerType,
    NumericType,
    ShortType,
    StructType,
)

from spark_unlearn.als.model import FactorModel
from spark_unlearn.als.params import ALSParams
from spark_unlearn.errors import (
    ConfigError,
    EmptyInputError,
    OutputPathError,
    SchemaError,
    StoreError,
    StoreMovedError,
)
from spark_unlearn.schema import FACTORS_SCHEMA, ITEM, OFFSETS_SCHEMA, RATING, RATINGS_SCHEMA, USER, with_drift
from spark_unlearn.faults import failpoint
from spark_unlearn.store import ledger as _ledger
from spark_unlearn.store.derived import DerivedTable, touched_files, write_derived
from spark_unlearn.store.fsutil import (
    atomic_write_text,
    exclusive_lock,
    fsync_dir,
    held_lock,
    is_abandoned,
    list_files,
    sha256_file,
    write_text_durable,
)

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
SPARK_ALS_MODEL_CLASS = "org.apache.spark.ml.recommendation.ALSModel"
SPARK_UNLEARN_PARAM_KEY = "sparkUnlearnParamMap"
"""Top-level key of our Spark metadata JSON holding ALS hyperparameters under Spark's names."""

MANIFEST_FILE = "manifest.json"
CURRENT_FILE = "CURRENT"
VERSIONS_DIR = "versions"
STAGING_DIR = ".staging"
LOCK_FILE = ".lock"

USER_FACTORS, ITEM_FACTORS = "userFactors", "itemFactors"
USER_OFFSETS, ITEM_OFFSETS = "offsets/users", "offsets/items"
RATINGS_DIR = "ratings"
HOLDOUT_DIR = "holdout"
FORGOTTEN_DIR = "forgotten"
METADATA_DIR = "metadata"

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

# Spark ALSModel's own params, exactly as ALS().fit(df).save(path) records them (Spark 4.3).
_SPARK_MODEL_PARAMS: dict[str, Any] = {
    "blockSize": 4096,
    "coldStartStrategy": "nan",
    "itemCol": ITEM,
    "predictionCol": "prediction",
    "userCol": USER,
}

_VERSION_RE = re.compile(r"^v(\d{6,})$")

PARENT = object()
"""``publish(expect_current=PARENT)``: compare-and-swap on the version's parent (the default)."""
ANY_CURRENT = object()
"""``publish(expect_current=ANY_CURRENT)``: commit whatever ``CURRENT`` names (a new lineage)."""

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
    }
)


@dataclass
class LoadedVersion:
    """One published version, read back from a :class:`ModelStore`.

    Attributes
    ----------
    version
        Version name, e.g. ``"v000003"``.
    path
        Absolute path of the version directory.
    model
        Factor tables (lazy Parquet reads) and hyperparameters.
    manifest
        The parsed ``manifest.json``.
    offsets
        ``(user_offsets, item_offsets)`` with ``OFFSETS_SCHEMA``, or ``None``.
    ratings
        The ratings published with the model (``RATINGS_SCHEMA``), or ``None``.
    holdout
        The held-out test ratings published with the model, or ``None``.
    forgotten
        What this version's deletion batch removed (``user``, ``item``,
        ``kind``: ids only, no ratings), or ``None``.
    """

    version: str
    path: str
    model: FactorModel
    manifest: dict
    offsets: tuple[DataFrame, DataFrame] | None
    ratings: DataFrame | None
    holdout: DataFrame | None = None
    forgotten: DataFrame | None = None


class ModelStore:
    """Versioned model store rooted at a local or NFS directory.

    Parameters
    ----------
    root
        Store directory (a plain path or a ``file://`` URI).  It is created
        on the first :meth:`publish`; reading a missing store reports it as
        empty rather than creating directories.

    Raises
    ------
    OutputPathError
        If ``root`` exists and is not a directory, or is a non-local URI.
    """

    def __init__(self, root: str) -> None:
        self._root = _local_path(root)
        if os.path.exists(self._root) and not os.path.isdir(self._root):
            raise OutputPathError(f"model store root {self._root} exists and is not a directory; choose another path")

    # ------------------------------------------------------------------ paths
    @property
    def root(self) -> str:
        return self._root

    @property
    def _versions_dir(self) -> str:
        return os.path.join(self._root, VERSIONS_DIR)

    @property
    def _staging_dir(self) -> str:
        return os.path.join(self._root, STAGING_DIR)

    # --------------------------------------------------------------- queries
    def versions(self) -> list[str]:
        """Published version names, oldest first."""
        try:
            names = os.listdir(self._versions_dir)
        except FileNotFoundError:
            return []
        found = [(int(m.group(1)), n) for n in names if (m := _VERSION_RE.match(n))]
        return [n for _, n in sorted(found)]

    def current(self) -> str | None:
        """Name of the current version, or ``None`` if nothing was published yet."""
        path = os.path.join(self._root, CURRENT_FILE)
        try:
            with open(path, encoding="utf-8") as fh:
                name = fh.read().strip()
        except FileNotFoundError:
            return None
        if not _VERSION_RE.match(name):
            raise StoreError(f"{path} holds {name!r}, not a version name like 'v000001'; the store is corrupt")
        return name

    def version_path(self, version: str | None = None) -> str:
        """Absolute directory of ``version`` (``None``: the current one).

        Raises
        ------
        StoreError
            If the store is empty or the version does not exist.
        """
        name = self._resolve(version)
        path = os.path.join(self._versions_dir, name)
        if not os.path.isdir(path):
            raise StoreError(
                f"version {name!r} does not exist in model store {self._root}; "
                f"versions available: {self.versions() or 'none'}"
            )
        return path

    def read_manifest(self, version: str | None = None) -> dict:
        """The parsed ``manifest.json`` of ``version`` (``None``: the current one)."""
        name = self._resolve(version)
        return self._read_manifest_at(name, self.version_path(name))

    def verify(self, version: str | None = None) -> None:
        """Recompute every file checksum of ``version``; raise :class:`StoreError` on any difference."""
        name = self._resolve(version)
        path = self.version_path(name)
        _verify_files(name, path, self._read_manifest_at(name, path))

    # ----------------------------------------------------------------- load
    def load(self, spark: SparkSession, version: str | None = None, verify: bool = True) -> LoadedVersion:
        """Read a published version.

        Parameters
        ----------
        spark
            Session used to read the Parquet tables (lazily; nothing is collected).
        version
            Version name, ``None`` for the current version.
        verify
            Recompute the SHA-256 of every file and compare with the manifest
            before reading.  Costs one sequential read of the version on the
            driver.

        Raises
        ------
        StoreError
            Empty store, unknown version, missing/extra/tampered file, or an
            unreadable manifest.
        """
        name = self._resolve(version)
        path = self.version_path(name)
        manifest = self._read_manifest_at(name, path)
        if manifest.get("purged"):
            raise StoreError(
                f"version {name} of {self._root} was purged on {manifest['purged'].get('at')} (its data was deleted so that "
                "erased data does not survive in the history); only its manifest and forgotten ids remain"
            )
        if verify:
            _verify_files(name, path, manifest)
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
        model = FactorModel(
            user_factors=_read_factors(spark, os.path.join(path, USER_FACTORS)),
            item_factors=_read_factors(spark, os.path.join(path, ITEM_FACTORS)),
            params=params,
            model_params=spark_model_params(read_spark_metadata(path)),
        )
        contents = manifest.get("contents", {})
        offsets = None
        if contents.get("offsets"):
            # Read as written: the columns are those of OFFSETS_SCHEMA at publish time.
            offsets = (
                with_drift(spark.read.parquet(_uri(os.path.join(path, USER_OFFSETS)))),
                with_drift(spark.read.parquet(_uri(os.path.join(path, ITEM_OFFSETS)))),
            )
        ratings = None
        if contents.get("ratings"):
            ratings = spark.read.parquet(_uri(os.path.join(path, RATINGS_DIR))).select(USER, ITEM, RATING)
        holdout = None
        if contents.get("holdout"):
            holdout = spark.read.parquet(_uri(os.path.join(path, HOLDOUT_DIR))).select(USER, ITEM, RATING)
        forgotten = None
        if contents.get("forgotten"):
            forgotten = spark.read.parquet(_uri(os.path.join(path, FORGOTTEN_DIR)))
        log.info("loaded model version %s from %s (rank %d)", name, path, params.rank)
        return LoadedVersion(
            version=name, path=path, model=model, manifest=manifest, offsets=offsets, ratings=ratings, holdout=holdout,
            forgotten=forgotten,
        )

    def forgotten(self, spark: SparkSession) -> DataFrame | None:
        """Every request the current model's lineage has applied (``user``, ``item``, ``kind``, ``version``).

        ``None`` if no version in the lineage was produced by a deletion batch.
        """
        parts = []
        for name, manifest in _ledger.lineage(self):
            if (manifest.get("contents") or {}).get("forgotten"):
                df = spark.read.parquet(_uri(os.path.join(self._versions_dir, name, FORGOTTEN_DIR)))
                parts.append(df.select(USER, ITEM, "kind").withColumn("version", F.lit(name)))
        if not parts:
            return None
        out = parts[0]
        for df in parts[1:]:
            out = out.unionByName(df)
        return out

    # --------------------------------------------------------------- ledger
    def reconcile(self) -> list[dict]:
        """Repair the ledger after an interrupted publish and remove abandoned staging directories.

        Every job calls this before it starts.  Returns the ledger entries it
        recovered (see :func:`spark_unlearn.store.ledger.reconcile`).
        """
        if not os.path.isdir(self._root):
            return []
        with exclusive_lock(os.path.join(self._root, LOCK_FILE)):
            recovered = _ledger.reconcile(self)
        self._remove_abandoned_staging()
        return recovered

    def ledger(self) -> list[dict]:
        """The ledger entries, oldest first (hash chain checked)."""
        return _ledger.read_ledger(self._root)

    def _remove_abandoned_staging(self) -> None:
        try:
            names = os.listdir(self._staging_dir)
        except FileNotFoundError:
            return
        for name in names:
            if name.endswith((".lock", ".lease")):
                continue
            lock = os.path.join(self._staging_dir, name + ".lock")
            if is_abandoned(lock):
                log.warning("removing %s, left by a publish that was interrupted", os.path.join(self._staging_dir, name))
                shutil.rmtree(os.path.join(self._staging_dir, name), ignore_errors=True)
                with contextlib.suppress(OSError):
                    os.remove(lock)

    # -------------------------------------------------------------- publish
    def publish(
        self,
        model: FactorModel,
        *,
        offsets: tuple[DataFrame, DataFrame] | None = None,
        ratings: DataFrame | None = None,
        holdout: DataFrame | None = None,
        manifest: dict | None = None,
        parent: str | None = None,
        forgotten: DataFrame | None = None,
        request: dict | None = None,
        expect_current: str | None | object = PARENT,
    ) -> str:
        """Write ``model`` as a new version and make it current.

        Everything is written under ``.staging/<uuid>/``, validated and
        checksummed; the directory is then renamed to ``versions/vNNNNNN`` and
        ``CURRENT`` is replaced atomically.  On any failure the staging
        directory is removed and ``CURRENT`` and existing versions are left as
        they were.

        Parameters
        ----------
        model
            Factor tables (``FACTORS_SCHEMA``) and hyperparameters.  Features
            are stored as float32 whatever their input float type.
        offsets
            Optional ``(user_offsets, item_offsets)`` with ``OFFSETS_SCHEMA``
            (all of its columns are stored, cast to its types).
        ratings
            Optional data version the model was trained on (``RATINGS_SCHEMA``),
            or a :class:`~spark_unlearn.store.derived.DerivedTable` (a parent
            version's ratings minus a deletion batch: part files without a
            deleted row are hard-linked, only the others are rewritten; the
            manifest's ``copy_on_write`` counts them).  The same for ``holdout``.
            Its fingerprint is recorded as ``data_fingerprint`` unless
            ``manifest`` already gives one.
        holdout
            Optional held-out test ratings published beside ``ratings`` (so an
            unlearning job can measure utility and remove deleted pairs there too).
        manifest
            Extra JSON-serialisable keys for ``manifest.json`` (e.g.
            ``"training"``, ``"unlearning"``, ``"certificate"``,
            ``"data_fingerprint"``).  May not replace the keys the store fills.
        parent
            Version this one was derived from (must exist in this store).
        forgotten
            Optional ``user``, ``item``, ``kind`` table of what the deletion
            batch behind this version removed (ids only), so later batches can
            be told which of their requests were already forgotten.
        request
            Optional deletion-batch record (:func:`spark_unlearn.store.ledger.request_record`).
            It goes into the manifest (``"request"``) and, once the version is
            current, into the ledger; the two are written under the store lock.
        expect_current
            Compare-and-swap: the version ``CURRENT`` must still name when the
            new one is committed (``None``: the store must be empty).  The
            default, :data:`PARENT`, expects ``parent`` when one is given and
            anything when not (a training run starts a new lineage).
            :data:`ANY_CURRENT` never checks.

        Returns
        -------
        str
            The new version's name.

        Raises
        ------
        StoreMovedError
            ``CURRENT`` no longer names ``expect_current``: another publisher
            committed first.  Nothing was published; the caller re-applies
            its request on the new current version (``rebase``).
        """
        extra = _check_extra_manifest(manifest)
        if expect_current is PARENT:
            expect_current = parent if parent is not None else ANY_CURRENT
        if parent is not None:
            self.version_path(parent)
        params = model.params
        user_f = _canon_to_schema(model.user_factors, FACTORS_SCHEMA, "user_factors")
        item_f = _canon_to_schema(model.item_factors, FACTORS_SCHEMA, "item_factors")
        offs = None
        if offsets is not None:
            if not (isinstance(offsets, tuple) and len(offsets) == 2):
                raise SchemaError("offsets must be a tuple (user_offsets, item_offsets) of DataFrames")
            offs = (
                _canon_to_schema(with_drift(offsets[0]), OFFSETS_SCHEMA, "user offsets"),
                _canon_to_schema(with_drift(offsets[1]), OFFSETS_SCHEMA, "item offsets"),
            )
        rats, hold = (
            t if t is None or isinstance(t, DerivedTable) else _canon_to_schema(t, RATINGS_SCHEMA, what)
            for t, what in ((ratings, "ratings"), (holdout, "holdout"))
        )
        gone = forgotten.select(USER, ITEM, "kind") if forgotten is not None else None
        spark = model.user_factors.sparkSession

        os.makedirs(self._staging_dir, exist_ok=True)
        os.makedirs(self._versions_dir, exist_ok=True)
        staging = os.path.join(self._staging_dir, uuid.uuid4().hex)
        with held_lock(staging + ".lock"):
            os.mkdir(staging)
            return self._publish_staged(
                staging, spark, params, model_params_of(model), user_f, item_f, offs, rats, hold, gone, extra, parent,
                request, expect_current,
            )

    def _publish_staged(self, staging, spark, params, model_params, user_f, item_f, offs, rats, hold, gone, extra, parent,
                        request, expect_current) -> str:
        log.info("publishing to %s (staging %s)", self._root, staging)
        try:
            _write_spark_metadata(
                os.path.join(staging, METADATA_DIR),
                spark_als_metadata(params, spark_version=spark.version, model_params=model_params),
            )
            # The factor tables are validated by scanning what was written
            # (cheap Parquet reads, both tables in one job) rather than the
            # input, whose lineage may be expensive to recompute.
            counts: dict[str, int] = {}
            _write_parquet(user_f, os.path.join(staging, USER_FACTORS))
            _write_parquet(item_f, os.path.join(staging, ITEM_FACTORS))
            written = {"user": os.path.join(staging, USER_FACTORS), "item": os.path.join(staging, ITEM_FACTORS)}
            checked = _check_written_factors(spark, written, params.rank)
            counts["n_users"], counts["n_items"] = checked["user"], checked["item"]
            failpoint("after_factors_written")
            if offs is not None:
                _write_parquet(offs[0], os.path.join(staging, USER_OFFSETS))
                _write_parquet(offs[1], os.path.join(staging, ITEM_OFFSETS))
            fingerprint = extra.pop("data_fingerprint", None)
            linked: dict[str, dict[str, int]] = {}
            touched = _touched_together(spark, rats, hold)
            if rats is not None:
                linked.update(_write_table(spark, rats, staging, RATINGS_DIR, touched))
                written_fp, counts["n_ratings"] = _fingerprint_and_count(
                    spark.read.parquet(_uri(os.path.join(staging, RATINGS_DIR)))
                )
                if fingerprint is None:
                    fingerprint = written_fp
            if hold is not None:
                linked.update(_write_table(spark, hold, staging, HOLDOUT_DIR, touched))
            if gone is not None:
                _write_parquet(gone.coalesce(1), os.path.join(staging, FORGOTTEN_DIR))
            failpoint("after_ratings_written")

            files = {rel: sha256_file(os.path.join(staging, rel), fsync=True) for rel in list_files(staging)}
            body: dict[str, Any] = {
                "format_version": FORMAT_VERSION,
                "version": None,  # set under the lock
                "parent": parent,
                "created_at": datetime.now(timezone.utc).isoformat(),
                "params": params.to_dict(),
                "rank": params.rank,
                "conventions": dict(CONVENTIONS),
                "counts": counts,
                "data_fingerprint": fingerprint,
                "contents": {
                    "offsets": offs is not None,
                    "ratings": rats is not None,
                    "holdout": hold is not None,
                    "forgotten": gone is not None,
                },
                "spark_version": spark.version,
            }
            if linked:
                body["copy_on_write"] = linked
            body.update(extra)
            if request is not None:
                body[_ledger.REQUEST_KEY] = request
            body["files"] = files

            with exclusive_lock(os.path.join(self._root, LOCK_FILE)):
                failpoint("before_commit_check")
                now = self.current()
                if expect_current is not ANY_CURRENT and now != expect_current:
                    raise StoreMovedError(
                        f"model store {self._root} moved on while this version was computed: CURRENT is {now!r}, "
                        f"the work was based on {expect_current!r}; nothing was published (re-apply the request on "
                        f"{now!r}, or resubmit it)",
                        current=now, expected=expect_current,
                    )
                name = self._next_version_name()
                body["version"] = name
                write_text_durable(
                    os.path.join(staging, MANIFEST_FILE), json.dumps(body, indent=2, allow_nan=False) + "\n"
                )
                fsync_dir(staging)
                final = os.path.join(self._versions_dir, name)
                if os.path.lexists(final):
                    raise StoreError(f"{final} already exists although the store lock is held; refusing to overwrite")
                os.rename(staging, final)
                fsync_dir(self._versions_dir)
                failpoint("after_version_renamed")
                try:
                    atomic_write_text(os.path.join(self._root, CURRENT_FILE), name + "\n")
                except BaseException:
                    # CURRENT still names the old version: take the new one back
                    # out of versions/ so a failed publish leaves no trace.
                    try:
                        os.rename(final, staging)
                    except OSError:
                        shutil.rmtree(final, ignore_errors=True)
                    raise
                failpoint("after_current_switched")
                if request is not None:
                    # CURRENT has moved: from here on the version is published
                    # whatever happens; a crash before this line is repaired
                    # by reconcile() from the manifest written above.
                    try:
                        _ledger.append_entry(self._root, _ledger.ledger_entry(body))
                    except Exception:
                        log.exception("%s is published but its ledger entry could not be appended; the next job's "
                                      "reconcile() recovers it from the manifest", name)
        except BaseException:
            log.warning("publish to %s failed; removing staging directory %s", self._root, staging)
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.info("published %s to %s (%d users, %d items)", name, self._root, counts["n_users"], counts["n_items"])
        return name

    def purge(self, keep: int = 1) -> dict[str, list[str]]:
        """Delete the data of old versions, so that erased data does not survive in the store's history.

        Keeps the ``keep`` newest versions of the current lineage whole
        (``CURRENT`` included, ``keep >= 1``).  Older lineage versions lose
        every table (factors, offsets, ratings, holdout, metadata) but keep
        ``manifest.json`` (marked ``purged``) and ``forgotten/`` (ids only), so
        the ledger, idempotency checks and audits still work.  Versions
        outside the lineage (left by a job killed after writing them, or
        rolled back) are removed entirely.  Runs under the store lock.

        Returns ``{"purged": [...], "removed": [...]}``.
        """
        if keep < 1:
            raise ConfigError(f"keep={keep}: at least the current version must be kept (keep >= 1)")
        out: dict[str, list[str]] = {"purged": [], "removed": []}
        if self.current() is None:
            return out
        with exclusive_lock(os.path.join(self._root, LOCK_FILE)):
            chain = [v for v, _ in _ledger.lineage(self)]
            for name in self.versions():
                path = os.path.join(self._versions_dir, name)
                if name not in chain:
                    shutil.rmtree(path)
                    out["removed"].append(name)
                    continue
                if name in chain[:keep]:
                    continue
                manifest = self._read_manifest_at(name, path)
                if manifest.get("purged"):
                    continue
                for entry in sorted(os.listdir(path)):
                    if entry in (MANIFEST_FILE, FORGOTTEN_DIR):
                        continue
                    full = os.path.join(path, entry)
                    shutil.rmtree(full) if os.path.isdir(full) else os.remove(full)
                manifest["files"] = {k: v for k, v in manifest.get("files", {}).items() if k.startswith(FORGOTTEN_DIR + "/")}
                manifest["purged"] = {"at": datetime.now(timezone.utc).isoformat(), "kept": [FORGOTTEN_DIR, MANIFEST_FILE]}
                atomic_write_text(os.path.join(path, MANIFEST_FILE), json.dumps(manifest, indent=2, allow_nan=False) + "\n")
                out["purged"].append(name)
        log.info("purge of %s: data of %d version(s) deleted, %d version(s) outside the lineage removed",
                 self._root, len(out["purged"]), len(out["removed"]))
        return out

    def set_current(self, version: str) -> None:
        """Point ``CURRENT`` at an existing, complete ``version`` (e.g. to roll back)."""
        path = self.version_path(version)
        if self._read_manifest_at(version, path).get("purged"):
            raise StoreError(f"version {version} was purged (its data is gone); it cannot become current")
        with exclusive_lock(os.path.join(self._root, LOCK_FILE)):
            atomic_write_text(os.path.join(self._root, CURRENT_FILE), version + "\n")
        log.info("CURRENT of %s set to %s", self._root, version)

    # -------------------------------------------------------------- helpers
    def _resolve(self, version: str | None) -> str:
        if version is None:
            name = self.current()
            if name is None:
                available = self.versions()
                hint = (
                    f"versions available: {available}; call set_current() to choose one"
                    if available
                    else "no versions published; call publish() first"
                )
                raise StoreError(f"model store {self._root} has no current version (no {CURRENT_FILE} file); {hint}")
            return name
        if not isinstance(version, str) or not _VERSION_RE.match(version):
            raise StoreError(
                f"{version!r} is not a version name like 'v000001' (model store {self._root}; "
                f"versions available: {self.versions() or 'none'})"
            )
        return version

    def _next_version_name(self) -> str:
        existing = self.versions()
        last = int(existing[-1][1:]) if existing else 0
        return f"v{last + 1:06d}"

    @staticmethod
    def _read_manifest_at(name: str, path: str) -> dict:
        mpath = os.path.join(path, MANIFEST_FILE)
        try:
            with open(mpath, encoding="utf-8") as fh:
                manifest = json.load(fh)
        except FileNotFoundError as exc:
            raise StoreError(f"version {name} at {path} has no {MANIFEST_FILE}: it is incomplete") from exc
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read {mpath}: {exc}") from exc
        if not isinstance(manifest, dict):
            raise StoreError(f"{mpath} does not hold a JSON object")
        if manifest.get("version") != name:
            raise StoreError(f"{mpath} says version {manifest.get('version')!r} but sits in directory {name!r}")
        return manifest


# ---------------------------------------------------------------------------
# Spark ALSModel compatibility
# ---------------------------------------------------------------------------


def spark_als_metadata(params: ALSParams, *, spark_version: str, uid: str | None = None,
                       model_params: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metadata JSON Spark's ``ALSModel`` writer produces, for ``params``.

    ``paramMap`` and ``defaultParamMap`` hold the model params Spark expects
    (``model_params``, e.g. a source model's ``userCol``, override Spark's
    defaults in ``paramMap``); the training hyperparameters (Spark names, from
    :meth:`ALSParams.spark_param_map`) go under :data:`SPARK_UNLEARN_PARAM_KEY`.
    """
    estimator = params.spark_param_map()
    if params.num_blocks is not None:
        estimator["numUserBlocks"] = params.num_blocks
        estimator["numItemBlocks"] = params.num_blocks
    return {
        "class": SPARK_ALS_MODEL_CLASS,
        "timestamp": int(time.time() * 1000),
        "sparkVersion": spark_version,
        "uid": uid or f"ALS_{uuid.uuid4().hex[:12]}",
        "paramMap": {**_SPARK_MODEL_PARAMS, **(model_params or {})},
        "defaultParamMap": dict(_SPARK_MODEL_PARAMS),
        "rank": params.rank,
        SPARK_UNLEARN_PARAM_KEY: estimator,
    }


def read_spark_metadata(model_dir: str) -> dict[str, Any]:
    """Parse the ``metadata/`` JSON of a Spark ML model directory.

    Raises
    ------
    StoreError
        If there is no metadata or it is not a JSON object.
    """
    meta_dir = os.path.join(model_dir, METADATA_DIR)
    if not os.path.isdir(meta_dir):
        raise StoreError(f"{model_dir} is not a saved Spark ML model: no {METADATA_DIR}/ directory")
    parts = sorted(n for n in os.listdir(meta_dir) if n.startswith("part-"))
    for part in parts:
        with open(os.path.join(meta_dir, part), encoding="utf-8") as fh:
            line = next((ln for ln in fh if ln.strip()), None)
        if line is None:
            continue
        try:
            meta = json.loads(line)
        except ValueError as exc:
            raise StoreError(f"{os.path.join(meta_dir, part)} is not JSON: {exc}") from exc
        if not isinstance(meta, dict):
            raise StoreError(f"{os.path.join(meta_dir, part)} does not hold a JSON object")
        return meta
    raise StoreError(f"{meta_dir} holds no metadata part file with content")


def load_spark_als_model(spark: SparkSession, path: str, *, params: ALSParams | None = None,
                         stated: dict[str, Any] | None = None) -> FactorModel:
    """Read a model saved by Spark's ``ALSModel.save`` (or a version of a :class:`ModelStore`).

    Spark's own ``ALSModel`` metadata records only ``rank`` and the model's
    column params; the objective (``regParam``, ``implicitPrefs``, and
    ``alpha`` for implicit feedback) is read from
    :data:`SPARK_UNLEARN_PARAM_KEY`, ``paramMap`` or ``defaultParamMap`` when
    a writer recorded it, or taken from ``stated``.  It is never guessed: a
    model whose objective is neither recorded nor stated is refused.

    Parameters
    ----------
    spark
        Session used to read the factor Parquet tables (lazily).
    path
        Model directory (plain path or ``file://`` URI).
    params
        Complete hyperparameters (overrides the metadata); its ``rank`` must
        equal the saved rank.
    stated
        Hyperparameters the caller states, under our names (``reg``,
        ``alpha``, ``implicit``, and optionally ``rank``, ``nonnegative``).
        A stated value that contradicts a recorded one is refused.

    Raises
    ------
    StoreError
        If ``path`` is not a saved ``ALSModel`` or ``params.rank`` disagrees.
    ObjectiveError
        If the objective is neither recorded nor stated, contradicts the
        record, or asks for ``nonnegative`` (not supported).
    """
    local = _local_path(path)
    if not os.path.isdir(local):
        raise StoreError(f"{local} does not exist or is not a directory; expected a saved Spark ALSModel")
    meta = read_spark_metadata(local)
    cls = meta.get("class")
    if cls != SPARK_ALS_MODEL_CLASS:
        raise StoreError(f"{local} holds a {cls!r}, not a {SPARK_ALS_MODEL_CLASS}")
    rank = meta.get("rank")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise StoreError(f"{local}/{METADATA_DIR} has no valid top-level 'rank' (got {rank!r})")
    for sub in (USER_FACTORS, ITEM_FACTORS):
        if not os.path.isdir(os.path.join(local, sub)):
            raise StoreError(f"{local} is an incomplete ALSModel: no {sub}/ directory")
    if params is None:
        params = _params_from_spark_metadata(meta, rank, local, stated or {})
    elif params.rank != rank:
        raise StoreError(f"params.rank={params.rank} but the model saved at {local} has rank {rank}")
    return FactorModel(
        user_factors=_read_factors(spark, os.path.join(local, USER_FACTORS)),
        item_factors=_read_factors(spark, os.path.join(local, ITEM_FACTORS)),
        params=params,
        model_params=spark_model_params(meta),
    )


def spark_model_params(meta: dict[str, Any]) -> dict[str, Any]:
    """The model's own params (``userCol``, ``itemCol``, ...) a Spark ALSModel metadata records (set over default)."""
    found = {}
    for key in ("defaultParamMap", "paramMap"):
        if isinstance(meta.get(key), dict):
            found.update(meta[key])
    return {k: found[k] for k in _SPARK_MODEL_PARAMS if k in found}


def model_params_of(model: FactorModel) -> dict[str, Any] | None:
    """``model.model_params`` (``None`` for models built before the field existed)."""
    return getattr(model, "model_params", None)


_SPARK_TO_OURS = {
    "regParam": "reg",
    "alpha": "alpha",
    "implicitPrefs": "implicit",
    "maxIter": "iterations",
    "seed": "seed",
    "checkpointInterval": "checkpoint_interval",
    "numUserBlocks": "num_blocks",
}

OBJECTIVE_FLAGS = "--implicit or --explicit (Spark's --implicitPrefs), --reg (--regParam) and, for implicit feedback, --alpha"
"""How the jobs let a person state a model's objective (named in every refusal)."""


def _params_from_spark_metadata(meta: dict[str, Any], rank: int, where: str, stated: dict[str, Any]) -> ALSParams:
    from spark_unlearn.errors import ObjectiveError

    if stated.get("nonnegative"):
        raise ObjectiveError(
            f"{where}: nonnegative ALS (Spark's nonnegative=True) is not supported yet: its row solves are "
            "non-negative least squares, which the unlearning solver and certificate do not implement; "
            "retrain with nonnegative=False to unlearn it"
        )
    sources = [meta.get(SPARK_UNLEARN_PARAM_KEY), meta.get("paramMap"), meta.get("defaultParamMap")]
    sources = [s for s in sources if isinstance(s, dict)]
    recorded: dict[str, Any] = {}
    for spark_name, ours in _SPARK_TO_OURS.items():
        found = next((s[spark_name] for s in sources if spark_name in s), None)
        if found is not None:
            recorded[ours] = found
    if "rank" in stated and stated["rank"] != rank:
        raise ObjectiveError(f"{where} has rank {rank}, but rank {stated['rank']} was stated")
    clash = {k: (v, recorded[k]) for k, v in stated.items() if k in recorded and recorded[k] != v}
    if clash:
        detail = ", ".join(f"{k}: stated {v!r}, recorded {r!r}" for k, (v, r) in sorted(clash.items()))
        raise ObjectiveError(f"{where} records other hyperparameters than were stated ({detail}); drop or fix the flags")
    values: dict[str, Any] = {"rank": rank, **recorded,
                              **{k: v for k, v in stated.items() if k in ("reg", "alpha", "implicit")}}
    needed = ["implicit", "reg"] + (["alpha"] if values.get("implicit") else [])
    missing = [k for k in needed if k not in values]
    if missing:
        raise ObjectiveError(
            f"{where} is a Spark MLlib ALSModel, whose saved metadata does not record {missing} "
            "(Spark keeps regParam, alpha and implicitPrefs on the estimator, not the model). Unlearning must "
            f"re-solve rows of the objective the model was trained with, so state it: {OBJECTIVE_FLAGS}, with the "
            "values given to ALS(...) at training"
        )
    try:
        return ALSParams.from_dict(values)
    except ConfigError as exc:
        raise StoreError(f"{where}: metadata hyperparameters are invalid: {exc}") from exc


# ---------------------------------------------------------------------------
# Fingerprint
# ---------------------------------------------------------------------------

_FP_SALT = "spark_unlearn.fingerprint.v1"


def fingerprint_ratings(ratings: DataFrame) -> str:
    """Order-independent fingerprint of a ratings table, computed in one Spark aggregation.

    Each row ``(user int, item int, rating float)`` is hashed with two
    independent ``xxhash64`` functions.  The fingerprint combines the row
    count, the exact sums of the 32-bit halves of both hashes (sums, unlike
    xor, see duplicated rows) and the xor of the first hash; all are
    invariant to row order and partitioning.

    Parameters
    ----------
    ratings
        DataFrame with ``user``, ``item``, ``rating`` columns; cast to
        ``RATINGS_SCHEMA`` types first so the same data always hashes the same.

    Returns
    -------
    str
        64 hex characters.
    """
    return _fingerprint_and_count(ratings)[0]


def _fingerprint_and_count(ratings: DataFrame) -> tuple[str, int]:
    missing = [c for c in (USER, ITEM, RATING) if c not in ratings.columns]
    if missing:
        raise SchemaError(f"ratings lack column(s) {missing}; have {ratings.columns}")
    canon = ratings.select(
        F.col(USER).cast("int").alias(USER),
        F.col(ITEM).cast("int").alias(ITEM),
        F.col(RATING).cast("float").alias(RATING),
    )
    hashed = canon.select(
        F.xxhash64(USER, ITEM, RATING).alias("h1"),
        F.xxhash64(F.lit(_FP_SALT), USER, ITEM, RATING).alias("h2"),
    )
    low32 = F.lit(0xFFFFFFFF)

    def _halves(col: str) -> list:
        # decimal sums cannot overflow (ANSI mode would raise on a long overflow)
        return [
            F.sum(F.col(col).bitwiseAND(low32).cast("decimal(20,0)")),
            F.sum(F.shiftrightunsigned(col, 32).cast("decimal(20,0)")),
        ]

    row = hashed.agg(F.count(F.lit(1)), *_halves("h1"), *_halves("h2"), F.bit_xor("h1")).first()
    values = [int(v) if v is not None else 0 for v in row]
    token = "ratings-fp-v1:" + ":".join(f"{v & ((1 << 128) - 1):x}" for v in values)
    return hashlib.sha256(token.encode("ascii")).hexdigest(), values[0]


# ---------------------------------------------------------------------------
# Internal helpers (module-level so tests can inject failures)
# ---------------------------------------------------------------------------


def _local_path(path: str) -> str:
    if path.startswith("file://"):
        path = path[len("file://") :]
    elif path.startswith("file:"):
        path = path[len("file:") :]
    elif re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", path):
        raise OutputPathError(f"{path!r}: the model store needs a local or NFS filesystem path, not a remote URI")
    return os.path.abspath(path)


def _uri(path: str) -> str:
    # Explicit file:// so a cluster whose default filesystem is HDFS still uses the local/NFS path.
    return "file://" + os.path.abspath(path)


def _write_table(spark: SparkSession, table, staging: str, rel: str, touched: dict[str, set[str]] | None = None
                 ) -> dict[str, dict[str, int]]:
    """Write a data table: a DataFrame in full, or a :class:`DerivedTable` copy-on-write (returns its file counts).

    ``touched``: :func:`_touched_together`'s scan, when it covered this table.
    """
    if isinstance(table, DerivedTable):
        hit = (touched or {}).get(table.parent_dir)
        return {rel: write_derived(spark, table, os.path.join(staging, rel), touched=hit)}
    _write_parquet(table, os.path.join(staging, rel))
    return {}


def _touched_together(spark: SparkSession, *tables) -> dict[str, set[str]] | None:
    """The touched part files of derived tables that share a deletion batch, found in one scan (else ``None``)."""
    derived = [t for t in tables if isinstance(t, DerivedTable)]
    if len(derived) < 2 or any(t.batch is not derived[0].batch for t in derived):
        return None
    return touched_files(spark, [t.parent_dir for t in derived], derived[0].batch)


def _write_parquet(df: DataFrame, path: str) -> None:
    df.write.mode("error").parquet(_uri(path))


def _write_spark_metadata(meta_dir: str, meta: dict[str, Any]) -> None:
    # Spark's writer emits one compact JSON line in a part file plus _SUCCESS.
    os.makedirs(meta_dir)
    write_text_durable(os.path.join(meta_dir, "part-00000"), json.dumps(meta, separators=(",", ":")) + "\n")
    write_text_durable(os.path.join(meta_dir, "_SUCCESS"), "")


def _read_factors(spark: SparkSession, path: str) -> DataFrame:
    return spark.read.parquet(_uri(path)).select("id", "features")


def _canon_to_schema(df: DataFrame, schema: StructType, what: str) -> DataFrame:
    """Select and cast ``df``'s columns to ``schema`` (one of the shared schemas).

    Ids must already be 32-bit (or narrower) integers: a silent long-to-int
    cast could wrap.  Float columns and arrays may be float or double and are
    cast to the schema's width (factors are stored as float32).
    """
    out = []
    for field in schema.fields:
        if field.name not in df.columns:
            raise SchemaError(f"{what} lacks column {field.name!r}; expected {schema.fieldNames()}, have {df.columns}")
        have = df.schema[field.name].dataType
        want = field.dataType
        if isinstance(want, IntegerType):
            ok = isinstance(have, (IntegerType, ShortType, ByteType))
        elif isinstance(want, ArrayType):
            ok = isinstance(have, ArrayType) and isinstance(have.elementType, (FloatType, DoubleType))
        else:
            ok = isinstance(have, NumericType)
        if not ok:
            raise SchemaError(
                f"{what}.{field.name} must be {want.simpleString()} (ids are int32), "
                f"got {have.simpleString()}; cast it first"
            )
        if isinstance(want, ArrayType):
            # Element nullability follows the input: Spark refuses to cast it away.
            want = ArrayType(want.elementType, have.containsNull)
        out.append(F.col(field.name).cast(want).alias(field.name))
    return df.select(*out)


def _check_written_factors(spark: SparkSession, paths: dict[str, str], rank: int) -> dict[str, int]:
    """Validate written factor tables (``side -> path``) in one scan of them all; return each side's row count."""
    bad_value = F.exists("features", lambda x: x.isNull() | F.isnan(x) | (F.abs(x) == F.lit(float("inf"))))
    tables = [spark.read.parquet(_uri(path)).select(F.lit(side).alias("side"), "id", "features") for side, path in paths.items()]
    union = functools.reduce(DataFrame.unionByName, tables)
    rows = {
        r["side"]: r
        for r in union.groupBy("side").agg(
            F.count(F.lit(1)).alias("n"),
            F.countDistinct("id").alias("distinct"),
            F.sum(F.when(F.col("id").isNull(), 1).otherwise(0)).alias("null_ids"),
            F.sum(F.when(F.col("features").isNull() | (F.size("features") != rank), 1).otherwise(0)).alias("bad_len"),
            F.sum(F.when(bad_value, 1).otherwise(0)).alias("non_finite"),
        ).collect()
    }
    counts = {}
    for side in paths:  # in the caller's order: the first side's problem is reported first
        row = rows.get(side)
        n = int(row["n"]) if row is not None else 0
        if n == 0:
            raise EmptyInputError(f"{side} factors have no rows; refusing to publish an empty model")
        if row["null_ids"]:
            raise SchemaError(f"{row['null_ids']} {side} factor row(s) have a null id")
        if row["distinct"] != n - row["null_ids"]:
            raise SchemaError(f"{side} factors repeat ids: {n} rows but {row['distinct']} distinct ids")
        if row["bad_len"]:
            raise SchemaError(f"{row['bad_len']} {side} factor row(s) do not have {rank} features (params.rank)")
        if row["non_finite"]:
            raise StoreError(
                f"{row['non_finite']} {side} factor row(s) hold NaN, infinite or null features; refusing to publish"
            )
        counts[side] = n
    return counts


def _check_extra_manifest(manifest: dict | None) -> dict[str, Any]:
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


def _verify_files(name: str, path: str, manifest: dict) -> None:
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
    changed = [rel for rel in sorted(expected) if sha256_file(os.path.join(path, rel)) != expected[rel]]
    if changed:
        raise StoreError(
            f"version {name} at {path}: checksum mismatch (file modified or truncated) in {_short(changed)}"
        )
    log.debug("verified %d files of %s", len(expected), name)


def _short(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


__all__ = [
    "CONVENTIONS",
    "FORMAT_VERSION",
    "LoadedVersion",
    "ModelStore",
    "SPARK_ALS_MODEL_CLASS",
    "SPARK_UNLEARN_PARAM_KEY",
    "fingerprint_ratings",
    "load_spark_als_model",
    "read_spark_metadata",
    "spark_als_metadata",
]

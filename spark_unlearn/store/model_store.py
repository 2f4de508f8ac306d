"""A versioned, checksummed model store on a local or NFS filesystem path.

Layout::

    STORE/
      CURRENT                  name of the current version (replaced atomically), or, where the file system
      commits/                 has no atomic rename, commit markers: the highest names it (spark_unlearn.store.commit)
      .lock                    advisory lock serialising publishers (or .lock.lease, the lease)
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
``CURRENT`` never sees a partial version (with commit markers: written in
place under a reserved name, and current once its marker exists).  The root
is a plain path (the operating system) or a Hadoop FileSystem URI
(``file://``, ``hdfs://``: Spark's JVM), see :mod:`~spark_unlearn.store.fsutil`.

Spark's ``ALSModel`` metadata holds only the *model's* params (``userCol``,
``itemCol``, ``predictionCol``, ``coldStartStrategy``, ``blockSize``); Spark's
reader rejects any other name in ``paramMap`` (``Param regParam does not
exist``).  The training hyperparameters therefore go into an extra top-level
key, :data:`~spark_unlearn.store.spark_layout.SPARK_UNLEARN_PARAM_KEY`, which
Spark ignores, as well as into ``manifest.json``.

This module holds :class:`ModelStore` (versions, lineage, load, publish and
commit, purge) and :class:`LoadedVersion`.  The rest of the store is split by
responsibility: :mod:`~spark_unlearn.store.spark_layout` (the Spark
``ALSModel`` layout and metadata), :mod:`~spark_unlearn.store.tables` (the
Parquet tables of a version), :mod:`~spark_unlearn.store.manifest` (reading
and verifying ``manifest.json``), :mod:`~spark_unlearn.store.staging` (writing
a version before it is committed), :mod:`~spark_unlearn.store.fingerprint`
(the identity of a ratings table), :mod:`~spark_unlearn.store.ledger`,
:mod:`~spark_unlearn.store.derived` and :mod:`~spark_unlearn.store.fsutil`.
"""

from __future__ import annotations

import json
import logging
import os
from functools import partial
from datetime import datetime, timezone

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from spark_unlearn.als.model import FactorModel
from spark_unlearn.deferred import Deferred, force
from spark_unlearn.errors import ConfigError, OutputPathError, StoreError, StoreMovedError
from spark_unlearn.schema import ITEM, OFFSETS_SCHEMA, RATING, RATINGS_SCHEMA, USER, with_drift
from spark_unlearn.faults import failpoint
from spark_unlearn.store import ledger as _ledger
from spark_unlearn.store.commit import VERSION_RE, VERSIONS_DIR, commit_protocol, version_names
from spark_unlearn.store.fsutil import (
    atomic_write_text,
    exclusive_lock,
    file_uri,
    files_for,
    is_uri,
    store_root,
    write_text_durable,
)
from spark_unlearn.store.manifest import (
    MANIFEST_FILE,
    check_extra_manifest,
    loadable_params,
    read_manifest_at,
    verify_files,
)
from spark_unlearn.store.spark_layout import (
    ITEM_FACTORS,
    USER_FACTORS,
    model_params_of,
    read_spark_metadata,
    spark_model_params,
)
from spark_unlearn.store.blocked import BLOCKS_KEY, TableDelta
from spark_unlearn.store.loaded_version import LoadedVersion
from spark_unlearn.store.side_tables import ParentLayout
from spark_unlearn.store.staging import canonical_inputs, stage_version
from spark_unlearn.store.tables import (
    FORGOTTEN_DIR,
    FORGOTTEN_SCHEMA,
    HOLDOUT_DIR,
    ITEM_OFFSETS,
    RATINGS_DIR,
    USER_OFFSETS,
    read_factors,
    read_table,
)

log = logging.getLogger(__name__)

LOCK_FILE = ".lock"

PARENT = object()
"""``publish(expect_current=PARENT)``: compare-and-swap on the version's parent (the default)."""
ANY_CURRENT = object()
"""``publish(expect_current=ANY_CURRENT)``: commit whatever ``CURRENT`` names (a new lineage)."""


class ModelStore:
    """Versioned model store rooted at a local or NFS directory.

    Parameters
    ----------
    root
        Store directory: a plain local or NFS path, or a Hadoop FileSystem
        URI (``file:///...``, ``hdfs://...``), whose files then go through
        Hadoop's FileSystem in the running SparkSession's JVM
        (:mod:`spark_unlearn.store.fsutil`).  It is created on the first
        :meth:`publish`; reading a missing store reports it as empty rather
        than creating directories.

    Raises
    ------
    OutputPathError
        If ``root`` (a plain path) exists and is not a directory, or is a URI without an absolute path; the first
        operation on a URI whose scheme Spark's Hadoop has no file system for raises it too.  A file system
        without an atomic rename (an object store) commits by markers (:mod:`spark_unlearn.store.commit`).
    """

    def __init__(self, root: str) -> None:
        self._root = store_root(root)
        self._protocol = None
        if not is_uri(self._root) and os.path.exists(self._root) and not os.path.isdir(self._root):
            raise OutputPathError(f"model store root {self._root} exists and is not a directory; choose another path")

    # ------------------------------------------------------------------ paths
    @property
    def root(self) -> str:
        return self._root

    @property
    def _files(self):
        # Looked up per use: a URI's back end needs the SparkSession, which may start after the store is named.
        return files_for(self._root)

    @property
    def _commit(self):
        """The store's commit protocol (:mod:`spark_unlearn.store.commit`), fixed once the store has a version."""
        if self._protocol is None:
            protocol = commit_protocol(self._root)
            if protocol.current() is None:
                return protocol  # an empty store: decided again by its first publish
            self._protocol = protocol
        return self._protocol

    @property
    def commit_protocol(self) -> str:
        """``rename`` or ``markers``: how versions of this store become current."""
        return self._commit.name

    @property
    def _versions_dir(self) -> str:
        return os.path.join(self._root, VERSIONS_DIR)


    # --------------------------------------------------------------- queries
    def versions(self) -> list[str]:
        """Published version names, oldest first."""
        try:
            names = self._files.listdir(self._versions_dir)
        except FileNotFoundError:
            return []
        hidden = self._commit.hidden()  # commit markers: reserved names, being written or left by a dead publisher
        return version_names(n for n in names if n not in hidden)

    def current(self) -> str | None:
        """Name of the current version, or ``None`` if nothing was published yet."""
        return self._commit.current()

    def version_path(self, version: str | None = None) -> str:
        """Absolute directory of ``version`` (``None``: the current one).

        Raises
        ------
        StoreError
            If the store is empty or the version does not exist.
        """
        name = self._resolve(version)
        path = os.path.join(self._versions_dir, name)
        if not self._files.isdir(path):
            raise StoreError(
                f"version {name!r} does not exist in model store {self._root}; "
                f"versions available: {self.versions() or 'none'}"
            )
        return path

    def read_manifest(self, version: str | None = None) -> dict:
        """The parsed ``manifest.json`` of ``version`` (``None``: the current one)."""
        name = self._resolve(version)
        return read_manifest_at(name, self.version_path(name))

    def verify(self, version: str | None = None, *, cached: bool = True) -> None:
        """Recompute every file checksum of ``version``; raise :class:`StoreError` on any difference.

        ``cached=False`` reads every byte, even of files this process already hashed (an audit).
        """
        name = self._resolve(version)
        path = self.version_path(name)
        verify_files(name, path, read_manifest_at(name, path), cached=cached)

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
        manifest = read_manifest_at(name, path)
        if manifest.get("purged"):
            raise StoreError(
                f"version {name} of {self._root} was purged on {manifest['purged'].get('at')} (its data was deleted so that "
                "erased data does not survive in the history); only its manifest and forgotten ids remain"
            )
        if verify:
            verify_files(name, path, manifest)
        params = loadable_params(manifest, path)
        # A blocked version wrote every table in the shared schemas: read with them, no footer job per table.
        typed = BLOCKS_KEY in manifest
        schema = {k: v if typed else None for k, v in (("offsets", OFFSETS_SCHEMA), ("ratings", RATINGS_SCHEMA),
                                                         ("forgotten", FORGOTTEN_SCHEMA))}
        # Every table is a Deferred plan: built when first read (a request served from blocks reads none).
        model = FactorModel(
            user_factors=Deferred(partial(read_factors, spark, os.path.join(path, USER_FACTORS), typed)),
            item_factors=Deferred(partial(read_factors, spark, os.path.join(path, ITEM_FACTORS), typed)),
            params=params,
            model_params=spark_model_params(read_spark_metadata(path)),
        )
        contents = manifest.get("contents", {})
        offsets = None
        if contents.get("offsets"):
            # Read as written: the columns are those of OFFSETS_SCHEMA at publish time.
            offsets = tuple(Deferred(lambda t=t: with_drift(read_table(spark, os.path.join(path, t), schema["offsets"])))
                            for t in (USER_OFFSETS, ITEM_OFFSETS))
        ratings = None
        if contents.get("ratings"):
            ratings = Deferred(lambda: read_table(spark, os.path.join(path, RATINGS_DIR), schema["ratings"]).select(
                USER, ITEM, RATING))
        holdout = None
        if contents.get("holdout"):
            holdout = Deferred(lambda: read_table(spark, os.path.join(path, HOLDOUT_DIR), schema["ratings"]).select(
                USER, ITEM, RATING))
        forgotten = None
        if contents.get("forgotten"):
            forgotten = Deferred(partial(read_table, spark, os.path.join(path, FORGOTTEN_DIR), schema["forgotten"]))
        log.info("loaded model version %s from %s (rank %d)", name, path, params.rank)
        return LoadedVersion(
            version=name, path=path, model=model, manifest=manifest,
            offsets=None if offsets is None else Deferred(lambda: tuple(force(o) for o in offsets)), ratings=ratings,
            holdout=holdout, forgotten=forgotten, offset_plans=offsets,
        )

    def forgotten(self, spark: SparkSession) -> DataFrame | None:
        """Every request the current model's lineage has applied (``user``, ``item``, ``kind``, ``version``).

        ``None`` if no version in the lineage was produced by a deletion batch.
        """
        parts = []
        for name, manifest in _ledger.lineage(self):
            if (manifest.get("contents") or {}).get("forgotten"):
                df = spark.read.parquet(file_uri(os.path.join(self._versions_dir, name, FORGOTTEN_DIR)))
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
        if not self._files.isdir(self._root):
            return []
        with exclusive_lock(os.path.join(self._root, LOCK_FILE)):
            recovered = _ledger.reconcile(self)
        self._commit.abandoned()
        return recovered

    def ledger(self) -> list[dict]:
        """The ledger entries, oldest first (hash chain checked)."""
        return _ledger.read_ledger(self._root)

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
        deltas: dict[str, TableDelta] | None = None,
    ) -> str:
        """Write ``model`` as a new version and make it current.

        Everything is written under ``.staging/<uuid>/``, validated and
        checksummed; the directory is then renamed to ``versions/vNNNNNN`` and
        ``CURRENT`` is replaced atomically (with commit markers: written in
        place under a reserved ``versions/vNNNNNN``, then committed by the next
        marker; :mod:`spark_unlearn.store.commit`).  On any failure what was
        written is removed and ``CURRENT`` and existing versions are left as
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
            ``manifest`` already gives one; given with ``data_fingerprint_state``
            (the sums behind it), the written table is not scanned: the caller
            vouches for both (the verifier recomputes them from the files).
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
        deltas
            Per table (``userFactors``, ``itemFactors``, ``offsets/users``,
            ``offsets/items``), what the model changed from ``parent``
            (:class:`~spark_unlearn.store.blocked.TableDelta`): those tables
            are written copy-on-write from the parent's blocks (only the files
            of touched blocks are written, the rest hard-linked).  The caller
            vouches that the delta is exactly the difference between the
            parent's table and the new one.

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
        extra = check_extra_manifest(manifest)
        if expect_current is PARENT:
            expect_current = parent if parent is not None else ANY_CURRENT
        layout = None
        if parent is not None:
            layout = ParentLayout.of(self.version_path(parent), self.read_manifest(parent))
        params = model.params
        user_f, item_f, offs, rats, hold, gone = canonical_inputs(model, offsets, ratings, holdout, forgotten)
        # Not the factor table's session: reading a deferred table builds a plan copy-on-write never uses.
        spark = SparkSession.getActiveSession() or force(user_f).sparkSession

        commit = self._commit
        with commit.workspace() as (staging, reserved):
            return self._publish_staged(
                commit, staging, reserved, spark, params, model_params_of(model), user_f, item_f, offs, rats, hold,
                gone, extra, parent, request, expect_current, layout, deltas,
            )

    def _publish_staged(self, commit, staging, reserved, spark, params, model_params, user_f, item_f, offs, rats,
                        hold, gone, extra, parent, request, expect_current, layout=None, deltas=None) -> str:
        log.info("publishing to %s (writing %s, commit by %s)", self._root, staging, commit.name)
        try:
            body = stage_version(
                staging, spark, params, model_params, user_f, item_f, offs, rats, hold, gone, extra, parent, request,
                layout, deltas,
            )
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
                name = reserved or self._next_version_name()
                body["version"] = name
                write_text_durable(
                    os.path.join(staging, MANIFEST_FILE), json.dumps(body, indent=2, allow_nan=False) + "\n"
                )
                final = commit.place(staging, name)
                failpoint("after_version_renamed")
                # On failure CURRENT still names the old version, and the new one leaves no trace.
                commit.switch(name, placed=final, work=staging)
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
            log.warning("publish to %s failed; removing what it wrote (%s)", self._root, staging)
            raise
        counts = body["counts"]
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
                    self._files.rmtree(path)
                    out["removed"].append(name)
                    continue
                if name in chain[:keep]:
                    continue
                manifest = read_manifest_at(name, path)
                if manifest.get("purged"):
                    continue
                for entry in sorted(self._files.listdir(path)):
                    if entry in (MANIFEST_FILE, FORGOTTEN_DIR):
                        continue
                    self._files.rmtree(os.path.join(path, entry))
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
        if read_manifest_at(version, path).get("purged"):
            raise StoreError(f"version {version} was purged (its data is gone); it cannot become current")
        with exclusive_lock(os.path.join(self._root, LOCK_FILE)):
            self._commit.switch(version)
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
                raise StoreError(f"model store {self._root} has no current version (nothing committed); {hint}")
            return name
        if not isinstance(version, str) or not VERSION_RE.match(version):
            raise StoreError(
                f"{version!r} is not a version name like 'v000001' (model store {self._root}; "
                f"versions available: {self.versions() or 'none'})"
            )
        return version

    def _next_version_name(self) -> str:
        existing = self.versions()
        last = int(existing[-1][1:]) if existing else 0
        return f"v{last + 1:06d}"

__all__ = [
    "ANY_CURRENT",
    "LoadedVersion",
    "ModelStore",
    "PARENT",
]

"""Tests of the versioned model store (spark_unlearn.store.model_store)."""

from __future__ import annotations

import glob
import json
import os
import shutil

import numpy as np
import pytest
from pyspark.sql import functions as F

from spark_unlearn.als.model import FactorModel
from spark_unlearn.als.params import ALSParams
from spark_unlearn.errors import ConfigError, ObjectiveError, OutputPathError, SchemaError, StoreError, StoreMovedError
from spark_unlearn.schema import FACTORS_SCHEMA, OFFSETS_SCHEMA, RATINGS_SCHEMA
from spark_unlearn.store import blocked, model_store, tables
from spark_unlearn.store.fingerprint import fingerprint_ratings
from spark_unlearn.store.model_store import ModelStore
from spark_unlearn.store.spark_layout import SPARK_ALS_MODEL_CLASS, load_spark_als_model

RANK = 3
USERS = [0, 1, 2, 3, 7]
ITEMS = [10, 11, 12, 13, 14]
PARAMS = ALSParams(
    rank=RANK, reg=0.05, alpha=2.5, implicit=True, iterations=4, seed=7, num_blocks=2, checkpoint_interval=3
)


def _factors(ids, seed):
    rng = np.random.default_rng(seed)
    # float32 values so the round trip can be compared exactly
    mat = rng.normal(size=(len(ids), RANK)).astype(np.float32)
    return {i: [float(v) for v in row] for i, row in zip(ids, mat)}


USER_F = _factors(USERS, 1)
ITEM_F = _factors(ITEMS, 2)
RATINGS = [(0, 10, 4.0), (0, 11, 3.0), (1, 12, 5.0), (2, 10, 1.0), (3, 14, 2.5), (7, 13, 4.5)]


def _model(spark, params=PARAMS):
    uf = spark.createDataFrame([(i, f) for i, f in USER_F.items()], FACTORS_SCHEMA)
    itf = spark.createDataFrame([(i, f) for i, f in ITEM_F.items()], FACTORS_SCHEMA)
    return FactorModel(user_factors=uf, item_factors=itf, params=params)


def _offset_row(i, residual):
    # built from the schema's field names so extra columns (e.g. bnorm) are covered too
    values = {"id": i, "residual": residual, "drift": [0.125 * x for x in residual]}
    return tuple(values.get(f.name, 0.25 * i) for f in OFFSETS_SCHEMA.fields)


def _offsets(spark):
    u = spark.createDataFrame([_offset_row(i, [0.5 * i, -1.0, 1e-12]) for i in USERS], OFFSETS_SCHEMA)
    it = spark.createDataFrame([_offset_row(i, [float(i), 0.0, 2.0]) for i in ITEMS], OFFSETS_SCHEMA)
    return u, it


def _ratings(spark, rows=RATINGS):
    return spark.createDataFrame(rows, RATINGS_SCHEMA)


def _as_dict(df):
    return {r["id"]: list(r["features"]) for r in df.collect()}


def _state(root):
    """What a failed publish must not change: CURRENT, versions, staging contents."""
    cur = open(os.path.join(root, "CURRENT")).read() if os.path.exists(os.path.join(root, "CURRENT")) else None
    vdir = os.path.join(root, "versions")
    versions = sorted(os.listdir(vdir)) if os.path.isdir(vdir) else []
    files = {v: sorted(glob.glob(os.path.join(root, "versions", v, "**"), recursive=True)) for v in versions}
    return cur, versions, files


@pytest.fixture(scope="module")
def published(spark, tmp_path_factory):
    """A store with one version holding factors, offsets and ratings (blocks of 2 rows: several files per table)."""
    root = str(tmp_path_factory.mktemp("store") / "store")
    store = ModelStore(root)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(blocked, "BLOCK_ROWS", 2)
        name = store.publish(
            _model(spark),
            offsets=_offsets(spark),
            ratings=_ratings(spark),
            manifest={"training": {"job": "unit-test"}, "certificate": {"eps": 0.0}},
        )
    return root, name


@pytest.fixture
def store_copy(published, tmp_path):
    root, name = published
    dst = str(tmp_path / "copy")
    shutil.copytree(root, dst)
    return ModelStore(dst), name


# --------------------------------------------------------------------------- round trip


def test_publish_load_round_trip(spark, published):
    root, name = published
    store = ModelStore(root)
    assert name == "v000001"
    assert store.current() == name
    loaded = store.load(spark)
    assert loaded.version == name
    assert loaded.path == os.path.join(os.path.abspath(root), "versions", name)
    assert loaded.model.params == PARAMS
    assert _as_dict(loaded.model.user_factors) == USER_F
    assert _as_dict(loaded.model.item_factors) == ITEM_F
    assert loaded.model.user_factors.schema["features"].dataType.elementType.simpleString() == "float"
    assert loaded.model.user_factors.schema["id"].dataType.simpleString() == "int"

    uo, io = loaded.offsets
    assert uo.columns == OFFSETS_SCHEMA.fieldNames()
    got = {r["id"]: tuple(list(v) if isinstance(v, list) else v for v in r) for r in uo.collect()}
    assert got == {i: _offset_row(i, [0.5 * i, -1.0, 1e-12]) for i in USERS}
    assert io.count() == len(ITEMS)
    assert sorted(tuple(r) for r in loaded.ratings.collect()) == sorted(RATINGS)

    m = loaded.manifest
    assert m["format_version"] == 1 and m["version"] == name and m["parent"] is None
    assert m["created_at"].endswith("+00:00")
    assert m["params"] == PARAMS.to_dict() and m["rank"] == RANK
    assert m["conventions"]["confidence"] == "c = 1 + alpha*|r|"
    assert m["conventions"]["regularisation"] == "reg * n_ratings"
    assert m["conventions"]["factor_dtype"] == "float32" and m["conventions"]["id_dtype"] == "int32"
    assert m["counts"] == {"n_users": 5, "n_items": 5, "n_ratings": len(RATINGS)}
    assert m["data_fingerprint"] == fingerprint_ratings(_ratings(spark))
    assert m["training"] == {"job": "unit-test"} and m["certificate"] == {"eps": 0.0}
    assert "manifest.json" not in m["files"]
    assert "metadata/part-00000" in m["files"] and "metadata/_SUCCESS" in m["files"]
    assert any(p.startswith("userFactors/") and p.endswith(".parquet") for p in m["files"])
    assert any(p.startswith("offsets/users/") for p in m["files"])
    assert all(len(h) == 64 for h in m["files"].values())
    assert store.read_manifest() == m == store.read_manifest(name)


def test_spark_alsmodel_loads_version_and_predicts_dot_products(spark, published):
    from pyspark.ml.recommendation import ALSModel

    root, name = published
    vdir = ModelStore(root).version_path(name)
    meta = json.loads(open(os.path.join(vdir, "metadata", "part-00000")).read())
    assert meta["class"] == SPARK_ALS_MODEL_CLASS and meta["rank"] == RANK
    assert set(meta) >= {"timestamp", "sparkVersion", "uid", "paramMap", "defaultParamMap"}

    als = ALSModel.load(vdir)
    assert als.rank == RANK
    pairs = spark.createDataFrame([(u, i) for u in USERS for i in ITEMS] + [(99, 10)], ["user", "item"])
    got = {(r["user"], r["item"]): r["prediction"] for r in als.transform(pairs).collect()}
    for u in USERS:
        for i in ITEMS:
            want = float(np.dot(np.float32(USER_F[u]), np.float32(ITEM_F[i])))
            assert got[(u, i)] == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert np.isnan(got[(99, 10)])  # coldStartStrategy "nan"

    # Our metadata carries the hyperparameters too, so the generic reader recovers them.
    back = load_spark_als_model(spark, vdir)
    assert back.params == PARAMS
    assert _as_dict(back.user_factors) == USER_F


def test_load_model_saved_by_spark(spark, tmp_path):
    from pyspark.ml.recommendation import ALS

    df = spark.createDataFrame(
        [(0, 0, 4.0), (0, 1, 2.0), (1, 1, 3.0), (1, 2, 5.0), (2, 0, 1.0), (2, 2, 4.0), (3, 1, 1.5)],
        ["user", "item", "rating"],
    )
    fitted = ALS(rank=4, maxIter=3, seed=1).fit(df)
    path = str(tmp_path / "als")
    fitted.save(path)

    # Spark's ALSModel metadata does not record the objective: it is never guessed.
    with pytest.raises(ObjectiveError, match="--implicit or --explicit"):
        load_spark_als_model(spark, path)
    with pytest.raises(ObjectiveError, match=r"\['alpha'\]"):
        load_spark_als_model(spark, path, stated={"implicit": True, "reg": 0.1})
    with pytest.raises(ObjectiveError, match="nonnegative"):
        load_spark_als_model(spark, path, stated={"implicit": False, "reg": 0.1, "nonnegative": True})
    m = load_spark_als_model(spark, path, stated={"implicit": False, "reg": 0.05})
    assert m.rank == 4 and m.params.rank == 4
    assert (m.params.reg, m.params.implicit) == (0.05, False)
    assert m.model_params["userCol"] == "user" and m.model_params["coldStartStrategy"] == "nan"
    assert _as_dict(m.user_factors) == _as_dict(fitted.userFactors)
    assert _as_dict(m.item_factors) == _as_dict(fitted.itemFactors)
    assert len(_as_dict(m.user_factors)) == 4

    given = ALSParams(rank=4, iterations=3, seed=1)
    assert load_spark_als_model(spark, "file://" + path, params=given).params == given
    with pytest.raises(StoreError, match="rank"):
        load_spark_als_model(spark, path, params=ALSParams(rank=5))

    # Hyperparameters in paramMap (e.g. an older/extended writer) are mapped to ALSParams names.
    meta_file = glob.glob(os.path.join(path, "metadata", "part-*"))[0]
    meta = json.loads(open(meta_file).read())
    meta["paramMap"].update(
        {"regParam": 0.3, "alpha": 4.0, "implicitPrefs": True, "maxIter": 3, "seed": 1, "checkpointInterval": 2}
    )
    open(meta_file, "w").write(json.dumps(meta) + "\n")
    p = load_spark_als_model(spark, path).params
    assert p == ALSParams(rank=4, reg=0.3, alpha=4.0, implicit=True, iterations=3, seed=1, checkpoint_interval=2)
    # A statement that contradicts the record is refused, one that agrees is accepted.
    with pytest.raises(ObjectiveError, match="reg: stated 0.1, recorded 0.3"):
        load_spark_als_model(spark, path, stated={"reg": 0.1})
    assert load_spark_als_model(spark, path, stated={"reg": 0.3, "implicit": True}).params == p


def test_load_spark_als_model_rejects_non_models(spark, tmp_path):
    with pytest.raises(StoreError, match="does not exist"):
        load_spark_als_model(spark, str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="no metadata"):
        load_spark_als_model(spark, str(tmp_path / "empty"))
    other = tmp_path / "other"
    (other / "metadata").mkdir(parents=True)
    (other / "metadata" / "part-00000").write_text(json.dumps({"class": "org.apache.spark.ml.feature.PCAModel"}) + "\n")
    with pytest.raises(StoreError, match="PCAModel"):
        load_spark_als_model(spark, str(other))
    (other / "metadata" / "part-00000").write_text(json.dumps({"class": SPARK_ALS_MODEL_CLASS, "rank": 2}) + "\n")
    with pytest.raises(StoreError, match="userFactors"):
        load_spark_als_model(spark, str(other))
    (other / "metadata" / "part-00000").write_text("{not json\n")
    with pytest.raises(StoreError, match="not JSON"):
        load_spark_als_model(spark, str(other))


# --------------------------------------------------------------------------- versions


def test_versions_current_parent_and_rollback(spark, tmp_path):
    root = str(tmp_path / "s")
    store = ModelStore(root)
    model = _model(spark, ALSParams(rank=RANK))
    v1 = store.publish(model, manifest={"data_fingerprint": "abc"})
    first = store.load(spark)
    assert first.offsets is None and first.ratings is None
    assert first.manifest["counts"] == {"n_users": 5, "n_items": 5}
    assert first.manifest["data_fingerprint"] == "abc"
    assert _as_dict(first.model.item_factors) == ITEM_F
    v2 = store.publish(model, parent=v1, manifest={"unlearning": {"removed": 3}})
    assert (v1, v2) == ("v000001", "v000002")
    assert store.versions() == ["v000001", "v000002"]
    assert store.current() == "v000002"
    assert open(os.path.join(root, "CURRENT")).read().strip() == "v000002"
    assert store.read_manifest()["parent"] == "v000001"
    assert store.read_manifest()["unlearning"] == {"removed": 3}
    assert store.load(spark, "v000001").version == "v000001"

    store.set_current("v000001")
    assert store.current() == "v000001"
    # numbering continues after the highest version, not after CURRENT
    assert store.publish(model) == "v000003"
    assert store.current() == "v000003"
    assert os.listdir(os.path.join(root, ".staging")) == []
    # Compare-and-swap: a version derived from v000001 may not replace v000003, which does not derive from it.
    with pytest.raises(StoreMovedError, match="CURRENT is 'v000003'.*based on 'v000001'") as moved:
        store.publish(model, parent="v000001")
    assert (moved.value.current, moved.value.expected) == ("v000003", "v000001")
    assert store.current() == "v000003" and store.versions() == ["v000001", "v000002", "v000003"]
    assert os.listdir(os.path.join(root, ".staging")) == []
    with pytest.raises(StoreMovedError, match="CURRENT is 'v000003'"):
        store.publish(model, expect_current=None)  # "the store must be empty"

    with pytest.raises(StoreError, match="v000009.*does not exist.*v000001"):
        store.publish(model, parent="v000009")
    with pytest.raises(StoreError, match="v000042"):
        store.load(spark, "v000042")
    with pytest.raises(StoreError, match="not a version name"):
        store.version_path("../etc")
    with pytest.raises(ConfigError, match="version"):
        store.publish(model, manifest={"version": "mine"})
    with pytest.raises(ConfigError, match="JSON"):
        store.publish(model, manifest={"x": float("nan")})
    assert store.versions() == ["v000001", "v000002", "v000003"]


def test_empty_store_and_bad_root(spark, tmp_path):
    root = str(tmp_path / "never")
    store = ModelStore(root)
    assert store.current() is None and store.versions() == []
    assert not os.path.exists(root)  # reading does not create the store
    with pytest.raises(StoreError, match="never.*no current version"):
        store.version_path()
    with pytest.raises(StoreError, match="no current version"):
        store.load(spark)
    with pytest.raises(StoreError, match="no current version"):
        store.read_manifest()

    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(OutputPathError, match="not a directory"):
        ModelStore(str(f))
    # URIs go through Hadoop's FileSystem: a scheme without its connector on Spark's classpath is named.
    with pytest.raises(OutputPathError, match="no file system for s3a.*hadoop-aws"):
        ModelStore("s3a://bucket/store").versions()
    with pytest.raises(OutputPathError, match="absolute path"):
        ModelStore("file:relative/store")


# --------------------------------------------------------------------------- failures


def test_failed_parquet_write_leaves_store_untouched(spark, store_copy, monkeypatch):
    store, _ = store_copy
    before = _state(store.root)
    real = tables.write_parquet
    calls = []

    def flaky(df, path):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full (injected)")
        real(df, path)

    monkeypatch.setattr(tables, "write_parquet", flaky)
    with pytest.raises(OSError, match="injected"):
        store.publish(_model(spark), ratings=_ratings(spark))
    assert len(calls) == 2
    assert _state(store.root) == before
    assert os.listdir(os.path.join(store.root, ".staging")) == []
    assert store.load(spark).version == "v000001"


def test_failed_current_replace_rolls_back_version(spark, store_copy, monkeypatch):
    store, _ = store_copy
    before = _state(store.root)

    def boom(path, text):
        raise OSError("CURRENT not writable (injected)")

    from spark_unlearn.store import commit

    monkeypatch.setattr(commit, "atomic_write_text", boom)
    with pytest.raises(OSError, match="injected"):
        store.publish(_model(spark))
    assert _state(store.root) == before
    assert os.listdir(os.path.join(store.root, ".staging")) == []
    assert store.load(spark).version == "v000001"


def test_invalid_factors_are_refused(spark, tmp_path):
    store = ModelStore(str(tmp_path / "s"))
    with pytest.raises(SchemaError, match="4 features"):
        store.publish(_model(spark, ALSParams(rank=4)))
    dup = _model(spark, ALSParams(rank=RANK))
    dup.user_factors = dup.user_factors.union(dup.user_factors.limit(1))
    with pytest.raises(SchemaError, match="repeat ids"):
        store.publish(dup)
    bad = _model(spark, ALSParams(rank=RANK))
    bad.item_factors = bad.item_factors.withColumn("features", F.array(F.lit(float("nan")), F.lit(1.0), F.lit(2.0)))
    with pytest.raises(StoreError, match="NaN"):
        store.publish(bad)
    longid = _model(spark, ALSParams(rank=RANK))
    longid.user_factors = longid.user_factors.withColumn("id", F.col("id").cast("long"))
    with pytest.raises(SchemaError, match="ids are int32"):
        store.publish(longid)
    assert store.versions() == [] and store.current() is None
    assert os.listdir(os.path.join(store.root, ".staging")) == []


# --------------------------------------------------------------------------- tampering


def _a_parquet(store, name, sub="userFactors"):
    files = sorted(glob.glob(os.path.join(store.version_path(name), sub, "*.parquet")))
    assert files
    return files[-1], f"{sub}/{os.path.basename(files[-1])}"


def test_tampered_file_is_named(spark, store_copy):
    store, name = store_copy
    full, rel = _a_parquet(store, name)
    with open(full, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(StoreError, match=rel.replace(".", r"\.")):
        store.load(spark)
    with pytest.raises(StoreError, match="checksum mismatch"):
        store.verify()


def test_a_load_rehashes_a_changed_file_and_an_audit_rehashes_every_file(spark, store_copy):
    store, name = store_copy
    store.verify()  # this process now knows every file's checksum
    full, rel = _a_parquet(store, name)
    st = os.stat(full)
    with open(full, "r+b") as fh:  # same size, then the mtime put back: invisible to the identity cache
        fh.seek(st.st_size // 2)
        byte = fh.read(1)
        fh.seek(st.st_size // 2)
        fh.write(bytes([byte[0] ^ 0xFF]))
    os.utime(full, ns=(st.st_atime_ns, st.st_mtime_ns))
    store.verify()  # cached: not read again
    with pytest.raises(StoreError, match="checksum mismatch.*" + rel.replace(".", r"\.")):
        store.verify(cached=False)
    os.utime(full)  # a normal write moves the mtime: the cache reads it again
    with pytest.raises(StoreError, match="checksum mismatch"):
        store.verify()


def test_truncated_file_is_named(spark, store_copy):
    store, name = store_copy
    full, rel = _a_parquet(store, name, "ratings")
    size = os.path.getsize(full)
    with open(full, "r+b") as fh:
        fh.truncate(size - 1)
    with pytest.raises(StoreError, match=rel.replace(".", r"\.")):
        store.load(spark)


def test_missing_and_extra_files_are_named(spark, store_copy, published, tmp_path):
    store, name = store_copy
    full, rel = _a_parquet(store, name, "itemFactors")
    os.remove(full)
    with pytest.raises(StoreError, match="missing.*" + rel.replace(".", r"\.")):
        store.load(spark)
    # verify=False skips the checksum pass (the caller accepts the risk)
    assert store.load(spark, verify=False).version == name

    extra_root = str(tmp_path / "extra")
    shutil.copytree(published[0], extra_root)
    open(os.path.join(extra_root, "versions", name, "metadata", "stray.txt"), "w").close()
    with pytest.raises(StoreError, match="not in its manifest.*metadata/stray.txt"):
        ModelStore(extra_root).load(spark)


# --------------------------------------------------------------------------- fingerprint


def test_driver_row_hashes_are_sparks_xxhash64(spark):
    from spark_unlearn.store.fingerprint import _FP_SALT, row_hashes

    rng = np.random.default_rng(3)
    rows = [(int(u), int(i), float(r)) for u, i, r in zip(rng.integers(0, 2**31 - 1, 300), rng.integers(0, 2**31 - 1, 300),
                                                          rng.normal(0, 3, 300).astype(np.float32))]
    rows += [(0, 0, 0.0), (1, 2, -0.0), (2**31 - 1, 5, 1e30), (7, 8, float("nan"))]
    df = spark.createDataFrame(rows, RATINGS_SCHEMA)
    got = df.select(F.xxhash64("user", "item", "rating"), F.xxhash64(F.lit(_FP_SALT), "user", "item", "rating")).collect()
    h1, h2 = row_hashes(*(np.array([r[k] for r in rows]) for k in range(3)))
    mask = (1 << 64) - 1
    assert [g[0] & mask for g in got] == h1.tolist() and [g[1] & mask for g in got] == h2.tolist()


def test_fingerprint_without_some_rows_equals_the_fingerprint_of_what_remains(spark):
    from spark_unlearn.store.fingerprint import fingerprint_state, fingerprint_without, state_count

    rng = np.random.default_rng(4)
    rows = [(int(u), int(i), float(r)) for u, i, r in zip(rng.integers(0, 50, 400), rng.integers(0, 80, 400),
                                                          rng.integers(1, 10, 400) / 2)]
    rows = list({(u, i): (u, i, r) for u, i, r in rows}.values())
    fp, state = fingerprint_state(_ratings(spark, rows))
    assert fp == fingerprint_ratings(_ratings(spark, rows)) and state_count(state) == len(rows)
    gone = [rows[k] for k in rng.choice(len(rows), 37, replace=False)]
    left = [r for r in rows if r not in gone]
    got, got_state = fingerprint_without(state, *(np.array([r[k] for r in gone]) for k in range(3)))
    assert got == fingerprint_ratings(_ratings(spark, left)) != fp
    assert got_state == fingerprint_state(_ratings(spark, left))[1]


def test_fingerprint_order_and_partitioning_invariant(spark):
    base = _ratings(spark)
    fp = fingerprint_ratings(base)
    assert len(fp) == 64 and int(fp, 16) >= 0
    shuffled = spark.createDataFrame(list(reversed(RATINGS)), RATINGS_SCHEMA).repartition(3)
    assert fingerprint_ratings(shuffled) == fp
    assert fingerprint_ratings(base.coalesce(1).orderBy(F.desc("rating"))) == fp
    # same values as double/long columns: canonicalised before hashing
    assert fingerprint_ratings(spark.createDataFrame(RATINGS, ["user", "item", "rating"])) == fp

    changed = list(RATINGS)
    changed[2] = (1, 12, 4.5)
    assert fingerprint_ratings(_ratings(spark, changed)) != fp
    assert fingerprint_ratings(_ratings(spark, RATINGS[:-1])) != fp
    # a duplicated row changes the multiset (xor alone would cancel the pair)
    assert fingerprint_ratings(_ratings(spark, RATINGS + RATINGS[:1] * 2)) != fp
    assert fingerprint_ratings(_ratings(spark, [])) != fp
    with pytest.raises(SchemaError, match="rating"):
        fingerprint_ratings(base.drop("rating"))


def test_a_derived_data_version_links_untouched_files_and_rewrites_the_rest(spark, tmp_path, monkeypatch):
    from spark_unlearn.store.derived import DerivedTable

    monkeypatch.setattr(blocked, "BLOCK_ROWS", 2)  # 8 users in 4 blocks: several files, most without a named row

    store = ModelStore(str(tmp_path / "store"))
    rows = [(u, i, float(1 + (u + i) % 5)) for u in range(8) for i in range(10, 16)]
    ratings = _ratings(spark, rows).repartition(6, "user")  # several part files, most without a named row
    v1 = store.publish(_model(spark), ratings=ratings)
    parent = os.path.join(store.version_path(v1), "ratings")
    parts = sorted(n for n in os.listdir(parent) if n.startswith("part-"))
    batch = spark.createDataFrame([(3, None, "user"), (5, 12, "interaction"), (99, None, "user")],
                                  "user int, item int, kind string")
    v2 = store.publish(_model(spark), ratings=DerivedTable(parent, batch), parent=v1)

    child = os.path.join(store.version_path(v2), "ratings")
    got = sorted(tuple(r) for r in spark.read.parquet(child).collect())
    assert spark.read.parquet(child).columns == ["user", "item", "rating"]
    # What must remain, worked out here: user 3's six ratings and the pair (5, 12) go, user 99 has none.
    want = sorted(r for r in rows if r[0] != 3 and (r[0], r[1]) != (5, 12))
    assert len(want) == len(rows) - 6 - 1
    assert got == want
    cow = store.read_manifest(v2)["copy_on_write"]["ratings"]
    named = spark.read.parquet(parent).filter("user = 3 or (user = 5 and item = 12)")
    hit = {r[0] for r in named.select(F.input_file_name()).distinct().collect()}
    assert cow["rewritten"] == len(hit) >= 1 and cow["linked"] == len(parts) - len(hit) >= 1
    inodes = {os.stat(os.path.join(parent, p)).st_ino for p in parts}
    linked = [n for n in os.listdir(child) if n.startswith("part-") and os.stat(os.path.join(child, n)).st_ino in inodes]
    assert len(linked) == cow["linked"]
    assert store.read_manifest(v2)["counts"]["n_ratings"] == len(want)
    assert store.read_manifest(v2)["data_fingerprint"] == fingerprint_ratings(spark.createDataFrame(want, RATINGS_SCHEMA))
    store.verify(v2)
    # The parent can go: the child's links keep the bytes.
    store.purge(keep=1)
    store.verify(v2)
    assert sorted(tuple(r) for r in spark.read.parquet(child).collect()) == want

"""The bad-input catalogue, through the jobs: each case exits non-zero with a clear message and leaves the store untouched."""

from __future__ import annotations

import json
import os

import pytest

from job_helpers import run_job, tree_digest



@pytest.fixture()
def store(store_copy):
    return store_copy


def _file(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _fails(spark, job, argv, store, *patterns):
    before = tree_digest(store)
    code, out, err = run_job(spark, job, argv)
    assert code == 2, (code, err[-2000:])
    assert out == ""  # no report for a failed run
    for pattern in patterns:
        assert pattern in err, (pattern, err[-2000:])
    assert tree_digest(store) == before  # nothing written, nothing removed
    return err


# Ratings files (jobs/train.py publishing into an existing store).
RATINGS_CASES = {
    "malformed line": ("r.dat", "1::10::4.0::1\n2::11\n", ["SchemaError", "line '2::11'", "wrong number of fields", "check the delimiter"]),
    "wrong delimiter": ("r.dat", "1,10,4.0,1\n2,11,3.0,1\n", ["SchemaError", "'1,10,4.0,1'"]),
    "NaN rating": ("r.csv", "userId,movieId,rating,timestamp\n1,10,4.0,1\n2,11,NaN,1\n", ["InvalidRatingError", "NaN"]),
    "inf rating": ("r.csv", "userId,movieId,rating,timestamp\n1,10,inf,1\n", ["InvalidRatingError", "inf"]),
    "negative id": ("r.csv", "userId,movieId,rating,timestamp\n-3,10,4.0,1\n", ["InvalidIdError", "-3"]),
    "id beyond int32": ("r.csv", "userId,movieId,rating,timestamp\n3000000000,10,4.0,1\n", ["InvalidIdError", "3000000000"]),
    "string id": ("r.csv", "userId,movieId,rating,timestamp\nalice,10,4.0,1\n", ["InvalidIdError", "alice"]),
    "duplicate pair": ("r.csv", "userId,movieId,rating,timestamp\n1,10,4.0,1\n1,10,5.0,2\n", ["DuplicateRatingError", "user=1, item=10 occurs 2 times", "duplicates='last'"]),
}


@pytest.mark.parametrize("case", sorted(RATINGS_CASES))
def test_bad_ratings_file(spark, store, tmp_path, case):
    name, text, patterns = RATINGS_CASES[case]
    path = _file(tmp_path, name, text)
    _fails(spark, "train", ["--ratings", path, "--model", store, "--rank", "4", "--iterations", "2"], store, *patterns)


# Deletion batches (jobs/unlearn.py against the store).
DELETE_CASES = {
    "wrong columns": ("d.csv", "uid,sku\n1,10\n", ["SchemaError", "needs a user and/or an item column", "['uid', 'sku']"]),
    "string ids": ("d.csv", "user,item\nbob,10\n", ["InvalidIdError", "bob"]),
    "negative id": ("d.csv", "user\n-1\n", ["InvalidIdError", "-1"]),
    "malformed line": ("d.csv", "user,item\n1,10,extra\n", ["SchemaError", "wrong number of fields"]),
}


@pytest.mark.parametrize("case", sorted(DELETE_CASES))
def test_bad_deletion_file(spark, store, tmp_path, case):
    name, text, patterns = DELETE_CASES[case]
    _fails(spark, "unlearn", ["--model", store, "--delete", _file(tmp_path, name, text)], store, *patterns)


def test_batch_that_removes_everything(spark, store, tmp_path):
    from spark_unlearn.store.model_store import ModelStore

    users = sorted({r[0] for r in ModelStore(store).load(spark).ratings.select("user").distinct().collect()})
    path = _file(tmp_path, "all.csv", "user\n" + "".join(f"{u}\n" for u in users + [9_999_999]))
    _fails(spark, "unlearn", ["--model", store, "--delete", path], store, "EmptyInputError", "removes every rating")


def test_config_disagreeing_with_the_model(spark, store, tmp_path):
    cfg = _file(tmp_path, "c.toml", "[als]\nrank = 7\nimplicit = true\n")
    delete = _file(tmp_path, "d.csv", "user\n1\n")
    _fails(spark, "unlearn", ["--model", store, "--delete", delete, "--config", cfg], store,
           "ObjectiveError", "implicit: stated True, model False", "rank: stated 7, model 4")


def test_model_with_foreign_conventions(spark, store, tmp_path):
    from spark_unlearn.store.model_store import ModelStore

    path = os.path.join(ModelStore(store).version_path(), "manifest.json")
    manifest = json.load(open(path))
    manifest["conventions"]["confidence"] = "c = alpha*r"
    with open(path, "w") as fh:
        json.dump(manifest, fh)
    delete = _file(tmp_path, "d.csv", "user\n1\n")
    _fails(spark, "unlearn", ["--model", store, "--delete", delete], store, "StoreError", "['confidence']", "c = alpha*r")


@pytest.mark.parametrize("damage", ["truncate", "tamper"])
def test_damaged_model_version(spark, store, tmp_path, damage):
    from spark_unlearn.store.model_store import ModelStore

    folder = os.path.join(ModelStore(store).version_path(), "userFactors")
    part = sorted(f for f in os.listdir(folder) if f.endswith(".parquet"))[0]
    target = os.path.join(folder, part)
    data = open(target, "rb").read()
    with open(target, "wb") as fh:
        fh.write(data[: len(data) // 2] if damage == "truncate" else data[:-9] + bytes([data[-9] ^ 1]) + data[-8:])
    delete = _file(tmp_path, "d.csv", "user\n1\n")
    _fails(spark, "unlearn", ["--model", store, "--delete", delete], store, "StoreError", "userFactors/" + part)


def test_ratings_not_matching_the_model_data(spark, store, tmp_path):
    other = _file(tmp_path, "other.csv", "userId,movieId,rating,timestamp\n1,10,4.0,1\n2,11,3.0,1\n")
    delete = _file(tmp_path, "d.csv", "user\n1\n")
    _fails(spark, "unlearn", ["--model", store, "--delete", delete, "--ratings", other], store,
           "StoreError", "do not match the data version", "omit --ratings")


def test_report_path_that_is_a_directory_is_refused_before_any_work(spark, store, tmp_path):
    delete = _file(tmp_path, "d.csv", "user\n1\n")
    _fails(spark, "unlearn", ["--model", store, "--delete", delete, "--report", str(tmp_path)], store,
           "OutputPathError", "is a directory")

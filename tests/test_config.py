"""Config files: unknown keys and wrong types are errors that name the key; overrides keep the checks."""

from __future__ import annotations

import pytest

from spark_unlearn.config import defaults, load_config, override, validate
from spark_unlearn.errors import ConfigError


def test_shipped_config_is_valid_and_matches_the_defaults_it_sets(tmp_path):
    from pathlib import Path

    cfg = load_config(str(Path(__file__).resolve().parents[1] / "conf" / "local.toml"))
    assert cfg["als"]["rank"] == 10 and cfg["store"]["path"] == "out/model_store"
    assert cfg["spark"]["spark.sql.shuffle.partitions"] == "8"


@pytest.mark.parametrize(
    "raw,match",
    [
        ({"als": {"iteratons": 5}}, r"unknown key\(s\) \['iteratons'\] in \[als\]"),
        ({"alss": {}}, r"unknown section\(s\) \['alss'\]"),
        ({"als": {"rank": "ten"}}, r"\[als\] rank must be of type int, got 'ten'"),
        ({"als": {"implicit": 1}}, r"\[als\] implicit must be of type bool"),
        ({"spark": {"shuffle": "4"}}, r"start with 'spark\.'"),
        ({"ifru": {"dimm": 8}}, r"\[ifru\] unknown IFRU setting\(s\) \['dimm'\]"),
    ],
)
def test_bad_config_is_rejected_with_the_key_named(raw, match):
    with pytest.raises(ConfigError, match=match):
        validate(raw)


def test_ints_are_accepted_for_floats_and_overrides_are_checked():
    cfg = validate({"als": {"reg": 1}})
    assert cfg["als"]["reg"] == 1.0 and isinstance(cfg["als"]["reg"], float)
    assert override(cfg, "als", rank=None)["als"]["rank"] == defaults()["als"]["rank"]
    with pytest.raises(ConfigError, match="rank"):
        override(cfg, "als", rank=True)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.toml"))
    bad = tmp_path / "bad.toml"
    bad.write_text("[als\nrank = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(str(bad))

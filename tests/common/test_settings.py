"""common.settings: flags generated from a model's fields, nested models flattened, aliases, positionals, fields
kept off the command line, ``--config FILE.yaml`` under the flags, and one ConfigError line naming the flag."""

import argparse
from typing import Annotated

import pytest
from pydantic import BaseModel, ConfigDict, Field

from common.errors import ConfigError
from common.settings import CONFIG, add_settings, build, nest, parse_settings


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    keyword: str = Field("prompt", description="the key")
    boundary: str = Field("jsonl", description="the unit")
    fact: bool = Field(False, json_schema_extra={"cli": False})


class Outer(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    path: str = Field(description="input", json_schema_extra={"aliases": ["--input_file_path"]})
    splits: int | None = Field(None, ge=1, description="files")
    ratio: float = Field(0.5, lt=1, description="share")
    reserved: str | None = Field(None, alias="model_config", description="a reserved name")
    inner: Inner = Field(default_factory=Inner)


def parser(model=Outer, config=True) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    if config:
        p.add_argument(f"--{CONFIG}")
    add_settings(p, model)
    return p


def test_nested_fields_are_flags_of_their_own():
    s = parse_settings(parser(), Outer, ["--path", "x", "--keyword", "q"])
    assert s.inner.keyword == "q" and s.inner.boundary == "jsonl"


def test_fields_kept_off_the_cli_have_no_flag():
    with pytest.raises(SystemExit):
        parse_settings(parser(), Outer, ["--path", "x", "--fact"])


def test_an_alias_is_the_flag_and_extra_spellings_work():
    s = parse_settings(parser(), Outer, ["--input_file_path", "x", "--model_config", "m"])
    assert (s.path, s.reserved) == ("x", "m")


def test_types_come_from_the_annotation():
    s = parse_settings(parser(), Outer, ["--path", "x", "--splits", "3", "--ratio", "0.25"])
    assert (s.splits, s.ratio) == (3, 0.25)


def test_help_shows_description_and_default():
    text = parser().format_help()
    assert "share (default: 0.5)" in text and "the key (default: prompt)" in text


def test_a_positional_field():
    class Cmd(BaseModel):
        file: str = Field(description="a file", json_schema_extra={"positional": True})
        index: int | None = None

    assert parse_settings(parser(Cmd, config=False), Cmd, ["f.hdf5", "--index", "2"]) == Cmd(file="f.hdf5", index=2)


def test_the_config_file_is_under_the_flags(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("path: from_yaml\nsplits: 4\nkeyword: question\n")
    s = parse_settings(parser(), Outer, ["--config", str(cfg), "--splits", "8"])
    assert (s.path, s.splits, s.inner.keyword) == ("from_yaml", 8, "question")


def test_a_bad_value_names_the_flag_the_bound_and_the_value():
    with pytest.raises(ConfigError, match=r"^--splits: must be at least 1 \(got 0\)$"):
        parse_settings(parser(), Outer, ["--path", "x", "--splits", "0"])
    with pytest.raises(ConfigError, match=r"^--ratio: must be below 1"):
        build(Outer, {"path": "x", "ratio": 1.5})


def test_a_nested_error_names_the_flattened_flag():
    with pytest.raises(ConfigError, match="^--nope: Extra inputs are not permitted$"):
        build(Outer, {"path": "x", "inner": {"nope": 1}})


def test_an_unknown_key_in_the_config_names_the_file(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("path: x\ntypo: 1\n")
    with pytest.raises(ConfigError, match=f"^--config {cfg}: --typo: Extra inputs are not permitted$"):
        parse_settings(parser(), Outer, ["--config", str(cfg)])


def test_a_config_that_is_not_a_mapping(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("- path\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        parse_settings(parser(), Outer, ["--config", str(cfg)])


def test_nest_puts_flat_values_under_their_model():
    assert nest(Outer, {"path": "x", "keyword": "q"}) == {"path": "x", "inner": {"keyword": "q"}}
    assert nest(Outer, {"inner": {"keyword": "a", "boundary": "b"}, "keyword": "q"}) == {
        "inner": {"keyword": "q", "boundary": "b"}
    }
    assert nest(Outer, {"path": "x"}) == {"path": "x"}


class Lists(BaseModel):
    model_config = ConfigDict(extra="forbid")
    inputs: list[str] = Field(description="specs")
    top_p: Annotated[float, Field(gt=0, le=1)] | None = Field(None, description="nucleus")


def test_a_repeated_list_flag_adds_its_values():
    s = parse_settings(parser(Lists, config=False), Lists, ["--inputs", "a", "b", "--inputs", "c"])
    assert s.inputs == ["a", "b", "c"]


def test_an_annotated_number_is_parsed_as_one():
    p = parser(Lists, config=False)
    assert parse_settings(p, Lists, ["--inputs", "a", "--top_p", "0.5"]).top_p == 0.5
    with pytest.raises(SystemExit):  # argparse refuses a non-number before pydantic sees it
        parse_settings(p, Lists, ["--inputs", "a", "--top_p", "x"])

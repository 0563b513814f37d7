"""The method interface: registry, config building and validation, and a new method added by
one file plus its registration (``random_edit.py``)."""

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from typing import Literal

import pytest
import torch

import ace_erasure
from ace_erasure.errors import ConfigError
from ace_erasure.methods import available, build_config, get_method, register, unregister
from ace_erasure.methods.base import (
    Method,
    check_fields,
    parse_overrides,
    parse_value,
    read_config_file,
)

from .random_edit import RandomEdit, RandomEditConfig


@pytest.fixture
def random_edit():
    method = register(RandomEdit())
    yield method
    unregister(method.name)


def test_a_new_method_is_one_file_and_a_registration(random_edit, tiny_pipes, tmp_path):
    pipe = tiny_pipes("sd1")
    assert isinstance(random_edit, Method) and "random-edit" in available()
    erasure = ace_erasure.erase(pipe, ["circle"], method="random-edit", config={"rank": 2})
    assert erasure.method == "random-edit" and erasure.rank == 2
    assert all(key.endswith("attn2.to_v") for key in erasure.edits)
    assert erasure.stages[0].stats == {"world": "generic"}
    erasure.save(tmp_path / "e")
    loaded = ace_erasure.Erasure.load(tmp_path / "e")
    with ace_erasure.apply(loaded, pipe):
        pass
    same = ace_erasure.erase(pipe, ["circle"], method="random-edit", config={"rank": 2})
    assert all(torch.equal(same.delta(k), erasure.delta(k)) for k in erasure.edits)


def test_the_cli_runs_a_registered_method(random_edit, tiny_pipes, tmp_path, monkeypatch, capsys):
    from ace_erasure.cli import main

    folder = tmp_path / "model"
    tiny_pipes("sd1").save_pretrained(folder)
    out = tmp_path / "erasure"
    args = ["erase", "--model", str(folder), "--concept", "circle", "--out", str(out)]
    monkeypatch.setattr(
        sys,
        "argv",
        ["ace-erasure", *args, "--method", "random-edit", "--set", "rank=3", "--no-grid"],
    )
    main()
    record = json.loads((out / "erasure.json").read_text())
    assert record["method"] == "random-edit" and record["config"] == {"rank": 3, "scale": 0.1}


def test_registry_refuses_duplicates_and_unknown_names(random_edit):
    with pytest.raises(ConfigError, match="already registered"):
        register(RandomEdit())
    register(RandomEdit(), replace=True)
    with pytest.raises(ConfigError, match="unknown method 'nope'; available: ace"):
        get_method("nope")
    with pytest.raises(TypeError, match="Method protocol"):
        register(object())  # type: ignore[arg-type]


def test_build_config_merges_file_and_overrides(tmp_path, random_edit):
    file = tmp_path / "c.yaml"
    file.write_text("rank: 4\nscale: 0.5\n")
    config = build_config("random-edit", {"rank": 2}, file=file, overrides={"scale": 0.25})
    assert config == RandomEditConfig(rank=4, scale=0.25)
    assert build_config("random-edit", config) is config
    assert build_config("random-edit", None) == RandomEditConfig()
    for bad, message in (
        ({"rnak": 1}, "unknown random-edit option"),
        ({"rank": 0}, "rank must be >= 1"),
        ({"rank": "two"}, "rank must be int"),
        ({"scale": float("inf")}, "finite"),
    ):
        with pytest.raises(ConfigError, match=message):
            build_config("random-edit", bad)
    with pytest.raises(ConfigError, match="must be a RandomEditConfig or a dict"):
        build_config("random-edit", 3)


@pytest.mark.parametrize(
    "text,message",
    [("rank: [1, 2", "not valid YAML"), ("- 1\n- 2\n", "must hold a mapping")],
)
def test_bad_config_files(tmp_path, text, message):
    file = tmp_path / "c.yaml"
    file.write_text(text)
    with pytest.raises(ConfigError, match=message):
        read_config_file(file)
    with pytest.raises(ConfigError, match="does not exist"):
        read_config_file(tmp_path / "missing.yaml")


def test_values_and_overrides_parse_as_yaml():
    assert parse_overrides(["rank=8", "gate=head", "rank_x=null", "ratio=0.5"]) == {
        "rank": 8,
        "gate": "head",
        "rank_x": None,
        "ratio": 0.5,
    }
    assert str(parse_value("nan")) == "nan" and parse_value("-inf") == float("-inf")
    assert parse_value("3e-4") == 0.0003 and parse_value("head") == "head"  # YAML 1.1 reads text
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["rank"])


def test_check_fields_follows_the_annotations():
    @dataclass
    class Example:
        count: int = field(default=1)
        ratio: float = field(default=0.5)
        name: Literal["a", "b"] = field(default="a")
        maybe: int | None = field(default=None)
        flag: bool = field(default=False)

    check_fields(Example(ratio=2))  # an int is a float
    for kwargs, message in (
        ({"count": 1.5}, "count must be int"),
        ({"count": True}, "count must be int"),
        ({"ratio": float("nan")}, "finite"),
        ({"name": "c"}, "name must be one of 'a', 'b'"),
        ({"maybe": "x"}, "maybe must be int or null"),
        ({"flag": 1}, "flag must be bool"),
        ({"count": None}, "count must not be empty"),
    ):
        with pytest.raises(ConfigError, match=message):
            check_fields(dataclasses.replace(Example(), **kwargs))

"""The argument validators of personaspace._util.checks: what each accepts, what it refuses, and how it says so."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch

from personaspace._util import checks
from personaspace.engine.chat import Chat
from personaspace.engine.layers import check_layer, layer_index, resolve_layers
from personaspace.errors import (
    InvalidArgumentError,
    LayerOutOfRangeError,
    OutputPathError,
    PersonaspaceError,
    UnknownModelError,
)


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and isinstance(exc, PersonaspaceError)
    return text


# -- numbers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 0.0, 1, 2.5, np.float32(0.5), torch.tensor(0.7)])
def test_finite_accepts_real_numbers(value):
    assert checks.finite("temperature", value, lo=0) == pytest.approx(float(value))


@pytest.mark.parametrize(
    ("value", "bounds", "text"),
    [
        (math.nan, {}, "got nan"),
        (math.inf, {}, "got inf"),
        (-math.inf, {"lo": 0}, "finite number in [0, inf]"),
        (-1, {"lo": 0}, "got -1"),
        (0, {"lo": 0, "hi": 1, "lo_open": True}, "(0, 1]"),
        (1.5, {"lo": 0, "hi": 1, "lo_open": True}, "got 1.5"),
        (1, {"lo": 0, "hi": 1, "hi_open": True}, "[0, 1)"),
        (True, {}, "must be a number; got True (bool)"),
        ("0.5", {}, "must be a number; got '0.5' (str)"),
        (None, {}, "got None"),
    ],
)
def test_finite_refuses_with_what_was_given_and_what_is_accepted(value, bounds, text):
    with pytest.raises(InvalidArgumentError) as info:
        checks.finite("x", value, **bounds)
    assert text in one_line(info.value)
    assert isinstance(info.value, ValueError)


def test_optional_finite_and_threshold():
    assert checks.optional_finite("cap", None) is None
    assert checks.threshold("pos_threshold", 50) == 50.0
    with pytest.raises(InvalidArgumentError, match=r"\[0, 100\]"):
        checks.threshold("pos_threshold", 150)


@pytest.mark.parametrize("value", [1, 7, np.int64(3), torch.tensor(4)])
def test_positive_int_accepts_whole_numbers(value):
    assert checks.positive_int("samples", value) == int(value)


@pytest.mark.parametrize(
    ("value", "text"),
    [(0, "at least 1; got 0"), (-3, "got -3"), (2.5, "got 2.5 (float)"), (2.0, "got 2.0 (float)"), (True, "(bool)"), ("4", "(str)")],
)
def test_positive_int_refuses(value, text):
    with pytest.raises(InvalidArgumentError) as info:
        checks.positive_int("max_new_tokens", value)
    assert "max_new_tokens must be a whole number" in one_line(info.value) and text in str(info.value)


def test_integer_range_messages():
    assert checks.non_negative_int("seed", 0) == 0
    with pytest.raises(InvalidArgumentError, match="between 1 and 5; got 9"):
        checks.integer("n", 9, lo=1, hi=5)
    with pytest.raises(InvalidArgumentError, match="at most 5"):
        checks.integer("n", 9, hi=5)


def test_sampling_checks_temperature_top_p_and_tokens():
    assert checks.sampling(0.0, 1.0) == (0.0, 1.0)
    assert checks.sampling(1, 0.9, 16) == (1.0, 0.9)
    for t, p, n, text in [(math.nan, 1, None, "temperature"), (1, 0, None, "top_p"), (1, 1, 0, "max_new_tokens")]:
        with pytest.raises(InvalidArgumentError, match=text):
            checks.sampling(t, p, n)


# -- layers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [(None, [0, 1, 2, 3]), ("all", [0, 1, 2, 3]), (2, [2]), (-1, [3]), ([3, 1, 1], [1, 3]), (["2", "L3"], [2, 3]),
     ("1-2", [1, 2]), (np.int64(1), [1]), (torch.tensor([0, 2]), [0, 2]), ((x for x in [1]), [1])],
)
def test_layer_list_accepts(spec, expected):
    assert resolve_layers(spec, 4) == expected


@pytest.mark.parametrize(
    ("spec", "error", "text"),
    [
        ([1.5], InvalidArgumentError, "whole numbers; got 1.5"),
        (1.5, InvalidArgumentError, "got 1.5"),
        ([], InvalidArgumentError, "layers is empty"),
        (True, InvalidArgumentError, "got True (bool)"),
        ([True], InvalidArgumentError, "got True (bool)"),
        (["x"], InvalidArgumentError, "got 'x'"),
        ({"a": 1}, InvalidArgumentError, "got {'a': 1} (dict)"),
        ("3-1", InvalidArgumentError, "selects no layer"),
        ([99], LayerOutOfRangeError, "numbered 0 to 3"),
        ([-5], LayerOutOfRangeError, "out of range"),
    ],
)
def test_layer_list_refuses(spec, error, text):
    with pytest.raises(error) as info:
        resolve_layers(spec, 4)
    assert text in one_line(info.value)


def test_resolve_layers_no_longer_truncates_floats():
    from personaspace.engine.layers import resolve_layers

    with pytest.raises(InvalidArgumentError):
        resolve_layers([1.5], 4)  # used to become layer 1
    with pytest.raises(InvalidArgumentError):
        resolve_layers([], 4)  # used to select nothing, silently
    assert resolve_layers([1, 2], 4) == [1, 2]


def test_layer_in_range():
    assert check_layer(layer_index(-1), 4) == 3
    with pytest.raises(InvalidArgumentError):
        check_layer(layer_index(2.0), 4)
    with pytest.raises(LayerOutOfRangeError):
        check_layer(layer_index(4), 4)


# -- prompts ----------------------------------------------------------------------------------


def test_prompt_list_accepts_every_prompt_form():
    prompts = ["hi", Chat(user="q"), {"system": "s", "user": "u"}, [1, 2, 3]]
    assert checks.prompt_list(prompts) == prompts
    assert checks.prompt_list(p for p in ["a"]) == ["a"]
    assert checks.prompt_list([], allow_empty=True) == []


@pytest.mark.parametrize(
    ("prompts", "text"),
    [
        ("hi", "prompts must be a list of strings; got a str -- wrap it: ['hi']"),
        ("x" * 100, "wrap it: ['" + "x" * 27 + "...']"),
        (b"hi", "got bytes"),
        ({"user": "hi"}, "got dict"),
        (3, "got int"),
        ([], "prompts is empty"),
        (["ok", 3], "prompts[1] must be a string"),
        ([{"usr": "typo"}], "prompts[0] must be a string"),
        ([None], "got None"),
    ],
)
def test_prompt_list_refuses(prompts, text):
    with pytest.raises(InvalidArgumentError) as info:
        checks.prompt_list(prompts)
    assert text in one_line(info.value)


# -- output paths -----------------------------------------------------------------------------


def test_writable_dir_checks_without_leaving_anything(tmp_path):
    target = tmp_path / "a" / "b"
    assert checks.writable_dir(target) == target
    assert not (tmp_path / "a").exists()  # checked at the nearest existing ancestor, nothing created
    assert list(tmp_path.iterdir()) == []  # the probe file is gone
    assert checks.writable_dir(target, create=True).is_dir()
    assert checks.writable_dir(target) == target and list(target.iterdir()) == []


def test_writable_dir_refuses_a_file_in_the_way(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    with pytest.raises(OutputPathError) as info:
        checks.writable_dir(blocker)
    assert "it is a file" in one_line(info.value)
    with pytest.raises(OutputPathError, match="file in the way at .*blocker"):
        checks.writable_dir(blocker / "sub" / "dir")
    assert isinstance(info.value, OSError)
    assert blocker.read_text() == "x"


def test_writable_dir_refuses_a_place_nobody_can_write():
    with pytest.raises(OutputPathError, match="not writable") as info:
        checks.writable_dir("/proc/personaspace-test/out")
    one_line(info.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_writable_dir_refuses_a_read_only_directory(tmp_path):  # pragma: no cover - root on CI
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(OutputPathError, match="not writable"):
            checks.writable_dir(ro / "out")
    finally:
        ro.chmod(0o700)


def test_writable_file(tmp_path):
    assert checks.writable_file(tmp_path / "x.json") == tmp_path / "x.json"
    with pytest.raises(OutputPathError, match="is a directory"):
        checks.writable_file(tmp_path)
    (tmp_path / "f").write_text("")
    with pytest.raises(OutputPathError, match="file in the way"):
        checks.writable_file(tmp_path / "f" / "x.json")


# -- model directories ------------------------------------------------------------------------


def test_model_dir(tmp_path):
    good = tmp_path / "good"
    good.mkdir()
    (good / "config.json").write_text("{}")
    (good / "model.safetensors").write_bytes(b"")
    assert checks.model_dir(good) == good

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UnknownModelError) as info:
        checks.model_dir(empty)
    assert "is not a model directory: it has no config.json and weight files" in one_line(info.value)

    only_config = tmp_path / "cfg"
    only_config.mkdir()
    (only_config / "config.json").write_text("{}")
    with pytest.raises(UnknownModelError, match="it has no weight files"):
        checks.model_dir(only_config)

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(UnknownModelError, match="LoRA adapter only"):
        checks.model_dir(adapter)

    run = tmp_path / "run"
    (run / "merged").mkdir(parents=True)
    (run / "merged" / "config.json").write_text("{}")
    with pytest.raises(UnknownModelError, match="fine-tune run; use its model folder"):
        checks.model_dir(run)

    with pytest.raises(UnknownModelError, match="no model directory"):
        checks.model_dir(tmp_path / "missing")

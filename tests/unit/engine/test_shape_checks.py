"""The engine's shape hints are checked in the test suite (jaxtyping's import hook, tests/conftest.py).

A wrong rank, dtype, or dims that disagree between arguments must fail the call itself, before the body
runs -- so a shape bug anywhere in the suite surfaces as a TypeCheckError at the engine boundary.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from conftest import SHAPE_CHECKED

pytestmark = pytest.mark.skipif(
    os.environ.get("PERSONASPACE_SHAPE_CHECKS", "1") == "0", reason="shape checks switched off"
)

jaxtyping = pytest.importorskip("jaxtyping")


def _accumulator():
    from personaspace.engine.capture import CaptureAccumulator
    from personaspace.engine.context import StepContext

    acc = CaptureAccumulator([3], ["all_avg"], n_samples=2, d_model=4)
    valid = torch.tensor([[True, True, True], [False, True, True]])
    acc.begin(
        StepContext(
            positions=torch.tensor([[0, 1, 2], [0, 0, 1]]),
            prompt_len=torch.tensor([1, 1]),
            valid=valid,
            rows=torch.tensor([0, 1]),
        )
    )
    return acc, valid.reshape(-1).nonzero().squeeze(1)  # the packed positions of the real tokens


def test_shape_checked_modules_are_the_engine_ones():
    assert {"personaspace.engine.capture", "personaspace.engine.callbacks"} <= set(SHAPE_CHECKED)


def test_right_shapes_pass():
    acc, index = _accumulator()
    acc.add_packed(3, torch.ones(len(index), 4), index)
    torch.testing.assert_close(acc.result()["all_avg"][:, 0], torch.ones(2, 4))


@pytest.mark.parametrize(
    "x, index",
    [
        (torch.ones(5, 4, 1), None),  # rank: [tokens, d_model] expected
        (torch.ones(4, 4), None),  # 4 tokens of x, 5 indices: the "tokens" dims disagree
        (torch.ones(5, 4), "float"),  # dtype: index must be an integer tensor
    ],
    ids=["rank", "dims-disagree", "dtype"],
)
def test_wrong_shape_fails_the_call(x, index):
    acc, real = _accumulator()
    index = real.float() if index == "float" else real
    with pytest.raises(jaxtyping.TypeCheckError):
        acc.add_packed(3, x, index)


def test_wrong_shape_fails_in_callbacks_too():
    from personaspace.engine.callbacks import ContextSlot, LayerCallback

    fn = LayerCallback(ContextSlot(), {}, None)
    with pytest.raises(jaxtyping.TypeCheckError):
        fn.packed(0, torch.ones(3), torch.arange(3))  # x must be [tokens, d_model]


def test_package_does_not_need_jaxtyping():
    """Outside the tests the shape types are inert: the engine loads without importing jaxtyping."""
    code = "import sys, personaspace.engine.capture, personaspace.engine.callbacks; print('jaxtyping' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"

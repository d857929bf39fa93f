"""steady_heap: freed CPU memory is reused inside the block (no page faults), handed back after it.

Page faults are counted in a fresh interpreter: inside a test worker, other threads' allocations share the
heap and make the counts depend on what ran before.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from personaspace._util.memory import _glibc, steady_heap

PAGES = 8 * (12 << 20) // 4096  # what one round below faults in when nothing is reused

ROUNDS = """
import json, resource, torch
from personaspace._util.memory import steady_heap

def rounds(n, blocks=8, mib=12):  # allocate blocks x mib MiB, write, free; minor page faults of each round
    faults = []
    for _ in range(n):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        tensors = [torch.empty(mib << 18) for _ in range(blocks)]
        for t in tensors:
            t.fill_(1.0)
        del tensors
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return faults

with steady_heap("cpu"):
    inside = rounds(8)
after = rounds(1)
with steady_heap("cpu"):
    rounds(8)
    with steady_heap("cpu"):
        pass
    nested = rounds(1)
print(json.dumps({"inside": inside, "after": after, "nested": nested}))
"""


@pytest.fixture(scope="module")
def faults() -> dict[str, list[int]]:
    out = subprocess.run([sys.executable, "-c", ROUNDS], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.splitlines()[-1])


@pytest.mark.skipif(_glibc() is None, reason="glibc only")
def test_freed_blocks_are_reused_inside_and_handed_back_after(faults):
    assert faults["inside"][0] > 0.5 * PAGES  # the first round faults its memory in
    # once the heap has grown, the same blocks fault (almost) nothing in: a heap that gave its memory back would
    # fault PAGES per round (an occasional block still faults under load: 1/8 of a round)
    assert sum(faults["inside"][-5:]) < 0.5 * PAGES
    assert faults["after"][0] > 0.5 * PAGES  # malloc_trim gave the memory back: the next round faults it in again


@pytest.mark.skipif(_glibc() is None, reason="glibc only")
def test_nested_blocks_keep_the_policy_until_the_outermost_ends(faults):
    assert faults["nested"][0] < 0.5 * PAGES  # the inner exit handed nothing back


def test_it_does_nothing_for_other_devices():
    with steady_heap(torch.device("meta")) as applies:
        assert not applies
    with steady_heap("cuda:0") as applies:
        assert not applies

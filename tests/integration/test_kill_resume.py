"""kill -9 at random moments of `personaspace extract`, then resume: bit-identical vectors, no temp files left.

One reference run to completion measures when the run writes (first activation batch to exit); then, in a
fresh directory, five runs are each SIGKILLed after a seeded random delay drawn over that span, and a last
run finishes the job. Each killed run resumes what the previous ones left: torn appends, temp files of
interrupted atomic writes, half-done batches.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from personaspace._util.io import TEMP_PATTERN, read_jsonl

ARGS = ["--trait", "evil", "--judge", "none", "--instructions", "1", "--questions", "4",
        "--max-new-tokens", "8", "--batch-size", "2"]
KILLS = 5


def _command(out: Path) -> list[str]:
    return [sys.executable, "-m", "personaspace.cli", "extract", *ARGS, "--out", str(out)]


def _env() -> dict:
    env = dict(os.environ)
    env.setdefault("COLUMNS", "200")
    env["OMP_NUM_THREADS"] = "1"  # the reference and the killed runs compute the same way
    return env


def _reference(out: Path) -> tuple[float, float, float]:
    """Run to completion; return (seconds to the first activation batch, to exit, total)."""
    started = time.monotonic()
    proc = subprocess.Popen(_command(out), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=_env())
    first = None
    while proc.poll() is None:
        if first is None and any((out / "activations").glob("batch-*.safetensors")):
            first = time.monotonic() - started
        time.sleep(0.02)
    total = time.monotonic() - started
    output = proc.stdout.read().decode(errors="replace")
    assert proc.returncode == 0, output[-3000:]
    return (first if first is not None else 0.5 * total), total, total


def _vectors(run: Path) -> dict[str, dict]:
    files = sorted((run / "vectors").glob("*.safetensors"))
    assert len(files) == 3, files
    return {f.name: load_file(str(f)) for f in files}


@pytest.mark.slow  # seven `personaspace extract` processes, each loading the embedded model
def test_sigkill_at_random_moments_resumes_to_identical_vectors(tmp_path):
    ref_dir, run = tmp_path / "reference", tmp_path / "killed"
    first_write, end, _ = _reference(ref_dir)
    reference = _vectors(ref_dir)

    rng = random.Random(20261202)
    # From a little before the first write to the end of the reference run: every stage that writes.
    start = max(0.0, first_write - 1.0)
    delays = sorted(rng.uniform(start, end) for _ in range(KILLS))
    outcomes = []
    for delay in delays:
        proc = subprocess.Popen(_command(run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
        try:
            proc.wait(timeout=delay)
            outcomes.append(("finished", proc.returncode))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            batches = len(list((run / "activations").glob("batch-*.safetensors")))
            outcomes.append(("killed", round(delay, 2), f"{batches} batches", (run / "summary.json").exists()))
        assert outcomes[-1][0] == "killed" or outcomes[-1][1] == 0, outcomes

    print(f"reference: first write {first_write:.1f} s, exit {end:.1f} s; runs: {outcomes}")
    final = subprocess.run(_command(run), capture_output=True, text=True, env=_env(), timeout=300)
    assert final.returncode == 0, (outcomes, final.stdout[-3000:], final.stderr[-3000:])

    resumed = _vectors(run)
    assert resumed.keys() == reference.keys()
    for name, tensors in reference.items():
        assert tensors.keys() == resumed[name].keys()
        for key, tensor in tensors.items():
            other = resumed[name][key]
            assert other.dtype == tensor.dtype and other.shape == tensor.shape
            assert tensor.view(-1).view(dtype=_int_of(tensor)).equal(other.view(-1).view(dtype=_int_of(other))), (name, key, outcomes)
    leftovers = [p for p in run.rglob("*") if TEMP_PATTERN.match(p.name)]
    assert leftovers == [], (leftovers, outcomes)
    for appended in ("generations.jsonl", "scores.jsonl"):
        assert len(read_jsonl(run / appended)) >= 8
        assert (run / appended).read_bytes().endswith(b"\n")


def _int_of(tensor):
    """An integer dtype of the same width, so the comparison is of bits (NaN == NaN, -0 != +0)."""
    import torch

    return {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[tensor.element_size()]

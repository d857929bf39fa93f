"""The GPU benchmark (benchmarks/gpu.py) keeps working: its tiny configuration, on the CPU, in a fresh process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_benchmark_runs_at_tiny_size_on_cpu(tmp_path):
    out = tmp_path / "gpu-tiny.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PERSONASPACE_SHAPE_CHECKS": "0"}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--tiny", "--device", "cpu", "--repeats", "1", "--out", str(out)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["device"] == "cpu" and result["dtype"] == "bfloat16" and result["backend_default_error"] is None
    assert result["shape"]["num_hidden_layers"] == 4
    cap, gen = result["capture"], result["generation"]
    assert cap["speedup_vs_hf"] > 0 and cap["ours_tokens_per_s"] > 0
    assert cap["rel_err_vs_hf_below_last_layer"] < 0.05  # both in bf16, summed in different orders
    assert cap["peak_gib_ours"] == "n/a (CPU)" and gen["peak_gib_steered"] == "n/a (CPU)"
    assert gen["steered_over_unsteered"] > 0 and gen["steered_tokens_per_s"] > 0
    assert 0 < result["bf16_vs_fp32_tiny"]["max_rel_diff"] < 0.05
    # No plotting or backend package is needed by the benchmark (nor by `import personaspace`).
    assert result["optional_modules_loaded"] == []

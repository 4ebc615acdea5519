"""The benchmark script runs and reports every number (benchmarks are not timed tests: no goals here)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RATIOS = ("cache_vs_hf_forward", "angle_sweep_speedup", "selection_speedup", "generate_vs_hf")


@pytest.mark.slow
def test_quick_benchmark_emits_every_key(tmp_path):
    # --threads 1: on a CPU shared with other jobs, oversubscribed threads make a run many times slower.
    cmd = [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--json",
           "--model", "smollm2-135m-instruct", "--threads", "1", "--device", "cpu",
           "--results", str(tmp_path / "quick.json")]  # never overwrite the committed full run
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    for key in RATIOS:
        value = summary[key]
        assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (key, value)
    assert summary["selection_same_choice"] is True
    assert summary["quick"] is True
    assert summary["main_job_cold_s"] is None and summary["main_job_warm_s"] is None  # full mode only
    assert {"cpu", "cores", "torch_threads", "device", "torch", "transformers",
            "transformer_lens", "date"} <= set(summary["machine"])
    assert summary["cache_mem_sliced_mib"] < summary["cache_mem_full_mib"]
    assert json.loads((tmp_path / "quick.json").read_text())["quick"] is True

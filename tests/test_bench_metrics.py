"""Smoke run of ``benchmarks/bench_metrics.py`` (slow: SDS_SLOW=1); timings are never asserted."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_metrics_benchmark_prints_on_vs_off_and_the_cost_model(tmp_path):
    env = dict(os.environ, SDS_BENCH_DIR=str(tmp_path / "bench"), PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "metrics", "--quick"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for group in ("2 workers: samples per wall second", "in this process: samples per CPU second"):
        assert group in out
    assert re.search(r"^metrics off \*\s+[\d.]+.*1\.00$", out, re.MULTILINE)
    assert re.search(r"^metrics on\s+[\d.]+", out, re.MULTILINE)
    assert re.search(r"cost model: [\d.]+ timed next\(\) per sample .* [\d.]+% of the graph", out)

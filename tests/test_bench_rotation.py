"""Smoke run of ``benchmarks/bench_rotation.py`` (slow: SDS_SLOW=1). Timings are never asserted:
only that both tables print, with their baselines and the bytes per entry."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a benchmark smoke run: SDS_SLOW=1
def test_rotation_quick_prints_both_tables(tmp_path):
    env = dict(os.environ, SDS_BENCH_DIR=str(tmp_path / "bench"))
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "rotation", "--quick", "--dir", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    for row in ("no rotation *", "rotation k=4, memory", "rotation k=4, disk",
                "decoded cache, epoch 1 *", "decoded cache, epoch 2"):  # fmt: skip
        assert row in out
    assert "B/sample on disk" in out

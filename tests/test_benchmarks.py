"""Smoke test of the benchmark runner: the video benchmark runs and prints its table.

Timings are never asserted here (house rule: speed lives in benchmarks/, not in tests); only that
the runner works end to end and prints what a reader of the table needs.
"""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_benchmarks(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, SDS_BENCH_DIR=str(tmp_path / "bench"))
    return subprocess.run(
        [sys.executable, "-m", "benchmarks.run", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip


def test_list_names_the_video_benchmark(tmp_path):
    done = run_benchmarks("--list", tmp_path=tmp_path)
    assert done.returncode == 0, done.stderr
    assert any(line.split()[0] == "video" for line in done.stdout.splitlines() if line.strip())


def test_unknown_benchmark_is_an_error(tmp_path):
    done = run_benchmarks("no-such-benchmark", tmp_path=tmp_path)
    assert done.returncode != 0
    assert "no-such-benchmark" in done.stderr


def table_rows(lines: list[str]) -> dict[str, list[str]]:
    """Rows of the printed tables, by loader: [median, min, max, ratio, (note)] as printed."""
    rows: dict[str, list[str]] = {}
    header_seen = False
    for line in lines:
        if line.startswith("loader"):
            header_seen = True
            continue
        cells = re.split(r"\s{2,}", line.strip())
        if header_seen and len(cells) >= 5 and not line.startswith("-"):
            rows.setdefault(cells[0], cells[1:])  # the first table: the full epoch
    return rows


def test_video_quick_prints_the_table_with_ratios(tmp_path):
    done = run_benchmarks("video", "--quick", "--dir", str(tmp_path / "data"), tmp_path=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    headers = [line for line in lines if line.startswith("loader")]
    assert len(headers) == 2  # full epoch, steady state
    assert re.split(r"\s{2,}", headers[0].strip()) == [
        "loader",
        "clips/s (median)",
        "min",
        "max",
        "ratio",
    ]
    rows = table_rows(lines)
    assert rows["hand-written loop (Pool of 2) *"][3] == "1.00"  # the baseline, against itself
    graph = next(cells for name, cells in rows.items() if name.startswith("sdsnodes graph"))
    assert math.isfinite(float(graph[3]))  # a ratio was computed; its value is no test matter
    assert any(name.startswith("full-decode-then-slice") for name in rows)
    assert "hand-written loop (1 process)" in rows
    assert "set_vital" not in done.stderr  # the known torchdata warning is silenced
    assert (tmp_path / "data" / "video-n16-3s-256x256" / "index.parquet").is_file()


@pytest.mark.slow  # two fresh processes that import the peers' packages (~20 s): SDS_SLOW=1
def test_worker_gc_quick_prints_both_settings(tmp_path):
    done = run_benchmarks("worker_gc", "--quick", "--task", "local", tmp_path=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    for setting in ("freeze_worker_heap=False *", "freeze_worker_heap=True (default)"):
        assert setting in done.stdout
    assert "full GC s (workers)" in done.stdout and "peak PSS MiB" in done.stdout

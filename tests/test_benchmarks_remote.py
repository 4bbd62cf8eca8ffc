"""Smoke tests of the remote-storage benchmarks (``remote``, ``cache_policy``, ``disk_peak``):
each runs with ``--quick`` against its own loopback servers, exits 0 and prints its table with
the baseline and the ratios.

Nothing measured is asserted here — no speed, no byte fraction, no peak (house rule: figures live
in benchmarks/); only that the benchmark runs end to end and prints what a reader needs.
"""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_quick(name: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, SDS_BENCH_DIR=str(tmp_path / "bench"))
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", name, "--quick", "--dir", str(tmp_path / "data")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "set_vital" not in done.stderr  # the known torchdata warning is silenced
    assert "worker processes in total" not in done.stderr  # so is torch's worker-count advice
    return done


def cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def rows_after(lines: list[str], header: str) -> list[list[str]]:
    """The rows of every table whose header line starts with ``header`` (to a blank line)."""
    rows, inside = [], False
    for line in lines:
        if line.startswith(header):
            inside = True
        elif inside and not line.strip():
            inside = False
        elif inside and not line.startswith("-"):
            rows.append(cells(line))
    return rows


def test_list_names_the_remote_benchmarks(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--list"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    names = {line.split()[0] for line in done.stdout.splitlines() if line.strip()}
    assert {"remote", "cache_policy", "disk_peak"} <= names


@pytest.mark.slow  # a benchmark smoke run: SDS_SLOW=1
def test_remote_quick_prints_both_tables_with_ratios_and_targets(tmp_path):
    lines = run_quick("remote", tmp_path).stdout.splitlines()
    headers = [line for line in lines if line.startswith("loader")]
    assert len(headers) == 2  # images, videos
    assert cells(headers[0]) == ["loader", "samples/s (median)", "min", "max", "ratio"]
    rows = rows_after(lines, "loader")
    by_name: dict[str, list[list[str]]] = {}
    for row in rows:
        by_name.setdefault(row[0], []).append(row)
    for baseline in by_name["sequential get_file loop *"]:
        assert baseline[4] == "1.00"  # the baseline, against itself
    expected = [
        "bulk fs.cat(list) (upper bound)",
        "download-only graph (2 workers)",
        "download-only graph (in-process Loader)",
        "image graph (2 workers)",
        "image graph (in-process Loader)",
        "video graph (2 workers)",
        "video graph (in-process Loader)",
    ]
    for name in expected:
        matching = by_name[name]
        assert len(matching) == (1 if name.startswith(("image", "video")) else 2)
        for row in matching:
            assert math.isfinite(float(row[4]))  # a ratio was computed; its value is no test matter
            assert re.match(r"\d+\.\d\dx bulk", row[5])
    targets = [line for line in lines if "x sequential (" in line]
    assert len(targets) == 8  # 4 graph rows x (images, videos), each vs both baselines
    assert all(re.search(r"x bulk \((met|missed)\)", line) for line in targets)
    assert sum("ceiling:" in line for line in lines) == 2


@pytest.mark.slow  # a benchmark smoke run: SDS_SLOW=1
def test_cache_policy_quick_prints_epochs_of_both_policies(tmp_path):
    lines = run_quick("cache_policy", tmp_path).stdout.splitlines()
    (header,) = [line for line in lines if line.startswith("policy")]
    assert cells(header)[1:5] == ["epoch 1", "epoch 2", "epoch 3", "epoch 4"]
    assert cells(header)[-1] == "ratio"
    rows = {row[0]: row for row in rows_after(lines, "policy")}
    assert set(rows) == {"keepset (default)", "lru *"}
    for row in rows.values():
        fractions = [float(cell) for cell in row[1:-1]]  # 4 epochs, mean, min, max
        assert len(fractions) == 7 and all(math.isfinite(f) for f in fractions)
    assert rows["lru *"][-1] == "1.00"
    assert math.isfinite(float(rows["keepset (default)"][-1]))
    assert any(line.startswith("target (printed, not enforced)") for line in lines)
    assert any("in-flight window" in line for line in lines)


@pytest.mark.slow  # a benchmark smoke run: SDS_SLOW=1
def test_disk_peak_quick_prints_peak_bound_and_ledger(tmp_path):
    lines = run_quick("disk_peak", tmp_path).stdout.splitlines()
    table = {cells(line)[0]: cells(line)[1:] for line in lines if re.search(r"\(.*-.*\)\s*$", line)}
    for label in (
        "peak (cached files + *.tmp), MB",
        "max_bytes, MB",
        "largest file, MB",
        "ratio peak / (max_bytes + largest)",
        "ledger peak (sqlite + wal + shm), KB",
    ):
        values = table[label]
        assert len(values) == 2  # the two --quick budgets
        assert all(math.isfinite(float(v.split()[0])) for v in values)
    bounds = [line for line in lines if line.startswith("bound (printed, not enforced)")]
    assert len(bounds) == 2
    assert all(re.search(r"worst repeat \d+\.\d{3} — (held|EXCEEDED)$", line) for line in bounds)


def test_s3_direct_quick_keeps_its_caches_under_the_data_folder_until_the_end(tmp_path):
    done = run_quick("s3_direct", tmp_path)
    out = done.stdout
    data = tmp_path / "data"
    assert f"system CPU ms per file created in {data}{os.sep}s3-direct-" in out
    for name in ("CachingDownloader, s3fs GETs", "CachingDownloader, presigned, aiohttp",
                 "fs.cat(list), in memory"):  # fmt: skip
        assert name in out
    assert not list(data.glob("s3-direct-*"))  # the caches went with the run

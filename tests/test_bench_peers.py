"""Smoke test of ``bench_peers --quick --plot``: every loader runs one epoch with its sample ids
checked for coverage, the tables print ratios to the plain DataLoader and to the best peer, and
the page and charts are written. No speed is asserted (house rule: figures live in benchmarks/)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_benchmarks_remote import ROOT, rows_after

LOADERS = {"plain DataLoader *", "torchdata.nodes", "webdataset", "litdata",
           "mosaicml-streaming", "sdsnodes (raw files)"}  # fmt: skip


@pytest.mark.slow  # a benchmark smoke run (~3 min): SDS_SLOW=1
def test_peers_quick_prints_every_loader_and_writes_the_page(tmp_path: Path):
    docs = tmp_path / "docs"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "peers", "--quick", "--plot",
         "--dir", str(tmp_path / "data"), "--docs", str(docs)],
        cwd=ROOT, env=dict(os.environ, SDS_BENCH_DIR=str(tmp_path / "bench")),
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    rows = rows_after(lines, "loader")
    # images: samples/s, first batch, CPU ms, peak PSS; clips: clips/s, peak PSS (3 loaders)
    assert len(rows) == 4 * len(LOADERS) + 2 * 3
    assert {row[0] for row in rows} == LOADERS | {"torchdata.nodes (threads)"}
    for row in rows:
        assert row[-1].endswith(")") and "the best peer" in row[-1]  # ratio to the best peer
        if row[0] == "plain DataLoader *":
            assert row[4] == "1.00"  # the baseline, against itself
    page = (docs / "comparison.md").read_text()
    assert "| sdsnodes (raw files) |" in page and "## Features" in page
    assert "| sdsnodes (raw files) |" in page.split("## Video clips")[1]
    assert len(list((docs / "img").glob("peers_*.png"))) == 6

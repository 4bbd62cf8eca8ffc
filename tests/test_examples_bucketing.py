"""examples/bucketing.py runs as a user runs it: batches of one resolution, exact resume, as many
batches on every rank."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BATCH = re.compile(r"^batch (\d+): bucket \((\d+), (\d+)\) image \[(\d+), 3, (\d+), (\d+)\]$", re.M)
RANK = re.compile(
    r"^rank (\d+)/(\d+): (\d+) batches, (\d+) images, (\d+) left for later epochs$", re.M
)


def test_bucketing_example(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SDS_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "bucketing.py"), "--dir", str(tmp_path / "data"),
         "--num-images", "36", "--batch-size", "4", "--resume-after", "2", "--world-size", "3"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    batches = [tuple(map(int, b)) for b in BATCH.findall(out)]
    assert [b[0] for b in batches] == list(range(len(batches)))
    for _, h, w, size, height, width in batches:  # decoded at the bucket's resolution
        assert (height, width) == (h, w) and 1 <= size <= 4
    assert {(h, w) for _, h, w, *_ in batches} == {(32, 32), (32, 48), (48, 32), (24, 56)}
    assert sum(b[3] for b in batches) == 36
    assert "36 images, each once: True" in out
    assert f"resumed after 2 batches: the next {len(batches) - 2} match: True" in out
    ranks = [tuple(map(int, r)) for r in RANK.findall(out)]
    assert [r[:2] for r in ranks] == [(0, 3), (1, 3), (2, 3)]
    assert {r[2] for r in ranks} == {3}  # 12 images per rank: ceil(12 / 4) batches on each
    assert all(images + left == 12 for *_, images, left in ranks)

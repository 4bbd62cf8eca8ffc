"""The mixing and distributed examples run as a user runs them, and the mixing/resume benchmarks
print their tables (smoke tests: no timing is asserted)."""

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
MIXED_STEP = re.compile(r"^step +(\d+) +stream (\w+) +(image|video) (\[[\d, ]+\])", re.MULTILINE)
RANK_STEP = re.compile(r"^rank (\d+) step (\d+) epoch (\d+) loss \S+ keys (\[.*\])$", re.MULTILINE)
RANK_TOTAL = re.compile(r"^rank (\d+)/(\d+): (\d+) batches, (\d+) samples$", re.MULTILINE)


def run(cmd: list, cache: Path | None = None, timeout: float = 120) -> str:
    """Run ``cmd`` from the repository root (converted indexes cached in ``cache``); assert exit
    code 0; return its stdout."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if cache is not None:
        env["SDS_CACHE_DIR"] = str(cache)
    proc = subprocess.run(
        list(map(str, cmd)), capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env
    )
    assert proc.returncode == 0, (
        f"{cmd} exited {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    )
    assert "set_vital" not in proc.stderr  # the known torchdata warning is filtered where it arises
    return proc.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mixed_streams_gives_whole_batches_of_each_stream(tmp_path):
    out = run([sys.executable, EXAMPLES / "mixed_streams.py", "--dir", tmp_path, "--num-images", 32,
               "--num-videos", 8, "--steps", 8], cache=tmp_path / "cache")  # fmt: skip
    steps = MIXED_STEP.findall(out)
    assert [int(s) for s, *_ in steps] == list(range(1, 9))
    for _, stream, media, shape in steps:  # one stream per batch, with that stream's shape
        expected = (
            ("image", "[16, 3, 32, 32]") if stream == "img" else ("video", "[4, 4, 3, 32, 32]")
        )
        assert (media, shape) == expected
    assert {stream for _, stream, *_ in steps} == {"img", "vid"}
    assert re.search(r"^8 batches: img \d+ \(\d+%\), vid \d+ \(\d+%\)$", out, re.MULTILINE)


def torchrun(nproc: int, cache: Path, *args: object) -> str:
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", EXAMPLES / "distributed_train.py", *args]  # fmt: skip
    return run(cmd, cache=cache, timeout=180)


def test_distributed_train_resumes_elastically_on_fewer_ranks(tmp_path):
    common = ["--dir", tmp_path / "data", "--ckpt-dir", tmp_path / "ckpt", "--num-images", 32]
    first = torchrun(2, tmp_path / "cache", *common, "--steps", 2)
    totals = {int(r): (int(w), int(b), int(s)) for r, w, b, s in RANK_TOTAL.findall(first)}
    assert totals == {0: (2, 2, 8), 1: (2, 2, 8)}  # each rank its share, the same batch count
    latest = json.loads((tmp_path / "ckpt" / "latest.json").read_text())
    assert latest == {"world_size": 2, "step": 2}

    second = torchrun(1, tmp_path / "cache", *common, "--resume-elastic")
    assert "elastic resume from 2 rank(s) at step 2: epoch 0, 16 samples already read" in second
    keys_first = [k for *_, keys in RANK_STEP.findall(first) for k in json.loads(keys)]
    keys_second = [k for *_, keys in RANK_STEP.findall(second) for k in json.loads(keys)]
    assert {int(e) for _, _, e, _ in RANK_STEP.findall(first + second)} == {0}
    assert [int(s) for _, s, _, _ in RANK_STEP.findall(second)][0] == 3  # the step count goes on
    assert len(keys_first) == 16 and len(keys_second) == 16
    # together the two runs read the epoch: nothing lost, nothing twice
    assert sorted(keys_first + keys_second, key=int) == [str(i) for i in range(32)]


def benchmark(*args: object) -> str:
    return run([sys.executable, "-m", "benchmarks.run", *args], timeout=180)


def test_resume_benchmark_prints_its_tables(tmp_path):
    out = benchmark("resume", "--quick", "--rows", 5000, "--batch-size", 64, "--dir", tmp_path)
    assert re.search(
        r"^position +batches +resume CPU ms +min +max +wall +replay CPU ms \* .* replay / resume$",
        out,
        re.MULTILINE,
    )
    rows = [line.split() for line in out.splitlines() if re.match(r"^\d+% +[\d,.]+ ", line)]
    assert [r[0] for r in rows] == ["10%", "50%", "90%"] * 2  # the resume table, the elastic table
    batches = [int(r[1].replace(",", "")) for r in rows[:3]]
    assert batches == [8, 39, 70]  # 10%, 50%, 90% of 5000 rows in batches of 64
    assert re.search(r"^position +cursor build CPU µs .* skip list$", out, re.MULTILINE)
    assert "ERROR" not in out  # each resumed batch matched the replayed one
    assert "exit 0" in out


def test_mixing_benchmark_prints_a_row_per_strategy():
    out = benchmark("mixing", "--quick", "--batches", 100)
    assert out.count("single stream *") == 3  # one baseline per group
    for strategy in (
        "weighted_random",
        "round_robin",
        "fixed_random_order",
        "random_order",
        "consecutive_interleaved",
    ):
        assert re.search(rf"^Mixer, 3 streams, {strategy} +[\d.]+ ", out, re.MULTILINE), strategy
    assert "exit 0" in out


GROUP_STEP = re.compile(r"^step +(\d+) micro (\d+)/(\d+) streams ([\w ]+)$", re.MULTILINE)


def test_mix_groups_splits_the_ranks_and_keeps_each_round_on_one_stream(tmp_path):
    out = run([sys.executable, EXAMPLES / "mix_groups.py", "--dir", tmp_path / "data",
               "--world-size", 4, "--accum", 2, "--steps", 8,
               "--resume-at", 3], cache=tmp_path / "cache")  # fmt: skip
    lines = [(int(s), int(m), int(r), names.split()) for s, m, r, names in GROUP_STEP.findall(out)]
    assert [(s, m, r) for s, m, r, _ in lines] == [(s, m, 2) for s in range(1, 9) for m in (1, 2)]
    steps = [names for _, m, _, names in lines if m == 1]
    for i in range(0, len(lines), 2):  # both micro-batches of a step: each rank on one stream
        assert lines[i][3] == lines[i + 1][3], lines[i : i + 2]
    for names in steps:  # one group per step: all ranks on webvid, or split over laion/coyo
        assert len(names) == 4
        assert set(names) == {"webvid"} or set(names) <= {"laion", "coyo"}
    # round_robin over the groups' counts 3:1, and laion (2/3 of its group) on 2 or 3 ranks
    assert ["webvid" if "webvid" in n else "lc" for n in steps] == ["lc", "lc", "webvid", "lc"] * 2
    assert all(n.count("laion") in (2, 3) for n in steps if "webvid" not in n)
    assert any(len(set(n)) == 2 for n in steps)  # different datasets on different ranks
    assert "resumed every rank after batch 3: the same 13 batches" in out  # mid-round


def test_mix_groups_under_torchrun_matches_the_simulated_ranks(tmp_path, monkeypatch):
    """Two real ranks (rank from torch.distributed, two DataLoader workers each) read, step by
    step, the streams that two ranks simulated in one process read, and resume mid-round."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}",
           EXAMPLES / "mix_groups.py", "--num-workers", 2, "--steps", 8, "--resume-at", 3]  # fmt: skip
    real = run(cmd, cache=tmp_path / "cache", timeout=120)
    assert real.startswith("2 ranks")
    assert "resumed every rank after batch 3: the same 13 batches" in real
    real_streams = [names.split() for *_, names in GROUP_STEP.findall(real)]

    spec = importlib.util.spec_from_file_location("mix_groups", EXAMPLES / "mix_groups.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.setenv("SDS_CACHE_DIR", str(tmp_path / "cache"))
    args = example.parse_args(["--world-size", "2", "--steps", "8"])  # no workers, one process
    paths = example.make_indexes(tmp_path / "data", args.rows)
    runs = [example.read(paths, args, rank) for rank in range(2)]
    assert real_streams == [[run[i][0] for run in runs] for i in range(16)]

"""The examples run as a user runs them (subprocesses), and train_video.py resumes exactly."""

import os
import re
import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
STEP = re.compile(r"^step +(\d+) +epoch (\d+) +loss \S+ +keys (\[.*\])$", re.MULTILINE)


def run_example(name: str, *args: object, env: dict[str, str] | None = None) -> str:
    """Run ``examples/<name>`` with ``args`` (and ``env`` added to the environment); assert exit
    code 0; return its stdout."""
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=EXAMPLES.parent,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, f"{name} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def steps(output: str) -> dict[int, tuple[int, str]]:
    """step → (epoch, keys) as printed by train_video.py."""
    return {int(s): (int(e), keys) for s, e, keys in STEP.findall(output)}


def test_custom_graph_streams_one_epoch(tmp_path):
    out = run_example("custom_graph.py", "--dir", tmp_path, "--num-videos", 6, "--batch-size", 4,
                      "--num-frames", 4, "--size", 32)  # fmt: skip
    assert "video            torch.uint8    [4, 4, 3, 32, 32]" in out
    batches = re.findall(r"^batch (\d+): video \[(\d+), 4, 3, 32, 32\]", out, re.MULTILINE)
    assert [(int(i), int(b)) for i, b in batches] == [(0, 4), (1, 2)]  # 6 clips, batch 4
    assert "skipped samples: none" in out


def test_train_video_resumes_at_the_next_batch(tmp_path):
    common = ["--dir", tmp_path / "data", "--num-videos", 16]  # 4 batches per epoch
    full = steps(run_example("train_video.py", *common, "--steps", 6))
    assert sorted(full) == [1, 2, 3, 4, 5, 6] and full[6][0] == 1  # crosses into epoch 1

    ckpt = tmp_path / "ckpt.pt"  # saved at step 3 only: the run "dies" after step 4
    args = ["--ckpt", ckpt, "--ckpt-every", 3]
    first = steps(run_example("train_video.py", *common, "--steps", 4, *args))
    assert ckpt.exists() and sorted(first) == [1, 2, 3, 4]
    out = run_example("train_video.py", *common, "--steps", 6, *args, "--resume")
    assert "at step 3; continuing at step 4" in out
    resumed = steps(out)
    assert min(resumed) == 3 + 1 and sorted(resumed) == [4, 5, 6]
    assert resumed == {s: full[s] for s in (4, 5, 6)}  # same batches, same epochs


def test_train_video_keeps_the_loader_state_in_a_bucket(tmp_path, s3_server, s3_bucket):
    common = ["--dir", tmp_path / "data", "--num-videos", 8, "--num-workers", 1]  # 2 per epoch
    state = f"{s3_bucket}/run-1/data.json"
    args = ["--ckpt", tmp_path / "ckpt.pt", "--ckpt-every", 2, "--loader-state", state]
    env = s3_server.client_env  # the endpoint and credentials, as a job's environment holds them
    first = steps(
        run_example("train_video.py", *common, "--steps", 3, *args, env=env)
    )  # saves at 2
    assert s3_server.fs().exists(state) and sorted(first) == [1, 2, 3]
    out = run_example("train_video.py", *common, "--steps", 4, *args, "--resume", env=env)
    resumed = steps(out)
    assert sorted(resumed) == [3, 4] and resumed[3] == first[3]  # the batch after the saved one

"""examples/lightning_datamodule.py and examples/hf_accelerate.py resume exactly.

Each example runs three times in one Python process (Lightning's import alone takes several
seconds): 8 steps saving checkpoints at steps 3 and 6, then from the step-3 checkpoint (mid-epoch)
and from the step-6 one (the last batch of epoch 0) to step 8. The steps after a resume print
the same epoch, loss and sample keys as the uninterrupted run. Both examples run at the same
time, each in its own process, with 2 DataLoader workers.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
STEP = re.compile(r"^step +(\d+) +epoch (\d+) +loss (\S+) +keys (\[.*\])$", re.MULTILINE)
END = "=== end of run ==="
# runs the example as `python examples/<name> ARGS` would, once per argument list
DRIVER = f"""
import json, runpy, sys
path, runs = sys.argv[1], json.loads(sys.argv[2])
for argv in runs:
    sys.argv = [path, *argv]
    runpy.run_path(path, run_name="__main__")
    print({END!r}, flush=True)
"""


def start(name: str, runs: list[list[str]], cwd: Path) -> subprocess.Popen:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(ROOT / "examples" / name), json.dumps(runs)],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen) -> list[dict[int, tuple[str, str, str]]]:
    """Each run's steps: step → (epoch, loss, keys)."""
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, f"exited {proc.returncode}\n{out}\n{err}"
    runs = out.split(END)[:-1]
    return [{int(s): (e, loss, keys) for s, e, loss, keys in STEP.findall(run)} for run in runs]


@pytest.fixture(scope="module")
def launched(tmp_path_factory) -> dict[str, tuple[subprocess.Popen, Path]]:
    """Both examples started at once (they share the machine's cores, not a dataset)."""
    procs = {}
    for name, ckpt_at in (
        ("lightning_datamodule.py", "step={}.ckpt"),
        ("hf_accelerate.py", "step-{}"),
    ):
        work = tmp_path_factory.mktemp(name.removesuffix(".py"))
        common = ["--dir", str(work), "--steps", "8", "--num-workers", "2"]
        runs = [
            [*common, "--ckpt-dir", str(work / "ckpt"), "--ckpt-every", "3"],
            [*common, "--resume", str(work / "ckpt" / ckpt_at.format(3))],
            [*common, "--resume", str(work / "ckpt" / ckpt_at.format(6))],
        ]
        procs[name] = (start(name, runs, work), work)
    yield procs
    for proc, _ in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def check_exact_resume(runs: list[dict[int, tuple[str, str, str]]]) -> None:
    full, from_3, from_6 = runs
    assert sorted(full) == list(range(1, 9))
    assert full[6][0] == "0" and full[7][0] == "1"  # 6 batches per epoch: step 7 is epoch 1's first
    assert len({keys for _, _, keys in full.values()}) == 8  # different batches
    assert from_3 == {s: full[s] for s in range(4, 9)}  # mid-epoch: same epoch, loss, samples
    assert from_6 == {s: full[s] for s in (7, 8)}  # after the epoch's last batch


def test_lightning_datamodule_resumes_exactly(launched):
    proc, work = launched["lightning_datamodule.py"]
    check_exact_resume(finish(proc))
    import torch

    ckpt = torch.load(work / "ckpt" / "step=3.ckpt", weights_only=False)
    (loader_state,) = ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"]
    assert loader_state["_snapshot"]["_snapshot_step"] == 3  # StatefulDataLoader's, after 3


def test_hf_accelerate_resumes_exactly(launched):
    proc, work = launched["hf_accelerate.py"]
    check_exact_resume(finish(proc))
    assert sorted(p.name for p in (work / "ckpt").iterdir()) == ["step-3", "step-6"]

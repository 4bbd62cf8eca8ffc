"""The resume check every stateful node and loader goes through, written once."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from torchdata.nodes import BaseNode, Loader

from sdsnodes.nodes.graph import find_states
from sdsnodes.nodes.mixer import Mixer


def keys_of(item: Any) -> tuple:
    """The ``__key__``(s) of a sample or a batch, as a hashable tuple."""
    keys = item["__key__"]
    return tuple(keys) if isinstance(keys, list) else (keys,)


def json_roundtrip(state: dict) -> dict:
    """The state as it comes back from a JSON checkpoint (fails if it is not JSON-compatible)."""
    return json.loads(json.dumps(state))


def _take(it: Iterable, k: int, key_fn: Callable) -> list:
    out = []
    for _ in range(k):
        out.append(key_fn(next(it)))
    return out


def check_node_resume(
    make_root: Callable[[], BaseNode],
    midpoints: Sequence[int] | None = None,
    key_fn: Callable[[Any], Any] = keys_of,
) -> list:
    """Assert that ``torchdata.nodes.Loader`` over ``make_root()`` resumes exactly.

    For each k in ``midpoints`` (default: 0, 1, the middle, the last - 1 and the last item), a
    fresh loader that loads the JSON round-tripped state taken after item k yields exactly items
    k+1… of the uninterrupted epoch 0, then an epoch 1 identical to the uninterrupted epoch 1.

    Returns:
        list: the uninterrupted epoch 0 (keys), for further checks.
    """
    loader = Loader(make_root())
    epoch0 = [key_fn(x) for x in loader]
    epoch1 = [key_fn(x) for x in loader]
    n = len(epoch0)
    assert n > 0, "the graph yielded nothing"
    assert epoch0 != epoch1 or n == 1, "epoch 1 repeats epoch 0 (is shuffling per epoch on?)"
    ks = sorted(set(midpoints if midpoints is not None else [0, 1, n // 2, max(n - 1, 0), n]))
    for k in ks:
        loader = Loader(make_root())
        it = iter(loader)
        assert _take(it, k, key_fn) == epoch0[:k]
        state = json_roundtrip(loader.state_dict())
        fresh = Loader(make_root())
        fresh.load_state_dict(state)
        rest = [key_fn(x) for x in fresh]
        if k == n:  # Loader restarts an exhausted state at the next epoch at once
            assert rest == epoch1, f"after the last item, resume should start epoch 1 ({k=})"
        else:
            assert rest == epoch0[k:], f"resume after {k} items differs"
            assert [key_fn(x) for x in fresh] == epoch1, f"epoch after resume differs ({k=})"
    return epoch0


def stateful_loader(dataset: Any, num_workers: int) -> Any:
    """A StatefulDataLoader over an already-batching dataset."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    return StatefulDataLoader(dataset, batch_size=None, num_workers=num_workers)


def check_dataloader_resume(
    make_dataset: Callable[[], Any],
    num_workers: int,
    midpoints: Sequence[int] | None = None,
    key_fn: Callable[[Any], Any] = keys_of,
) -> list:
    """Assert that ``StatefulDataLoader`` over ``make_dataset()`` resumes exactly.

    Same promise as :func:`check_node_resume`, through ``StatefulDataLoader(num_workers=...)``:
    after batch k the state (JSON round-tripped) loaded into a fresh loader yields batches k+1…,
    then the next epoch identical to the uninterrupted one.
    """
    dl = stateful_loader(make_dataset(), num_workers)
    epoch0 = [key_fn(b) for b in dl]
    epoch1 = [key_fn(b) for b in dl]
    n = len(epoch0)
    assert n > 0, "the loader yielded nothing"
    assert epoch0 != epoch1, "epoch 1 repeats epoch 0: the epoch did not advance"
    ks = sorted(set(midpoints if midpoints is not None else [0, 1, n // 2, n]))
    for k in ks:
        dl = stateful_loader(make_dataset(), num_workers)
        it = iter(dl)
        assert _take(it, k, key_fn) == epoch0[:k]
        state = json_roundtrip(dl.state_dict())
        del it, dl
        fresh = stateful_loader(make_dataset(), num_workers)
        fresh.load_state_dict(state)
        rest = [key_fn(b) for b in fresh]
        if k == n:
            # StatefulDataLoader ends an exhausted epoch at once; the next iter() is epoch 1
            assert rest in ([], epoch1), f"after the last batch got {rest[:2]}…"
            if rest == []:
                rest = [key_fn(b) for b in fresh]
            assert rest == epoch1
        else:
            assert rest == epoch0[k:], f"resume after {k} batches differs ({num_workers=})"
            assert [key_fn(b) for b in fresh] == epoch1, f"epoch after resume differs ({k=})"
    return epoch0


def mixer_states(state: Any) -> list[dict]:
    """Every Mixer state inside a loader state (one per worker), found by its tag."""
    return find_states(state, Mixer.STATE_TAG)


@contextlib.contextmanager
def hang_guard(seconds: int = 60) -> Iterator[None]:
    """Interrupt the main thread (e.g. blocked opening a FIFO, or on a loader) after
    ``seconds``: SIGALRM raises TimeoutError there."""

    def hung(signum, frame):
        raise TimeoutError(f"blocked for {seconds} s")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for torchrun's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script: Path, *args: str, nproc: int = 2, timeout: int = 240) -> None:
    """Run ``script`` under a real ``torchrun`` of ``nproc`` ranks on this machine (gloo, a free
    loopback port), with ``tests/`` and the repo on ``PYTHONPATH``; fails the test with the
    job's output if any rank fails."""
    here = Path(__file__).parent
    cmd = [
        sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--nnodes=1",
        "--master_addr=127.0.0.1", f"--master_port={free_port()}", str(script), *args,
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(here.parent), str(here)]),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

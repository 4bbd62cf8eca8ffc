"""ThreadMapNode with ``num_threads=0`` (inline): its state at the end of the source loads."""

from __future__ import annotations

import pytest
from torchdata.nodes import IterableWrapper

from sdsnodes.nodes._threads import ThreadMapNode
from tests.utils import json_roundtrip


def _numbers(n):
    return IterableWrapper([{"__key__": str(i), "n": i} for i in range(n)])


class _DropOdd(ThreadMapNode):
    """Doubles even numbers, fails (a counted skip) on odd ones."""

    def process(self, sample):
        if sample["n"] % 2:
            raise ValueError(f"odd {sample['n']}")
        return {**sample, "n": 2 * sample["n"]}


@pytest.mark.parametrize("num_threads", [0, 2])
def test_state_after_exhaustion_loads(num_threads):
    node = _DropOdd(_numbers(5), num_threads=num_threads)
    node.reset()
    assert [s["n"] for s in node] == [0, 4, 8]
    state = json_roundtrip(node.state_dict())
    assert state["errors"]["skipped"] == {"error": 2}

    resumed = _DropOdd(_numbers(5), num_threads=num_threads)
    resumed.reset(state)  # KeyError: 'source' before the fix, for num_threads=0
    assert list(resumed) == []
    assert resumed.state_dict()["errors"]["skipped"] == {"error": 2}


def test_inline_tail_skips_are_in_the_final_state():
    """Items skipped after the last one yielded are counted in the final inline state."""
    node = _DropOdd(_numbers(4), num_threads=0)  # 3 is skipped at the tail
    node.reset()
    assert [s["n"] for s in node] == [0, 4]
    state = json_roundtrip(node.state_dict())
    assert state["errors"]["skipped"] == {"error": 2}
    resumed = _DropOdd(_numbers(4), num_threads=0)
    resumed.reset(state)
    assert list(resumed) == []


@pytest.mark.parametrize("saved, resumed", [(3, 0), (0, 3), (2, None), (None, 0)])
@pytest.mark.parametrize("stop", [1, 4, 9])
def test_a_state_resumes_with_another_thread_count(saved, resumed, stop):
    """``num_threads=None`` sizes the pool to the machine, so a state saved threaded may be
    resumed inline and the other way round: the rest comes exactly, skips counted once."""
    whole = [s["n"] for s in _DropOdd(_numbers(30), num_threads=0)]
    node = _DropOdd(_numbers(30), num_threads=saved)
    node.reset()
    head = [next(node)["n"] for _ in range(stop)]
    state = json_roundtrip(node.state_dict())
    again = _DropOdd(_numbers(30), num_threads=resumed)
    again.reset(state)
    assert head + [s["n"] for s in again] == whole
    assert again.state_dict()["errors"]["skipped"] == {"error": 15}


def test_auto_threads_follow_the_cores_and_the_workers(monkeypatch):
    import os

    from sdsnodes.nodes import _threads

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(2)), raising=False)
    assert _threads.auto_threads() == 2  # this process: both cores
    info = type("Info", (), {"num_workers": 2})()
    monkeypatch.setattr("torch.utils.data.get_worker_info", lambda: info)
    assert _threads.auto_threads() == 0  # 2 workers on 2 cores: inline, one core each
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert _threads.auto_threads() == 8  # 32 cores each: capped

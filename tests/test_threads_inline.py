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

"""Filter, Take, Skip: keep the samples a predicate accepts, the first n, or all but the first n.

Three small wrappers in one module because they share their shape: each resets its source,
reads from it, and nests the source's state under ``SOURCE_KEY`` beside one counter of its own.
Their counters are per epoch (a ``reset()`` without state starts them at 0) and per process: in
a DataLoader each (rank, worker) runs its own copy of the graph over its own shard, so
``Take(node, 100)`` yields up to 100 samples *per worker* per epoch. Resume is exact because
the state is taken after the item handed downstream, when the source's state already points
past everything these nodes consumed (the samples a Filter dropped included).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torchdata.nodes import BaseNode

from sdsnodes.sample import Sample


def _check_count(name: str, n: int) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"{name}={n!r} must be an int >= 0")
    return n


class _Counting(BaseNode[Sample]):
    """What the three share: the source reset and its state nested under ``SOURCE_KEY``, beside
    one per-epoch counter under ``COUNT_KEY``."""

    SOURCE_KEY = "source"
    COUNT_KEY = "count"

    def __init__(self, source: BaseNode) -> None:
        super().__init__()
        self.source = source
        self._count = 0

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        state = initial_state or {}
        self.source.reset(state.get(self.SOURCE_KEY))
        self._count = int(state.get(self.COUNT_KEY, 0))

    def get_state(self) -> dict[str, Any]:
        return {self.SOURCE_KEY: self.source.state_dict(), self.COUNT_KEY: self._count}


class Filter(_Counting):
    """Yield the items of ``source`` for which ``predicate(item)`` is true.

    A dropped item is not an error (it is not counted in the error stats): the Filter counts it
    in ``filtered`` (this epoch, this process), readable as :attr:`filtered` and in its state.

    Args:
        source (BaseNode): upstream node.
        predicate (Callable[[Any], bool]): called once per item; must be picklable (a module
            level function or an object) for spawned DataLoader workers. An exception it raises
            propagates.

    State:
        ``{SOURCE_KEY: <source state>, FILTERED_KEY: int}``.

    Raises:
        TypeError: ``predicate`` is not callable.
    """

    COUNT_KEY = FILTERED_KEY = "filtered"

    def __init__(self, source: BaseNode, predicate: Callable[[Any], bool]) -> None:
        if not callable(predicate):
            raise TypeError(f"predicate must be callable, got {predicate!r}")
        super().__init__(source)
        self.predicate = predicate

    @property
    def filtered(self) -> int:
        """Items dropped by the predicate since the epoch started (in this process)."""
        return self._count

    def next(self) -> Any:
        while True:
            item = next(self.source)
            if self.predicate(item):
                return item
            self._count += 1


class Take(_Counting):
    """Yield the first ``n`` items of each epoch of ``source``, then end the epoch.

    The source is not read past its ``n``-th item.

    Args:
        source (BaseNode): upstream node.
        n (int): items per epoch (and per process), >= 0.

    State:
        ``{SOURCE_KEY: <source state>, TAKEN_KEY: int}``.

    Raises:
        ValueError: ``n`` is not an int >= 0.
    """

    COUNT_KEY = TAKEN_KEY = "taken"

    def __init__(self, source: BaseNode, n: int) -> None:
        self.n = _check_count("n", n)
        super().__init__(source)

    def next(self) -> Any:
        if self._count >= self.n:
            raise StopIteration
        item = next(self.source)
        self._count += 1
        return item


class Skip(_Counting):
    """Drop the first ``n`` items of each epoch of ``source`` and yield the rest.

    The skipped items are read (and so downloaded and decoded, if the source does that): put
    Skip at the index level, right after the reader, to skip cheaply.

    Args:
        source (BaseNode): upstream node.
        n (int): items dropped at the start of each epoch (per process), >= 0.

    State:
        ``{SOURCE_KEY: <source state>, SKIPPED_KEY: int}``.

    Raises:
        ValueError: ``n`` is not an int >= 0.
    """

    COUNT_KEY = SKIPPED_KEY = "skipped"

    def __init__(self, source: BaseNode, n: int) -> None:
        self.n = _check_count("n", n)
        super().__init__(source)

    def next(self) -> Any:
        while self._count < self.n:
            next(self.source)  # StopIteration: the epoch is shorter than n
            self._count += 1
        return next(self.source)

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


class Filter(BaseNode[Sample]):
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

    SOURCE_KEY = "source"
    FILTERED_KEY = "filtered"

    def __init__(self, source: BaseNode, predicate: Callable[[Any], bool]) -> None:
        super().__init__()
        if not callable(predicate):
            raise TypeError(f"predicate must be callable, got {predicate!r}")
        self.source = source
        self.predicate = predicate
        self._filtered = 0

    @property
    def filtered(self) -> int:
        """Items dropped by the predicate since the epoch started (in this process)."""
        return self._filtered

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        state = initial_state or {}
        self.source.reset(state.get(self.SOURCE_KEY))
        self._filtered = int(state.get(self.FILTERED_KEY, 0))

    def next(self) -> Any:
        while True:
            item = next(self.source)
            if self.predicate(item):
                return item
            self._filtered += 1

    def get_state(self) -> dict[str, Any]:
        return {self.SOURCE_KEY: self.source.state_dict(), self.FILTERED_KEY: self._filtered}


class Take(BaseNode[Sample]):
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

    SOURCE_KEY = "source"
    TAKEN_KEY = "taken"

    def __init__(self, source: BaseNode, n: int) -> None:
        super().__init__()
        self.source = source
        self.n = _check_count("n", n)
        self._taken = 0

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        state = initial_state or {}
        self.source.reset(state.get(self.SOURCE_KEY))
        self._taken = int(state.get(self.TAKEN_KEY, 0))

    def next(self) -> Any:
        if self._taken >= self.n:
            raise StopIteration
        item = next(self.source)
        self._taken += 1
        return item

    def get_state(self) -> dict[str, Any]:
        return {self.SOURCE_KEY: self.source.state_dict(), self.TAKEN_KEY: self._taken}


class Skip(BaseNode[Sample]):
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

    SOURCE_KEY = "source"
    SKIPPED_KEY = "skipped"

    def __init__(self, source: BaseNode, n: int) -> None:
        super().__init__()
        self.source = source
        self.n = _check_count("n", n)
        self._skipped = 0

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        state = initial_state or {}
        self.source.reset(state.get(self.SOURCE_KEY))
        self._skipped = int(state.get(self.SKIPPED_KEY, 0))

    def next(self) -> Any:
        while self._skipped < self.n:
            next(self.source)  # StopIteration: the epoch is shorter than n
            self._skipped += 1
        return next(self.source)

    def get_state(self) -> dict[str, Any]:
        return {self.SOURCE_KEY: self.source.state_dict(), self.SKIPPED_KEY: self._skipped}

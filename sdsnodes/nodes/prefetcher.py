"""Prefetcher: torchdata's, with the source's final state once it is exhausted."""

from __future__ import annotations

from typing import Any

from torchdata.nodes import BaseNode
from torchdata.nodes import Prefetcher as _TorchdataPrefetcher


class Prefetcher(_TorchdataPrefetcher):
    """Prefetch ``prefetch_factor`` items of ``source`` in a thread (torchdata's ``Prefetcher``).

    torchdata's keeps, once its source is exhausted, the state the source had at its last item,
    so what the source did after it (samples skipped at the end of an epoch) is missing from
    ``state_dict()``. This one then reports the source's final state instead: every skip is in
    the state a user checkpoints.

    Args:
        source (BaseNode): the node to prefetch from.
        prefetch_factor (int): items prefetched ahead, >= 1.
        snapshot_frequency (int): the source's state is recorded every this many items (1).

    State:
        torchdata's: ``{"snapshot": <source state>, "steps_since_snapshot": int}``.
    """

    def __init__(self, source: BaseNode, prefetch_factor: int, snapshot_frequency: int = 1):
        if prefetch_factor < 1:
            raise ValueError(f"{prefetch_factor=} must be >= 1")
        super().__init__(source, prefetch_factor, snapshot_frequency)
        self._end_state: dict[str, Any] | None = None

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        self._end_state = None
        super().reset(initial_state)

    def next(self) -> Any:
        try:
            return super().next()
        except StopIteration:
            # the prefetch thread has ended: reading the source's state here is safe
            self._end_state = self.source.state_dict()
            raise

    def get_state(self) -> dict[str, Any]:
        if self._end_state is not None:
            return {"snapshot": self._end_state, "steps_since_snapshot": 0}
        return super().get_state()

"""Prefetcher: torchdata's, with the source's final state once it is exhausted."""

from __future__ import annotations

from typing import Any

from torch.utils.data import get_worker_info
from torchdata.nodes import BaseNode
from torchdata.nodes import Prefetcher as _TorchdataPrefetcher


class Prefetcher(_TorchdataPrefetcher):
    """Prefetch ``prefetch_factor`` items of ``source`` in a thread (torchdata's ``Prefetcher``).

    torchdata's keeps, once its source is exhausted, the state the source had at its last item,
    so what the source did after it (samples skipped at the end of an epoch) is missing from
    ``state_dict()``. This one then reports the source's final state instead: every skip is in
    the state a user checkpoints.

    With ``in_workers=False`` it prefetches only outside DataLoader workers: in a worker (where
    it is reset) it passes its source's items through in the worker's own thread, since the
    DataLoader already keeps ``prefetch_factor`` batches per worker in flight. Items prefetched
    there too are memory held twice, for no speed: on the clip benchmark (2 workers, 2 cores),
    the same clips/s and 8 MiB less peak PSS (``benchmarks/bench_peers.py``, 2026-12-05). The
    presets build it so.

    Args:
        source (BaseNode): the node to prefetch from.
        prefetch_factor (int): items prefetched ahead, >= 1.
        snapshot_frequency (int): the source's state is recorded every this many items (1).
        in_workers (bool): prefetch in DataLoader workers too (True, torchdata's behaviour);
            False passes items through there.

    State:
        torchdata's: ``{"snapshot": <source state>, "steps_since_snapshot": int}``, passing
        through as prefetching (either resumes the other).
    """

    def __init__(
        self,
        source: BaseNode,
        prefetch_factor: int,
        snapshot_frequency: int = 1,
        *,
        in_workers: bool = True,
    ):
        if prefetch_factor < 1:
            raise ValueError(f"{prefetch_factor=} must be >= 1")
        super().__init__(source, prefetch_factor, snapshot_frequency)
        self.in_workers = bool(in_workers)
        self._inline = False  # passing through (set at reset)
        self._end_state: dict[str, Any] | None = None

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        self._end_state = None
        self._inline = not self.in_workers and get_worker_info() is not None
        if not self._inline:
            super().reset(initial_state)
            return
        BaseNode.reset(self, initial_state)  # torchdata's reset would start the thread
        if initial_state is None:
            self.source.reset(None)
            return
        self.source.reset(initial_state["snapshot"])
        for _ in range(int(initial_state["steps_since_snapshot"])):  # items yielded since
            next(self.source)

    def next(self) -> Any:
        try:
            return next(self.source) if self._inline else super().next()
        except StopIteration:
            # the prefetch thread has ended: reading the source's state here is safe
            self._end_state = self.source.state_dict()
            raise

    def get_state(self) -> dict[str, Any]:
        if self._end_state is not None:
            return {"snapshot": self._end_state, "steps_since_snapshot": 0}
        if self._inline:
            return {"snapshot": self.source.state_dict(), "steps_since_snapshot": 0}
        return super().get_state()

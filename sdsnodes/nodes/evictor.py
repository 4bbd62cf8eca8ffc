"""Evictor: releases each sample's cached files once it has been decoded."""

from __future__ import annotations

from typing import Any

from torchdata.nodes import BaseNode

from sdsnodes.nodes._cache_ref import cache_for, release
from sdsnodes.sample import CACHE_DIR, Sample


class Evictor(BaseNode[Sample]):
    """Unpin the cached files of every sample that passes, and trim the cache now and then.

    Put it right after :class:`Decoder`: from then on the sample holds tensors, not files, and
    the cache may evict its files whenever the directory is over its budget (the budget and the
    eviction policy are the cache's; see :class:`CachingDownloader`). Samples are yielded
    unchanged except that the internal ``__cache_dir__`` key is removed.

    Args:
        source (BaseNode): upstream node (usually a Decoder).
        trim_every (int): call the cache's ``trim()`` (a recount of the ledger and a WAL
            checkpoint: not free on a big cache) every this many samples (0 never); the
            cache also trims whenever a download needs room.

    State:
        ``{"source": <source state>, "seen": int}``.

    Raises:
        ValueError: ``trim_every`` < 0.
    """

    SOURCE_KEY = "source"
    SEEN_KEY = "seen"

    def __init__(self, source: BaseNode, trim_every: int = 1024) -> None:
        super().__init__()
        if trim_every < 0:
            raise ValueError(f"{trim_every=} must be >= 0")
        self.source = source
        self.trim_every = trim_every
        self._seen = 0

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        state = initial_state or {}
        self.source.reset(state.get(self.SOURCE_KEY))
        self._seen = int(state.get(self.SEEN_KEY, 0))

    def next(self) -> Sample:
        sample = next(self.source)
        cache_dir = sample.get(CACHE_DIR)
        release(sample)
        self._seen += 1
        if cache_dir and self.trim_every and self._seen % self.trim_every == 0:
            cache_for(cache_dir).trim()
        return sample

    def get_state(self) -> dict[str, Any]:
        return {self.SOURCE_KEY: self.source.state_dict(), self.SEEN_KEY: self._seen}

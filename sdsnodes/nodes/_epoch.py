"""Shared base of the leaf nodes that walk an epoch of index positions (IndexReader, Shuffler).

An epoch is a sequence of global positions ``0..n-1``; ``row = order(epoch, position)``. The
(rank, worker) pair with shard ``s`` of ``S`` reads positions ``s, s + S, s + 2S, …``, so the
state of a reader is just ``(epoch, local position)``: O(1) to store, O(1) to resume.
"""

from __future__ import annotations

from typing import Any

from torchdata.nodes import BaseNode

from sdsnodes.distributed import ShardInfo, shard_info
from sdsnodes.index.table import IndexTable
from sdsnodes.sample import Sample


class EpochReader(BaseNode[Sample]):
    """Base class: iterates this shard's positions of an epoch; subclasses map position → row."""

    EPOCH_KEY = "epoch"
    POSITION_KEY = "position"

    def __init__(self, rank: int | None = None, world_size: int | None = None) -> None:
        super().__init__()
        shard_info(rank, world_size)  # validates the pair now, at construction
        self.rank = rank
        self.world_size = world_size
        self._epoch = 0
        self._next_epoch: int | None = None
        self._started = False
        self._position = 0
        self._shard = ShardInfo()

    # -- what subclasses provide -------------------------------------------------------------
    _index: IndexTable

    @property
    def index(self) -> IndexTable:
        """The whole index (all shards), for random access: ``reader.index.sample(i)``."""
        return self._index

    def _begin_epoch(self, epoch: int) -> None:
        """Hook: prepare the order of ``epoch`` (called on every reset)."""

    def _row_at(self, position: int) -> int:
        """Row of the index at global ``position`` of the current epoch."""
        return position

    # -- the node contract -------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Make the next ``reset()`` without state start ``epoch`` (else it starts the next one).

        Raises:
            ValueError: ``epoch`` < 0.
        """
        if epoch < 0:
            raise ValueError(f"{epoch=} must be >= 0")
        self._next_epoch = int(epoch)

    @property
    def epoch(self) -> int:
        """The epoch being read."""
        return self._epoch

    @property
    def shard(self) -> ShardInfo:
        """This reader's (rank, worker) share, known after ``reset()``."""
        return self._shard

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        self._shard = shard_info(self.rank, self.world_size)
        if initial_state is not None:
            self._epoch = int(initial_state[self.EPOCH_KEY])
            self._position = int(initial_state[self.POSITION_KEY])
        else:
            if self._next_epoch is not None:
                self._epoch, self._next_epoch = self._next_epoch, None
            elif self._started:
                self._epoch += 1
            self._position = 0
        self._started = True
        self._begin_epoch(self._epoch)

    def __len__(self) -> int:
        """Samples this shard reads per epoch (known after ``reset()``)."""
        n, s = len(self.index), self._shard
        return len(range(s.shard, n, s.num_shards))

    def next(self) -> Sample:
        s = self._shard
        global_position = s.shard + self._position * s.num_shards
        if global_position >= len(self.index):
            raise StopIteration
        self._position += 1
        return self.index.sample(self._row_at(global_position), self._epoch)

    def get_state(self) -> dict[str, Any]:
        return {self.EPOCH_KEY: self._epoch, self.POSITION_KEY: self._position}

"""EpochReader: the base of the leaf nodes that walk an epoch of index positions (IndexReader).

An epoch is a sequence of global positions ``0..n-1``; ``row = order(epoch)(position)``, the
identity unless a :class:`~sdsnodes.nodes.shuffler.Shuffler` gave the reader a permutation (a
lazy index reshapes that permutation to read by row groups: ``index.localize``). The
(rank, worker) pair with shard ``s`` of ``S`` reads the ``r``-th remaining position for
``r = s, s + S, s + 2S, …``, so the state of a reader is just ``(epoch, local position)``: O(1)
to store, O(1) to resume. "Remaining" is everything from ``base`` on except a short ``skip``
list; both are 0/empty except in an epoch resumed elastically (another world size or worker
count: see :mod:`sdsnodes.elastic`), where they describe what the old layout had consumed.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from typing import Any

from torchdata.nodes import BaseNode

from sdsnodes.distributed import ShardInfo, shard_info
from sdsnodes.index.lazy import LazyIndexTable
from sdsnodes.index.table import IndexTable
from sdsnodes.nodes.graph import NODE_KEY
from sdsnodes.sample import Sample

UNEVEN = ("pad", "drop", "keep")

Order = Callable[[int], Callable[[int], int]]
"""The order of the epochs: ``order(epoch)(position) -> row``, a pure function of its arguments
(the same in every process, so the shards of all (rank, worker) pairs stay disjoint)."""


def position_of(base: int, skip: list[int], rank: int) -> int:
    """The ``rank``-th (0-based) position from ``base`` on that is not in the sorted ``skip``."""
    position = base + rank
    for skipped in skip[: bisect.bisect_right(skip, position + len(skip))]:
        if skipped <= position:
            position += 1
    return position


class EpochReader(BaseNode[Sample]):
    """Base class: iterates this shard's positions of an epoch, position → row by ``order``.

    Subclasses provide the index (``_index``); a Shuffler sets ``order`` (see :data:`Order`).

    Args:
        rank (int | None), world_size (int | None): explicit distributed position.
        uneven (str | None): when the rows do not split evenly over ``world_size * num_workers``
            shards: ``"pad"`` (every shard reads ceil(n / S), repeating a few rows), ``"drop"``
            (every shard reads floor(n / S)) or ``"keep"`` (shards differ by one). None: ``"pad"``
            when ``world_size > 1`` (so every rank gets as many batches and DDP never hangs),
            else ``"keep"``.

    State:
        ``{NODE_KEY: STATE_TAG, EPOCH_KEY: int, POSITION_KEY: int}`` plus the layout it was
        saved under (``SHARD_KEY``, ``NUM_SHARDS_KEY``, ``NUM_ROWS_KEY``, ``INDEX_KEY``: checked
        on resume) and the elastic cursor's (``BASE_KEY``, ``SKIP_KEY``, ``READER_KEY``): ten
        small values, whatever the index size. Read and written through these constants only.
    """

    STATE_TAG = "EpochReader"
    """``state[NODE_KEY]``: how elastic resume finds the readers' states in a loader's state."""
    EPOCH_KEY = "epoch"
    POSITION_KEY = "position"  # the next local position of this shard
    SHARD_KEY = "shard"  # the layout the state was saved under: checked on resume
    NUM_SHARDS_KEY = "num_shards"
    NUM_ROWS_KEY = "num_rows"
    INDEX_KEY = "index"  # the index's fingerprint
    BASE_KEY = "base"  # positions consumed before an elastic resume: all below base, and skip
    SKIP_KEY = "skip"
    READER_KEY = "reader"  # the reader's id in elastic cursors

    def __init__(
        self, rank: int | None = None, world_size: int | None = None, uneven: str | None = None
    ) -> None:
        super().__init__()
        shard_info(rank, world_size)  # validates the pair now, at construction
        if uneven is not None and uneven not in UNEVEN:
            raise ValueError(f"{uneven=} must be one of {UNEVEN} or None")
        self.rank = rank
        self.world_size = world_size
        self.uneven = uneven
        self.reader_id = "0"  # names this reader in elastic cursors; Mixer prefixes stream names
        self.order: Order | None = None  # None: index order; a Shuffler sets its permutation
        self._rows: Callable[[int], int] | None = None  # this epoch's order(epoch); None: identity
        self._epoch = 0
        self._next_epoch: int | None = None
        self._next_layout: tuple[int, list[int]] | None = None
        self._started = False
        self._position = 0
        self._base, self._skip = 0, []
        self._shard = ShardInfo()

    # -- what subclasses provide -------------------------------------------------------------
    _index: IndexTable | LazyIndexTable

    @property
    def index(self) -> IndexTable | LazyIndexTable:
        """The whole index (all shards), for random access: ``reader.index.sample(i)``."""
        return self._index

    # -- epochs ---------------------------------------------------------------------------------
    def set_epoch(self, epoch: int, base: int = 0, skip: list[int] | None = None) -> None:
        """Make the next ``reset()`` without state start ``epoch`` (else it starts the next one).

        Args:
            epoch (int): the epoch, >= 0.
            base (int), skip (list[int]): positions already consumed in that epoch: all below
                ``base`` and those listed (for an elastic resume).

        Raises:
            ValueError: ``epoch`` < 0.
        """
        if epoch < 0:
            raise ValueError(f"{epoch=} must be >= 0")
        self._next_epoch = int(epoch)
        self._next_layout = (int(base), sorted(int(p) for p in skip or []))

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
            self._check_layout(initial_state)
            self._epoch = int(initial_state[self.EPOCH_KEY])
            self._position = int(initial_state[self.POSITION_KEY])
            self._base = int(initial_state.get(self.BASE_KEY, 0))
            self._skip = list(initial_state.get(self.SKIP_KEY, []))
        else:
            if self._next_epoch is not None:
                self._epoch, self._next_epoch = self._next_epoch, None
                self._base, self._skip = self._next_layout or (0, [])
            else:
                self._epoch += 1 if self._started else 0
                self._base, self._skip = 0, []
            self._position = 0
        self._started = True
        rows = self.order(self._epoch) if self.order is not None else None
        self._rows = self.index.localize(rows, self._shard.num_shards)  # lazy: by row groups

    def _check_layout(self, state: dict[str, Any]) -> None:
        shards, rows = state.get(self.NUM_SHARDS_KEY), state.get(self.NUM_ROWS_KEY)
        if shards is not None and shards != self._shard.num_shards:
            raise ValueError(
                f"the state was saved with {shards} shards (world_size * num_workers), this run has "
                f"{self._shard.num_shards}; to resume with another layout use "
                "sdsnodes.load_elastic_state(...) (docs/distributed.md)"
            )
        saved = state.get(self.INDEX_KEY)
        if saved is not None and saved != self.index.fingerprint:
            raise ValueError(
                f"the state was saved for index {saved}, this one is {self.index.fingerprint}: the "
                "index (its files, filter or renames) changed since; resume with the same index"
            )
        if rows is not None and rows != len(self.index):
            raise ValueError(
                f"the state was saved for an index of {rows} rows, this one has {len(self.index)}: "
                "the index changed; resume with the index the state was saved with"
            )

    # -- positions ------------------------------------------------------------------------------
    def _remaining(self) -> int:
        return len(self.index) - self._base - len(self._skip)

    def __len__(self) -> int:
        """Samples this shard reads this epoch (known after ``reset()``)."""
        return self._length(self._shard)

    def _length(self, s: ShardInfo) -> int:
        m = self._remaining()
        if m <= 0:
            return 0
        mode = self.uneven or ("pad" if s.world_size > 1 else "keep")
        if mode == "pad":
            return -(-m // s.num_shards)
        if mode == "drop":
            return m // s.num_shards
        return len(range(s.shard, m, s.num_shards))

    def position_of(self, rank: int) -> int:
        """Global position of the ``rank``-th remaining position (past ``base``, not in ``skip``)."""
        return position_of(self._base, self._skip, rank)

    def samples_of(self, shard: ShardInfo) -> Iterator[Sample]:
        """The samples the reader of ``shard`` (another rank or worker of this layout) reads this
        epoch from its start, without moving this reader; known after ``reset()``. Balancing
        packed shards over ranks counts the others' rows with it (``nodes/_packed_balance.py``).
        """
        for i in range(self._length(shard)):
            yield self._sample_at(shard, i)

    def next(self) -> Sample:
        if self._position >= len(self):
            raise StopIteration
        self._position += 1
        return self._sample_at(self._shard, self._position - 1)

    def _sample_at(self, s: ShardInfo, i: int) -> Sample:
        """The ``i``-th sample of shard ``s`` this epoch."""
        rank = s.shard + i * s.num_shards
        position = self.position_of(rank % self._remaining())  # past the end: pad from the start
        row = position if self._rows is None else self._rows(position)
        return self.index.sample(row, self._epoch)

    def get_state(self) -> dict[str, Any]:
        s = self._shard
        return {
            NODE_KEY: self.STATE_TAG,
            self.EPOCH_KEY: self._epoch,
            self.POSITION_KEY: self._position,
            self.SHARD_KEY: s.shard,
            self.NUM_SHARDS_KEY: s.num_shards,
            self.NUM_ROWS_KEY: len(self.index),
            self.BASE_KEY: self._base,
            self.SKIP_KEY: list(self._skip),
            self.READER_KEY: self.reader_id,
            self.INDEX_KEY: self.index.fingerprint,
        }

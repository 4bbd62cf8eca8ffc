"""Shuffler: a new permutation of the index every epoch, deterministic in (seed, epoch).

Why a wrapper that hands its reader an order, not a reader of its own nor an
``IndexReader(shuffle=...)`` option: the order of an epoch must live where positions are sharded
and counted — in the reader — so that a graph has one reader per index, one state per reader
and one id in elastic cursors (a Shuffler that was a second reader over the same index, as
before, gave a graph two readers with one id and left its source never reset). A permutation
cannot be applied downstream of a sequential stream without buffering, so the Shuffler gives
its :class:`IndexReader` the permutation (``reader.order``) once, at construction, and from then
on is a plain wrapper: it resets its source, yields what its source yields, and nests its
source's state under ``SOURCE_KEY`` beside its own seed. ``Shuffler(reader, seed=...)`` stays
the one way to shuffle, chained like every other node; IndexReader keeps no shuffle arguments.
"""

from __future__ import annotations

from typing import Any

from torchdata.nodes import BaseNode

from sdsnodes.index.permutation import ChunkPermutation, FeistelPermutation
from sdsnodes.index.table import IndexTable
from sdsnodes.nodes.index_reader import IndexReader
from sdsnodes.sample import Sample

MODES = ("global", "chunk")


class Shuffler(BaseNode[Sample]):
    """Read an :class:`IndexReader`'s rows in a fresh random order every epoch.

    ``mode="global"`` (default): an exact permutation of all rows, a keyed Feistel network over
    ``(seed, epoch)`` (see :mod:`sdsnodes.index.permutation`): O(1) memory and O(1) per row, the
    same in every process, so the shards of all (rank, worker) pairs stay disjoint and their
    union is the epoch. ``mode="chunk"``: chunk-local — chunks of ``chunk_size`` rows in a random
    order, rows shuffled within windows of ``window`` chunks — for reads that should stay local. A lazy
    index (``IndexReader(lazy=True)``) reorders either mode into its lanes of row-group chunks
    (:class:`~sdsnodes.index.permutation.LanePermutation`), so each reader fetches each of its
    chunks once per epoch. The reader keeps sharding and counting positions;
    the Shuffler sets its ``order`` (so one reader can be shuffled by one Shuffler only).

    Args:
        source (IndexReader): the index to shuffle (random access is required).
        seed (int): base seed; epoch ``e`` uses ``(seed, e)``.
        mode (str): ``"global"`` or ``"chunk"``.
        chunk_size (int): rows per chunk in chunk mode.
        window (int): chunks shuffled together in chunk mode.

    State:
        ``{SOURCE_KEY: <the reader's state>, SEED_KEY: int}`` — O(1), whatever the index size.
        A state saved before the reader's state was nested (the reader's keys and the seed in
        one dict) still loads.

    Raises:
        TypeError: ``source`` is not an :class:`IndexReader`.
        ValueError: an unknown ``mode``, ``chunk_size``/``window`` < 1, or a ``source`` that
            another Shuffler shuffles already.
    """

    SOURCE_KEY = "source"
    SEED_KEY = "seed"

    def __init__(
        self,
        source: IndexReader,
        seed: int = 0,
        mode: str = "global",
        chunk_size: int = 65536,
        window: int = 8,
    ) -> None:
        super().__init__()
        if not isinstance(source, IndexReader):
            raise TypeError(
                f"Shuffler needs an IndexReader source (random access to rows), got "
                f"{type(source).__name__}; put Shuffler right after IndexReader."
            )
        if mode not in MODES:
            raise ValueError(f"{mode=} must be one of {MODES}")
        if chunk_size < 1 or window < 1:
            raise ValueError(f"{chunk_size=} and {window=} must be >= 1")
        if source.order is not None:
            raise ValueError("this IndexReader is shuffled already: give each Shuffler its own")
        self.source = source
        self.seed = int(seed)
        self.mode, self.chunk_size, self.window = mode, chunk_size, window
        source.order = self.order

    def order(self, epoch: int) -> FeistelPermutation | ChunkPermutation:
        """The permutation of ``epoch``: position → row."""
        n = len(self.index)
        if self.mode == "chunk":
            return ChunkPermutation(n, self.chunk_size, self.window, self.seed, epoch)
        return FeistelPermutation(n, self.seed, epoch)

    @property
    def index(self) -> IndexTable:
        """The whole index (all shards): the source's."""
        return self.source.index

    @property
    def epoch(self) -> int:
        """The epoch being read (the source's)."""
        return self.source.epoch

    def set_epoch(self, epoch: int, base: int = 0, skip: list[int] | None = None) -> None:
        """The source's :meth:`~sdsnodes.nodes.epoch_reader.EpochReader.set_epoch`."""
        self.source.set_epoch(epoch, base, skip)

    def __len__(self) -> int:
        """Samples this shard reads this epoch (the source's count)."""
        return len(self.source)

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        if initial_state is None:
            self.source.reset(None)
            return
        seed = int(initial_state.get(self.SEED_KEY, self.seed))
        if seed != self.seed:
            raise ValueError(
                f"state was saved with seed={seed}, this Shuffler has seed={self.seed}: resume "
                "with the same seed"
            )
        # a state saved before the source's was nested is the reader's state itself
        self.source.reset(initial_state.get(self.SOURCE_KEY, initial_state))

    def next(self) -> Sample:
        return next(self.source)

    def get_state(self) -> dict[str, Any]:
        return {self.SOURCE_KEY: self.source.state_dict(), self.SEED_KEY: self.seed}

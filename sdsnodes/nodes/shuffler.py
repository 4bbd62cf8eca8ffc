"""Shuffler: a new permutation of the index every epoch, deterministic in (seed, epoch)."""

from __future__ import annotations

from typing import Any

from sdsnodes.index.permutation import ChunkPermutation, FeistelPermutation
from sdsnodes.nodes.epoch_reader import EpochReader
from sdsnodes.nodes.index_reader import IndexReader

MODES = ("global", "chunk")


class Shuffler(EpochReader):
    """Read an :class:`IndexReader`'s rows in a fresh random order every epoch.

    ``mode="global"`` (default): an exact permutation of all rows, a keyed Feistel network over
    ``(seed, epoch)`` (see :mod:`sdsnodes.index.permutation`): O(1) memory and O(1) per row, the
    same in every process, so the shards of all (rank, worker) pairs stay disjoint and their
    union is the epoch. ``mode="chunk"``: chunk-local — chunks of ``chunk_size`` rows in a random
    order, rows shuffled within windows of ``window`` chunks — for indexes whose reads should stay
    local (row groups of a huge remote index). The source is used for random access only.

    Args:
        source (IndexReader): the index to shuffle (random access is required).
        seed (int): base seed; epoch ``e`` uses ``(seed, e)``.
        mode (str): ``"global"`` or ``"chunk"``.
        chunk_size (int): rows per chunk in chunk mode.
        window (int): chunks shuffled together in chunk mode.

    State:
        ``{"epoch": int, "position": int, "seed": int, ...layout}`` (see :class:`IndexReader`) —
        O(1), whatever the index size.

    Raises:
        TypeError: ``source`` is not an :class:`IndexReader`.
        ValueError: an unknown ``mode``, or ``chunk_size``/``window`` < 1.
    """

    SEED_KEY = "seed"

    def __init__(
        self,
        source: IndexReader,
        seed: int = 0,
        mode: str = "global",
        chunk_size: int = 65536,
        window: int = 8,
    ) -> None:
        if not isinstance(source, IndexReader):
            raise TypeError(
                f"Shuffler needs an IndexReader source (random access to rows), got "
                f"{type(source).__name__}; put Shuffler right after IndexReader."
            )
        if mode not in MODES:
            raise ValueError(f"{mode=} must be one of {MODES}")
        if chunk_size < 1 or window < 1:
            raise ValueError(f"{chunk_size=} and {window=} must be >= 1")
        super().__init__(source.rank, source.world_size, source.uneven)
        self.source = source
        self.seed = int(seed)
        self.mode, self.chunk_size, self.window = mode, chunk_size, window
        self._index = source.index
        self._order: FeistelPermutation | ChunkPermutation | None = None

    def order(self, epoch: int) -> FeistelPermutation | ChunkPermutation:
        """The permutation of ``epoch``: position → row."""
        n = len(self.index)
        if self.mode == "chunk":
            return ChunkPermutation(n, self.chunk_size, self.window, self.seed, epoch)
        return FeistelPermutation(n, self.seed, epoch)

    def _begin_epoch(self, epoch: int) -> None:
        self._order = self.order(epoch)

    def _row_at(self, position: int) -> int:
        return self._order(position)  # type: ignore[misc]

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        if (
            initial_state is not None
            and int(initial_state.get(self.SEED_KEY, self.seed)) != self.seed
        ):
            raise ValueError(
                f"state was saved with seed={initial_state[self.SEED_KEY]}, this Shuffler has "
                f"seed={self.seed}: resume with the same seed"
            )
        super().reset(initial_state)

    def get_state(self) -> dict[str, Any]:
        return {**super().get_state(), self.SEED_KEY: self.seed}

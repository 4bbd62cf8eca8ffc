"""Shuffler: a new global permutation of the index every epoch, deterministic in (seed, epoch)."""

from __future__ import annotations

from typing import Any

import numpy as np

from sdsnodes.nodes._epoch import EpochReader
from sdsnodes.nodes.index_reader import IndexReader


class Shuffler(EpochReader):
    """Read an :class:`IndexReader`'s rows in a fresh random order every epoch.

    The order is a global permutation of all rows, ``numpy.random.default_rng([seed, epoch])
    .permutation(n)``, the same in every process, so the shards of all (rank, worker) pairs
    stay disjoint and their union is the epoch. Samples are the source's (``__epoch__`` set).
    The source is used for random access only; it is not iterated.

    Args:
        source (IndexReader): the index to shuffle (random access is required).
        seed (int): base seed; epoch ``e`` uses ``[seed, e]``.

    State:
        ``{"epoch": int, "position": int, "seed": int, ...layout}`` (see :class:`IndexReader`) —
        O(1), whatever the index size.

    Raises:
        TypeError: ``source`` is not an :class:`IndexReader`.
    """

    SEED_KEY = "seed"

    def __init__(self, source: IndexReader, seed: int = 0) -> None:
        if not isinstance(source, IndexReader):
            raise TypeError(
                f"Shuffler needs an IndexReader source (random access to rows), got "
                f"{type(source).__name__}; put Shuffler right after IndexReader."
            )
        super().__init__(source.rank, source.world_size, source.uneven)
        self.source = source
        self.seed = int(seed)
        self._index = source.index
        self._order: np.ndarray | None = None
        self._order_epoch: int | None = None

    def _begin_epoch(self, epoch: int) -> None:
        if self._order_epoch != epoch:
            rng = np.random.default_rng([self.seed, epoch])
            self._order = rng.permutation(len(self.index))  # [n] int64 rows
            self._order_epoch = epoch

    def _row_at(self, position: int) -> int:
        return int(self._order[position])  # type: ignore[index]

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

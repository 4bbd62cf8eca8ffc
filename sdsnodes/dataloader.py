"""StreamingDataLoader: the loader to hand a trainer, its ``len()`` the batches of this rank."""

from __future__ import annotations

from typing import Any

from torchdata.stateful_dataloader import StatefulDataLoader

from sdsnodes.dataset import StreamingDataset


class StreamingDataLoader(StatefulDataLoader):
    """A ``StatefulDataLoader`` over a :class:`~sdsnodes.StreamingDataset` whose ``len()`` is
    the number of batches this rank yields in an epoch (Lightning and the HF Trainer size their
    epochs, progress bars and schedulers by it), with exact resume as ``StatefulDataLoader``.

    ``len(StreamingDataset)`` counts index rows, and a plain DataLoader over an iterable dataset
    reports that; the batches, though, depend on ``num_workers`` (each worker batches its own
    share): ``len(loader) == dataset.num_batches(num_workers)`` (see
    :mod:`sdsnodes.batch_count`).

    Args:
        dataset (StreamingDataset): the dataset; its graph batches already.
        batch_size (None): must be None (the graph's ``batch_size`` is used).
        num_workers (int): DataLoader workers, >= 0.
        **kwargs: the other ``StatefulDataLoader`` arguments (``persistent_workers``,
            ``pin_memory``, ``multiprocessing_context``...).

    Raises:
        TypeError: ``dataset`` is not a StreamingDataset.
        ValueError: a ``batch_size`` other than None. ``len()`` raises ValueError for a graph
            whose batch count is not known up front (mixing, filters, bucketing).
    """

    def __init__(
        self,
        dataset: StreamingDataset,
        batch_size: int | None = None,
        num_workers: int = 0,
        **kwargs: Any,
    ) -> None:
        if not isinstance(dataset, StreamingDataset):
            raise TypeError(f"StreamingDataLoader takes a StreamingDataset, not {dataset!r}")
        if batch_size is not None:
            raise ValueError(
                f"{batch_size=}: the graph batches already (its Batcher's batch_size); pass "
                "batch_size=None"
            )
        super().__init__(dataset, batch_size=None, num_workers=num_workers, **kwargs)

    def __len__(self) -> int:
        """Batches this rank yields in one epoch (from its start)."""
        return self.dataset.num_batches(self.num_workers)

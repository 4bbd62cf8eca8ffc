"""How many batches a rank's DataLoader yields in an epoch: what ``len(loader)`` must say for
Lightning and the HF Trainer (their progress bars, schedulers and ``max_steps`` read it).

A DataLoader over a :class:`~sdsnodes.StreamingDataset` runs one copy of the graph per worker,
and each worker batches its own share of the index: with ``W`` workers on rank ``r`` of ``R``
the reader of worker ``w`` is shard ``r * W + w`` of ``R * W`` and reads ``n_w`` rows
(:class:`~sdsnodes.nodes.epoch_reader.EpochReader`'s rule: ``ceil(n / S)`` padded when
``world_size > 1``, else the shards differ by one, or ``floor(n / S)`` with ``uneven="drop"``),
so the rank yields ``sum_w ceil(n_w / B)`` batches, or ``sum_w floor(n_w / B)`` with
``drop_last``. That sum depends on ``num_workers``, which the dataset does not know; hence
:func:`num_batches` takes it, and :class:`~sdsnodes.StreamingDataLoader` passes its own.

The count holds for a graph of one reader and one ``Batcher`` with nodes in between that keep
every sample (downloads, decoding, the presets' chain), from the start of an epoch. Samples
skipped as bad (``on_error="skip"``) make it an upper bound. Graphs whose batch count depends on
the data or on random draws are refused with the reason: a ``Filter``/``Take``/``Skip``, bucketing,
stream batching, packed shards, rotation, and a ``Mixer`` (its count depends on its draws and
stop criterion).
"""

from __future__ import annotations

from torchdata.nodes import BaseNode, Batcher

from sdsnodes.distributed import ShardInfo, rank_and_world_size
from sdsnodes.nodes.epoch_reader import EpochReader
from sdsnodes.nodes.graph import iter_nodes

UNCOUNTABLE = ("Mixer", "BucketBatcher", "StreamBatcher", "Filter", "Take", "Skip",
               "Rotator")  # fmt: skip
"""Nodes whose output count is not known before the epoch (by class name, so this module
imports none of them)."""


def rows_per_shard(reader: EpochReader, shard: ShardInfo) -> int:
    """Rows the reader yields in a fresh epoch as shard ``shard`` (EpochReader's rule)."""
    n, s = len(reader.index), shard
    mode = reader.uneven or ("pad" if s.world_size > 1 else "keep")
    if mode == "pad":
        return -(-n // s.num_shards)
    if mode == "drop":
        return n // s.num_shards
    return len(range(s.shard, n, s.num_shards))


def num_batches(graph: BaseNode, num_workers: int = 0) -> int:
    """Batches one rank yields in one epoch, from its start, with ``num_workers`` workers.

    Args:
        graph (BaseNode): the graph (not iterated), one reader and one ``Batcher``.
        num_workers (int): the DataLoader's ``num_workers``, >= 0 (0: the main process reads).

    Returns:
        int: ``sum over workers w of ceil(n_w / batch_size)`` (``floor`` with ``drop_last``),
        ``n_w`` the rows of worker ``w``'s shard on this rank. An upper bound when bad samples
        are skipped.

    Raises:
        ValueError: ``num_workers`` < 0, or a graph whose batch count is not known up front
            (the message names the node: a Mixer, Filter, Take, Skip, bucketing...), or one
            without exactly one reader and one Batcher.
    """
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"{num_workers=} must be an int >= 0 (the DataLoader's num_workers)")
    nodes = list(iter_nodes(graph))
    for node in nodes:
        name = type(node).__name__
        if name == "ShardReader":
            raise ValueError(
                "the graph reads packed shards (a ShardReader): its batch count is the rows of "
                "the shards this rank gets, which change every epoch with the shard order; with "
                "world_size > 1 and balance=True every rank yields the same count each epoch "
                "(docs/packing.md, Ranks), but not a fixed one: give the trainer a step count "
                "(Lightning: limit_train_batches / max_steps; HF: max_steps)"
            )
        if name in UNCOUNTABLE:
            raise ValueError(
                f"the graph has a {name}: how many batches it yields depends on the data or on "
                "its draws, so len() cannot be known up front; give the trainer a step count "
                "(Lightning: limit_train_batches / max_steps; HF: max_steps)"
            )
    readers = [n for n in nodes if isinstance(n, EpochReader)]
    batchers = [n for n in nodes if isinstance(n, Batcher)]
    if len(readers) != 1 or len(batchers) != 1:
        raise ValueError(
            f"counting batches needs a graph of one reader and one Batcher; this one has "
            f"{len(readers)} readers and {len(batchers)} Batchers"
        )
    reader, batcher = readers[0], batchers[0]
    rank, world_size = rank_and_world_size(reader.rank, reader.world_size)
    workers = max(num_workers, 1)
    total = 0
    for worker in range(workers):
        rows = rows_per_shard(reader, ShardInfo(rank, world_size, worker, workers))
        full, rest = divmod(rows, batcher.batch_size)
        total += full + (1 if rest and not batcher.drop_last else 0)
    return total

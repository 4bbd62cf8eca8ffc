"""Equal batches per rank for packed shards: the rows each ShardReader reads in an epoch.

Shards hold unequal row counts (``sds pack`` sizes them by bytes), so ranks that read as many
shards still read unequal rows, and DDP hangs on the rank that runs out first. Every reader
knows, without communication, the rows of every (rank, worker) reader this epoch: the shard
table (``num_rows`` per shard), the layout (:class:`~sdsnodes.distributed.ShardInfo`) and the
epoch's shard order (the Shuffler's permutation, a pure function of seed and epoch). It asks
its :class:`~sdsnodes.nodes.epoch_reader.EpochReader` for each other reader's shards
(``EpochReader.samples_of``: the split is the reader's own code, not a copy of it) and caps
itself:

* without a batch size, at its share of ``T = min over ranks of the rank's rows``;
* with batch size ``B``, at its share of ``T' = min over ranks of sum_w floor(n_w / B)``
  whole batches, times ``B``, so every rank yields exactly ``T'`` batches whatever
  ``drop_last``.

A rank's total is split over its workers by water-filling (equal shares, each worker at most
what it has, the rest to the next workers in order): deterministic, the same in every process.
In an elastically resumed epoch the rows are those left (a shard's rows minus the samples the
old layout delivered, :class:`~sdsnodes.nodes._packed_cursor.PartialShards`), so the new ranks
are capped at the min of their remaining rows; later epochs follow the normal rule.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

from torchdata.nodes import BaseNode

from sdsnodes.index.packed import NUM_ROWS
from sdsnodes.nodes._packed_cursor import PartialShards
from sdsnodes.nodes.epoch_reader import EpochReader
from sdsnodes.nodes.graph import find_states, iter_nodes

logger = logging.getLogger(__name__)


def epoch_reader(source: BaseNode) -> EpochReader | None:
    """The EpochReader at the bottom of a ShardReader's source (None: none, e.g. a custom node)."""
    readers = [n for n in iter_nodes(source) if isinstance(n, EpochReader)]
    return readers[0] if len(readers) == 1 else None


def reader_rows(reader: EpochReader, partial: PartialShards) -> list[list[int]]:
    """Rows every (rank, worker) reader gets this epoch: ``rows[rank][worker]``.

    ``reader`` must be reset (its epoch, order and layout set). A shard counts its
    ``num_rows`` less the samples ``partial`` says were delivered before an elastic resume.
    Cost: one pass over the epoch's shard rows (O(shards)), once per epoch per reader.
    """
    layout = reader.shard
    out = []
    for rank in range(layout.world_size):
        ranks = []
        for worker in range(layout.num_workers):
            shard = dataclasses.replace(layout, rank=rank, worker=worker)
            units = reader.samples_of(shard)  # reads nothing: the shard table's rows
            ranks.append(sum(int(unit[NUM_ROWS]) - partial.peek(unit) for unit in units))
        out.append(ranks)
    return out


def water_fill(total: int, limits: list[int]) -> list[int]:
    """Split ``total`` (<= ``sum(limits)``) into parts ``<= limits``, as equal as they allow:
    each round gives every unfilled part an equal share, the remainder to the first ones."""
    parts = [0] * len(limits)
    left = min(total, sum(limits))
    while left > 0:
        open_ = [i for i, n in enumerate(limits) if parts[i] < n]
        share, extra = divmod(left, len(open_))
        for j, i in enumerate(open_):
            add = min(share + (1 if j < extra else 0), limits[i] - parts[i])
            parts[i] += add
            left -= add
    return parts


def caps(rows: list[list[int]], batch_size: int | None) -> list[list[int]]:
    """Each reader's cap of rows: see the module docstring (``rows`` from :func:`reader_rows`)."""
    if batch_size is None:
        total = min(sum(r) for r in rows)
        return [water_fill(total, r) for r in rows]
    full = [[n // batch_size for n in r] for r in rows]
    total = min(sum(f) for f in full)
    return [[b * batch_size for b in water_fill(total, f)] for f in full]


class Balance:
    """A ShardReader's cap of rows this epoch, its rows delivered, and the rows it leaves.

    Args:
        enabled (bool): cap the epoch when ``world_size > 1`` (False: read every row).
        batch_size (int | None): the batch size downstream, for whole batches; None: rows.

    State:
        ``{DELIVERED_KEY: rows delivered this epoch (samples and skipped rows), CAP_KEY: int |
        None, DROPPED_KEY: rows left unread this epoch to balance the ranks}``. The cap is a function of
        (epoch, layout) computed when the epoch starts; it is saved because in an elastically
        resumed epoch it also depends on the partly read shards, which are forgotten as they
        are reopened.

    Raises:
        ValueError: ``batch_size`` < 1.
    """

    DELIVERED_KEY = "delivered"
    CAP_KEY = "cap"
    DROPPED_KEY = "dropped_to_balance"

    def __init__(self, enabled: bool = True, batch_size: int | None = None) -> None:
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"{batch_size=} must be >= 1 (or None: balance rows, not batches)")
        self.enabled, self.batch_size = enabled, batch_size
        self.cap: int | None = None
        self.delivered = 0
        self.dropped = 0

    def start(self, source: BaseNode, partial: PartialShards, state: dict | None) -> None:
        """After the source's reset: the new epoch's cap (``state`` None) or the saved one."""
        if state is not None:
            self.delivered = int(state.get(self.DELIVERED_KEY, 0))
            self.dropped = int(state.get(self.DROPPED_KEY, 0))
            if self.CAP_KEY in state:
                self.cap = state[self.CAP_KEY]
                return
        if state is None:
            self.delivered = self.dropped = 0
        reader = epoch_reader(source) if self.enabled else None
        if reader is None or reader.shard.world_size == 1:
            self.cap = None
            return
        rows = reader_rows(reader, partial)
        layout = reader.shard
        self.cap = caps(rows, self.batch_size)[layout.rank][layout.worker]
        if state is None:
            left = rows[layout.rank][layout.worker] - self.cap
            self.dropped = left
            logger.info(
                "epoch %d, rank %d worker %d: %d rows, %d read and %d left to balance the ranks "
                "(rows per rank %s)", reader.epoch, layout.rank, layout.worker,
                rows[layout.rank][layout.worker], self.cap, left, [sum(r) for r in rows],
            )  # fmt: skip

    def full(self) -> bool:
        """Whether this epoch's cap is reached."""
        return self.cap is not None and self.delivered >= self.cap

    def wants(self, ahead: int) -> bool:
        """Whether to queue another shard with ``ahead`` rows already queued or being read."""
        return self.cap is None or self.delivered + ahead < self.cap

    def state(self) -> dict[str, Any]:
        return {
            self.DELIVERED_KEY: self.delivered, self.CAP_KEY: self.cap,
            self.DROPPED_KEY: self.dropped,
        }  # fmt: skip


def balance_dropped(state: object) -> int:
    """Rows the ShardReaders leave unread in the epoch of ``state`` (a loader's or a node's
    state) to give every rank as many batches; not errors (docs/packing.md, "Ranks").

    Each reader records its own when its epoch starts; a DataLoader worker that yields no
    batch in an epoch reports no state, so its rows are missing from the sum (they are logged).
    """
    from sdsnodes.nodes.shard_reader import ShardReader

    total = 0
    for d in find_states(state, ShardReader.STATE_TAG):
        total += int((d.get(ShardReader.BALANCE_KEY) or {}).get(Balance.DROPPED_KEY, 0))
    return total

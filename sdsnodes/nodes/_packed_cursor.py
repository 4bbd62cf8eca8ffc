"""Sample-exact elastic resume for packed shards: the partly read shards of a job, by shard.

A :class:`~sdsnodes.nodes.shard_reader.ShardReader`'s state holds its source's state *before*
the shard being read, so an elastic cursor (:mod:`sdsnodes.elastic`) counts that shard as
unread. What makes the resume exact is the shard's identity (its ``first_row``, the global row
number of its first row) and ``offset``, the samples of it delivered: the within-shard order is
seeded by ``(seed, epoch, first_row, first row of the window)``, so "its first ``offset``
samples" are the same in every rank/worker layout. :func:`partial_offsets` collects
``{first_row: offset}`` per reader from the old states; :func:`apply_partial` hands it to the new
graph's ShardReaders, which skip those samples (unread) in the resumed epoch only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torchdata.nodes import BaseNode

from sdsnodes.index.packed import FIRST_ROW
from sdsnodes.nodes.epoch_reader import EpochReader
from sdsnodes.nodes.graph import find_states, iter_nodes
from sdsnodes.sample import EPOCH, Sample

R = EpochReader
SHARDS_KEY = "shards"  # the cursor's key: {reader_id: {str(first_row): offset}}


class PartialShards:
    """The shards of one epoch to resume mid-way: ``{first_row: samples to skip}``.

    Args:
        epoch (int): the epoch the offsets belong to (other epochs skip nothing).
        offsets (dict[str, int] | None): ``str(first_row)`` → samples of that shard already
            delivered (keys are strings: JSON-compatible).

    State:
        ``{"epoch": int, "offsets": {str: int}}``: O(shards being read when the elastic state
        was taken); an entry goes when its shard is opened.
    """

    EPOCH_KEY = "epoch"
    OFFSETS_KEY = "offsets"

    def __init__(self, epoch: int = 0, offsets: dict[str, int] | None = None) -> None:
        self.epoch = int(epoch)
        self.offsets = {str(k): int(v) for k, v in (offsets or {}).items() if int(v) > 0}

    def take(self, unit: Sample) -> int:
        """Samples of shard ``unit`` (a shard table row) to skip; 0 after the first call."""
        if unit[EPOCH] != self.epoch:
            return 0
        return self.offsets.pop(str(unit[FIRST_ROW]), 0)

    def peek(self, unit: Sample) -> int:
        """Samples of shard ``unit`` to skip, without taking them."""
        return self.offsets.get(str(unit[FIRST_ROW]), 0) if unit[EPOCH] == self.epoch else 0

    def state(self) -> dict[str, Any] | None:
        """The state (None when there is nothing left to skip)."""
        if not self.offsets:
            return None
        return {self.EPOCH_KEY: self.epoch, self.OFFSETS_KEY: dict(self.offsets)}

    @classmethod
    def load(cls, state: dict[str, Any] | None) -> PartialShards:
        """From :meth:`state`'s output (None: nothing to skip)."""
        if not state:
            return cls()
        return cls(state[cls.EPOCH_KEY], state[cls.OFFSETS_KEY])


def _reader_id(state: Any) -> str | None:
    """The id of the reader whose state is in ``state`` (a ShardReader's source state)."""
    found = find_states(state, R.STATE_TAG)
    return str(found[0][R.READER_KEY]) if found else None


def partial_offsets(states: Sequence[dict], epochs: dict[str, int]) -> dict[str, dict[str, int]]:
    """``{reader_id: {str(first_row): offset}}``: the shards partly read in the loader states.

    Found by the ShardReaders' tag; states saved before it (no tag) give nothing, so their
    shards are read again from the start (at-least-once, as before). An offset counts only in
    the epoch the cursor resumes (``epochs[reader_id]``); the same shard in several states (an
    entry left by an earlier elastic resume, and the worker that opened it) takes the largest.

    Args:
        states (Sequence[dict]): every rank's loader state.
        epochs (dict[str, int]): the epoch the cursor resumes, per reader id.
    """
    from sdsnodes.nodes.shard_reader import ShardReader as S

    out: dict[str, dict[str, int]] = {}
    for state in states:
        for d in find_states(state, S.STATE_TAG):
            rid = _reader_id(d.get(S.SOURCE_KEY))
            if rid is None or rid not in epochs:
                continue
            pending = PartialShards.load(d.get(S.PARTIAL_KEY))
            entries = dict(pending.offsets) if pending.epoch == epochs[rid] else {}
            first, offset = d.get(S.FIRST_ROW_KEY), int(d.get(S.OFFSET_KEY) or 0)
            if first is not None and offset > 0 and d.get(S.EPOCH_KEY) == epochs[rid]:
                entries[str(first)] = max(entries.get(str(first), 0), offset)
            mine = out.setdefault(rid, {})
            for key, value in entries.items():
                mine[key] = max(mine.get(key, 0), value)
    return {rid: offsets for rid, offsets in out.items() if offsets}


def apply_partial(root: BaseNode, epochs: dict[str, int], shards: dict[str, Any]) -> None:
    """Give every ShardReader of the graph its reader's offsets (``shards[reader_id]``) for the
    next ``reset()`` without state; a reader absent from ``shards`` skips nothing."""
    from sdsnodes.nodes.shard_reader import ShardReader

    for node in iter_nodes(root):
        if not isinstance(node, ShardReader):
            continue
        readers = [n for n in iter_nodes(node.source) if isinstance(n, EpochReader)]
        if readers and readers[0].reader_id in epochs:
            rid = readers[0].reader_id
            node.set_partial(PartialShards(epochs[rid], shards.get(rid, {})))

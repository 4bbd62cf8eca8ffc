"""Elastic resume: continue an epoch with another world size or number of workers.

``StatefulDataLoader`` refuses a state saved with another ``num_workers``, and the per-worker
positions of one layout mean nothing in another. What does carry over is the set of global
positions the old job consumed: every reader walks one global order (a function of seed and
epoch), so that set is "everything below ``base`` plus a short ``skip`` list" — the cursor.
A new layout reads the remaining positions round-robin; nothing is lost or repeated (the order
within the rest of the epoch may differ). Packed shards being read carry their offsets (samples
delivered) in the cursor, so the new layout skips those samples: exactly-once there too
(:mod:`sdsnodes.nodes._packed_cursor`). Building the cursor reads O(shards) small dicts; resuming
from it costs O(1) per reader, not a replay.

    states = [state_of_rank_0, state_of_rank_1]     # each rank's dl.state_dict() (all ranks!)
    ds = StreamingDataset(factory)
    load_elastic_state(ds, states)                  # before iter(); any world size / num_workers
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from torchdata.nodes import BaseNode

from sdsnodes.dataset import StreamingDataset
from sdsnodes.nodes._packed_cursor import SHARDS_KEY, apply_partial, partial_offsets
from sdsnodes.nodes.epoch_reader import EpochReader, position_of
from sdsnodes.nodes.graph import find_states, iter_nodes, iter_states
from sdsnodes.nodes.mixer import Mixer

R, M = EpochReader, Mixer
EPOCH_KEY, READERS_KEY, MIXERS_KEY = "epoch", "readers", "mixers"  # the cursor's keys


def _reader_keys() -> tuple[str, ...]:
    """What elastic resume reads from a reader's state (states saved before the tag are found
    by these keys)."""
    return (
        R.EPOCH_KEY, R.POSITION_KEY, R.SHARD_KEY, R.NUM_SHARDS_KEY, R.NUM_ROWS_KEY, R.BASE_KEY,
        R.SKIP_KEY, R.READER_KEY,
    )  # fmt: skip


def _mixer_keys() -> tuple[str, ...]:
    """What elastic resume reads from a Mixer's state (``BASE_STEP_KEY`` is optional)."""
    return (M.STEP_KEY, M.WORKERS_KEY, M.MIXER_KEY, M.STREAMS_KEY)


def _found(state: Any, tag: str, keys: tuple[str, ...]) -> list[dict]:
    """The states tagged ``tag`` in ``state``, each checked to hold ``keys``.

    Raises:
        ValueError: a tagged state lacks one of ``keys`` (saved by another version?).
    """
    found = find_states(state, tag, legacy_keys=keys)
    for d in found:
        missing = [k for k in keys if k not in d]
        if missing:
            raise ValueError(
                f"a state tagged {tag!r} lacks {missing} (it has {sorted(d)}): saved by another "
                "version of sdsnodes? elastic resume needs them all; resume with that version"
            )
    return found


def _reader_cursor(shards: list[dict]) -> dict[str, Any]:
    epoch = max(s[R.EPOCH_KEY] for s in shards)
    current = {s[R.SHARD_KEY]: s for s in shards if s[R.EPOCH_KEY] == epoch}
    num_shards, num_rows = shards[0][R.NUM_SHARDS_KEY], shards[0][R.NUM_ROWS_KEY]
    if sorted(current) != list(range(num_shards)) and epoch == min(s[R.EPOCH_KEY] for s in shards):
        raise ValueError(
            f"reader {shards[0][R.READER_KEY]!r}: got the states of shards {sorted(current)}, "
            f"need all {num_shards} (every rank's loader state, with every worker)"
        )
    first = current[next(iter(current))]
    base, skip = first[R.BASE_KEY], first[R.SKIP_KEY]
    remaining = num_rows - base - len(skip)
    next_positions = {}
    for shard, s in current.items():
        rank = shard + s[R.POSITION_KEY] * num_shards
        next_positions[shard] = position_of(base, skip, rank) if rank < remaining else math.inf
    new_base = min(next_positions.values(), default=math.inf)
    if new_base == math.inf:  # the epoch is complete: start the next one
        epoch, new_base, consumed = epoch + 1, 0, set()
    else:
        consumed = {p for p in skip if p >= new_base}
        for shard, s in current.items():
            for i in range(s[R.POSITION_KEY] - 1, -1, -1):
                rank = shard + i * num_shards
                if rank >= remaining:
                    continue
                position = position_of(base, skip, rank)
                if position < new_base:
                    break
                consumed.add(position)
    return {
        R.EPOCH_KEY: epoch,
        R.BASE_KEY: int(new_base),
        R.SKIP_KEY: sorted(consumed),
        R.NUM_ROWS_KEY: num_rows,
    }


def elastic_cursor(states: Sequence[dict]) -> dict[str, Any]:
    """The layout-free position of a job, from the loader states of all its ranks.

    Reader and Mixer states are found in the loader states by their tag
    (``state[NODE_KEY] == EpochReader.STATE_TAG`` / ``Mixer.STATE_TAG``, see
    :mod:`sdsnodes.nodes.graph`); states saved before the tag, by their keys. ShardReader
    states (``ShardReader.STATE_TAG``) give the packed shards being read and their offsets.

    Args:
        states (Sequence[dict]): ``state_dict()`` of every rank's StatefulDataLoader (or
            ``torchdata.nodes.Loader``), taken at the same step.

    Returns:
        dict: ``{"epoch": int, "readers": {reader_id: {"epoch", "base", "skip", "num_rows"}},
        "mixers": {mixer_id: int global step}, "shards": {reader_id: {str(first_row): int
        samples delivered}}}`` (packed shards being read), JSON-compatible; its size grows
        with the number of shards and in-flight items, never with the dataset.

    Raises:
        ValueError: states of some shards are missing, the states hold no reader, or a reader
            or Mixer state lacks a key elastic resume needs.
    """
    readers: dict[str, list[dict]] = defaultdict(list)
    mixers: dict[str, list[dict]] = defaultdict(list)
    epochs = [
        d[StreamingDataset.EPOCH_KEY]
        for state in states
        for d in iter_states(state)
        if StreamingDataset.GRAPH_KEY in d and StreamingDataset.EPOCH_KEY in d
    ]
    for state in states:
        for d in _found(state, R.STATE_TAG, _reader_keys()):
            readers[str(d[R.READER_KEY])].append(d)
        for d in _found(state, M.STATE_TAG, _mixer_keys()):
            mixers[str(d[M.MIXER_KEY])].append(d)
    if not readers:
        raise ValueError("no reader state found: pass the loaders' state_dict() of every rank")
    cursor_readers = {rid: _reader_cursor(shards) for rid, shards in readers.items()}
    cursor_mixers = {}
    for mid, ms in mixers.items():
        ranks = max(1, len(ms) // ms[0][M.WORKERS_KEY])
        steps = sum(m[M.STEP_KEY] for m in ms)
        cursor_mixers[mid] = steps // ranks + ms[0].get(M.BASE_STEP_KEY, 0)
    epoch = max(epochs) if epochs else max(r[R.EPOCH_KEY] for r in cursor_readers.values())
    if all(r[R.EPOCH_KEY] > epoch for r in cursor_readers.values()):
        epoch += 1
    reader_epochs = {rid: c[R.EPOCH_KEY] for rid, c in cursor_readers.items()}
    return {
        EPOCH_KEY: epoch,
        READERS_KEY: cursor_readers,
        MIXERS_KEY: cursor_mixers,
        SHARDS_KEY: partial_offsets(states, reader_epochs),
    }


def apply_cursor(root: BaseNode, cursor: dict[str, Any]) -> None:
    """Make the next ``root.reset()`` (without state) continue from ``cursor``.

    Raises:
        ValueError: the graph's readers or Mixers do not match the cursor's (a reader or a Mixer
            on one side only: another graph, or states that lack some), or the index changed size.
    """
    nodes = list(iter_nodes(root))
    readers = [n for n in nodes if isinstance(n, EpochReader)]
    mixers = [n for n in nodes if isinstance(n, Mixer)]
    cursor_readers, cursor_mixers = cursor[READERS_KEY], cursor.get(MIXERS_KEY, {})
    known = {r.reader_id for r in readers}
    if known != set(cursor_readers):
        raise ValueError(
            f"the cursor names readers {sorted(cursor_readers)}, this graph has {sorted(known)}: "
            "resume with the graph (and the states of every rank) the cursor was made from"
        )
    lacking = sorted(m.mixer_id for m in mixers if m.mixer_id not in cursor_mixers)
    if lacking:
        raise ValueError(
            f"the cursor has no step for the Mixers {lacking} of this graph (it has "
            f"{sorted(cursor_mixers)}): resume with the graph the states were saved from"
        )
    for reader in readers:
        c = cursor_readers[reader.reader_id]
        if c[R.NUM_ROWS_KEY] != len(reader.index):
            raise ValueError(
                f"reader {reader.reader_id!r}: the index changed ({c[R.NUM_ROWS_KEY]} → "
                f"{len(reader.index)} rows)"
            )
        reader.set_epoch(c[R.EPOCH_KEY], c[R.BASE_KEY], c[R.SKIP_KEY])
    for mixer in mixers:
        mixer.set_base_step(cursor_mixers[mixer.mixer_id])
    epochs = {rid: c[R.EPOCH_KEY] for rid, c in cursor_readers.items()}
    apply_partial(root, epochs, cursor.get(SHARDS_KEY, {}))  # a cursor without it: none


def load_elastic_state(target: Any, states_or_cursor: Sequence[dict] | dict) -> dict[str, Any]:
    """Resume ``target`` (a StreamingDataset or a graph) from states saved with another layout.

    Call before the first ``iter()`` of the new loader. The new job may have any world size and
    number of workers; the rest of the epoch is read with no sample lost or repeated.

    Args:
        target (StreamingDataset | BaseNode): the dataset given to the new StatefulDataLoader,
            or the root of a graph for ``torchdata.nodes.Loader``.
        states_or_cursor: the old loaders' state dicts of all ranks, or an
            :func:`elastic_cursor`.

    Returns:
        dict: the cursor used.
    """
    cursor = (
        states_or_cursor
        if isinstance(states_or_cursor, dict) and READERS_KEY in states_or_cursor
        else elastic_cursor(states_or_cursor)
    )  # type: ignore[arg-type]
    if isinstance(target, BaseNode):
        apply_cursor(target, cursor)
    else:
        target.load_cursor(cursor)
    return cursor


def gather_states(state: dict) -> list[dict]:
    """All ranks' loader states on every rank (``torch.distributed.all_gather_object``)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [state]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, state)
    return out

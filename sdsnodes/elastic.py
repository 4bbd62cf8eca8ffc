"""Elastic resume: continue an epoch with another world size or number of workers.

``StatefulDataLoader`` refuses a state saved with another ``num_workers``, and the per-worker
positions of one layout mean nothing in another. What does carry over is the set of global
positions the old job consumed: every reader walks one global order (a function of seed and
epoch), so that set is "everything below ``base`` plus a short ``skip`` list" — the cursor.
A new layout reads the remaining positions round-robin; nothing is lost or repeated (the order
within the rest of the epoch may differ). Building the cursor reads O(shards) small dicts; resuming
from it costs O(1) per reader, not a replay.

    states = [state_of_rank_0, state_of_rank_1]     # each rank's dl.state_dict() (all ranks!)
    ds = StreamingDataset(factory)
    load_elastic_state(ds, states)                  # before iter(); any world size / num_workers
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from typing import Any

from torchdata.nodes import BaseNode

from sdsnodes.nodes.epoch_reader import EpochReader, position_of
from sdsnodes.nodes.graph import iter_nodes
from sdsnodes.nodes.mixer import Mixer

_READER_KEYS = {"epoch", "position", "shard", "num_shards", "num_rows", "base", "skip", "reader"}


def _walk(x: Any) -> Iterator[dict]:
    if isinstance(x, dict):
        yield x
        for v in x.values():
            yield from _walk(v)
    elif isinstance(x, (list, tuple)):
        for v in x:
            yield from _walk(v)


def _graph_states(state: Any) -> list[Any]:
    """The graph state of each worker in a loader state (StatefulDataLoader or Loader)."""
    found = [
        d["graph"]
        for d in _walk(state)
        if "graph" in d and "epoch" in d and isinstance(d["graph"], dict)
    ]
    return found or [state]


def _reader_cursor(shards: list[dict]) -> dict[str, Any]:
    epoch = max(s["epoch"] for s in shards)
    current = {s["shard"]: s for s in shards if s["epoch"] == epoch}
    num_shards, num_rows = shards[0]["num_shards"], shards[0]["num_rows"]
    if sorted(current) != list(range(num_shards)) and epoch == min(s["epoch"] for s in shards):
        raise ValueError(
            f"reader {shards[0]['reader']!r}: got the states of shards {sorted(current)}, need all "
            f"{num_shards} (every rank's loader state, with every worker)"
        )
    base, skip = current[next(iter(current))]["base"], current[next(iter(current))]["skip"]
    remaining = num_rows - base - len(skip)
    next_positions = {}
    for shard, s in current.items():
        rank = shard + s["position"] * num_shards
        next_positions[shard] = position_of(base, skip, rank) if rank < remaining else math.inf
    new_base = min(next_positions.values(), default=math.inf)
    if new_base == math.inf:  # the epoch is complete: start the next one
        return {"epoch": epoch + 1, "base": 0, "skip": [], "num_rows": num_rows}
    consumed = {p for p in skip if p >= new_base}
    for shard, s in current.items():
        for i in range(s["position"] - 1, -1, -1):
            rank = shard + i * num_shards
            if rank >= remaining:
                continue
            position = position_of(base, skip, rank)
            if position < new_base:
                break
            consumed.add(position)
    return {"epoch": epoch, "base": int(new_base), "skip": sorted(consumed), "num_rows": num_rows}


def elastic_cursor(states: Sequence[dict]) -> dict[str, Any]:
    """The layout-free position of a job, from the loader states of all its ranks.

    Args:
        states (Sequence[dict]): ``state_dict()`` of every rank's StatefulDataLoader (or
            ``torchdata.nodes.Loader``), taken at the same step.

    Returns:
        dict: ``{"epoch": int, "readers": {reader_id: {"epoch", "base", "skip", "num_rows"}},
        "mixers": {mixer_id: int global step}}``, JSON-compatible; its size grows with the
        number of shards and in-flight items, never with the dataset.

    Raises:
        ValueError: states of some shards are missing, or the states hold no reader.
    """
    readers: dict[str, list[dict]] = defaultdict(list)
    mixers: dict[str, list[dict]] = defaultdict(list)
    epochs = [d["epoch"] for st in states for d in _walk(st) if "graph" in d and "epoch" in d]
    for state in states:
        for graph in _graph_states(state):
            for d in _walk(graph):
                if _READER_KEYS <= d.keys():
                    readers[str(d["reader"])].append(d)
                elif {"step", "num_workers", "streams", "mixer"} <= d.keys():
                    mixers[str(d["mixer"])].append(d)
    if not readers:
        raise ValueError("no reader state found: pass the loaders' state_dict() of every rank")
    cursor_readers = {rid: _reader_cursor(shards) for rid, shards in readers.items()}
    cursor_mixers = {}
    for mid, ms in mixers.items():
        ranks = max(1, len(ms) // ms[0]["num_workers"])
        cursor_mixers[mid] = sum(m["step"] for m in ms) // ranks + ms[0].get("base_step", 0)
    epoch = max(epochs) if epochs else max(r["epoch"] for r in cursor_readers.values())
    if all(r["epoch"] > epoch for r in cursor_readers.values()):
        epoch += 1
    return {"epoch": epoch, "readers": cursor_readers, "mixers": cursor_mixers}


def apply_cursor(root: BaseNode, cursor: dict[str, Any]) -> None:
    """Make the next ``root.reset()`` (without state) continue from ``cursor``.

    Raises:
        ValueError: the graph's readers do not match the cursor's, or the index changed size.
    """
    readers = [n for n in iter_nodes(root) if isinstance(n, EpochReader)]
    known = {r.reader_id for r in readers}
    missing = set(cursor["readers"]) - known
    if missing:
        raise ValueError(
            f"the cursor names readers {sorted(missing)} this graph lacks (it has {sorted(known)})"
        )
    for reader in readers:
        c = cursor["readers"].get(reader.reader_id)
        if c is None:
            continue
        if c["num_rows"] != len(reader.index):
            raise ValueError(
                f"reader {reader.reader_id!r}: the index changed ({c['num_rows']} → {len(reader.index)} rows)"
            )
        reader.set_epoch(c["epoch"], c["base"], c["skip"])
    for node in iter_nodes(root):
        if isinstance(node, Mixer) and node.mixer_id in cursor.get("mixers", {}):
            node.set_base_step(cursor["mixers"][node.mixer_id])


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
        if isinstance(states_or_cursor, dict) and "readers" in states_or_cursor
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

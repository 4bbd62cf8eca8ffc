"""Elastic resume of packed shards: exactly-once across world sizes and worker counts."""

from __future__ import annotations

import collections
import functools

import pytest
from torchdata.nodes import Batcher, Loader
from utils import json_roundtrip, stateful_loader

from sdsnodes import StreamingDataset, build_image_graph, load_elastic_state
from sdsnodes.nodes._packed import packed_source
from sdsnodes.nodes.graph import NODE_KEY, iter_states
from sdsnodes.nodes.shard_reader import ShardReader
from sdsnodes.pack import pack

NUM = 24  # images of the image_index fixture
ALL = {str(i) for i in range(NUM)}


@pytest.fixture(scope="module")
def packed(image_index, tmp_path_factory):
    """The 24 images in 4 shards of 6 rows, row groups of 2 (3 windows of 2 rows a shard)."""
    dst = tmp_path_factory.mktemp("packed_elastic") / "ds"
    pack(image_index, dst, num_shards=4, row_group_size=2, progress=False)
    return str(dst)


@pytest.fixture(scope="module")
def packed8(image_index, tmp_path_factory):
    """The 24 images in 8 shards (2 per reader with 2 ranks x 2 workers)."""
    dst = tmp_path_factory.mktemp("packed_elastic8") / "ds"
    pack(image_index, dst, num_shards=8, row_group_size=3, progress=False)
    return str(dst)


def _graph(src, rank=None, world_size=None):
    return packed_source(src, window=2, seed=7, rank=rank, world_size=world_size)[0]


def _take(loader, k: int) -> tuple[list[str], dict]:
    it = iter(loader)
    keys = [next(it)["__key__"] for _ in range(k)]
    return keys, json_roundtrip(loader.state_dict())


def _exactly_once(*runs: list[str]) -> None:
    counts = collections.Counter(k for run in runs for k in run)
    assert set(counts) == ALL, f"lost {sorted(ALL - set(counts), key=int)}"
    assert {k: n for k, n in counts.items() if n > 1} == {}, "delivered twice"


def _shard_states(state) -> list[dict]:
    return [d for d in iter_states(state) if d.get(NODE_KEY) == ShardReader.STATE_TAG]


# each rank reads 2 shards of 6 rows: mid-window, mid-shard past a window, a shard boundary
# (the next shard prefetched, not started), the last sample, and nothing at all
@pytest.mark.parametrize("k", [0, 1, 3, 5, 6, 7, 11, 12])
def test_two_ranks_resume_on_one_exactly_once(packed, k):
    seen, states = [], []
    for rank in range(2):
        keys, state = _take(Loader(_graph(packed, rank, 2)), k)
        seen += keys
        states.append(state)
    if 0 < k % 6:  # a shard being read: named in the state, with its offset
        assert [d[ShardReader.OFFSET_KEY] for s in states for d in _shard_states(s)] == [k % 6] * 2
    root = _graph(packed)
    cursor = load_elastic_state(root, states)
    rest = [s["__key__"] for s in Loader(root)]
    if k == 12:  # the epoch was all delivered: the resume is the next epoch, whole
        _exactly_once(seen)
        _exactly_once(rest)
    else:
        _exactly_once(seen, rest)
    assert len(cursor["shards"].get("0", {})) == (2 if k % 6 else 0)  # O(shards being read)


def test_a_second_elastic_resume_keeps_the_shards_not_yet_reopened(packed):
    first = [_take(Loader(_graph(packed, rank, 2)), 2) for rank in range(2)]
    root = _graph(packed)
    load_elastic_state(root, [state for _, state in first])
    loader = Loader(root)
    middle, state = _take(loader, 1)  # one partly read shard reopened, the other still pending
    pending = _shard_states(state)[0][ShardReader.PARTIAL_KEY]
    assert len(pending["offsets"]) == 1
    again = _graph(packed)
    load_elastic_state(again, [state])
    rest = [s["__key__"] for s in Loader(again)]
    _exactly_once([k for keys, _ in first for k in keys], middle, rest)


def test_states_without_the_tag_still_resume_at_least_once(packed):
    seen, states = [], []
    for rank in range(2):
        keys, state = _take(Loader(_graph(packed, rank, 2)), 2)
        for d in _shard_states(state):  # as saved before the tag: shard-level
            for key in (NODE_KEY, ShardReader.FIRST_ROW_KEY, ShardReader.EPOCH_KEY):
                del d[key]
            del d[ShardReader.PARTIAL_KEY]
        seen += keys
        states.append(state)
    root = _graph(packed)
    assert load_elastic_state(root, states)["shards"] == {}
    rest = [s["__key__"] for s in Loader(root)]
    assert set(seen) | set(rest) == ALL and len(rest) == len(set(rest))
    assert len(seen) + len(rest) - NUM == 4  # the 2 shards being read, again from the start


# 2 ranks x 2 workers (2 shards each, of 2 to 4 rows as pack balances them) → 1 rank x 3
# workers, decoded images; the states are taken mid-shard with the next shards prefetched
@pytest.mark.parametrize(("batch_size", "k"), [(2, 3), (3, 1)])
@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes")
def test_preset_two_ranks_two_workers_to_three_workers(packed8, batch_size, k):
    def make(rank=None, world_size=None):
        factory = functools.partial(
            build_image_graph, packed8, size=8, batch_size=batch_size, seed=3, rank=rank,
            world_size=world_size, prefetch_factor=0,
        )  # fmt: skip
        return StreamingDataset(factory)

    seen, states = [], []
    for rank in range(2):
        dl = stateful_loader(make(rank, 2), num_workers=2)
        it = iter(dl)
        seen += [key for _ in range(k) for key in next(it)["__key__"]]
        states.append(json_roundtrip(dl.state_dict()))
        del it, dl
    ds = make()
    load_elastic_state(ds, states)
    rest = [key for batch in stateful_loader(ds, num_workers=3) for key in batch["__key__"]]
    _exactly_once(seen, rest)


def test_batched_graph_state_round_trips_through_json(packed):
    root = Batcher(_graph(packed, 0, 2), batch_size=4)
    loader = Loader(root)
    next(iter(loader))
    (state,) = _shard_states(json_roundtrip(loader.state_dict()))
    assert state[ShardReader.OFFSET_KEY] == 4 and state[ShardReader.FIRST_ROW_KEY] % 6 == 0

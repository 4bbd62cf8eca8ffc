"""Elastic resume: a state saved with one (world_size, num_workers) finishes the epoch with another,
nothing lost, nothing repeated."""

import functools
import itertools
import json

import pyarrow as pa
import pytest
from torchdata.nodes import Batcher, Loader, Mapper
from utils import check_node_resume, stateful_loader

from sdsnodes import (
    IndexReader,
    Mixer,
    Shuffler,
    StreamingDataset,
    collate,
    elastic_cursor,
    load_elastic_state,
)
from sdsnodes.nodes.epoch_reader import EpochReader
from sdsnodes.nodes.graph import NODE_KEY, iter_states

N = 103
TABLE = pa.table({"x": list(range(N))})


def graph(rank=0, world_size=1, batch_size=4, n=N):
    reader = IndexReader(TABLE.slice(0, n), rank=rank, world_size=world_size, uneven="keep")
    return Mapper(
        Batcher(Shuffler(reader, seed=11), batch_size=batch_size, drop_last=False), collate
    )


def keys(batch):
    return [int(k) for k in batch["__key__"]]


@pytest.mark.parametrize("new_world", [1, 3])
@pytest.mark.parametrize("steps", [0, 1, 5, 12])
def test_node_graphs_between_world_sizes(new_world, steps):
    old = [Loader(graph(rank, 2)) for rank in range(2)]
    its = [iter(loader) for loader in old]
    seen = [k for it in its for _ in range(steps) for k in keys(next(it))]
    states = [json.loads(json.dumps(loader.state_dict())) for loader in old]
    rest = []
    for rank in range(new_world):
        root = graph(rank, new_world)
        load_elastic_state(root, states)
        loader = Loader(root)
        rest += [k for b in loader for k in keys(b)]
        assert {e for b in loader for e in b["__epoch__"].tolist()} == {
            1
        }  # then a whole next epoch
    assert sorted(seen + rest) == list(range(N)), "lost or repeated samples"


def dataset(rank, world_size):
    return StreamingDataset(functools.partial(graph, rank, world_size))


@pytest.mark.filterwarnings("ignore:This DataLoader will create 3 worker processes:UserWarning")
@pytest.mark.parametrize("new_layout", [(1, 3), (4, 1)])
def test_stateful_dataloader_2x2_to_other_layouts(new_layout):
    old = [stateful_loader(dataset(rank, 2), num_workers=2) for rank in range(2)]
    its = [iter(dl) for dl in old]
    seen = [k for it in its for _ in range(5) for k in keys(next(it))]
    states = [json.loads(json.dumps(dl.state_dict())) for dl in old]
    del its, old
    cursor = elastic_cursor(states)
    assert len(json.dumps(cursor)) < 2000
    world, workers = new_layout
    rest = []
    for rank in range(world):
        ds = dataset(rank, world)
        load_elastic_state(ds, cursor)
        dl = stateful_loader(ds, num_workers=workers)
        rest += [k for b in dl for k in keys(b)]
        epochs = [b["__epoch__"].tolist() for b in dl]  # the next epoch is whole, and epoch 1
        assert set(itertools.chain(*epochs)) == {1}
    assert sorted(seen + rest) == list(range(N))


def mixed_graph(rank, world):
    streams = {
        name: Shuffler(
            IndexReader(
                pa.table({"x": list(range(n))}), name=name, rank=rank, world_size=world,
                uneven="keep",
            ),
            seed=5,
        )
        for name, n in (("a", 40), ("b", 30))
    }  # fmt: skip
    return Mixer(streams, {"a": 0.5, "b": 0.5}, strategy="round_robin", stop="first_exhausted")


def mixed_states(steps=9):
    old = [Loader(mixed_graph(r, 2)) for r in range(2)]
    its = [iter(x) for x in old]
    seen = [next(it)["__key__"] for it in its for _ in range(steps)]
    return seen, [json.loads(json.dumps(x.state_dict())) for x in old]


def check_mixed_resume(seen, cursor_or_states):
    root = mixed_graph(0, 1)
    load_elastic_state(root, cursor_or_states)
    rest = [s["__key__"] for s in Loader(root)]
    assert sorted(k for k in seen + rest if k.startswith("b/")) == sorted(
        f"b/{i}" for i in range(30)
    )  # b ran out: every b sample exactly once
    assert len(set(seen + rest)) == len(seen + rest)


def test_mixer_streams_resume_elastically():
    seen, states = mixed_states()
    assert elastic_cursor(states)["mixers"] == {"0": 9}
    check_mixed_resume(seen, states)


def test_a_finished_epoch_resumes_at_the_next():
    old = [Loader(graph(rank, 2)) for rank in range(2)]
    for loader in old:
        list(loader)
    cursor = elastic_cursor([loader.state_dict() for loader in old])
    assert cursor["readers"]["0"] == {"epoch": 1, "base": 0, "skip": [], "num_rows": N}


def test_missing_shards_are_refused():
    old = [Loader(graph(rank, 2)) for rank in range(2)]
    next(iter(old[0]))
    with pytest.raises(ValueError, match="need all 2"):
        elastic_cursor([old[0].state_dict()])


KEY_CONSTANTS = [
    (cls, name)
    for cls in (EpochReader, Mixer)
    for name in vars(cls)
    if name.endswith("_KEY") or name == "STATE_TAG"
]


def test_renamed_state_keys_resume_elastically(monkeypatch):
    """Every key of the reader's and the Mixer's state is written and read through its
    constant: spelled otherwise, exact and elastic resume work the same."""
    assert len(KEY_CONSTANTS) >= 10 + 8
    for cls, name in KEY_CONSTANTS:
        monkeypatch.setattr(cls, name, "renamed_" + getattr(cls, name))
    seen, states = mixed_states()
    reader_state = states[0]["root"][Mixer.STREAMS_KEY]["a"][Shuffler.SOURCE_KEY]
    assert reader_state[NODE_KEY] == "renamed_EpochReader"
    assert "epoch" not in reader_state and "renamed_position" in reader_state
    assert elastic_cursor(states)["mixers"] == {"0": 9}
    check_mixed_resume(seen, states)
    check_node_resume(lambda: mixed_graph(0, 1), key_fn=lambda s: s["__key__"])


def test_untagged_states_of_older_versions_resume_elastically():
    seen, states = mixed_states()
    for state in states:
        for d in iter_states(state):
            d.pop(NODE_KEY, None)
    assert elastic_cursor(states)["mixers"] == {"0": 9}
    check_mixed_resume(seen, states)


def test_states_that_lack_a_key_or_a_tag_are_refused():
    """A reader state that lacks a key, or a Mixer state elastic resume cannot find (its tag
    or keys spelled otherwise), is an error, never a resume from the wrong place."""
    _, states = mixed_states()
    broken = json.loads(json.dumps(states))
    del broken[1]["root"]["streams"]["b"]["source"][EpochReader.POSITION_KEY]
    with pytest.raises(ValueError, match=r"tagged 'EpochReader' lacks \['position'\]"):
        elastic_cursor(broken)
    for tag in (None, "Mixer2"):  # a Mixer state not found (untagged, or tagged otherwise)
        untagged = json.loads(json.dumps(states))
        for state in untagged:
            state["root"][NODE_KEY] = tag
        cursor = elastic_cursor(untagged)
        assert cursor["mixers"] == {}
        with pytest.raises(ValueError, match=r"no step for the Mixers \['0'\]"):
            load_elastic_state(mixed_graph(0, 1), cursor)


def test_a_cursor_for_other_readers_is_refused():
    _, states = mixed_states()
    cursor = elastic_cursor(states)
    del cursor["readers"]["a/0"]
    with pytest.raises(ValueError, match=r"this graph has \['a/0', 'b/0'\]"):
        load_elastic_state(mixed_graph(0, 1), cursor)

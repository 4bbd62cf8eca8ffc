"""StreamingDataset: epochs, persistent workers, set_epoch, construction-time validation."""

import json

import pyarrow as pa
import pytest
from torchdata.nodes import Batcher, Mapper
from torchdata.stateful_dataloader import StatefulDataLoader

from sdsnodes import IndexReader, Shuffler, StreamingDataset, collate

TABLE = pa.table({"x": list(range(20))})


def graph():
    return Mapper(Batcher(Shuffler(IndexReader(TABLE), seed=1), 3, drop_last=False), collate)


def loader(**kw):
    return StatefulDataLoader(StreamingDataset(graph), batch_size=None, num_workers=2, **kw)


def keys(dl):
    return [tuple(b["__key__"]) for b in dl]


def test_persistent_workers_advance_epochs_and_resume_exactly():
    dl = loader(persistent_workers=True)
    epochs = [keys(dl) for _ in range(3)]
    for epoch in epochs:
        assert sorted(k for batch in epoch for k in batch) == sorted(str(i) for i in range(20))
    assert epochs[0] != epochs[1] != epochs[2]
    dl = loader(persistent_workers=True)
    it = iter(dl)
    head = [tuple(next(it)["__key__"]) for _ in range(3)]
    state = json.loads(json.dumps(dl.state_dict()))
    fresh = loader(persistent_workers=True)
    fresh.load_state_dict(state)
    assert head + keys(fresh) == epochs[0]
    assert keys(fresh) == epochs[1]


def test_spawned_workers_advance_epochs_and_resume_exactly():
    # the epoch counters are shared memory that pickles into spawned workers (no fork-context lock)
    forked = loader()
    reference = [keys(forked) for _ in range(2)]
    assert reference[0] != reference[1]
    spawn = {"multiprocessing_context": "spawn", "persistent_workers": True}
    dl = loader(**spawn)
    assert [keys(dl) for _ in range(2)] == reference
    dl = loader(**spawn)
    it = iter(dl)
    head = [tuple(next(it)["__key__"]) for _ in range(2)]
    state = json.loads(json.dumps(dl.state_dict()))
    del it
    fresh = loader(**spawn)
    fresh.load_state_dict(state)
    assert head + keys(fresh) == reference[0]


def test_set_epoch_starts_that_epoch():
    reference = loader()
    epochs = [keys(reference) for _ in range(3)]
    ds = StreamingDataset(graph)
    ds.set_epoch(2)
    assert keys(StatefulDataLoader(ds, batch_size=None, num_workers=2)) == epochs[2]


def test_bad_graphs_fail_at_construction(tmp_path):
    with pytest.raises(TypeError, match="BaseNode"):
        StreamingDataset(lambda: [1, 2, 3])
    with pytest.raises(ValueError, match="does not exist"):
        StreamingDataset(lambda: IndexReader(tmp_path / "missing.parquet"))
    with pytest.raises(ValueError, match="StreamingDataset state"):
        StreamingDataset(graph).load_state_dict({"nope": 1})


def _gc_probe(sample):
    """What the collector does in the process running the graph: objects frozen, and whether a
    reference cycle made here is still freed."""
    import gc
    import weakref

    class Cycle:
        pass

    made = Cycle()
    made.me = made
    ref = weakref.ref(made)
    del made
    gc.collect()
    return {**sample, "frozen": gc.get_freeze_count(), "cycle_freed": ref() is None}


def _probe_graph():
    return Mapper(Batcher(Mapper(IndexReader(TABLE), _gc_probe), 5, drop_last=False), collate)


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_workers_freeze_what_they_inherit_and_still_collect_their_own(context):
    import gc

    assert gc.get_freeze_count() == 0  # the test process is never frozen
    batches = list(
        StatefulDataLoader(
            StreamingDataset(_probe_graph), batch_size=None, num_workers=2,
            multiprocessing_context=context,
        )
    )  # fmt: skip
    assert sum(len(b["__key__"]) for b in batches) == 20
    for batch in batches:
        assert all(int(n) > 1000 for n in batch["frozen"])  # torch, sdsnodes... at least
        assert all(bool(f) for f in batch["cycle_freed"])
    assert gc.get_freeze_count() == 0
    in_process = list(StatefulDataLoader(StreamingDataset(_probe_graph), batch_size=None))
    assert all(int(n) == 0 for b in in_process for n in b["frozen"])  # not a worker: untouched


def test_freeze_worker_heap_false_leaves_the_collector_alone():
    dataset = StreamingDataset(_probe_graph, freeze_worker_heap=False)
    batches = list(StatefulDataLoader(dataset, batch_size=None, num_workers=2))
    assert all(int(n) == 0 for b in batches for n in b["frozen"])
    assert all(bool(f) for b in batches for f in b["cycle_freed"])

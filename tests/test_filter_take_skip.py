import copy
import functools
import pickle

import pyarrow as pa
import pytest
import torch
from torchdata.nodes import Batcher, Loader
from utils import check_dataloader_resume, check_node_resume, json_roundtrip

from sdsnodes import IndexReader, Shuffler, StreamingDataset
from sdsnodes.nodes.filter import Filter, Skip, Take

TABLE = pa.table({"x": list(range(40))})


def is_even(sample: dict) -> bool:
    return sample["x"] % 2 == 0


def x_of(sample: dict) -> int:
    return sample["x"]


def xs_of(batch: list) -> tuple:
    return tuple(s["x"] for s in batch)


def shuffled(seed: int = 0, table: pa.Table = TABLE) -> Shuffler:
    return Shuffler(IndexReader(table), seed=seed)


def test_filter_keeps_what_the_predicate_accepts_and_counts_the_rest():
    node = Filter(shuffled(), is_even)
    loader = Loader(node)
    epoch0 = [s["x"] for s in loader]
    assert sorted(epoch0) == list(range(0, 40, 2))
    assert node.filtered == 20
    assert node.state_dict()[Filter.FILTERED_KEY] == 20
    whole = [s["x"] for s in Loader(shuffled())]
    assert epoch0 == [x for x in whole if x % 2 == 0]  # the source's order, kept
    next(iter(loader))  # a new epoch counts from 0
    assert node.filtered <= 2


def test_filter_resumes_exactly_with_its_count():
    check_node_resume(lambda: Filter(shuffled(1), is_even), key_fn=x_of)
    node = Filter(shuffled(1), is_even)
    it = iter(Loader(node))
    for _ in range(5):
        next(it)
    state = json_roundtrip(node.state_dict())
    fresh = Filter(shuffled(1), is_even)
    fresh.reset(state)
    assert fresh.filtered == node.filtered > 0
    assert [s["x"] for s in fresh] == [s["x"] for s in it]  # the rest of the epoch
    assert fresh.filtered == node.filtered == 20


def test_take_yields_the_first_n_of_each_epoch_and_resumes():
    whole0 = [s["x"] for s in Loader(shuffled(2))]
    loader = Loader(Take(shuffled(2), 7))
    assert [s["x"] for s in loader] == whole0[:7]
    assert len([s["x"] for s in loader]) == 7  # epoch 1: again 7, counted from the reset
    assert [s["x"] for s in Loader(Take(shuffled(), 100))] == [s["x"] for s in Loader(shuffled())]
    assert list(Loader(Take(shuffled(), 0))) == []
    check_node_resume(lambda: Take(shuffled(2), 7), key_fn=x_of)


def test_take_does_not_read_past_its_last_item():
    reader = IndexReader(TABLE)
    node = Take(reader, 3)
    assert [s["x"] for s in Loader(node)] == [0, 1, 2]
    assert reader.state_dict()[IndexReader.POSITION_KEY] == 3


def test_skip_drops_the_first_n_of_each_epoch_and_resumes():
    whole0 = [s["x"] for s in Loader(shuffled(3))]
    loader = Loader(Skip(shuffled(3), 30))
    assert [s["x"] for s in loader] == whole0[30:]
    assert len([s["x"] for s in loader]) == 10
    assert list(Loader(Skip(shuffled(), 40))) == []
    assert list(Loader(Skip(shuffled(), 400))) == []
    check_node_resume(lambda: Skip(shuffled(3), 30), key_fn=x_of)


def test_skip_then_take_is_a_window():
    whole = [s["x"] for s in Loader(shuffled(4))]
    node = Take(Skip(shuffled(4), 10), 5)
    assert [s["x"] for s in Loader(node)] == whole[10:15]


@pytest.mark.parametrize(
    "make, error",
    [
        (lambda: Take(IndexReader(TABLE), -1), ValueError),
        (lambda: Skip(IndexReader(TABLE), 1.5), ValueError),
        (lambda: Take(IndexReader(TABLE), True), ValueError),
        (lambda: Filter(IndexReader(TABLE), "x > 3"), TypeError),
    ],
)
def test_bad_arguments_raise_at_construction(make, error):
    with pytest.raises(error):
        make()


def test_pickles_with_a_picklable_predicate():
    node = Take(Skip(Filter(shuffled(5), is_even), 2), 4)
    copy = pickle.loads(pickle.dumps(node))
    assert [s["x"] for s in Loader(copy)] == [s["x"] for s in Loader(node)]


def make_graph(seed: int) -> Batcher:
    node = Take(Skip(Filter(shuffled(seed), is_even), 1), 8)
    return Batcher(node, batch_size=2, drop_last=False)


def test_resumes_through_stateful_dataloader_with_two_workers():
    make = functools.partial(make_graph, 6)
    epoch0 = check_dataloader_resume(
        lambda: StreamingDataset(make), num_workers=2, key_fn=xs_of, midpoints=[1, 3]
    )
    xs = [x for batch in epoch0 for x in batch]
    assert len(xs) == 16 and all(x % 2 == 0 for x in xs)  # 8 per worker, the first skipped


class NodeDataset(torch.utils.data.IterableDataset):
    """The smallest dataset over a node: what a spawned worker gets is the pickled node."""

    def __init__(self, node):
        self.node = node

    def __iter__(self):
        return iter(Loader(self.node))


def test_runs_in_a_spawned_dataloader_worker():
    from sdsnodes.nodes.bucketing import BucketBatcher, DurationBuckets

    table = pa.table({"x": list(range(40)), "duration": [float(i % 5) for i in range(40)]})
    node = BucketBatcher(
        Take(Skip(Filter(shuffled(7, table), is_even), 2), 15), 3, DurationBuckets([2.0])
    )
    expected = [xs_of(b) for b in Loader(copy.deepcopy(node))]
    dl = torch.utils.data.DataLoader(
        NodeDataset(node), batch_size=None, num_workers=1, multiprocessing_context="spawn"
    )
    assert [xs_of(b) for b in dl] == expected

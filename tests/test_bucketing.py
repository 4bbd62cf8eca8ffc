import functools
import json
import pickle
from collections import Counter

import pyarrow as pa
import pytest
import torch
from torchdata.nodes import Loader, Mapper, Prefetcher
from utils import check_dataloader_resume, check_node_resume, json_roundtrip

from sdsnodes import IndexReader, Shuffler, StreamingDataset, collate
from sdsnodes.nodes.bucketing import BUCKET, AspectRatioBuckets, BucketBatcher, DurationBuckets
from sdsnodes.nodes.filter import Filter, Take

SIZES = [(64, 48), (48, 64), (80, 48), (64, 64), (96, 40)]  # (width, height): 5 aspect ratios
N = 90
TABLE = pa.table(
    {
        "x": list(range(N)),
        # a skewed mix: the last size is rare (every 15th row), so its bucket waits long
        "width": [SIZES[4 if i % 15 == 7 else i % 4][0] for i in range(N)],
        "height": [SIZES[4 if i % 15 == 7 else i % 4][1] for i in range(N)],
        "duration": [0.5 + (i * 7 % 11) for i in range(N)],
    }
)
RESOLUTIONS = [(48, 64), (64, 48), (48, 80), (64, 64), (40, 96)]  # (height, width)


def by_size(sample: dict) -> tuple:
    return (sample["width"], sample["height"])


def xs_of(batch: list) -> tuple:
    return tuple(s["x"] for s in batch)


def batcher(seed=0, batch_size=4, key=by_size, table=TABLE, **kwargs) -> BucketBatcher:
    return BucketBatcher(Shuffler(IndexReader(table), seed=seed), batch_size, key, **kwargs)


def test_batches_hold_one_bucket_and_every_sample_once():
    node = batcher(seed=1)
    batches = list(Loader(node))
    for batch in batches:
        assert len({by_size(s) for s in batch}) == 1
        assert all(s[BUCKET] == by_size(batch[0]) for s in batch)
    xs = [s["x"] for b in batches for s in b]
    assert sorted(xs) == list(range(N))
    sizes = Counter(len(b) for b in batches)
    # one partial batch at most per bucket, yielded at the end of the epoch
    assert set(sizes) <= {1, 2, 3, 4} and sum(n for s, n in sizes.items() if s < 4) <= 5
    partial = [len(b) < 4 for b in batches]
    assert partial == sorted(partial)  # all full batches first
    assert node.dropped == 0


def test_batches_come_when_full_in_the_source_order():
    order = [s["x"] for s in Loader(Shuffler(IndexReader(TABLE), seed=2))]
    batches = [xs_of(b) for b in Loader(batcher(seed=2))]
    full = [b for b in batches if len(b) == 4]
    completed = [max(order.index(x) for x in b) for b in full]
    assert completed == sorted(completed)  # a batch comes out when its last sample arrives
    for b in batches:
        assert [order.index(x) for x in b] == sorted(order.index(x) for x in b)


def test_drop_last_counts_what_it_leaves():
    node = batcher(seed=3, drop_last=True)
    loader = Loader(node)
    batches = list(loader)
    assert all(len(b) == 4 for b in batches)
    assert node.dropped == N - 4 * len(batches) > 0
    assert node.state_dict()[BucketBatcher.DROPPED_KEY] == node.dropped
    list(loader)  # the next epoch counts from 0 again
    assert 0 < node.dropped < 5 * 4


@pytest.mark.parametrize("drop_last", [False, True])
def test_resumes_exactly(drop_last):
    make = functools.partial(batcher, seed=4, drop_last=drop_last)
    epoch0 = check_node_resume(make, key_fn=xs_of)  # 0, 1, the middle, the last - 1, the last
    assert len(epoch0) >= 20
    check_node_resume(make, key_fn=xs_of, midpoints=[3, 6, 9, 13, 17])


def test_state_is_small_json_and_bounded():
    node = batcher(seed=5, batch_size=6)
    it = iter(Loader(node))
    most = 0
    for _ in range(8):
        next(it)
        state = node.state_dict()
        assert json_roundtrip(state) == state
        assert len(state[BucketBatcher.BUFFERED_KEY]) <= 5 * (6 - 1)  # buckets * (batch - 1)
        assert state[BucketBatcher.REPLAY_KEY] >= len(state[BucketBatcher.BUFFERED_KEY])
        offsets = state[BucketBatcher.BUFFERED_KEY]
        assert (offsets[0] if offsets else state[BucketBatcher.REPLAY_KEY]) < 6  # an anchor near
        most = max(most, len(state[BucketBatcher.BUFFERED_KEY]))
        assert "width" not in json.dumps(state)  # offsets, never samples
    assert most > 0


def double(sample: dict) -> dict:
    return {**sample, "y": torch.full((2, 2), sample["x"])}


def test_resumes_through_threads_and_prefetching():
    # the source replays decoded samples: a ParallelMapper-like Mapper and a Prefetcher
    def make():
        node = Shuffler(IndexReader(TABLE), seed=6)
        node = Prefetcher(Mapper(node, double), prefetch_factor=3)
        return Mapper(BucketBatcher(node, 4, by_size), collate)

    epoch0 = check_node_resume(make, midpoints=[0, 2, 7, 15])
    assert all(b["y"].shape[1:] == (2, 2) for b in Loader(make()))
    assert len(epoch0) >= 20


def make_collated(seed: int):
    node = BucketBatcher(
        Shuffler(IndexReader(TABLE), seed=seed), 4, AspectRatioBuckets(RESOLUTIONS)
    )
    return Mapper(node, collate)


def test_resumes_through_stateful_dataloader_with_two_workers():
    make = functools.partial(make_collated, 7)
    epoch0 = check_dataloader_resume(lambda: StreamingDataset(make), 2, midpoints=[1, 12])
    keys = [k for batch in epoch0 for k in batch]
    assert sorted(keys, key=int) == [str(i) for i in range(N)]  # each sample once, 2 shards


@pytest.mark.parametrize("drop_last, expected", [(False, 8), (True, 4)])
def test_even_gives_every_rank_the_same_number_of_batches(drop_last, expected):
    # 30 rows per rank, batches of 4, 5 buckets: ceil(30 / 4) = 8 batches, partial ones
    # included; with drop_last ceil((30 - 5 * 3) / 4) = 4 full ones
    seen, dropped = [], 0
    for rank in range(3):
        reader = IndexReader(TABLE, rank=rank, world_size=3)
        node = BucketBatcher(Shuffler(reader, seed=8), 4, by_size, drop_last=drop_last,
                             num_batches="even", num_buckets=5)  # fmt: skip
        batches = list(Loader(node))
        assert len(batches) == len(node) == expected
        sizes = [len(b) for b in batches]
        partial = [size < 4 for size in sizes]
        assert partial == sorted(partial) and (not any(partial) or not drop_last)
        assert node.dropped == 30 - sum(sizes)
        seen += [s["x"] for b in batches for s in b]
        dropped += node.dropped
    assert len(seen) == len(set(seen)) and len(seen) + dropped == N
    assert dropped < 3 * 5 * 4


def test_even_without_drop_last_needs_no_bucket_count():
    node = batcher(seed=1, num_batches="even")
    assert len(list(Loader(node))) == len(node) == 23  # ceil(90 / 4)


def test_even_resumes_and_takes_the_bucket_count_from_the_key():
    key = AspectRatioBuckets(RESOLUTIONS)
    node = BucketBatcher(Shuffler(IndexReader(TABLE), seed=9), 4, key, num_batches="even")
    assert node.num_buckets == 5
    check_node_resume(
        lambda: BucketBatcher(Shuffler(IndexReader(TABLE), seed=9), 4, key, num_batches="even"),
        key_fn=xs_of,
    )


def test_a_fixed_number_of_batches():
    assert len(list(Loader(batcher(seed=1, num_batches=3)))) == 3
    assert len(list(Loader(batcher(seed=1, num_batches=1000)))) == len(list(Loader(batcher(1))))


def test_even_needs_a_source_with_len_and_a_bucket_count():
    with pytest.raises(ValueError, match="num_buckets"):
        batcher(num_batches="even", drop_last=True)
    node = BucketBatcher(Filter(IndexReader(TABLE), bool), 4, by_size, num_batches="even",
                         num_buckets=5)  # fmt: skip
    with pytest.raises(TypeError, match="len"):
        list(Loader(node))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch_size": 0},
        {"batch_size": 2.0},
        {"num_batches": -1},
        {"num_batches": "odd"},
        {"num_buckets": 0},
    ],  # fmt: skip
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        batcher(**kwargs)
    with pytest.raises(TypeError):
        BucketBatcher(IndexReader(TABLE), 4, "width")


def test_aspect_ratio_buckets():
    key = AspectRatioBuckets([(512, 512), (384, 640), (640, 384)])
    assert len(key) == 3
    assert key({"width": 1000, "height": 1000}) == (512, 512)
    assert key({"width": 1920, "height": 1080}) == (384, 640)
    assert key({"width": 300, "height": 800}) == (640, 384)
    assert AspectRatioBuckets([(8, 16)], tensor="image")({"image": torch.zeros(3, 10, 30)}) == (
        8,
        16,
    )
    with pytest.raises(ValueError, match="no size"):
        key({"__key__": "a", "width": None, "height": 10})
    with pytest.raises(ValueError):
        AspectRatioBuckets([(0, 3)])


def test_duration_buckets():
    key = DurationBuckets([2.0, 5.0])
    assert len(key) == 3
    assert [key({"duration": d}) for d in (0.1, 2.0, 4.9, 5.0, 60)] == [0, 1, 1, 2, 2]
    with pytest.raises(ValueError):
        DurationBuckets([3, 2])
    key = DurationBuckets([3.0, 7.0])
    batches = list(Loader(batcher(seed=2, key=key)))
    assert all(len({key(s) for s in b}) == 1 for b in batches)
    assert {b[0][BUCKET] for b in batches} == {0, 1, 2}


def test_pickles():
    node = batcher(seed=3, key=AspectRatioBuckets(RESOLUTIONS), num_batches="even")
    copy = pickle.loads(pickle.dumps(node))
    assert [xs_of(b) for b in Loader(copy)] == [xs_of(b) for b in Loader(node)]


def test_after_the_decoder_keyed_on_the_decoded_shape(tmp_path):
    from sdsnodes import Decoder, Evictor, ImageTensor
    from sdsnodes._synthetic import make_image_dataset

    src = make_image_dataset(tmp_path / "data", num_images=12)  # every 4th (from the 2nd) portrait
    key = AspectRatioBuckets([(48, 64), (64, 48)], tensor="image")

    def make():
        node = Shuffler(IndexReader(src, index_cache_dir=str(tmp_path / "index")), seed=1)
        node = Evictor(Decoder(node, {"image": ImageTensor()}, num_threads=2, seed=1))
        return Mapper(BucketBatcher(node, 2, key), collate)

    epoch0 = check_node_resume(make, midpoints=[1, 3])
    shapes = {tuple(b["image"].shape[1:]) for b in Loader(make())}
    assert shapes == {(3, 48, 64), (3, 64, 48)}
    assert sorted(k for b in epoch0 for k in b) == sorted(str(i) for i in range(12))


class Shortened(Take):
    """A source whose len() promises more than it yields (as after a decoder that skips)."""

    def __len__(self) -> int:
        return len(self.source)


def test_even_warns_when_the_source_yields_fewer_than_its_len(caplog):
    source = Shortened(Shuffler(IndexReader(TABLE), seed=1), 60)
    node = BucketBatcher(source, 4, by_size, num_batches="even")
    batches = list(Loader(node))
    assert len(node) == 23 > len(batches) >= 15  # 60 samples: ceil(60 / 4) = 15, and partials
    assert "the source ended after" in caplog.text
    assert node.dropped == 0  # the promised samples that never came are not the node's drops

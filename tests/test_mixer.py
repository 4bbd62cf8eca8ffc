import collections

import pyarrow as pa
import pytest
from torchdata.nodes import Batcher, Loader, Mapper
from utils import check_node_resume

from sdsnodes import IndexReader, Mixer, MixStrategy, Shuffler, StopCriterion, collate
from sdsnodes.nodes._schedule import draw, integer_counts


def reader(n, name, shuffle=True):
    node = IndexReader(pa.table({"x": list(range(n))}), name=name)
    return Shuffler(node, seed=1) if shuffle else node


def streams(sizes=None):
    sizes = sizes or {"a": 30, "b": 20, "c": 10}
    return {name: reader(n, name) for name, n in sizes.items()}


@pytest.mark.parametrize("strategy", [MixStrategy.WEIGHTED_RANDOM, MixStrategy.RANDOM_ORDER])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_strategies_match_weights_within_one_percent(strategy, seed):
    weights = {"a": 0.5, "b": 0.3, "c": 0.2}
    mixer = Mixer(streams(), weights, strategy=strategy, stop=StopCriterion.NEVER, seed=seed)
    it = iter(Loader(mixer))
    counts = collections.Counter(next(it)["__stream__"] for _ in range(10_000))
    for name, w in weights.items():
        assert abs(counts[name] / 10_000 - w) < 0.01, (name, counts)


@pytest.mark.parametrize(
    "strategy",
    [
        MixStrategy.ROUND_ROBIN,
        MixStrategy.FIXED_RANDOM_ORDER,
        MixStrategy.RANDOM_ORDER,
        MixStrategy.CONSECUTIVE_INTERLEAVED,
    ],
)
def test_ordered_strategies_are_exact_per_cycle(strategy):
    weights = {"a": 3, "b": 2, "c": 1}
    it = iter(Loader(Mixer(streams(), weights, strategy=strategy, stop="never", seed=5)))
    names = [next(it)["__stream__"] for _ in range(60)]
    cycles = [names[i : i + 6] for i in range(0, 60, 6)]
    for cycle in cycles:
        assert collections.Counter(cycle) == {"a": 3, "b": 2, "c": 1}
    if strategy is MixStrategy.FIXED_RANDOM_ORDER:
        assert all(c == cycles[0] for c in cycles)
    if strategy is MixStrategy.RANDOM_ORDER:
        assert len({tuple(c) for c in cycles}) > 1
    if strategy is MixStrategy.CONSECUTIVE_INTERLEAVED:
        assert cycles[0] == ["a", "a", "a", "b", "b", "c"]
    if strategy is MixStrategy.ROUND_ROBIN:
        assert cycles[0][:3] == ["a", "b", "a"]  # spread out, not blocks


def test_integer_counts():
    assert integer_counts([0.5, 0.25, 0.25], None) == [2, 1, 1]
    assert sum(integer_counts([1 / 3, 1 / 3, 1 / 3 + 1e-3], 100)) == 100


@pytest.mark.parametrize("stop, expected", [("first_exhausted", None), ("all_exhausted", None)])
def test_stop_criteria(stop, expected):
    items = list(
        Loader(Mixer(streams(), {"a": 1, "b": 1, "c": 1}, strategy="round_robin", stop=stop))
    )
    counts = collections.Counter(i["__stream__"] for i in items)
    if stop == "first_exhausted":
        assert counts["c"] == 10 and len(items) == 32  # c runs out on its 11th draw, step 33
    else:
        # b and c cycled into their next epoch until a, the largest, ran out
        assert counts["a"] == 30 and len(items) == 90


def test_mixes_whole_batches_of_different_shapes():
    img = Mapper(Batcher(reader(40, "img"), batch_size=8), collate)
    vid = Mapper(Batcher(reader(12, "vid"), batch_size=2), collate)
    it = iter(Loader(Mixer({"img": img, "vid": vid}, {"img": 0.7, "vid": 0.3}, stop="never")))
    for _ in range(20):
        batch = next(it)
        assert len(batch["x"]) == (8 if batch["__stream__"] == "img" else 2)


def test_curriculum_weights_follow_the_step():
    mixer = Mixer(
        streams(),
        lambda step: {"a": 1.0 if step < 100 else 0.0, "b": 0.0 if step < 100 else 1.0, "c": 0.0},
        stop="never",
    )
    it = iter(Loader(mixer))
    names = [next(it)["__stream__"] for _ in range(200)]
    assert set(names[:100]) == {"a"} and set(names[100:]) == {"b"}


def test_same_stream_sequence_whatever_the_streams_hold():
    """Ranks with different shards draw the same stream at the same step."""
    seqs = []
    for rank in range(2):
        s = {
            n: Shuffler(
                IndexReader(pa.table({"x": list(range(40))}), name=n, rank=rank, world_size=2)
            )
            for n in "ab"
        }
        it = iter(Loader(Mixer(s, {"a": 0.6, "b": 0.4}, stop="never", seed=3)))
        seqs.append([next(it)["__stream__"] for _ in range(100)])
    assert seqs[0] == seqs[1]
    assert [draw(MixStrategy.WEIGHTED_RANDOM, [0.6, 0.4], 3, s) for s in range(100)] == [
        "ab".index(n) for n in seqs[0]
    ]


@pytest.mark.parametrize("strategy", list(MixStrategy))
def test_resumes_exactly(strategy):
    weights = {"a": 3, "b": 2, "c": 1}
    check_node_resume(
        lambda: Mixer(streams(), weights, strategy=strategy, seed=2),
        key_fn=lambda item: (item["__stream__"], item["__key__"]),
    )


def test_curriculum_resume_is_exact():
    weights = lambda step: {"a": 1.0, "b": step / 50, "c": 0.1}  # noqa: E731
    check_node_resume(lambda: Mixer(streams(), weights, seed=2), key_fn=lambda i: i["__key__"])


def test_bad_arguments():
    with pytest.raises(ValueError, match="one per stream"):
        Mixer(streams(), {"a": 1})
    with pytest.raises(ValueError, match="not all 0"):
        Mixer(streams(), {"a": 0, "b": 0, "c": 0})
    with pytest.raises(ValueError, match="strategies"):
        Mixer(streams(), strategy="bogus")
    with pytest.raises(ValueError, match="cycle_length"):
        Mixer(streams(), lambda s: {"a": 1, "b": 1, "c": 1}, strategy="round_robin")
    with pytest.raises(ValueError, match="at least one"):
        Mixer({})


@pytest.mark.parametrize("strategy", ["round_robin", "consecutive_interleaved", "weighted_random"])
def test_workers_each_read_every_stream(strategy):
    """With DataLoader workers, every worker draws every stream: the epoch covers both streams."""
    import functools

    from utils import stateful_loader

    from sdsnodes import StreamingDataset

    def mixed():
        return Mixer(
            {"a": reader(40, "a"), "b": reader(40, "b")},
            {"a": 1, "b": 1},
            strategy=strategy,
            stop="all_exhausted",
        )

    keys = [b["__key__"] for b in stateful_loader(StreamingDataset(functools.partial(mixed)), 2)]
    for name in "ab":
        assert {k for k in keys if k.startswith(name)} == {f"{name}/{i}" for i in range(40)}
    assert len(keys) < 200  # the epoch ends


def test_zero_weight_stream_does_not_hold_the_epoch_open():
    items = list(Loader(Mixer(streams(), {"a": 1, "b": 1, "c": 0}, stop="all_exhausted")))
    assert {i["__stream__"] for i in items} == {"a", "b"}


def test_epochs_draw_different_sequences():
    loader = Loader(Mixer(streams(), {"a": 1, "b": 1, "c": 1}, stop="first_exhausted", seed=4))
    e0 = [i["__stream__"] for i in loader]
    e1 = [i["__stream__"] for i in loader]
    assert e0[:20] != e1[:20]

import collections
import functools
import itertools

import pyarrow as pa
import pytest
from torchdata.nodes import Batcher, Loader, Mapper
from utils import (
    check_dataloader_resume,
    check_node_resume,
    json_roundtrip,
    mixer_states,
    stateful_loader,
)

from sdsnodes import (
    IndexReader,
    Mixer,
    MixStrategy,
    Shuffler,
    StopCriterion,
    StreamingDataset,
    collate,
)
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
        MixStrategy.CONSECUTIVE,
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
    if strategy is MixStrategy.CONSECUTIVE:
        assert all(c == ["a", "a", "a", "b", "b", "c"] for c in cycles)
    if strategy is MixStrategy.CONSECUTIVE_INTERLEAVED:  # SDS's: one of each left, in turn
        assert all(c == ["a", "b", "c", "a", "b", "a"] for c in cycles)
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


@pytest.mark.parametrize(
    "strategy", ["round_robin", "consecutive", "consecutive_interleaved", "weighted_random"]
)
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


# -- streams with fewer rows than workers (a worker's share is empty) --------------------------

FOUR_WORKERS = pytest.mark.filterwarnings(
    "ignore:This DataLoader will create 4 worker processes:UserWarning"  # a 2-core machine
)


def small_mix(stop, strategy="round_robin", sizes=(3, 20), batch_size=None, drop_last=False):
    """Mixer of stream "a" (``sizes[0]`` rows) and "b" (``sizes[1]``), optionally batched."""

    def stream(n, name):
        node = reader(n, name)
        if batch_size:
            node = Mapper(Batcher(node, batch_size=batch_size, drop_last=drop_last), collate)
        return node

    return Mixer(
        {"a": stream(sizes[0], "a"), "b": stream(sizes[1], "b")},
        {"a": 1, "b": 2},
        strategy=strategy,
        stop=stop,
        seed=7,
    )


@FOUR_WORKERS
@pytest.mark.parametrize("stop", ["all_exhausted", "never"])
@pytest.mark.parametrize("strategy", ["round_robin", "weighted_random"])
def test_stream_smaller_than_num_workers_serves_every_worker(stop, strategy):
    """3 rows over 4 workers: worker 3 has no row of "a" and reads it padded, so every worker
    yields the stream of every draw and the mix across workers is the weights' (issue 10)."""
    make = functools.partial(small_mix, stop, strategy)
    dl = stateful_loader(StreamingDataset(make), 4)
    it = iter(dl)
    items = list(itertools.islice(it, 48))
    state = json_roundtrip(dl.state_dict())
    del it, dl
    # StatefulDataLoader takes its workers in turn and every worker draws base + j: item i of
    # the loader is draw i // 4, whichever worker's share of the stream is empty
    probs = [1 / 3, 2 / 3]
    expected = ["ab"[draw(MixStrategy(strategy), probs, 7, i // 4)] for i in range(len(items))]
    assert [x["__stream__"] for x in items] == expected
    if stop == "all_exhausted":  # shares of equal length: the workers end at the same step
        assert len(items) % 4 == 0 and len(items) < 48
        assert {x["__key__"] for x in items} >= {f"b/{i}" for i in range(20)}
    else:
        assert len(items) == 48
    a_keys = [x["__key__"] for i, x in enumerate(items) if x["__stream__"] == "a"]
    assert set(a_keys) == {"a/0", "a/1", "a/2"}
    assert {x["__key__"] for i, x in enumerate(items) if i % 4 == 3 and x["__stream__"] == "a"}
    padded = [m["padded"] for m in mixer_states(state)]
    assert sorted(padded) == [[], [], [], ["a"]], padded  # only worker 3 pads, and it is saved


@FOUR_WORKERS
@pytest.mark.parametrize("stop", ["all_exhausted", "never"])
def test_stream_smaller_than_num_workers_resumes_exactly(stop):
    """After a few batches the state of a 4-worker loader (worker 3 padding "a") resumes to the
    same items, and for ALL_EXHAUSTED the next epoch is the uninterrupted one."""
    make = functools.partial(small_mix, stop, "random_order", (3, 10), 2)
    if stop == "all_exhausted":
        epoch0 = check_dataloader_resume(lambda: StreamingDataset(make), 4, midpoints=[3, 9])
        assert {k for b in epoch0 for k in b} >= {f"b/{i}" for i in range(10)}
        return
    dl = stateful_loader(StreamingDataset(make), 4)
    whole = [tuple(b["__key__"]) for b in itertools.islice(iter(dl), 40)]
    for k in (3, 9):
        dl = stateful_loader(StreamingDataset(make), 4)
        it = iter(dl)
        assert [tuple(b["__key__"]) for b in itertools.islice(it, k)] == whole[:k]
        state = json_roundtrip(dl.state_dict())
        del it, dl
        fresh = stateful_loader(StreamingDataset(make), 4)
        fresh.load_state_dict(state)
        assert [tuple(b["__key__"]) for b in itertools.islice(iter(fresh), 40 - k)] == whole[k:]


@FOUR_WORKERS
def test_share_smaller_than_a_batch_with_drop_last_is_padded():
    """6 rows over 4 workers, batches of 2 with drop_last: workers 2 and 3 hold one row each, no
    whole batch; padded, they read two rows and every worker yields "a" at its draws."""
    make = functools.partial(small_mix, "never", "round_robin", (6, 16), 2, True)
    batches = list(itertools.islice(stateful_loader(StreamingDataset(make), 4), 24))
    assert all(len(b["__key__"]) == 2 for b in batches)
    expected = ["ab"[draw(MixStrategy.ROUND_ROBIN, [1 / 3, 2 / 3], 7, i // 4)] for i in range(24)]
    assert [b["__stream__"] for b in batches] == expected
    assert {k for b in batches if b["__stream__"] == "a" for k in b["__key__"]} == {
        f"a/{i}" for i in range(6)
    }


def test_stream_empty_even_padded_names_the_fix():
    """A stream with no rows in any shard (uneven="drop", 3 rows over 4 shards) cannot be padded:
    a ValueError says what to change."""
    empty = IndexReader(pa.table({"x": [0, 1, 2]}), name="a", rank=1, world_size=4, uneven="drop")
    mixer = Mixer({"a": empty, "b": reader(5, "b")}, strategy="round_robin", stop="never")
    with pytest.raises(ValueError, match="yields nothing in worker 0 of 1.*fewer workers"):
        list(itertools.islice(Loader(mixer), 4))


def test_padding_in_one_process_resumes_exactly():
    """Without workers (rank 3 of 4 holds no row of "a"), the padded stream and its state resume
    exactly through check_node_resume."""

    def make():
        a = Shuffler(IndexReader(pa.table({"x": [0, 1, 2]}), name="a", rank=3, world_size=4,
                                 uneven="keep"), seed=1)  # fmt: skip
        b = Shuffler(IndexReader(pa.table({"x": list(range(16))}), name="b", rank=3, world_size=4,
                                 uneven="keep"), seed=1)  # fmt: skip
        return Mixer({"a": a, "b": b}, strategy="round_robin", stop="all_exhausted", seed=3)

    epoch0 = check_node_resume(make, key_fn=lambda i: i["__key__"])
    # a b a b … : b's 4 rows, each between two a's (read padded), until b's 5th draw ends it
    assert [k[0] for k in epoch0] == list("ababababa")


# -- mixing groups (SDS's mixing_group_id): different streams on different ranks at one step ----


def ranked_streams(rank, world_size, names="abc", n=64):
    return {
        name: Shuffler(
            IndexReader(
                pa.table({"x": list(range(n))}), name=name, rank=rank, world_size=world_size
            ),
            seed=1,
        )  # fmt: skip
        for name in names
    }


def rank_sequences(world_size, steps, groups, weights=None, seed=0, **kwargs):
    """The streams each simulated rank (explicit rank/world_size, one process) reads, step by
    step: ``[rank][step]``."""
    weights = weights or {"a": 0.5, "b": 0.25, "c": 0.25}
    out = []
    for rank in range(world_size):
        mixer = Mixer(ranked_streams(rank, world_size), weights, stop="never", seed=seed,
                      groups=groups, rank=rank, world_size=world_size, **kwargs)  # fmt: skip
        it = iter(Loader(mixer))
        out.append([next(it)["__stream__"] for _ in range(steps)])
    return out


@pytest.mark.parametrize("strategy", ["weighted_random", "round_robin"])
def test_groups_split_the_ranks_of_each_step_by_weight(strategy):
    """Groups {a, b} (weight 0.75) and {c} (0.25): at every step all 8 ranks are in one group;
    in {a, b} 5 or 6 ranks read a (2/3 of 8) and the rest b; every rank reads every stream."""
    seqs = rank_sequences(8, 200, [["a", "b"], ["c"]], strategy=strategy)
    group_of = {"a": "ab", "b": "ab", "c": "c"}
    groups = []
    for step in range(200):
        names = [seqs[rank][step] for rank in range(8)]
        assert len({group_of[n] for n in names}) == 1, (step, names)
        groups.append(group_of[names[0]])
        if group_of[names[0]] == "ab":
            assert names.count("a") in (5, 6), (step, names)
    assert 0.65 < groups.count("ab") / 200 < 0.85
    flat = collections.Counter(n for seq in seqs for n in seq)
    for name, w in {"a": 0.5, "b": 0.25, "c": 0.25}.items():
        assert abs(flat[name] / 1600 - w) < 0.05, flat
    for name in "abc":  # the ranks take turns: each reads every stream at one pace
        counts = [seq.count(name) for seq in seqs]
        assert max(counts) - min(counts) < 8, (name, counts)  # less than one window of 8 draws
    if strategy == "round_robin":  # the strategy orders the groups: counts 3 and 1 per cycle
        assert groups == ["ab", "ab", "c", "ab"] * 50


def test_groups_are_deterministic_and_forms_agree():
    """The same (seed, step) gives the same split; SDS's {name: mixing_group_id} is the same
    groups; without groups every rank reads the same stream (SDS's no_mixing)."""
    listed = rank_sequences(4, 40, [["a", "b", "c"]], seed=3)
    assert listed == rank_sequences(4, 40, [["a", "b", "c"]], seed=3)
    assert listed == rank_sequences(4, 40, {"a": 0, "b": 0, "c": 0}, seed=3)  # SDS's mix_all
    assert any(listed != rank_sequences(4, 40, [["a", "b", "c"]], seed=s) for s in (4, 5, 6))
    assert any(len({seq[s] for seq in listed}) > 1 for s in range(40))
    alone = rank_sequences(4, 40, None, seed=3)
    assert all(seq == alone[0] for seq in alone)


def test_the_group_of_each_step_does_not_depend_on_the_world_size():
    """The group is drawn from (seed, step) alone: a job resumed elastically on another world
    size (its Mixers start at the cursor's step) draws the same groups, split over its ranks."""
    group_of = {"a": 0, "b": 0, "c": 1}
    per_size = [
        [group_of[n] for n in rank_sequences(size, 60, [["a", "b"], ["c"]], seed=5)[0]]
        for size in (1, 2, 3)
    ]
    assert per_size[0] == per_size[1] == per_size[2]
    mixer = Mixer(ranked_streams(1, 3), {"a": 0.5, "b": 0.25, "c": 0.25}, stop="never", seed=5,
                  groups=[["a", "b"], ["c"]], rank=1, world_size=3)  # fmt: skip
    mixer.set_base_step(40)  # what apply_cursor does on an elastic resume
    it = iter(Loader(mixer))
    assert [group_of[next(it)["__stream__"]] for _ in range(20)] == per_size[0][40:]


def resumes_exactly(make, k, n=40):
    """A Loader over ``make()`` resumed from the (JSON) state after item ``k`` yields items
    k..n of the uninterrupted run (stream, key and rounds left)."""

    def view(item):
        return item["__stream__"], item["__key__"], item.get("__rounds_left__")

    whole = [view(x) for x in itertools.islice(Loader(make()), n)]
    loader = Loader(make())
    it = iter(loader)
    assert [view(next(it)) for _ in range(k)] == whole[:k]
    state = json_roundtrip(loader.state_dict())
    fresh = Loader(make())
    fresh.load_state_dict(state)
    assert [view(x) for x in itertools.islice(fresh, n - k)] == whole[k:], k
    return whole


@pytest.mark.parametrize("k", [1, 5, 13])
def test_groups_with_rounds_resume_exactly(k):
    def make():
        return Mixer(ranked_streams(2, 4), {"a": 2, "b": 1, "c": 1}, strategy="random_order",
                     stop="never", seed=2, groups=[["a", "b", "c"]], rank=2, world_size=4,
                     num_accum_rounds=3)  # fmt: skip

    whole = resumes_exactly(make, k)
    for i in range(0, 39, 3):  # this rank's stream is fixed for each round of 3
        assert len({s for s, _, _ in whole[i : i + 3]}) == 1


def test_bad_groups():
    with pytest.raises(ValueError, match="exactly one group"):
        Mixer(streams(), groups=[["a", "b"]], stop="never")
    with pytest.raises(ValueError, match="exactly one group"):
        Mixer(streams(), groups=[["a", "b"], ["b", "c"]], stop="never")
    with pytest.raises(ValueError, match="list of groups"):
        Mixer(streams(), groups=["abc"], stop="never")
    with pytest.raises(ValueError, match="give each stream a group id"):
        Mixer(streams(), groups={"a": 0, "b": 0}, stop="never")
    with pytest.raises(ValueError, match="stop='never'"):
        Mixer(streams(), groups=[["a", "b"], ["c"]])  # ranks would run out at different steps
    with pytest.raises(ValueError, match="rank"):
        Mixer(streams(), groups=[["a", "b", "c"]], stop="never", rank=2, world_size=2)
    Mixer(streams(), groups=[["a"], ["b"], ["c"]])  # one stream per group: any stop


def test_a_state_with_other_groups_or_rounds_is_refused():
    def make(**kwargs):
        return Mixer(streams(), stop="never", **kwargs)

    loader = Loader(make(groups=[["a", "b"], ["c"]], num_accum_rounds=2))
    it = iter(loader)
    next(it)
    state = json_roundtrip(loader.state_dict())
    for kwargs, what in [({"num_accum_rounds": 2}, "groups"),
                         ({"groups": [["a", "b"], ["c"]]}, "num_accum_rounds")]:  # fmt: skip
        fresh = Loader(make(**kwargs))
        fresh.load_state_dict(state)
        with pytest.raises(ValueError, match=f"saved with {what}="):
            next(iter(fresh))


# -- gradient-accumulation rounds (SDS's num_accum_rounds) ---------------------------------------


def test_rounds_fix_the_stream_and_count_down():
    """R = 3 without workers: the stream is drawn once per round of 3, at draw index = round."""
    mixer = Mixer(streams(), {"a": 3, "b": 2, "c": 1}, stop="never", seed=1, num_accum_rounds=3)
    items = list(itertools.islice(Loader(mixer), 60))
    assert [i["__rounds_left__"] for i in items] == [2, 1, 0] * 20
    rounds = [items[i]["__stream__"] for i in range(0, 60, 3)]
    assert all(
        items[i + j]["__stream__"] == rounds[i // 3] for i in range(0, 60, 3) for j in (1, 2)
    )
    expected = ["abc"[draw(MixStrategy.WEIGHTED_RANDOM, [1 / 2, 1 / 3, 1 / 6], 1, d)]
                for d in range(20)]  # fmt: skip
    assert rounds == expected


def test_rounds_compose_with_the_ordered_strategies():
    mixer = Mixer(streams(), {"a": 2, "b": 3, "c": 1}, strategy="consecutive_interleaved",
                  stop="never", num_accum_rounds=2)  # fmt: skip
    names = "".join(i["__stream__"] for i in itertools.islice(Loader(mixer), 24))
    assert names == "aabbccaabbbb" * 2  # rounds of 2 over the cycle a b c a b b


@pytest.mark.parametrize("stop", ["all_exhausted", "first_exhausted"])
def test_the_epoch_ends_at_a_round_boundary_and_resumes_mid_round(stop):
    """A stream that runs out inside a round starts its next epoch to finish the round: every
    epoch is whole rounds, and states taken mid-round resume exactly."""

    def make():
        return Mixer(streams(), {"a": 1, "b": 1, "c": 1}, strategy="round_robin", stop=stop,
                     seed=3, num_accum_rounds=4)  # fmt: skip

    epoch0 = check_node_resume(make, midpoints=[1, 6, 13], key_fn=lambda i: (
        i["__stream__"], i["__key__"], i["__rounds_left__"]))  # fmt: skip
    assert len(epoch0) % 4 == 0
    assert [r for _, _, r in epoch0] == [3, 2, 1, 0] * (len(epoch0) // 4)
    if stop == "first_exhausted":  # c (10 rows) runs out on its 3rd round: it ends that round
        assert len(epoch0) == 36


def rounds_dataset(num_accum_rounds):
    def make():
        return Mixer({"a": reader(30, "a"), "b": reader(30, "b")}, {"a": 1, "b": 1},
                     strategy="round_robin", stop="never", seed=9,
                     num_accum_rounds=num_accum_rounds)  # fmt: skip

    return StreamingDataset(make)


@pytest.mark.parametrize("num_accum_rounds", [3, 4])
def test_rounds_with_two_workers_resume_mid_round(num_accum_rounds):
    """StatefulDataLoader(num_workers=2) takes its workers in turn: rounds of R consecutive
    batches (the stream drawn once per lcm(2, R) batches) and their countdown hold, and a state
    taken mid-round resumes to the same batches and countdown."""
    view = lambda b: (b["__stream__"], b["__key__"], b["__rounds_left__"])  # noqa: E731
    whole = [view(b) for b in itertools.islice(stateful_loader(rounds_dataset(num_accum_rounds), 2), 24)]  # fmt: skip
    r = num_accum_rounds
    assert [left for *_, left in whole] == list(range(r - 1, -1, -1)) * (24 // r)
    block = 6 if r == 3 else 4  # lcm(2, R)
    for i in range(0, 24, block):
        assert len({s for s, *_ in whole[i : i + block]}) == 1
    assert "".join(whole[i][0] for i in range(0, 24, block)) == "ab" * (12 // block)
    k = r + 1 if r == 3 else 5  # inside a round
    dl = stateful_loader(rounds_dataset(num_accum_rounds), 2)
    it = iter(dl)
    assert [view(b) for b in itertools.islice(it, k)] == whole[:k]
    state = json_roundtrip(dl.state_dict())
    del it, dl
    fresh = stateful_loader(rounds_dataset(num_accum_rounds), 2)
    fresh.load_state_dict(state)
    assert [view(b) for b in itertools.islice(iter(fresh), 24 - k)] == whole[k:]


def test_bad_rounds():
    with pytest.raises(ValueError, match="num_accum_rounds"):
        Mixer(streams(), num_accum_rounds=0)
    with pytest.raises(ValueError, match="num_accum_rounds"):
        Mixer(streams(), num_accum_rounds=1.5)


def test_groups_keep_the_elastic_cursor_short():
    """Every rank reads each stream of a group at one pace, so after 300 steps on 8 ranks the
    elastic cursor's skip lists (positions read by some shards beyond the slowest) stay within
    a window of draws, not the random walk of independent draws per rank."""
    from sdsnodes import elastic_cursor

    states = []
    for rank in range(8):
        mixer = Mixer(ranked_streams(rank, 8, n=4000), {"a": 0.37, "b": 0.38, "c": 0.25},
                      stop="never", seed=1, groups=[["a", "b"], ["c"]], rank=rank,
                      world_size=8)  # fmt: skip
        loader = Loader(mixer)
        it = iter(loader)
        for _ in range(300):
            next(it)
        states.append(json_roundtrip(loader.state_dict()))
    cursor = elastic_cursor(states)
    skips = {rid: len(r["skip"]) for rid, r in cursor["readers"].items()}
    assert set(skips) == {"a/0", "b/0", "c/0"}
    assert skips["c/0"] == 0  # alone in its group: every rank read it at every c step
    assert max(skips.values()) <= 8 * 8, skips  # under a window of 8 draws on each of 8 shards

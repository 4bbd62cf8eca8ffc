import pyarrow as pa
import pytest
from torchdata.nodes import Loader
from utils import check_node_resume

from sdsnodes import IndexReader, Shuffler
from sdsnodes.nodes.epoch_reader import EpochReader
from sdsnodes.nodes.graph import NODE_KEY

TABLE = pa.table({"x": list(range(50))})


def test_permutation_per_epoch_deterministic():
    loader = Loader(Shuffler(IndexReader(TABLE), seed=3))
    e0 = [s["x"] for s in loader]
    e1 = [s["x"] for s in loader]
    assert sorted(e0) == sorted(e1) == list(range(50))
    assert e0 != e1 and e0 != list(range(50))
    again = Loader(Shuffler(IndexReader(TABLE), seed=3))
    assert [s["x"] for s in again] == e0
    other = Loader(Shuffler(IndexReader(TABLE), seed=4))
    assert [s["x"] for s in other] != e0


def test_shards_of_the_global_permutation_are_disjoint():
    parts = [
        [
            s["x"]
            for s in Loader(
                Shuffler(IndexReader(TABLE, rank=r, world_size=4, uneven="keep"), seed=1)
            )
        ]
        for r in range(4)
    ]
    assert sorted(sum(parts, [])) == list(range(50))
    whole = [s["x"] for s in Loader(Shuffler(IndexReader(TABLE), seed=1))]
    assert parts[2] == whole[2::4]


def test_state_is_small_and_resumes():
    shuffler = Shuffler(IndexReader(TABLE), seed=0)
    it = iter(Loader(shuffler))
    next(it)
    state = shuffler.state_dict()
    reader = state[Shuffler.SOURCE_KEY]  # the IndexReader's state, nested
    assert state[Shuffler.SEED_KEY] == 0
    assert {k: reader[k] for k in ("epoch", "position", "num_rows")} == {
        "epoch": 0, "position": 1, "num_rows": 50,
    }  # fmt: skip
    assert len(str(state)) < 200
    check_node_resume(lambda: Shuffler(IndexReader(TABLE), seed=7), key_fn=lambda s: s["x"])


def test_needs_random_access_and_same_seed():
    with pytest.raises(TypeError, match="IndexReader"):
        Shuffler(Shuffler(IndexReader(TABLE)))
    shuffler = Shuffler(IndexReader(TABLE), seed=1)
    with pytest.raises(ValueError, match="same seed"):
        shuffler.reset({"epoch": 0, "position": 0, "seed": 2})


def test_set_epoch():
    shuffler = Shuffler(IndexReader(TABLE), seed=0)
    loader = Loader(shuffler)
    list(loader)
    e1 = [s["x"] for s in loader]
    other = Shuffler(IndexReader(TABLE), seed=0)
    other.set_epoch(1)
    assert [s["x"] for s in Loader(other)] == e1


@pytest.mark.parametrize("n", [1, 2, 7, 64, 1000])
def test_feistel_and_chunk_orders_are_permutations(n):
    from sdsnodes.index.permutation import ChunkPermutation, FeistelPermutation

    for seed in range(3):
        perm = FeistelPermutation(n, seed, 0)
        assert sorted(perm(i) for i in range(n)) == list(range(n))
        assert all(perm.inverse(perm(i)) == i for i in range(n))
        chunked = ChunkPermutation(n, 10, 3, seed, 0)
        assert sorted(chunked(i) for i in range(n)) == list(range(n))


def test_chunk_mode_reads_stay_within_a_window_of_chunks():
    table = pa.table({"x": list(range(1000))})
    rows = [
        s["x"]
        for s in Loader(Shuffler(IndexReader(table), seed=2, mode="chunk", chunk_size=50, window=2))
    ]
    assert sorted(rows) == list(range(1000))
    for start in range(0, 1000, 100):  # each window of 2 chunks of 50 rows covers 2 whole chunks
        assert len({r // 50 for r in rows[start : start + 100]}) == 2
    assert rows[:100] != sorted(rows[:100])


def test_bad_modes():
    with pytest.raises(ValueError, match="mode"):
        Shuffler(IndexReader(TABLE), mode="local")
    with pytest.raises(ValueError, match="chunk_size"):
        Shuffler(IndexReader(TABLE), mode="chunk", chunk_size=0)


def test_a_wrapper_that_resets_its_reader_and_nests_its_state():
    reader = IndexReader(TABLE)
    shuffler = Shuffler(reader, seed=3)
    it = iter(Loader(shuffler))
    first = [next(it)["x"] for _ in range(5)]
    state = shuffler.state_dict()
    assert state == {Shuffler.SOURCE_KEY: reader.state_dict(), Shuffler.SEED_KEY: 3}
    assert state[Shuffler.SOURCE_KEY][EpochReader.POSITION_KEY] == 5
    assert [reader.index.sample(reader.order(0)(p), 0)["x"] for p in range(5)] == first
    with pytest.raises(ValueError, match="shuffled already"):
        Shuffler(reader, seed=4)


def test_a_state_saved_before_nesting_still_resumes():
    """Older versions saved the reader's keys and the seed in one flat dict."""
    loader = Loader(Shuffler(IndexReader(TABLE), seed=2))
    it = iter(loader)
    for _ in range(7):
        next(it)
    state = loader.state_dict()
    rest = [s["x"] for s in it]
    flat = {**state["root"][Shuffler.SOURCE_KEY], Shuffler.SEED_KEY: 2}
    del flat[NODE_KEY]
    old = Loader(Shuffler(IndexReader(TABLE), seed=2))
    old.load_state_dict({**state, "root": flat})
    assert [s["x"] for s in old] == rest and len(rest) == 43

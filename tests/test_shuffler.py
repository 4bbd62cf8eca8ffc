import pyarrow as pa
import pytest
from torchdata.nodes import Loader
from utils import check_node_resume

from sdsnodes import IndexReader, Shuffler

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
    assert {k: state[k] for k in ("epoch", "position", "seed", "num_rows")} == {
        "epoch": 0, "position": 1, "seed": 0, "num_rows": 50,
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

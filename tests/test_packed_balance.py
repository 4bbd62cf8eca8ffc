"""Equal batches per rank for packed shards of unequal row counts (issue #11)."""

from __future__ import annotations

import collections
import functools
import json
from pathlib import Path

import pytest
from torchdata.nodes import Batcher, Loader
from utils import check_dataloader_resume, json_roundtrip, stateful_loader, torchrun

from sdsnodes import StreamingDataset, build_image_graph, load_elastic_state
from sdsnodes.index.packed import shard_table
from sdsnodes.nodes._packed import packed_source
from sdsnodes.nodes._packed_balance import balance_dropped, caps, epoch_reader, water_fill
from sdsnodes.pack import pack

HERE = Path(__file__).parent

NUM = 24  # images of the image_index fixture
B = 2


@pytest.fixture(scope="module")
def packed8(image_index, tmp_path_factory):
    """The 24 images in 8 shards of unequal rows (pack sizes shards by bytes)."""
    dst = tmp_path_factory.mktemp("packed_balance") / "ds"
    pack(image_index, dst, num_shards=8, row_group_size=3, progress=False)
    rows = shard_table(str(dst), None)[0].column("num_rows").to_pylist()
    assert len(set(rows)) > 1, f"the shards must hold unequal rows, got {rows}"
    return str(dst)


def _dataset(src, rank, world_size=2, balance=True):
    factory = functools.partial(
        build_image_graph, src, size=8, batch_size=B, seed=3, rank=rank, world_size=world_size,
        prefetch_factor=0, balance=balance,
    )  # fmt: skip
    return StreamingDataset(factory)


def test_water_fill_and_caps_give_every_rank_as_many_whole_batches():
    assert water_fill(7, [1, 5, 5]) == [1, 3, 3]
    assert water_fill(4, [0, 9]) == [0, 4]
    rows = [[3, 9], [6, 2]]  # rank 0: 1 + 4 full batches of 2; rank 1: 3 + 1
    capped = caps(rows, B)
    assert [sum(c) // B for c in capped] == [4, 4]
    assert all(c % B == 0 and c <= n for cr, nr in zip(capped, rows) for c, n in zip(cr, nr))
    assert [sum(c) for c in caps(rows, None)] == [8, 8]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_two_ranks_get_as_many_batches_every_epoch(packed8, num_workers):
    loaders = [stateful_loader(_dataset(packed8, rank), num_workers) for rank in range(2)]
    dropped_total = 0
    for _epoch in range(2):
        batches, keys = [], []
        for dl in loaders:
            mine = [b["__key__"] for b in dl]
            batches.append(len(mine))
            keys += [k for b in mine for k in b]
            assert all(len(b) == B for b in mine)  # whole batches: the same count on every rank
        assert batches[0] == batches[1] > 0
        repeated = {k: n for k, n in collections.Counter(keys).items() if n > 1}
        assert repeated == {}, "a row delivered twice within an epoch"
        dropped = sum(balance_dropped(json_roundtrip(dl.state_dict())) for dl in loaders)
        assert dropped == NUM - len(keys)  # every row not read this epoch is counted
        dropped_total += dropped
    assert dropped_total > 0  # unequal shards: some rows were left to balance the ranks


def test_resume_mid_epoch_gives_exactly_the_rest(packed8):
    check_dataloader_resume(lambda: _dataset(packed8, 1), num_workers=2, midpoints=[2])


def _rows(src, rank, balance, epochs=2):
    node = packed_source(src, window=2, seed=7, rank=rank, world_size=2, balance=balance)[0]
    loader = Loader(Batcher(node, batch_size=B, drop_last=False))
    return [sum(len(b) for b in loader) for _ in range(epochs)]


def test_balance_false_reads_unequal_rows_again(packed8):
    balanced = [_rows(packed8, rank, True) for rank in range(2)]
    assert balanced[0] == balanced[1]  # rows, no batch size: equal rows per rank
    unbalanced = [_rows(packed8, rank, False) for rank in range(2)]
    assert unbalanced[0] != unbalanced[1]  # shards padded to equal counts, rows unequal
    # the preset's opt-out: the same unequal batches per rank
    batches = [
        [len(list(dl)) for _ in range(2)]
        for dl in (stateful_loader(_dataset(packed8, r, balance=False), 0) for r in range(2))
    ]
    assert batches[0] != batches[1]


def test_elastic_resume_balances_the_new_ranks_in_the_resumed_epoch(packed8):
    states, seen = [], []
    for rank in range(3):  # 3 ranks read 1 batch each, then the job resumes on 2 ranks
        node = packed_source(packed8, window=2, rank=rank, world_size=3, batch_size=B)[0]
        loader = Loader(Batcher(node, B))
        seen += [s["__key__"] for s in next(iter(loader))]
        states.append(json_roundtrip(loader.state_dict()))
    rest = []
    for rank in range(2):
        root = packed_source(packed8, window=2, rank=rank, world_size=2, batch_size=B)[0]
        load_elastic_state(root, states)
        rest.append([s["__key__"] for b in Loader(Batcher(root, B)) for s in b])
    assert len(rest[0]) == len(rest[1]) > 0  # capped at the min of the new ranks' rows left
    counts = collections.Counter(seen + rest[0] + rest[1])
    assert {k: n for k, n in counts.items() if n > 1} == {}, "delivered twice"


def test_a_shard_wholly_past_the_cap_is_never_taken_from_the_source(packed8):
    rows = shard_table(packed8, None)[0].column("num_rows").to_pylist()
    node = packed_source(packed8, shuffle=False, rank=0, world_size=2, batch_size=4)[0]
    delivered = sum(len(b) for b in Loader(Batcher(node, 4, drop_last=False)))
    mine = rows[0::2]  # rank 0 of 2 (one worker): shards 0, 2, 4, 6, in order, unpadded
    cap = min(sum(rows[0::2]) // 4, sum(rows[1::2]) // 4) * 4
    needed = next(i for i in range(len(mine)) if sum(mine[: i + 1]) >= cap) + 1
    assert delivered == cap < sum(mine)
    reader = epoch_reader(node)
    assert reader.state_dict()[reader.POSITION_KEY] == needed < len(mine)  # none fetched past


@pytest.mark.slow
def test_torchrun_two_ranks_join_every_step(packed8, tmp_path):
    torchrun(HERE / "dist_packed_balance_job.py", str(tmp_path), packed8)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for epoch in range(2):
        assert len(ranks[0][epoch]) == len(ranks[1][epoch]) > 0
        keys = [k for r in ranks for b in r[epoch] for k in b]
        assert len(keys) == len(set(keys))

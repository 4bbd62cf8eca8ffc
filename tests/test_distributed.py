"""Real ``torchrun --nproc_per_node=2`` runs (gloo backend, CPU, 127.0.0.1)."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from utils import torchrun

HERE = Path(__file__).parent


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    index_a, index_b = tmp / "a.parquet", tmp / "b.parquet"
    pq.write_table(
        pa.table({"x": list(range(66))}), index_a
    )  # 66 rows over 4 shards: padded to 17 each
    pq.write_table(pa.table({"x": list(range(40))}), index_b)
    torchrun(HERE / "dist_job.py", str(tmp), str(index_a), str(index_b))
    return [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(2)]


def test_index_metadata_comes_from_rank0(ranks):
    assert [r["broadcast"] for r in ranks] == ["from rank 0", "from rank 0"]


def test_ranks_read_disjoint_shares_whose_union_is_the_epoch(ranks):
    keys = [[k for _, batch in r["single"] for k in batch] for r in ranks]
    assert len(keys[0]) == len(keys[1]) == 34  # 66 rows padded to 17 per shard, 2 shards per rank
    union = set(keys[0]) | set(keys[1])
    assert union == {f"a/{i}" for i in range(66)}
    assert len(keys[0]) + len(keys[1]) - len(union) == 2  # only the 2 padding rows repeat


def test_equal_batch_counts_and_a_new_order_next_epoch(ranks):
    assert len(ranks[0]["single"]) == len(ranks[1]["single"])
    assert len(ranks[0]["single_epoch1"]) == len(ranks[1]["single_epoch1"])
    assert ranks[0]["single"] != ranks[0]["single_epoch1"]


def test_mixing_is_synchronized_across_ranks(ranks):
    streams = [[s for s, _ in r["mixed"]] for r in ranks]
    assert streams[0] == streams[1]
    assert {"a", "b"} <= set(streams[0])
    sizes = [[(s, len(k)) for s, k in r["mixed"]] for r in ranks]
    assert sizes[0] == sizes[1]  # batches of the same stream and shape at each step
    for step in zip(*(r["mixed"] for r in ranks)):
        assert not set(step[0][1]) & set(step[1][1])  # the ranks' batches are disjoint


def test_resume_on_both_ranks(ranks):
    for r in ranks:
        assert r["mixed_head"] == r["mixed"][:5]
        assert r["mixed_resumed"] == r["mixed"][5:]

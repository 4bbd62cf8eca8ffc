import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from torchdata.nodes import Loader
from utils import check_node_resume

from sdsnodes import IndexReader


@pytest.fixture
def table():
    return pa.table(
        {"video": [f"v{i}.mp4" for i in range(10)], "caption": [f"c{i}" for i in range(10)]}
    )


def test_reads_parquet_csv_json_jsonl_txt(tmp_path, table):
    pq.write_table(table, tmp_path / "a.parquet")
    (tmp_path / "a.csv").write_text(
        "video,caption\n" + "".join(f"v{i}.mp4,c{i}\n" for i in range(10))
    )
    rows = [{"video": f"v{i}.mp4", "caption": f"c{i}"} for i in range(10)]
    (tmp_path / "a.json").write_text(json.dumps(rows))
    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    for name in ("a.parquet", "a.csv", "a.json", "a.jsonl"):
        samples = list(Loader(IndexReader(tmp_path / name)))
        assert [s["video"] for s in samples] == [f"v{i}.mp4" for i in range(10)], name
        assert samples[3]["caption"] == "c3"
        assert samples[3]["__index__"] == 3 and samples[3]["__key__"] == "3"
    (tmp_path / "list.txt").write_text("# comment\n\n/abs/x.mp4\nrel/y.jpg\n\n")
    samples = list(Loader(IndexReader(tmp_path / "list.txt")))
    assert [s["path"] for s in samples] == ["/abs/x.mp4", f"{tmp_path}/rel/y.jpg"]
    assert samples[0]["video"] == "/abs/x.mp4" and samples[0]["image"] is None
    assert samples[1]["image"] == f"{tmp_path}/rel/y.jpg"


def test_directory_and_wildcard_with_missing_columns(tmp_path, table):
    media = tmp_path / "media"
    (media / "sub").mkdir(parents=True)
    for name in ("a.mp4", "sub/b.jpg", "notes.md"):
        (media / name).write_bytes(b"x" * 7)
    samples = list(Loader(IndexReader(media)))
    assert sorted(s["path"] for s in samples) == [str(media / "a.mp4"), str(media / "sub/b.jpg")]
    assert all(s["size"] == 7 for s in samples)
    pq.write_table(table.slice(0, 4), tmp_path / "p1.parquet")
    pq.write_table(pa.table({"video": ["w.mp4"], "fps": [30.0]}), tmp_path / "p2.parquet")
    samples = list(Loader(IndexReader(str(tmp_path / "p*.parquet"), columns=["extra"])))
    assert len(samples) == 5
    assert samples[0]["fps"] is None and samples[4]["caption"] is None and samples[4]["fps"] == 30.0
    assert all(s["extra"] is None for s in samples)


@pytest.mark.parametrize(
    "content, match",
    [(None, "does not exist"), (b"", "no rows|cannot read"), (b"PAR1garbage", "cannot read")],
)
def test_bad_index_fails_at_construction(tmp_path, content, match):
    path = tmp_path / "index.parquet"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=match):
        IndexReader(path)


def test_empty_wildcard_and_empty_csv(tmp_path):
    with pytest.raises(ValueError, match="matches no files"):
        IndexReader(str(tmp_path / "*.parquet"))
    (tmp_path / "e.csv").write_text("video,caption\n")
    with pytest.raises(ValueError, match="no rows"):
        IndexReader(tmp_path / "e.csv")


def test_shards_are_disjoint_and_cover_the_index(table):
    seen = []
    for rank in range(3):
        reader = IndexReader(table, rank=rank, world_size=3, uneven="keep")
        seen.append([s["__index__"] for s in Loader(reader)])
    assert sorted(sum(seen, [])) == list(range(10))
    assert seen[1] == [1, 4, 7]


def test_epochs_and_resume(table):
    reader = IndexReader(table)
    loader = Loader(reader)
    assert [s["__epoch__"] for s in loader] == [0] * 10
    assert [s["__epoch__"] for s in loader] == [1] * 10
    check_node_resume(lambda: IndexReader(table), key_fn=lambda s: (s["__key__"], s["__epoch__"]))


def test_bad_rank_arguments(table):
    with pytest.raises(ValueError, match="rank"):
        IndexReader(table, rank=3, world_size=2)
    with pytest.raises(ValueError, match="both"):
        IndexReader(table, rank=0)


@pytest.mark.parametrize("uneven, count", [(None, 4), ("pad", 4), ("drop", 3)])
def test_ranks_get_equal_counts(table, uneven, count):
    parts = [
        [s["__index__"] for s in Loader(IndexReader(table, rank=r, world_size=3, uneven=uneven))]
        for r in range(3)
    ]
    assert [len(p) for p in parts] == [count] * 3
    flat = sum(parts, [])
    assert len(set(flat)) == (10 if count == 4 else 9)  # pad repeats 2 rows, drop leaves 1 out


def test_resume_refuses_another_layout_or_index(table):
    reader = IndexReader(table)
    it = iter(Loader(reader))
    next(it)
    state = reader.state_dict()
    with pytest.raises(ValueError, match="load_elastic_state"):
        IndexReader(table, rank=0, world_size=2).reset(state)
    with pytest.raises(ValueError, match="index changed"):
        IndexReader(table.slice(0, 5)).reset(state)


def test_an_index_that_is_a_fifo_is_refused_without_opening_it(tmp_path):
    fifo = tmp_path / "index.parquet"
    os.mkfifo(fifo)  # opening it for reading would block forever
    with pytest.raises(ValueError, match="not a regular file"):
        IndexReader(str(fifo))

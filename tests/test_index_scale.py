"""Indexes at scale and bad index input: conversion to memory-mapped Arrow, filters, renames,
changes between runs, duplicates, nulls and mixed types."""

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from torchdata.nodes import Loader

from sdsnodes import IndexReader, Shuffler, build_video_graph, error_stats
from sdsnodes.index.filters import parse_filter
from sdsnodes.index.materialize import materialize


@pytest.fixture
def index(tmp_path):
    path = tmp_path / "index.parquet"
    table = pa.table(
        {"url": [f"v{i}.mp4" for i in range(100)], "score": [i / 10 for i in range(100)]}
    )
    pq.write_table(table, path, row_group_size=16)
    return path


def test_converted_once_memory_mapped_and_reused(index, tmp_path):
    table, key = materialize(index, cache_dir=tmp_path / "ic")
    assert table.num_rows == 100
    files = list((tmp_path / "ic").glob("*.arrow"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    again, key2 = materialize(index, cache_dir=tmp_path / "ic")
    assert key2 == key and files[0].stat().st_mtime_ns == mtime  # not converted twice
    buffer = again.column("url").chunks[0].buffers()[-1]
    assert not buffer.is_cpu or buffer.address  # backed by the map


def test_filter_and_rename(index, tmp_path):
    reader = IndexReader(
        index,
        filter="score >= 5 and video != 'v60.mp4'",
        rename={"url": "video"},
        index_cache_dir=str(tmp_path / "ic"),
    )
    samples = list(Loader(reader))
    assert len(samples) == 49 and samples[0]["video"] == "v50.mp4" and "url" not in samples[0]
    with pytest.raises(ValueError, match="no rows after the filter"):
        IndexReader(index, filter="score > 1000", index_cache_dir=str(tmp_path / "ic"))
    with pytest.raises(ValueError, match="absent from the index"):
        IndexReader(index, rename={"nope": "x"}, index_cache_dir=str(tmp_path / "ic"))
    with pytest.raises(ValueError, match="does not fit"):
        IndexReader(
            index,
            filter="url == 'a'",
            rename={"url": "video"},
            index_cache_dir=str(tmp_path / "ic"),
        )
    with pytest.raises(ValueError, match="cannot parse filter"):
        IndexReader(index, filter="score >>> 3")


@pytest.mark.parametrize(
    "text, rows",
    [
        ("score < 1", 10),
        ("score > 9 or score < 0.2", 11),
        ("url in ['v1.mp4', 'v2.mp4']", 2),
        ("NOT score >= 0.5", 5),
        ("score = 1", 1),
    ],
)
def test_filter_strings(text, rows):
    table = pa.table(
        {"url": [f"v{i}.mp4" for i in range(100)], "score": [i / 10 for i in range(100)]}
    )
    assert table.filter(parse_filter(text)).num_rows == rows


def test_an_index_that_changes_between_runs_is_detected(index, tmp_path):
    reader = IndexReader(index, index_cache_dir=str(tmp_path / "ic"))
    it = iter(Loader(reader))
    next(it)
    state = reader.state_dict()
    table = pq.read_table(index)
    pq.write_table(
        table.slice(0, 99), index
    )  # the source changes: a new conversion, not the stale one
    changed = IndexReader(index, index_cache_dir=str(tmp_path / "ic"))
    assert len(changed.index) == 99
    with pytest.raises(ValueError, match="changed"):
        changed.reset(state)
    pq.write_table(table.set_column(0, "url", pa.array([f"w{i}.mp4" for i in range(100)])), index)
    same_size = IndexReader(index, index_cache_dir=str(tmp_path / "ic"))
    assert next(iter(Loader(same_size)))["url"] == "w0.mp4"
    with pytest.raises(ValueError, match="changed"):
        same_size.reset(state)


def test_duplicate_keys_are_reported(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    pq.write_table(
        pa.table({"__key__": ["a", "b", "a", "c", "b"], "x": list(range(5))}),
        tmp_path / "d.parquet",
    )
    reader = IndexReader(tmp_path / "d.parquet")
    assert reader.index.duplicate_keys == 2
    assert "duplicate __key__" in caplog.text
    assert reader.index.row_of("a") == 0


def test_mixed_types_null_urls_and_truncated_files(tmp_path, video_index):
    rows = [{"video": "a.mp4", "n": 1}, {"video": None, "n": "two"}, {"video": "c.mp4", "n": 3.5}]
    (tmp_path / "mixed.json").write_text(json.dumps(rows))
    reader = IndexReader(tmp_path / "mixed.json")
    assert [s["n"] for s in Loader(reader)] == [
        "1",
        "two",
        "3.5",
    ]  # read as strings, with a warning
    (tmp_path / "bad.csv").write_text("video,n\n" + "a.mp4,1\n" * 200_000 + "b.mp4,x\n")
    with pytest.raises(ValueError, match="cannot convert|cannot read"):
        IndexReader(tmp_path / "bad.csv")
    data = tmp_path / "t.parquet"
    pq.write_table(pa.table({"video": ["a"] * 1000}), data)
    data.write_bytes(data.read_bytes()[:-100])
    with pytest.raises(ValueError, match="cannot read"):
        IndexReader(data)
    # null URLs: the sample is skipped and counted as missing
    table = pq.read_table(video_index)
    videos = table.column("video").to_pylist()
    pq.write_table(
        pa.table({"video": [videos[0], None, videos[1]], "caption": ["a", "b", "c"]}),
        tmp_path / "n.parquet",
    )
    loader = Loader(
        build_video_graph(
            tmp_path / "n.parquet", num_frames=2, size=16, batch_size=1, shuffle=False
        )
    )
    assert len(list(loader)) == 2
    assert error_stats(loader.state_dict())["missing"] == 1


def test_shuffled_large_index_starts_fast_and_state_is_small(tmp_path):
    n = 200_000
    pq.write_table(
        pa.table({"url": [f"s3://b/{i}.jpg" for i in range(n)]}), tmp_path / "big.parquet"
    )
    reader = IndexReader(tmp_path / "big.parquet", index_cache_dir=str(tmp_path / "ic"))
    shuffler = Shuffler(reader, seed=1)
    loader = Loader(shuffler)
    it = iter(loader)
    first = [next(it)["__index__"] for _ in range(1000)]
    assert len(set(first)) == 1000 and max(first) > n // 2
    state = loader.state_dict()
    assert len(json.dumps(state)) < 400
    fresh = Loader(
        Shuffler(
            IndexReader(tmp_path / "big.parquet", index_cache_dir=str(tmp_path / "ic")), seed=1
        )
    )
    fresh.load_state_dict(state)
    assert next(iter(fresh))["__index__"] == next(it)["__index__"]


def test_a_directory_that_gains_files_is_listed_again(tmp_path):
    media = tmp_path / "media" / "sub"
    media.mkdir(parents=True)
    (media / "a.jpg").write_bytes(b"x")
    assert len(IndexReader(tmp_path / "media", index_cache_dir=str(tmp_path / "ic")).index) == 1
    (media / "b.jpg").write_bytes(b"y")  # a nested change: the top directory's mtime stays
    assert len(IndexReader(tmp_path / "media", index_cache_dir=str(tmp_path / "ic")).index) == 2

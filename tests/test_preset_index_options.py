"""IndexOptions through every preset (filter, rename, key_column, max_rows) and through the
IndexReader (max_index_files over a wildcard and a .txt of parquet shards, converted and lazy),
and the mistakes refused at construction with a message naming the fix."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from torchdata.nodes import Loader

from sdsnodes import (
    IndexReader,
    build_audio_graph,
    build_image_graph,
    build_text_to_video_graph,
    build_video_graph,
    shutdown,
)
from sdsnodes._synthetic import write_image, write_video
from sdsnodes.options import IndexOptions

ROWS = 6
PRESETS = {
    "image": (build_image_graph, dict(size=16), "image"),
    "video": (build_video_graph, dict(num_frames=2, fps=8, size=16), "video"),
    "audio": (build_audio_graph, dict(duration=0.25, sample_rate=8000), "audio"),
    "text_to_video": (build_text_to_video_graph, dict(num_frames=2, fps=8, size=16), "video"),
}
COMMON = dict(batch_size=ROWS, shuffle=False, num_threads=1, prefetch_factor=0)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """6 rows: an image, a 0.5-s video with an AAC track (also the audio column), a caption,
    an ``id`` (``"clip-<i>"``) and a ``score`` (i)."""
    root = tmp_path_factory.mktemp("index-options")
    rows: dict[str, list] = {k: [] for k in ("image", "video", "audio", "caption", "id", "score")}
    for i in range(ROWS):
        write_image(root / f"i{i}.jpg", width=32, height=24, seed=i)
        write_video(root / f"v{i}.mp4", num_frames=12, fps=24, width=32, height=24, seed=i,
                    audio_rate=8000)  # fmt: skip
        rows["image"].append(str(root / f"i{i}.jpg"))
        rows["video"].append(str(root / f"v{i}.mp4"))
        rows["audio"].append(str(root / f"v{i}.mp4"))
        rows["caption"].append(f"caption {i}")
        rows["id"].append(f"clip-{i}")
        rows["score"].append(i)
    pq.write_table(pa.table(rows), root / "index.parquet")
    return root


def run(preset: str, src, **kwargs) -> list[dict]:
    build, options, _ = PRESETS[preset]
    graph = build(str(src), **options, **COMMON, **kwargs)
    try:
        return list(Loader(graph))
    finally:
        shutdown(graph)


def column(batches: list[dict], name: str) -> list:
    return [value for batch in batches for value in batch[name]]


@pytest.mark.parametrize("preset", PRESETS)
def test_filter_keeps_the_matching_rows(media, preset):
    batches = run(preset, media / "index.parquet", index=IndexOptions(filter="score >= 2"))
    assert [int(s) for s in column(batches, "score")] == [2, 3, 4, 5]


@pytest.mark.parametrize("preset", PRESETS)
def test_rename_gives_the_preset_its_column_names(media, preset):
    _, _, media_column = PRESETS[preset]
    renamed = {media_column: "clip", "caption": "text"}
    option = {"image": "image_column", "video": "video_column", "audio": "audio_column",
              "text_to_video": "video_column"}[preset]  # fmt: skip
    batches = run(preset, media / "index.parquet", index=IndexOptions(rename=renamed),
                  caption_column="text", **{option: "clip"})  # fmt: skip
    assert column(batches, "text") == [f"caption {i}" for i in range(ROWS)]
    assert len(column(batches, "clip")) == ROWS and "caption" not in batches[0]


@pytest.mark.parametrize("preset", PRESETS)
def test_key_column_gives_the_keys_and_stays(media, preset):
    batches = run(preset, media / "index.parquet", index=IndexOptions(key_column="id"))
    ids = [f"clip-{i}" for i in range(ROWS)]
    assert column(batches, "__key__") == ids and column(batches, "id") == ids


@pytest.mark.parametrize("preset", PRESETS)
def test_max_rows_reads_the_first_rows_after_the_filter(media, preset):
    index = IndexOptions(filter="score >= 1", max_rows=3)
    batches = run(preset, media / "index.parquet", index=index)
    assert [int(s) for s in column(batches, "score")] == [1, 2, 3]


def test_max_rows_with_shuffling_permutes_the_same_rows(media):
    index = IndexOptions(max_rows=4)
    graph = build_image_graph(str(media / "index.parquet"), size=16, batch_size=1, seed=3,
                              num_threads=1, prefetch_factor=0, index=index)  # fmt: skip
    loader = Loader(graph)
    try:
        epochs = [[int(b["score"][0]) for b in loader] for _ in range(2)]
    finally:
        shutdown(graph)
    assert sorted(epochs[0]) == sorted(epochs[1]) == [0, 1, 2, 3]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Three parquet shards of 4 rows (``part-0..2``, rows ``n`` = 4 shard + i) and a .txt
    listing them in reverse order."""
    root = tmp_path_factory.mktemp("shards")
    for s in range(3):
        pq.write_table(pa.table({"n": [4 * s + i for i in range(4)]}), root / f"part-{s}.parquet")
    (root / "list.txt").write_text("".join(f"part-{s}.parquet\n" for s in (2, 1, 0)))
    return root


def rows_of(reader: IndexReader) -> list[int]:
    return [sample["n"] for sample in Loader(reader)]


@pytest.mark.parametrize("lazy", [None, True])
def test_max_index_files_caps_a_wildcard_of_parquet_shards(shards, lazy):
    capped = IndexReader(str(shards / "part-*.parquet"), index=IndexOptions(max_index_files=2,
                                                                            lazy=lazy))  # fmt: skip
    assert rows_of(capped) == list(range(8))  # the first two in sorted order
    assert capped.lazy is bool(lazy)
    whole = IndexReader(str(shards / "part-*.parquet"), index=IndexOptions(lazy=lazy))
    assert rows_of(whole) == list(range(12)) and whole.index.fingerprint != capped.index.fingerprint
    txt = IndexReader(str(shards / "list.txt"), index=IndexOptions(max_index_files=1, lazy=lazy))
    assert rows_of(txt) == [8, 9, 10, 11]  # a .txt's shards in the order listed


@pytest.mark.parametrize("lazy", [False, True])
def test_key_column_of_a_converted_and_a_lazy_index(shards, lazy):
    reader = IndexReader(str(shards / "part-*.parquet"), name="s",
                         index=IndexOptions(key_column="n", lazy=lazy))  # fmt: skip
    samples = list(Loader(reader))
    assert [s["__key__"] for s in samples] == [f"s/{n}" for n in range(12)]
    if not lazy:  # a lazy index refuses lookups by key (they would read every row group)
        assert reader.index.row_of("s/5") == 5
    assert ("n" in samples[0]) is not lazy  # a lazy index renames the column to __key__


def test_max_index_files_then_filter_rename_and_max_rows(shards):
    index = IndexOptions(max_index_files=2, rename={"n": "m"}, filter="m > 2", max_rows=3)
    reader = IndexReader(str(shards / "part-*.parquet"), index=index)
    assert [s["m"] for s in Loader(reader)] == [3, 4, 5]


def test_max_index_files_through_a_preset(media, tmp_path):
    table = pq.read_table(media / "index.parquet")
    for s in range(3):
        pq.write_table(table.slice(2 * s, 2), tmp_path / f"part-{s}.parquet")
    batches = run("image", tmp_path / "part-*.parquet", index=IndexOptions(max_index_files=2))
    assert [int(s) for s in column(batches, "score")] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_rows=0), "max_rows=0 must be an int >= 1"),
        (dict(max_index_files=-1), "max_index_files=-1 must be an int >= 1"),
        (dict(max_rows=2.5), "max_rows=2.5"),
        (dict(filter="score >"), "cannot parse filter"),
        (dict(filter=""), "filter='' is empty"),
        (dict(filter=3), "filter=3 must be a condition"),
        (dict(rename={"a": "x", "b": "x"}), "gives two columns one name"),
        (dict(rename=["a"]), "must be a dict of column names"),
        (dict(key_column="__key__"), "key_column='__key__' must name an index column"),
        (dict(key_column="id", rename={"n": "__key__"}), "pass only key_column"),
        (dict(lazy="yes"), "lazy='yes' must be True, False or None"),
        (dict(txt="lines"), "txt='lines' must be 'index'"),
    ],
)
def test_a_bad_index_option_fails_when_the_group_is_made(kwargs, match):
    with pytest.raises(ValueError, match=match):
        IndexOptions(**kwargs)


def test_index_mistakes_fail_at_construction_naming_the_fix(media, shards):
    src = str(media / "index.parquet")
    with pytest.raises(ValueError, match=r"key_column='nope' is not a column.*'caption'"):
        build_image_graph(src, index=IndexOptions(key_column="nope"))
    with pytest.raises(ValueError, match="has a __key__ column already"):
        IndexReader(pa.table({"__key__": ["a"], "id": ["b"]}), index=IndexOptions(key_column="id"))
    with pytest.raises(ValueError, match="pass only key_column"):  # a keyword and the group
        IndexReader(src, rename={"caption": "__key__"}, index=IndexOptions(key_column="id"))
    with pytest.raises(ValueError, match="pass max_rows=... instead"):
        IndexReader(str(media), index=IndexOptions(max_index_files=2))  # a directory
    with pytest.raises(ValueError, match="pass max_rows=... instead"):
        IndexReader(pa.table({"n": [1]}), index=IndexOptions(max_index_files=2))
    capped = IndexReader(str(shards / "part-*.parquet"), index=IndexOptions(lazy=True, max_rows=2))
    assert capped.lazy and len(capped.index) == 2  # a lazy index cuts its chunks
    with pytest.raises(ValueError, match=r"filter= and index=IndexOptions\(filter=...\) both"):
        IndexReader(src, filter="score > 1", index=IndexOptions(filter="score > 2"))
    with pytest.raises(TypeError, match="index= takes a IndexOptions"):
        build_video_graph(src, index={"filter": "score > 1"})
    with pytest.raises(ValueError, match="has no column 'caption'"):  # the preset's columns
        build_image_graph(src, index=IndexOptions(rename={"caption": "text"}))

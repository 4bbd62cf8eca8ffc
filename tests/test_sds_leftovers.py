"""SDS options that a lazy index and a directory index now take: a filter and ``max_rows`` on a
lazy remote parquet index (counted per chunk, rows equal to the converted index's), the lazy
index's prefetch of the next chunk, ``IndexOptions(group_by_key=...)``; and per-sample ``.txt``
/ ``.json`` files named by an ordinary index column (``TextFile``, ``JsonFile``)."""

from __future__ import annotations

import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_lazy_index import write_index
from test_sidecars import sds_files

from sdsnodes import IndexOptions, IndexReader, Shuffler


@pytest.fixture(scope="module")
def remote_index(s3_server, tmp_path_factory):
    """3000 rows (id, video, score = id // 7) in row groups of 250 on moto, shared by the tests."""
    bucket = s3_server.make_bucket(f"sds-leftovers-{uuid.uuid4().hex[:8]}")
    write_index(f"{bucket}/i.parquet", 3000, 250, fs=s3_server.fs())
    return f"{bucket}/i.parquet", s3_server.storage_options, tmp_path_factory.mktemp("ic")


def test_lazy_filter_and_max_rows_equal_the_converted_index(remote_index):
    url, options, cache = remote_index
    kw = {"storage_options": options, "name": "s"}
    where = "score > 100 and id < 2500"  # score = id // 7: ids 707..2499
    lazy = IndexReader(url, lazy=True, lazy_chunk_rows=500, filter=where, **kw)
    eager = IndexReader(url, lazy=False, filter=where, index_cache_dir=str(cache), **kw)
    assert lazy.lazy and len(lazy.index) == len(eager.index) == 1793
    assert lazy.index.num_chunks == 4  # chunks keeping no row are dropped (ids < 500, >= 2500)
    for row in (0, 1, 292, 293, 1000, 1792):
        assert lazy.index.sample(row) == eager.index.sample(row)
    capped = IndexReader(url, lazy=True, index=IndexOptions(filter=where, max_rows=300), **kw)
    assert len(capped.index) == 300 and capped.index.sample(299)["id"] == 1006
    cut = IndexReader(url, lazy=True, index=IndexOptions(max_rows=777), **kw)  # footers only
    assert len(cut.index) == 777 and cut.index.fetches == 0
    assert cut.index.sample(776)["id"] == 776
    assert len({lazy.index.fingerprint, capped.index.fingerprint, cut.index.fingerprint}) == 3
    with pytest.raises(ValueError, match="does not fit index"):
        IndexReader(url, lazy=True, filter="nope > 1", **kw)
    with pytest.raises(ValueError, match="no rows after the filter"):
        IndexReader(url, lazy=True, filter="id < 0", **kw)


def test_lazy_filtered_shuffle_reads_each_kept_row_once_and_resumes(remote_index):
    import copy

    from utils import check_node_resume

    url, options, _ = remote_index
    reader = IndexReader(
        url,
        storage_options=options,
        lazy=True,
        lazy_chunk_rows=250,
        lazy_lanes=4,
        filter="id >= 2000",
    )  # fmt: skip  (counted once: copies share the lazy index)
    epoch = check_node_resume(lambda: Shuffler(copy.deepcopy(reader), seed=5), midpoints=[0, 600])
    assert sorted(int(k[0]) for k in epoch) == list(range(1000))


def test_lazy_prefetch_fetches_the_next_chunk_in_the_background(remote_index):
    url, options, _ = remote_index
    ids = {}
    for prefetch in (True, False):
        reader = IndexReader(
            url, storage_options=options, lazy=True, lazy_chunk_rows=250, lazy_prefetch=prefetch
        )
        reader.reset()
        ids[prefetch] = [s["id"] for s in reader]
        table = reader.index
        assert table.fetches == 12 and table.prefetches == (11 if prefetch else 0)
        assert len(table._cache) <= table.max_chunks and not table._pending
    assert ids[True] == ids[False] == list(range(3000))


def test_group_by_key_option(tmp_path):
    for name, data in sds_files().items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(data)
    grouped = IndexReader(str(tmp_path), index=IndexOptions(group_by_key=True))
    per_file = IndexReader(str(tmp_path), index=IndexOptions(group_by_key=False))
    auto = IndexReader(str(tmp_path))
    assert len(grouped.index) == 5  # keys without media kept (README, 000009)
    assert len(per_file.index) == 6 and "caption" not in per_file.column_names  # mp4 + npy
    assert len(auto.index) == 3 and "caption" in auto.column_names
    filtered = IndexReader(
        str(tmp_path), index=IndexOptions(group_by_key=True, filter="fps > 24", max_rows=1)
    )
    assert [filtered.index.sample(i)["fps"] for i in range(len(filtered.index))] == [25]
    assert grouped.index.fingerprint != per_file.index.fingerprint
    with pytest.raises(ValueError, match="must be True"):
        IndexOptions(group_by_key="yes")
    with pytest.raises(ValueError, match="pass only one"):
        IndexOptions(group_by_key=True, lazy=True)
    pq.write_table(pa.table({"id": [1]}), tmp_path / "one.parquet")
    with pytest.raises(ValueError, match="is not a directory"):
        IndexReader(str(tmp_path / "one.parquet"), index=IndexOptions(group_by_key=True))


# -- per-sample .txt / .json files named by an index column ---------------------------------------
def _sds_samples(n: int = 6) -> dict[str, bytes]:
    """name -> bytes: n tiny PNGs, their .txt captions and .json metadata files."""
    import io
    import json

    from PIL import Image

    files = {}
    for i in range(n):
        png = io.BytesIO()
        Image.new("RGB", (8 + i, 8), (i * 40, 0, 0)).save(png, format="PNG")
        files[f"{i:06d}.png"] = png.getvalue()
        files[f"{i:06d}.txt"] = f"  caption {i}\n".encode()
        files[f"{i:06d}.json"] = json.dumps({"fps": 24 + i, "exif": {"Make": f"cam{i}"}}).encode()
    return files


def _index_of(root: str, n: int = 6) -> pa.Table:
    return pa.table(
        {
            "image": [f"{root}/{i:06d}.png" for i in range(n)],
            "caption": [f"{root}/{i:06d}.txt" for i in range(n)],
            "meta": [f"{root}/{i:06d}.json" if i != 2 else None for i in range(n)],
        }
    )


@pytest.fixture(scope="module")
def remote_sds(s3_server):
    bucket = s3_server.make_bucket(f"sds-leftovers-files-{uuid.uuid4().hex[:8]}")
    fs = s3_server.fs()
    for name, data in _sds_samples().items():
        fs.pipe(f"{bucket}/{name}", data)
    with fs.open(f"{bucket}/index.parquet", "wb") as f:
        pq.write_table(_index_of(bucket), f)
    return f"{bucket}/index.parquet", s3_server.storage_options


def _captions_and_meta(graph) -> tuple[dict, dict]:
    graph.reset()
    captions, meta = {}, {}
    for batch in graph:
        for i, key in enumerate(batch["__index__"].tolist()):
            captions[key] = batch["caption"][i]
            if "meta.fps" in batch:
                meta[key] = (batch["meta.fps"][i], batch["meta.exif.Make"][i])
    return captions, meta


@pytest.mark.parametrize("where", ["local", "s3"])
def test_caption_column_of_txt_paths_in_a_preset(where, tmp_path, remote_sds):
    from sdsnodes import CacheOptions, FetchOptions, build_image_graph

    if where == "local":
        for name, data in _sds_samples().items():
            (tmp_path / name).write_bytes(data)
        src, fetch = str(tmp_path / "index.parquet"), None
        pq.write_table(_index_of(str(tmp_path)), src)
    else:
        src, options = remote_sds
        fetch = FetchOptions(storage_options=options)
    graph = build_image_graph(
        src, size=8, batch_size=4, shuffle=False, prefetch_factor=0, fetch=fetch,
        cache=CacheOptions(str(tmp_path / "cache")),
    )  # fmt: skip
    captions, _ = _captions_and_meta(graph)
    assert captions == {i: f"caption {i}" for i in range(6)}  # read from the files, stripped


def test_json_file_fields_into_the_sample_from_s3(remote_sds, tmp_path):
    from torchdata.nodes import Batcher, Mapper

    from sdsnodes import CacheOptions, CachingDownloader, Decoder, Evictor, FetchOptions, collate
    from sdsnodes.codecs.text_files import JsonFile

    src, options = remote_sds
    node = CachingDownloader(
        IndexReader(src, storage_options=options), ["meta"],
        cache=CacheOptions(str(tmp_path / "cache")), fetch=FetchOptions(storage_options=options),
    )  # fmt: skip
    node = Evictor(Decoder(node, {"meta": JsonFile(fields=["fps", "exif.Make", "absent"])}))
    _, meta = _captions_and_meta(Mapper(Batcher(node, 3, drop_last=False), collate))
    assert meta == {i: (24 + i, f"cam{i}") if i != 2 else (None, None) for i in range(6)}


def test_text_and_json_file_codecs_refuse_bad_files(tmp_path):
    import numpy as np

    from sdsnodes.codecs.text_files import JsonFile, TextFile
    from sdsnodes.errors import DecodeError, NotAFile, TooLarge

    rng = np.random.default_rng(0)
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9")
    (tmp_path / "big.txt").write_bytes(b"x" * 11)
    (tmp_path / "list.json").write_text("[1, 2]")
    (tmp_path / "bad.json").write_text("{nope")
    text = TextFile(max_bytes=10)
    assert text("an inline caption ", rng) == "an inline caption" and text(None, rng) is None
    assert text(b" bytes ", rng) == "bytes"
    with pytest.raises(DecodeError, match="not UTF-8"):
        text(str(tmp_path / "latin.txt"), rng)
    with pytest.raises(TooLarge):
        text(str(tmp_path / "big.txt"), rng)
    with pytest.raises(NotAFile):
        (tmp_path / "dir.txt").mkdir()
        text(str(tmp_path / "dir.txt"), rng)
    with pytest.raises(FileNotFoundError):
        text(str(tmp_path / "missing.txt"), rng)
    with pytest.raises(DecodeError, match="not an object"):
        JsonFile()(str(tmp_path / "list.json"), rng)
    with pytest.raises(DecodeError, match="not JSON"):
        JsonFile()(str(tmp_path / "bad.json"), rng)
    with pytest.raises(ValueError, match="fields="):
        JsonFile(fields="fps")
    with pytest.raises(ValueError, match="max_bytes="):
        TextFile(max_bytes=0)

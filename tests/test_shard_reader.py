"""ShardReader and the presets over packed parquet shards (sds pack's and Hugging Face's)."""

from __future__ import annotations

import functools
import io
import json
import pathlib
import shutil
import wave

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torchdata.nodes import Loader
from utils import check_dataloader_resume, check_node_resume, json_roundtrip, stateful_loader

from sdsnodes import (
    CacheOptions,
    ErrorOptions,
    FetchOptions,
    IndexOptions,
    StreamingDataset,
    build_audio_graph,
    build_image_graph,
    error_stats,
    load_elastic_state,
)
from sdsnodes.cache import Cache
from sdsnodes.index.packed import shard_table
from sdsnodes.nodes._packed import packed_source
from sdsnodes.pack import pack

NUM = 24  # images of the image_index fixture


@pytest.fixture(scope="module")
def packed(image_index, tmp_path_factory):
    """The 24 images packed into 4 shards of row groups of 3 rows."""
    dst = tmp_path_factory.mktemp("packed") / "ds"
    pack(image_index, dst, num_shards=4, row_group_size=3, progress=False)
    return str(dst)


def _keys(root) -> list[str]:
    return [s["__key__"] for s in Loader(root)]


def _reader(src, **kwargs):
    kwargs.setdefault("window", 4)
    return packed_source(src, **kwargs)[0]


def test_two_level_shuffle_resumes_exactly_at_every_point(packed):
    epoch0 = check_node_resume(functools.partial(_reader, packed, seed=3))
    keys = [k[0] for k in epoch0]
    assert sorted(keys, key=int) == [str(i) for i in range(NUM)]
    assert keys != sorted(keys, key=int)  # shuffled
    table, _ = shard_table(packed)
    shard_of = {
        str(r): i
        for i, (a, n) in enumerate(
            zip(table["first_row"].to_pylist(), table["num_rows"].to_pylist())
        )
        for r in range(a, a + n)
    }
    runs = [shard_of[k] for k in keys]
    changes = sum(1 for a, b in zip(runs, runs[1:]) if a != b)
    assert changes == 3  # each shard's samples come together (the first level: shard order)


def test_preset_resumes_with_two_workers(packed, tmp_path):
    def make():
        return StreamingDataset(
            functools.partial(
                build_image_graph,
                packed,
                size=16,
                batch_size=4,
                seed=5,
                cache=CacheOptions(str(tmp_path / "cache")),
            )  # fmt: skip
        )

    assert len(make()) == NUM  # rows, not the 4 shards the reader's table holds
    epoch0 = check_dataloader_resume(make, num_workers=2, midpoints=[1, 3])
    assert sorted(k for batch in epoch0 for k in batch) == sorted(str(i) for i in range(NUM))


def test_index_options_are_refused_with_the_fix(packed):
    with pytest.raises(ValueError, match="packed dataset.*pack that"):
        build_image_graph(packed, index=IndexOptions(max_rows=3))


def test_ranks_read_disjoint_shards(packed):
    shares = [set(_keys(_reader(packed, rank=r, world_size=2))) for r in range(2)]
    assert not shares[0] & shares[1]
    assert shares[0] | shares[1] == {str(i) for i in range(NUM)}
    listed = sorted(str(p) for p in pathlib.Path(packed).glob("*.parquet"))
    for src in (f"{packed}/*.parquet", listed):  # a wildcard, a list of shards
        assert set(_keys(_reader(src))) == shares[0] | shares[1]


def test_elastic_resume_loses_nothing(packed, tmp_path):
    def make():
        return StreamingDataset(
            functools.partial(build_image_graph, packed, size=16, batch_size=2, seed=1)
        )

    dl = stateful_loader(make(), num_workers=2)
    it = iter(dl)
    seen = [k for _ in range(3) for k in next(it)["__key__"]]
    state = json_roundtrip(dl.state_dict())
    del it, dl
    ds = make()
    load_elastic_state(ds, [state])
    rest = [k for batch in stateful_loader(ds, num_workers=1) for k in batch["__key__"]]
    assert set(seen) | set(rest) == {str(i) for i in range(NUM)}  # nothing lost
    assert len(rest) == len(set(rest))
    # exactly-once: the shards being read resume after their delivered samples
    assert len(seen) + len(rest) == NUM


def test_s3_shards_cached_whole_within_budget_and_a_rewritten_shard_refetched(
    s3_server, s3_bucket, image_index, tmp_path
):
    opts = s3_server.storage_options
    url = f"{s3_bucket}/packed"
    pack(image_index, url, num_shards=4, row_group_size=4, dst_storage_options=opts,
         progress=False)  # fmt: skip
    cache_dir = str(tmp_path / "cache")

    def graph():
        return build_image_graph(
            url, size=16, batch_size=4, seed=2, cache=CacheOptions(cache_dir, max_bytes=10**7),
            fetch=FetchOptions(opts, retries=0),
        )  # fmt: skip

    loader = Loader(graph())
    keys = [k for batch in loader for k in batch["__key__"]]
    assert sorted(keys, key=int) == [str(i) for i in range(NUM)]
    assert Cache(cache_dir).stats()["files"] == 4  # one cached file per shard
    captions = [c for batch in loader for c in batch["caption"]]  # epoch 1: from the cache
    assert Cache(cache_dir).stats()["files"] == 4
    # rewrite shard 0 remotely (new captions): a new graph lists a new size/ETag and refetches
    fs = s3_server.fs()
    first = sorted(fs.glob(url + "/*.parquet"))[0]
    with fs.open(first, "rb") as f:
        table = pq.read_table(f)
    changed = table.set_column(
        table.schema.get_field_index("caption"), "caption",
        pa.array(["rewritten"] * table.num_rows),
    )  # fmt: skip
    with fs.open(first, "wb") as f:
        pq.write_table(changed, f)
    fresh = [c for batch in Loader(graph()) for c in batch["caption"]]
    assert fresh.count("rewritten") == table.num_rows  # never the cached old copy
    assert "rewritten" not in captions
    assert Cache(cache_dir).stats()["files"] == 5
    # a budget of 3.5 shards: eviction at shard granularity, back within the budget each epoch
    sizes = shard_table(url, opts)[0].column("size").to_pylist()
    budget = int(3.5 * max(sizes))
    small = str(tmp_path / "small")
    loader = Loader(
        build_image_graph(
            url,
            size=16,
            batch_size=4,
            seed=2,
            cache=CacheOptions(small, max_bytes=budget),
            fetch=FetchOptions(opts, retries=0),
        )  # fmt: skip
    )
    for _ in range(2):
        assert sum(len(b["__key__"]) for b in loader) == NUM
        cached = [p.stat().st_size for p in pathlib.Path(small).rglob("*.parquet")]
        assert set(cached) <= set(sizes) and len(cached) == 3  # whole shards only
        assert Cache(small).stats()["bytes"] <= budget


def _corrupt_row_group(path, group: int) -> int:
    meta = pq.ParquetFile(path).metadata
    offset = meta.row_group(group).column(0).data_page_offset
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\xff" * 64)
    return meta.row_group(group).num_rows


def test_corrupt_shard_and_row_group_are_skipped_and_counted(packed, tmp_path):
    src = tmp_path / "ds"
    shutil.copytree(packed, src)
    shards = sorted(src.glob("*.parquet"))

    def graph(on_error):
        return build_image_graph(
            str(src), size=16, batch_size=4, shuffle=False,
            errors=ErrorOptions(on_error=on_error, max_error_rate=1.0),
        )  # fmt: skip

    root = graph("skip")  # lists the shards (footers) before they break
    truncated = pq.ParquetFile(shards[1]).metadata.num_rows
    data = shards[1].read_bytes()
    shards[1].write_bytes(data[: len(data) // 2])
    bad = _corrupt_row_group(shards[2], 1)
    loader = Loader(root)
    keys = [k for batch in loader for k in batch["__key__"]]
    assert len(keys) == NUM - truncated - bad
    assert error_stats(loader.state_dict())["corrupt_shard"] == truncated + bad
    shards[1].write_bytes(data)
    with pytest.raises(Exception, match="(?i)parquet|thrift|deserializ|invalid|corrupt"):
        list(Loader(graph("raise")))


def test_hugging_face_parquet_with_null_bytes_falls_back_to_the_path(image_index, tmp_path):
    """A shard written with pyarrow exactly as ``datasets`` writes an ``Image()`` column."""
    index = pq.read_table(image_index).slice(0, 6)
    paths = index["image"].to_pylist()
    blobs = [pathlib.Path(p).read_bytes() for p in paths]
    blobs[2] = None  # bytes null, path readable: read from the path
    blobs[3], paths[3] = None, "not-there.jpg"  # neither: skipped as missing
    image = pa.StructArray.from_arrays(
        [pa.array(blobs, pa.binary()), pa.array(paths, pa.string())], names=["bytes", "path"]
    )
    features = {"image": {"_type": "Image"}, "label": {"dtype": "int64", "_type": "Value"}}
    table = pa.table({"image": image, "label": pa.array(range(6), pa.int64())})
    table = table.replace_schema_metadata(
        {"huggingface": json.dumps({"info": {"features": features}})}
    )
    (tmp_path / "hub" / "data").mkdir(parents=True)
    pq.write_table(table, tmp_path / "hub" / "data" / "train-00000-of-00001.parquet")
    loader = Loader(
        build_image_graph(str(tmp_path / "hub"), size=16, batch_size=8, caption_column=None)
    )
    (batch,) = list(loader)
    assert batch["image"].shape == (5, 3, 16, 16)
    assert sorted(batch["label"].tolist()) == [0, 1, 2, 4, 5]
    assert error_stats(loader.state_dict()) == {"missing": 1}


def test_audio_preset_reads_a_hugging_face_audio_column(tmp_path):
    """An ``Audio()`` column (struct of WAV bytes and a path), as ``datasets`` writes it."""
    blobs = []
    for i in range(4):
        out = io.BytesIO()
        with wave.open(out, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(8000)
            t = np.arange(4000) / 8000
            w.writeframes((np.sin(2 * np.pi * 220 * (i + 1) * t) * 8000).astype("<i2").tobytes())
        blobs.append(out.getvalue())
    audio = pa.StructArray.from_arrays(
        [pa.array(blobs, pa.binary()), pa.array([f"{i}.wav" for i in range(4)])],
        names=["bytes", "path"],
    )
    features = {"audio": {"_type": "Audio"}}
    table = pa.table({"audio": audio}).replace_schema_metadata(
        {"huggingface": json.dumps({"info": {"features": features}})}
    )
    pq.write_table(table, tmp_path / "train-00000-of-00001.parquet")
    graph = build_audio_graph(
        str(tmp_path), sample_rate=8000, batch_size=4, caption_column=None, shuffle=False
    )
    (batch,) = list(Loader(graph))
    assert batch["audio"].shape[0] == 4 and batch["audio"].dtype == torch.float32

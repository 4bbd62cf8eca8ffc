"""GCS compose fetches (``FetchOptions(gcs_compose=GcsComposeOptions())``) on fake-gcs-server:
the same samples and bytes as one GET per object, with 2 workers; temporary objects deleted;
failures fall back to single GETs, counted; exact resume."""

from __future__ import annotations

import hashlib
import itertools
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from torchdata.nodes import Batcher, Loader, Mapper
from utils import check_dataloader_resume, stateful_loader

import sdsnodes
from sdsnodes import (
    CacheOptions,
    CachingDownloader,
    Evictor,
    FetchOptions,
    GcsComposeOptions,
    IndexReader,
    Shuffler,
    StreamingDataset,
    collate,
    error_stats,
)

N = 48
PREFIX = "sdsnodes-composed-objects/"


@pytest.fixture(scope="module")
def objects(gcs_server):
    """48 small objects of random bytes and sizes in one bucket: ``(bucket, {url: bytes})``."""
    bucket = gcs_server.make_bucket("compose-tests")
    rng = random.Random(0)
    blobs = {f"{bucket}/o/{i:03d}.bin": rng.randbytes(rng.randint(200, 900)) for i in range(N)}
    gcs_server.fs().pipe(blobs)
    yield bucket, blobs
    gcs_server.fs().rm(bucket, recursive=True)


def write_index(tmp_path, blobs: dict[str, bytes], **columns) -> str:
    urls = list(blobs)
    path = tmp_path / f"index-{len(list(tmp_path.iterdir()))}.parquet"
    table = {"file": urls, "size": [len(blobs[u]) for u in urls], **columns}
    pq.write_table(pa.table(table), path)
    return str(path)


class Digest:
    """Replace the cached file by the sha256 of its bytes; note the downloader's compose count
    (a callable object, so a deep copy of the graph points at the copied downloader)."""

    def __init__(self, downloader: CachingDownloader) -> None:
        self.downloader = downloader

    def __call__(self, sample: dict) -> dict:
        with open(sample["file"], "rb") as f:
            sample["file"] = hashlib.sha256(f.read()).hexdigest()
        sample["composed"] = self.downloader.compose_counts.get("composed_objects", -1)
        return sample


def graph(gcs_server, index, cache_dir, compose, *, seed=0, retries=2, batch_size=4):
    fetch = FetchOptions(
        gcs_server.storage_options, retries=retries, deadline_s=5.0, max_in_flight=32,
        gcs_compose=compose,
    )  # fmt: skip
    reader = IndexReader(index, index_cache_dir=str(cache_dir) + "-index")
    downloader = CachingDownloader(
        Shuffler(reader, seed=seed), ["file"], cache=CacheOptions(str(cache_dir)), fetch=fetch
    )
    digests = Evictor(Mapper(downloader, Digest(downloader)))
    return Mapper(Batcher(digests, batch_size, drop_last=False), collate), downloader


def by_key(batches) -> dict:
    return {k: d for b in batches for k, d in zip(b["__key__"], b["file"], strict=True)}


def temp_objects(gcs_server, bucket: str) -> list[str]:
    return gcs_server.fs().find(f"{bucket}/{PREFIX}")


def sha(blobs: dict[str, bytes]) -> list[str]:
    return sorted(hashlib.sha256(b).hexdigest() for b in blobs.values())


def test_compose_with_two_workers_gives_the_same_samples_and_cleans_up(
    gcs_server, objects, tmp_path
):
    bucket, blobs = objects
    index = write_index(tmp_path, blobs)
    runs = {}
    for name, compose in (("off", None), ("on", GcsComposeOptions(min_objects=4))):
        root, _ = graph(gcs_server, index, tmp_path / f"cache-{name}", compose)
        loader = stateful_loader(StreamingDataset(root), num_workers=2)
        batches = list(loader)
        runs[name] = by_key(batches)
        composed = max(int(c) for b in batches for c in b["composed"])
        assert composed > 0 if name == "on" else composed == -1
        counted = sdsnodes.stats(loader, ledger=False)["compose"]  # both workers, summed
        if name == "on":
            assert composed <= counted["composed_objects"] <= len(blobs)
            assert counted["composed_groups"] >= 1 and counted["fallback_objects"] == 0
        else:
            assert set(counted.values()) == {0}
    assert runs["on"] == runs["off"]  # same keys, same bytes
    assert sorted(runs["on"].values()) == sha(blobs)  # every object once
    assert temp_objects(gcs_server, bucket) == []


@pytest.mark.parametrize("fault", ["missing", "changed"])
def test_a_failed_compose_falls_back_and_loses_nothing(gcs_server, objects, tmp_path, fault):
    bucket, blobs = objects
    fs = gcs_server.fs()
    bad = f"{bucket}/o/{fault}.bin"
    fs.pipe_file(bad, b"x" * 300)
    mine = {**dict(itertools.islice(blobs.items(), 15)), bad: b"x" * 300}
    index = write_index(tmp_path, mine)
    if fault == "missing":  # the compose fails (a missing source): one by one instead
        fs.rm_file(bad)
    else:  # changed since the index: the composed size is not the sum of the sizes
        fs.pipe_file(bad, b"x" * 301)
    root, downloader = graph(gcs_server, index, tmp_path / "cache", GcsComposeOptions(), retries=0)
    loader = Loader(root)
    got = by_key(loader)
    assert sorted(got.values()) == sha({u: b for u, b in mine.items() if u != bad})
    assert error_stats(loader.state_dict()) == {"download" if fault == "changed" else fault: 1}
    counts = downloader.compose_counts
    assert counts["fallback_objects"] == 16 and counts["composed_objects"] == 0
    assert temp_objects(gcs_server, bucket) == []
    if fault == "changed":
        fs.rm_file(bad)


def test_a_composed_part_with_a_wrong_digest_is_not_cached(gcs_server, objects, tmp_path):
    _, blobs = objects
    mine = dict(itertools.islice(blobs.items(), 16))
    md5 = [hashlib.md5(b).hexdigest() for b in mine.values()]
    md5[3] = "0" * 32
    index = write_index(tmp_path, mine, md5=md5)
    root, downloader = graph(gcs_server, index, tmp_path / "cache", GcsComposeOptions())
    loader = Loader(root)
    got = by_key(loader)
    assert sorted(got.values()) == sha({u: b for i, (u, b) in enumerate(mine.items()) if i != 3})
    assert error_stats(loader.state_dict()) == {"checksum": 1}
    assert downloader.compose_counts["composed_objects"] == 16


def test_resume_with_compose_is_exact(gcs_server, objects, tmp_path):
    _, blobs = objects
    index = write_index(tmp_path, dict(itertools.islice(blobs.items(), 32)))
    caches = itertools.count()  # a cold cache per loader: the resumed run composes too

    def make():
        compose = GcsComposeOptions(min_objects=4)
        root, _ = graph(gcs_server, index, tmp_path / f"c{next(caches)}", compose, seed=5)
        return StreamingDataset(root)

    def keys_and_bytes(batch):
        return list(batch["__key__"]), list(batch["file"])

    check_dataloader_resume(make, num_workers=2, midpoints=[1, 5], key_fn=keys_and_bytes)


def test_options_are_checked():
    with pytest.raises(ValueError, match="max_objects"):
        GcsComposeOptions(max_objects=33)
    with pytest.raises(ValueError, match="min_objects"):
        GcsComposeOptions(min_objects=1)
    with pytest.raises(ValueError, match="temp_prefix"):
        GcsComposeOptions(temp_prefix="gs://other/tmp/")
    with pytest.raises(ValueError, match="gcs_compose"):
        FetchOptions(gcs_compose={"min_objects": 4})


@pytest.mark.slow
def test_benchmark_runs(capsys):
    from benchmarks import bench_gcs_compose

    assert bench_gcs_compose.main(["--quick", "--objects", "64"]) == 0
    out = capsys.readouterr().out
    assert "serves compose (gcsfs merge): yes" in out and "64 composed, 0 fell back" in out

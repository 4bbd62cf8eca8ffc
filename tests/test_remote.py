"""Remote sources through the real graph, against real servers on 127.0.0.1 (moto S3,
fake-gcs-server, an aiohttp Range server): downloads, the cache, faults and bad input."""

import contextlib
import functools
import hashlib
import json
import multiprocessing
import os
import subprocess
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from torchdata.nodes import Loader
from utils import check_dataloader_resume, stateful_loader

from sdsnodes import (
    CacheOptions,
    CachingDownloader,
    DownloadError,
    ErrorOptions,
    Evictor,
    FetchOptions,
    IndexReader,
    StreamingDataset,
    TooManyErrors,
    build_image_graph,
    error_stats,
)
from sdsnodes._retry import DEFAULT_RETRIES
from sdsnodes._synthetic import write_image
from sdsnodes.cache import Cache


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """12 local JPEGs and their bytes."""
    root = tmp_path_factory.mktemp("remote-images")
    paths = []
    for i in range(12):
        path = root / f"img{i:02d}.jpg"
        write_image(path, width=40 + i, height=30, seed=i)
        paths.append(path)
    return paths


def index_of(urls, tmp_path, name="index.parquet", **columns):
    path = tmp_path / name
    pq.write_table(
        pa.table({"image": urls, "caption": [f"c{i}" for i in range(len(urls))], **columns}), path
    )
    return path


def graph(src, cache_dir, max_bytes=None, storage_options=None, download_threads=4,
          retries=DEFAULT_RETRIES, on_error="skip", **kw):  # fmt: skip
    args = dict(size=16, batch_size=4, num_threads=2)
    args.update(kw)
    return build_image_graph(
        src, cache=CacheOptions(str(cache_dir), max_bytes=max_bytes),
        fetch=FetchOptions(storage_options, retries=retries, max_in_flight=download_threads),
        errors=ErrorOptions(on_error), **args,
    )  # fmt: skip


def upload(fs, paths, prefix):
    urls = []
    for path in paths:
        fs.put_file(str(path), f"{prefix}/{path.name}")
        urls.append(f"{prefix}/{path.name}")
    return urls


def test_s3_images_stream_and_hit_the_cache_next_epoch(s3_server, s3_bucket, images, tmp_path):
    urls = upload(s3_server.fs(), images, s3_bucket + "/imgs")
    loader = Loader(
        graph(
            index_of(urls, tmp_path), tmp_path / "cache", storage_options=s3_server.storage_options
        )
    )
    batches = list(loader)
    assert sum(len(b["__key__"]) for b in batches) == 12
    assert batches[0]["image"].shape == (4, 3, 16, 16)
    assert all(u.startswith("s3://") for b in batches for u in b["__url__.image"])
    stats = Cache(tmp_path / "cache").stats()
    assert stats["misses"] == 12 and stats["files"] == 12 and stats["pinned_files"] == 0
    list(loader)
    assert Cache(tmp_path / "cache").stats()["hits"] == 12  # nothing downloaded twice


def test_resumes_exactly_from_s3_with_workers_and_a_tight_budget(
    s3_server, s3_bucket, images, tmp_path
):
    urls = [u for copy in range(2) for u in upload(s3_server.fs(), images, f"{s3_bucket}/r{copy}")]
    sizes = [p.stat().st_size for p in images] * 2  # 24 objects, a third of them fit
    src = index_of(urls, tmp_path, size=sizes)

    def make():
        return StreamingDataset(
            graph(src, tmp_path / "c", max_bytes=sum(sizes) // 3,
                  storage_options=s3_server.storage_options, seed=3)
        )  # fmt: skip

    def key_and_pixels(batch):
        return list(batch["__key__"]), hashlib.sha256(batch["image"].numpy().tobytes()).hexdigest()

    check_dataloader_resume(make, num_workers=2, key_fn=key_and_pixels)


def test_the_index_itself_and_directory_listing_are_remote(s3_server, s3_bucket, images, tmp_path):
    fs = s3_server.fs()
    urls = upload(fs, images[:5], s3_bucket + "/dir/sub")
    fs.put_file(str(index_of(urls, tmp_path)), s3_bucket + "/index.parquet")
    remote_index = IndexReader(
        s3_bucket + "/index.parquet", storage_options=s3_server.storage_options
    )
    assert len(remote_index.index) == 5
    listed = IndexReader(s3_bucket + "/dir", storage_options=s3_server.storage_options)
    assert sorted(listed.index.table.column("image").to_pylist()) == sorted(urls)
    assert listed.index.table.column("size").to_pylist() == [p.stat().st_size for p in images[:5]]


def test_gcs_images(gcs_server, gcs_bucket, images, tmp_path):
    urls = upload(gcs_server.fs(), images[:4], gcs_bucket + "/imgs")
    batches = list(
        Loader(
            graph(
                index_of(urls, tmp_path), tmp_path / "c", storage_options=gcs_server.storage_options
            )
        )
    )
    assert batches[0]["image"].shape == (4, 3, 16, 16)


def http_index(http_dir, images, tmp_path, duplicate=1):
    for path in images:
        (http_dir.path / path.name).write_bytes(path.read_bytes())
    urls = [http_dir.url_for(p.name) for p in images] * duplicate
    index = index_of(urls, tmp_path)
    (http_dir.path / "index.parquet").write_bytes(index.read_bytes())
    return http_dir.url_for("index.parquet"), urls


def test_http_index_and_media(http_server, http_dir, images, tmp_path):
    src, _ = http_index(http_dir, images, tmp_path)
    batches = list(Loader(graph(src, tmp_path / "c")))
    assert sum(len(b["__key__"]) for b in batches) == 12


def test_same_url_from_two_workers_downloads_once(http_server, http_dir, images, tmp_path):
    src, urls = http_index(http_dir, images, tmp_path, duplicate=2)  # row i and i+12 share a URL
    ds = StreamingDataset(functools.partial(graph, src, tmp_path / "c", shuffle=False))
    assert sum(len(b["__key__"]) for b in stateful_loader(ds, 2)) == 24
    gets = {url: http_server.stats(url)["get"] for url in set(urls)}
    assert len(gets) == 12 and set(gets.values()) == {1}, gets


def test_404_is_skipped_and_counted_or_raised(http_server, http_dir, images, tmp_path):
    src, urls = http_index(http_dir, images[:6], tmp_path)
    (http_dir.path / images[2].name).unlink()
    loader = Loader(graph(src, tmp_path / "c", shuffle=False, batch_size=1))
    assert len(list(loader)) == 5
    assert error_stats(loader.state_dict())["missing"] == 1
    with pytest.raises(FileNotFoundError):
        list(Loader(graph(src, tmp_path / "c2", shuffle=False, on_error="raise")))


def test_500s_are_retried_and_the_sample_delivered(http_server, http_dir, images, tmp_path):
    src, urls = http_index(http_dir, images[:4], tmp_path)
    http_server.faults(fail_next=2, status=500, path=images[1].name)
    loader = Loader(graph(src, tmp_path / "c", shuffle=False))
    assert sum(len(b["__key__"]) for b in loader) == 4
    assert error_stats(loader.state_dict()).get("download", 0) == 0
    assert http_server.stats(urls[1])["get"] == 3


def test_a_connection_reset_mid_body_is_retried(http_server, http_dir, images, tmp_path):
    src, urls = http_index(http_dir, images[:4], tmp_path)
    http_server.faults(reset_next=1, path=images[3].name)
    loader = Loader(graph(src, tmp_path / "c", shuffle=False))
    assert sum(len(b["__key__"]) for b in loader) == 4
    cached = Cache(tmp_path / "c").path_for(urls[3])
    assert cached.read_bytes() == images[3].read_bytes()  # the torn first attempt left no trace


def test_server_outage_mid_epoch_loses_nothing(http_server, http_dir, images, tmp_path):
    src, urls = http_index(http_dir, images, tmp_path)
    loader = Loader(graph(src, tmp_path / "c", batch_size=2, download_threads=2, prefetch_factor=0))
    it = iter(loader)
    keys = list(next(it)["__key__"])
    http_server.pause()
    threading.Timer(1.5, http_server.resume).start()
    keys += [k for b in it for k in b["__key__"]]
    assert sorted(keys, key=int) == [str(i) for i in range(12)]
    assert error_stats(loader.state_dict()).get("download", 0) == 0


def test_server_gone_for_good_is_a_clear_error_not_a_hang(http_server, http_dir, images, tmp_path):
    src, urls = http_index(http_dir, images[:3], tmp_path)
    local_index = index_of(urls, tmp_path, name="local.parquet")
    http_server.stop()
    start = time.monotonic()
    with pytest.raises(DownloadError, match="failed after"):
        list(Loader(graph(local_index, tmp_path / "c", on_error="raise", shuffle=False, retries=1)))
    many = index_of(urls * 10, tmp_path, name="many.parquet")
    with pytest.raises(TooManyErrors, match="download"):
        list(Loader(graph(many, tmp_path / "c", download_threads=8, retries=1)))
    assert time.monotonic() - start < 60
    http_server.start()


@pytest.fixture
def tiny_disk(tmp_path):
    mount = tmp_path / "tiny"
    mount.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(mount)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    yield mount
    subprocess.run(
        ["umount", "-l", str(mount)], check=False
    )  # lazily: the cache's ledger may be open


def test_disk_full_is_a_clear_error_and_no_corrupt_entry(
    http_server, http_dir, tmp_path, tiny_disk
):
    blobs = []
    for i in range(4):
        blob = tmp_path / f"big{i}.jpg"
        write_image(blob, width=400, height=400, seed=i)  # noise-like content: ~100 KB each
        blob.write_bytes(blob.read_bytes() + os.urandom(60_000))
        blobs.append(blob)
    src, urls = http_index(http_dir, blobs, tmp_path)
    cache_dir = tiny_disk / "cache"
    with pytest.raises(OSError, match="is full"):  # (torch re-raises across threads: errno is lost)
        list(Loader(graph(src, cache_dir, shuffle=False, download_threads=1)))
    leftovers = [p for p in cache_dir.rglob("*") if p.is_file() and p.suffix == ".tmp"]
    assert leftovers == []
    with Cache(cache_dir) as cache:
        for url in urls:  # whatever the ledger holds is whole
            path = cache.path_for(url)
            if path.exists():
                assert path.read_bytes() == blobs[urls.index(url)].read_bytes()


def test_path_traversal_urls_stay_in_the_cache_dir(s3_server, s3_bucket, images, tmp_path):
    fs = s3_server.fs()
    fs.put_file(str(images[0]), s3_bucket + "/a/b.jpg")
    url = s3_bucket + "/x/../../../../etc/passwd/../a/b.jpg"
    path = Cache(tmp_path / "c").path_for(url)
    assert tmp_path / "c" in path.parents


def _race_worker(src, cache_dir, max_bytes, storage_options, out):
    loader = Loader(
        graph(
            src, cache_dir, max_bytes=max_bytes, storage_options=storage_options, batch_size=2,
            download_threads=2, prefetch_factor=0,
        )
    )  # fmt: skip
    digests = {}
    for _ in range(2):
        for batch in loader:
            for key, image in zip(batch["__key__"], batch["image"]):
                digests[key] = hashlib.sha256(image.numpy().tobytes()).hexdigest()
    Path(out).write_text(json.dumps(digests))


def test_two_processes_and_random_access_share_one_cache_within_budget(
    s3_server, s3_bucket, images, tmp_path
):
    urls = [
        u for copy in range(3) for u in upload(s3_server.fs(), images, f"{s3_bucket}/race{copy}")
    ]
    sizes = [p.stat().st_size for p in images] * 3  # 36 objects
    src = index_of(urls, tmp_path, size=sizes)
    cache_dir, budget = tmp_path / "shared", sum(sizes) // 3
    opts = s3_server.storage_options
    ctx = multiprocessing.get_context("spawn")
    procs = [
        ctx.Process(
            target=_race_worker,
            args=(str(src), str(cache_dir), budget, opts, str(tmp_path / f"p{i}.json")),
        )
        for i in range(2)
    ]
    for p in procs:
        p.start()
    ds = StreamingDataset(graph(src, cache_dir, max_bytes=budget, storage_options=opts))
    expected, peak = {}, 0
    running = True
    while running:  # at least one full pass, then until both processes end
        running = any(p.is_alive() for p in procs)
        for i in range(36):
            expected[str(i)] = hashlib.sha256(ds[i]["image"].numpy().tobytes()).hexdigest()
        total = 0
        for f in cache_dir.rglob("*"):
            if f.parent.name != ".locks" and "ledger" not in f.name:
                with contextlib.suppress(FileNotFoundError):  # evicted while we walk
                    total += f.stat().st_size if f.is_file() else 0
        peak = max(peak, total)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    for i in range(2):
        assert json.loads((tmp_path / f"p{i}.json").read_text()) == expected  # no torn reads
    # downloads ahead wait for room: over the budget only by the file each of the 3 processes
    # (2 loaders, random access here) waits for, plus one for the walk, which is not atomic (a
    # file counted, then evicted, and its replacement counted too); the dataset is 3x the budget
    assert peak <= budget + 4 * max(sizes) < sum(sizes) * 0.6


def test_several_columns_per_sample(s3_server, s3_bucket, images, tmp_path):
    urls = upload(s3_server.fs(), images[:4], s3_bucket + "/two")
    table = pa.table({"a": urls, "b": list(reversed(urls))})
    node = Evictor(
        CachingDownloader(
            IndexReader(table),
            ["a", "b"],
            cache=CacheOptions(str(tmp_path / "c")),
            fetch=FetchOptions(storage_options=s3_server.storage_options),
        )
    )
    samples = list(Loader(node))
    assert all(Path(s["a"]).read_bytes() == images[int(s["__key__"])].read_bytes() for s in samples)
    assert all(
        Path(s["b"]).read_bytes() == images[3 - int(s["__key__"])].read_bytes() for s in samples
    )
    assert Cache(tmp_path / "c").stats()["files"] == 4  # 4 distinct URLs, fetched once each

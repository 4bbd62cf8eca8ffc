"""CachingDownloader's window: concurrent downloads yielded in order, within the byte budget,
each URL once, cancelled cleanly; over the real HTTP server, and an FTP server for the sync path."""

from __future__ import annotations

import copy
import os
import pickle
import random
import sqlite3
import time
import uuid
from pathlib import Path

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from torchdata.nodes import Loader
from utils import check_node_resume

from sdsnodes import CachingDownloader, Evictor, IndexReader, error_stats
from sdsnodes.cache import Cache
from sdsnodes.errors import DownloadError
from sdsnodes.nodes._cache_ref import close_caches
from sdsnodes.options import CacheOptions, ErrorOptions, FetchOptions


def make_files(http_dir, n: int, seed: int = 0, low: int = 1000, high: int = 2000) -> dict:
    """``n`` served files of random bytes (sizes in [low, high]): ``{url: bytes}`` in order."""
    rng = random.Random(seed)
    files = {}
    for i in range(n):
        data = rng.randbytes(rng.randint(low, high))
        (http_dir.path / f"f{i:02d}.bin").write_bytes(data)
        files[http_dir.url_for(f"f{i:02d}.bin")] = data
    return files


def index_of(tmp_path: Path, urls: list[str], sizes: list[int] | None = None) -> str:
    columns = {"file": urls}
    if sizes is not None:
        columns["size"] = sizes
    path = tmp_path / f"index-{uuid.uuid4().hex[:8]}.parquet"
    pq.write_table(pa.table(columns), path)
    return str(path)


def downloader(
    tmp_path: Path, index: str, cache_dir=None, max_bytes=None, **kw
) -> CachingDownloader:
    reader = IndexReader(index, index_cache_dir=str(tmp_path / "index-cache"))
    cache = CacheOptions(cache_dir or str(tmp_path / "cache"), max_bytes=max_bytes)
    return CachingDownloader(reader, ["file"], cache=cache, **kw)


def on_disk(root: Path) -> tuple[int, list[Path]]:
    """(bytes of the cache's files, temporary files) under ``root``: the ledger and the lock
    files excluded; a file evicted while we look counts 0."""
    size, tmps = 0, []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".locks"]
        for name in names:
            if name.startswith("ledger.sqlite"):
                continue
            if name.endswith(".tmp"):
                tmps.append(Path(folder) / name)
            try:
                size += os.stat(os.path.join(folder, name)).st_size
            except FileNotFoundError:
                pass
    return size, tmps


def reserved_rows(root: Path) -> int:
    """Reservations (downloads claimed, not finished) in the ledger of ``root``."""
    conn = sqlite3.connect(root / "ledger.sqlite")
    try:
        return conn.execute("SELECT COUNT(*) FROM files WHERE state = 'reserved'").fetchone()[0]
    finally:
        conn.close()


def test_window_yields_in_source_order_with_the_right_bytes(http_server, http_dir, tmp_path):
    files = make_files(http_dir, 30)
    urls = list(files)
    http_server.faults(delay_s=0.3, count=1, path="f00.bin")  # the head finishes last
    loader = Loader(
        downloader(tmp_path, index_of(tmp_path, urls), fetch=FetchOptions(max_in_flight=8))
    )
    samples = list(loader)
    assert [s["__key__"] for s in samples] == [str(i) for i in range(30)]
    for sample, url in zip(samples, urls):
        assert sample["__url__.file"] == url
        assert sample["__cache_dir__"] == str(tmp_path / "cache")
        path = Path(sample["file"])
        assert tmp_path / "cache" in path.parents
        assert path.read_bytes() == files[url]
    assert {http_server.stats(u)["get"] for u in urls} == {1}
    stats = Cache(tmp_path / "cache").stats()
    assert (stats["files"], stats["misses"], stats["hits"]) == (30, 30, 0)
    assert stats["bytes"] == sum(len(b) for b in files.values())


def test_a_duplicate_url_is_downloaded_once(http_server, http_dir, tmp_path):
    files = make_files(http_dir, 10)
    urls = list(files)
    dup = urls[3]
    order = urls[:4] + [dup, dup] + urls[4:8] + [dup] + urls[8:] + [dup]  # near and far apart
    http_server.faults(delay_s=0.3, count=1, path="f03.bin")  # the copies wait on it
    loader = Loader(
        downloader(tmp_path, index_of(tmp_path, order), fetch=FetchOptions(max_in_flight=8))
    )
    samples = list(loader)
    assert [s["__url__.file"] for s in samples] == order
    assert all(Path(s["file"]).read_bytes() == files[s["__url__.file"]] for s in samples)
    assert http_server.stats(dup)["get"] == 1
    assert {http_server.stats(u)["get"] for u in urls} == {1}
    assert error_stats(loader.state_dict()) == {}


def test_the_byte_budget_holds_with_an_evictor(http_server, http_dir, tmp_path):
    files = make_files(http_dir, 30, seed=1)
    urls, sizes = list(files), [len(b) for b in files.values()]
    largest, max_bytes = max(sizes), 3 * 1500
    root = tmp_path / "cache"
    node = downloader(
        tmp_path,
        index_of(tmp_path, urls, sizes),
        fetch=FetchOptions(max_in_flight=8),
        max_bytes=max_bytes,
    )
    keys, peak = [], 0
    for sample in Loader(Evictor(node, trim_every=0)):
        assert Path(sample["file"]).read_bytes() == files[sample["__url__.file"]]
        keys.append(sample["__key__"])
        size, _ = on_disk(root)
        peak = max(peak, size)
        assert size <= max_bytes + largest, f"{size} bytes on disk after sample {keys[-1]}"
    assert keys == [str(i) for i in range(30)]  # the whole epoch, in order
    assert peak > largest  # the window did download ahead
    stats = Cache(root).stats()
    assert stats["bytes"] <= max_bytes and stats["pinned_files"] == 0
    assert stats["evictions"] > 0


def test_resume(http_server, http_dir, tmp_path):
    files = make_files(http_dir, 12, seed=2)
    index = index_of(tmp_path, list(files))

    def make_root():
        return Evictor(downloader(tmp_path, index, fetch=FetchOptions(max_in_flight=4)))

    def key_fn(sample):
        assert Path(sample["file"]).read_bytes() == files[sample["__url__.file"]]
        return sample["__key__"], sample["__epoch__"]

    epoch0 = check_node_resume(make_root, key_fn=key_fn)
    assert [k for k, _ in epoch0] == [str(i) for i in range(12)]
    assert {http_server.stats(u)["get"] for u in files} == {1}  # then cache hits


@pytest.mark.parametrize("stop", ["shutdown", "reset"])
def test_stopping_mid_epoch_releases_everything(http_server, http_dir, tmp_path, stop):
    files = make_files(http_dir, 30, seed=3)
    urls = list(files)
    for i in range(9, 30, 2):  # some downloads still in flight when we stop
        http_server.faults(delay_s=1.0, path=f"f{i:02d}.bin")
    root = tmp_path / "cache"
    index = index_of(tmp_path, urls, [len(b) for b in files.values()])
    node = downloader(tmp_path, index, fetch=FetchOptions(max_in_flight=8), max_bytes=10_000)
    it = iter(Loader(Evictor(node)))
    assert [next(it)["__key__"] for _ in range(5)] == ["0", "1", "2", "3", "4"]
    getattr(node, stop)()
    assert on_disk(root)[1] == []
    time.sleep(0.3)  # a cancelled download must not write its file later either
    assert on_disk(root)[1] == []
    assert reserved_rows(root) == 0
    assert Cache(root).stats()["pinned_files"] == 0
    close_caches()
    assert Cache(root).stats()["pinned_files"] == 0

    http_server.clear_faults()  # nothing left locked or half-written: a new run gets it all
    fresh = list(
        Loader(
            Evictor(
                downloader(tmp_path, index, fetch=FetchOptions(max_in_flight=8), max_bytes=10_000)
            )
        )
    )
    assert [s["__key__"] for s in fresh] == [str(i) for i in range(30)]
    assert on_disk(root)[1] == [] and reserved_rows(root) == 0


def test_cancelled_downloads_leave_no_tmp_files(http_server, http_dir, tmp_path):
    """Downloads in flight when the node stops must not complete into a *.tmp file afterwards;
    many small files stopped right after the first sample, 40 times, to meet the moments
    where a download ends while it is being cancelled."""
    files = make_files(http_dir, 40, seed=6, low=1000, high=20_000)
    index = index_of(tmp_path, list(files))
    roots = [tmp_path / f"cache{i}" for i in range(40)]
    for root in roots:
        node = downloader(
            tmp_path, index, fetch=FetchOptions(max_in_flight=16), cache_dir=str(root)
        )
        it = iter(Loader(node))
        assert Path(next(it)["file"]).read_bytes() == files[next(iter(files))]
        node.shutdown()
    time.sleep(0.3)  # what the cancellations did not stop has ended by now
    left = [p.relative_to(tmp_path) for root in roots for p in on_disk(root)[1]]
    assert left == [], f"{len(left)} *.tmp files left behind by cancelled downloads"
    assert sum(reserved_rows(root) for root in roots) == 0


def test_stopping_does_not_download_what_the_window_waited_for(http_server, http_dir, tmp_path):
    """A duplicate URL waits (BUSY) on the window's own claim; shutdown cancels that claim,
    and must not turn the wait into a new download after it returned."""
    files = make_files(http_dir, 6, seed=7)
    urls = list(files)
    order = [urls[0], urls[1], urls[1], urls[1]] + urls[2:]
    http_server.faults(delay_s=0.5, count=1, path="f01.bin")  # in flight when we stop
    root = tmp_path / "cache"
    node = downloader(tmp_path, index_of(tmp_path, order), fetch=FetchOptions(max_in_flight=8))
    it = iter(Loader(Evictor(node)))
    assert next(it)["__key__"] == "0"
    node.shutdown()
    time.sleep(0.8)  # longer than the delayed request
    assert 200 not in http_server.stats(urls[1])["statuses"], "downloaded after shutdown()"
    assert not Cache(root).path_for(urls[1]).exists()
    assert Cache(root).stats()["pinned_files"] == 0 and on_disk(root)[1] == []


@pytest.fixture
def ftp_files(ftp_server, request):
    """Files on the FTP server (a real sync fsspec filesystem): ``{url: bytes}``."""
    folder = ftp_server.root / f"sds-window-{uuid.uuid4().hex[:8]}"
    folder.mkdir()
    rng = random.Random(4)
    files = {}
    for i in range(20):
        data = rng.randbytes(rng.randint(10, 3000))
        (folder / f"m{i:02d}.bin").write_bytes(data)
        files[ftp_server.url_for(f"{folder.name}/m{i:02d}.bin")] = data
    return files


def test_a_sync_filesystem_downloads_in_threads(ftp_server, ftp_files, tmp_path):
    options = ftp_server.storage_options
    assert not fsspec.filesystem("ftp", **options).async_impl  # ftplib: the thread-pool path
    urls = list(ftp_files)
    missing = urls[:7] + [urls[0].replace("m00", "gone")] + urls[7:]
    node = downloader(
        tmp_path,
        index_of(tmp_path, missing),
        fetch=FetchOptions(max_in_flight=4, storage_options=options),
    )
    loader = Loader(Evictor(node))
    samples = list(loader)
    assert [s["__url__.file"] for s in samples] == urls
    for sample in samples:
        assert Path(sample["file"]).read_bytes() == ftp_files[sample["__url__.file"]]
    assert error_stats(loader.state_dict()) == {"missing": 1}
    node.shutdown()
    stats = Cache(tmp_path / "cache").stats()
    assert (stats["files"], stats["pinned_files"]) == (20, 0)
    assert on_disk(tmp_path / "cache")[1] == []


def test_a_404_is_skipped_and_counted_or_raised(http_server, http_dir, tmp_path):
    files = make_files(http_dir, 10, seed=5)
    urls = list(files)
    (http_dir.path / "f04.bin").unlink()
    index = index_of(tmp_path, urls)
    loader = Loader(downloader(tmp_path, index, fetch=FetchOptions(max_in_flight=8)))
    keys = [s["__key__"] for s in loader]
    assert keys == [str(i) for i in range(10) if i != 4]
    assert error_stats(loader.state_dict()) == {"missing": 1}
    assert http_server.stats(urls[4])["statuses"] == [404]  # a missing object is not retried

    node = downloader(
        tmp_path,
        index,
        fetch=FetchOptions(max_in_flight=8),
        errors=ErrorOptions(on_error="raise"),
        cache_dir=tmp_path / "c2",
    )
    got = []
    with pytest.raises(FileNotFoundError):
        for sample in Loader(node):
            got.append(sample["__key__"])
    assert got == ["0", "1", "2", "3"]
    node.shutdown()


def test_invalid_arguments(tmp_path):
    index = index_of(tmp_path, ["http://127.0.0.1:1/x.bin"])
    with pytest.raises(ValueError, match="max_in_flight"):
        downloader(tmp_path, index, fetch=FetchOptions(max_in_flight=0))
    with pytest.raises(ValueError, match="columns"):
        CachingDownloader(IndexReader(index, index_cache_dir=str(tmp_path / "i")), [])


def test_copies_and_pickles_start_with_an_empty_window(tmp_path):
    # StreamingDataset deep-copies the graph into each worker; a pickled node travels to spawned
    # workers: neither may carry the window, its threads or its give-up flag.
    node = CachingDownloader(
        IndexReader(pa.table({"file": ["s3://bucket/a.bin"]})),
        ["file"],
        cache=CacheOptions(tmp_path),
    )
    for clone in (copy.deepcopy(node), pickle.loads(pickle.dumps(node))):
        assert len(clone._window) == 0 and clone._executor is None
        assert clone._abandoned is not node._abandoned and not clone._abandoned.is_set()


def test_a_size_other_than_the_index_says_is_a_failed_download(http_server, http_dir, tmp_path):
    files = make_files(http_dir, 6)
    urls = list(files)
    sizes = [len(files[u]) for u in urls]
    sizes[2] += 1  # the object changed since the index was made, or the index is wrong
    index = index_of(tmp_path, urls, sizes)
    loader = Loader(Evictor(downloader(tmp_path, index, fetch=FetchOptions(retries=0))))
    got = [s["__url__.file"] for s in loader]
    assert got == urls[:2] + urls[3:]
    assert error_stats(loader.state_dict()) == {"download": 1}
    assert not Path(Cache(tmp_path / "cache").path_for(urls[2])).exists()  # nothing kept
    with pytest.raises(Exception, match="expected"):
        list(
            Loader(
                Evictor(
                    downloader(
                        tmp_path,
                        index,
                        fetch=FetchOptions(retries=0),
                        errors=ErrorOptions(on_error="raise"),
                    )
                )
            )
        )


def test_a_node_dropped_without_shutdown_locks_nothing(http_server, http_dir, tmp_path):
    # A loop broken by an exception downstream never calls the node again, nor shutdown():
    # its downloads end on their own and must release their keys, or the next loader over the
    # same cache in this process would wait for them forever.
    files = make_files(http_dir, 20, seed=5)
    urls = list(files)
    for i in range(3, 20):
        http_server.faults(delay_s=0.3, path=f"f{i:02d}.bin")
    index = index_of(tmp_path, urls)
    abandoned = downloader(tmp_path, index, fetch=FetchOptions(max_in_flight=8))
    abandoned.reset()
    assert next(abandoned)["__url__.file"] == urls[0]  # 7 more downloads in flight, never taken
    start = time.monotonic()
    again = [s["__url__.file"] for s in Loader(Evictor(downloader(tmp_path, index)))]
    assert again == urls
    assert time.monotonic() - start < 10
    abandoned.shutdown()


def digests(files: dict, algorithm: str) -> list[str]:
    """The hex digest of each file's bytes (crc32c: base64 of the big-endian 4 bytes, as GCS)."""
    import base64
    import hashlib

    import google_crc32c

    if algorithm == "crc32c":
        return [
            base64.b64encode(google_crc32c.Checksum(d).digest()).decode() for d in files.values()
        ]
    return [hashlib.new(algorithm, d).hexdigest() for d in files.values()]


def test_a_server_lying_about_content_length_is_caught_by_the_index_checksum(
    http_server, http_dir, tmp_path
):
    # A consistent liar: Content-Length 100 bytes short and only that many bytes sent, so the
    # client sees a complete, shorter file. No size column: only the checksum can tell.
    files = make_files(http_dir, 12, seed=7)
    urls = list(files)
    http_server.faults(lie_length=-100, path="/" + http_dir.path.name + "/")
    path = tmp_path / "index-md5.parquet"
    pq.write_table(pa.table({"file": urls, "md5": digests(files, "md5")}), path)  # auto-detected
    loader = Loader(
        Evictor(
            downloader(
                tmp_path,
                str(path),
                fetch=FetchOptions(retries=0),
                errors=ErrorOptions(max_error_rate=1.0),
            )
        )
    )
    assert list(loader) == []  # nothing torn is delivered
    assert error_stats(loader.state_dict()) == {"checksum": 12}
    size, tmps = on_disk(tmp_path / "cache")
    assert (size, tmps) == (0, [])  # nothing entered the cache
    assert http_server.stats()["get"] == 12  # a mismatch is not retried
    sample = {"file": urls[0], "md5": digests(files, "md5")[0]}
    with pytest.raises(DownloadError, match="checksum"):  # random access checks it too
        downloader(tmp_path, str(path)).process(sample)
    # without the check the same server delivers every file torn (what the index guards)
    torn = Loader(Evictor(downloader(tmp_path, str(path), cache_dir=str(tmp_path / "c2"),
                                     checksum_columns={})))  # fmt: skip
    delivered = [s for s in torn]
    assert len(delivered) == 12
    assert all(Path(s["file"]).stat().st_size == len(files[u]) - 100
               for s, u in zip(delivered, urls))  # fmt: skip


@pytest.mark.parametrize("algorithm", ["sha256", "crc32c"])
def test_named_checksum_columns_let_right_bytes_through(http_server, http_dir, tmp_path, algorithm):
    files = make_files(http_dir, 8, seed=8)
    urls, data = list(files), list(files.values())
    good = digests(files, algorithm)
    good[3] = None  # a null digest is not checked
    wrong = list(good)
    wrong[5] = digests({"x": b"other bytes"}, algorithm)[0]
    path = tmp_path / "index.parquet"
    table = {"file": urls, f"file.{algorithm}": good, f"other_{algorithm}": wrong}
    pq.write_table(pa.table(table), path)

    def run(mapping):
        cache = str(tmp_path / f"cache-{uuid.uuid4().hex[:6]}")
        loader = Loader(
            Evictor(downloader(tmp_path, str(path), cache_dir=cache, checksum_columns=mapping))
        )
        got = {s["__url__.file"]: Path(s["file"]).read_bytes() for s in loader}
        return got, error_stats(loader.state_dict())

    assert run(None) == (files, {})  # "file.<algorithm>" found by its name
    assert run({"file": f"file.{algorithm}"}) == (files, {})
    got, stats = run({"file": f"other_{algorithm}"})  # the named column, with one wrong digest
    assert stats == {"checksum": 1}
    assert got == {u: d for i, (u, d) in enumerate(zip(urls, data)) if i != 5}


def test_checksum_columns_are_checked_at_construction(tmp_path):
    reader = IndexReader(pa.table({"file": ["http://x/a"]}))
    with pytest.raises(ValueError, match="not downloaded"):
        CachingDownloader(
            reader, ["file"], cache=CacheOptions(str(tmp_path)), checksum_columns={"v": "v.md5"}
        )
    with pytest.raises(ValueError, match="must say its algorithm"):
        CachingDownloader(
            reader, ["file"], cache=CacheOptions(str(tmp_path)), checksum_columns={"file": "h"}
        )


def test_a_graph_that_gathers_before_releasing_is_not_stuck(
    http_server, http_dir, tmp_path, monkeypatch, caplog
):
    # A Batcher before any release holds 8 delivered samples while it asks for more: waiting
    # for their release would never end. After STALL_S without one, heads pass the budget.
    import logging

    from torchdata.nodes import Batcher

    from sdsnodes.nodes import _window
    from sdsnodes.nodes._cache_ref import release

    monkeypatch.setattr(_window, "STALL_S", 0.3)
    files = make_files(http_dir, 24, seed=9, low=10_000, high=10_000)
    urls = list(files)
    index = index_of(tmp_path, urls, [10_000] * 24)
    node = downloader(
        tmp_path, index, max_bytes=30_000, fetch=FetchOptions(max_in_flight=8)
    )  # 3 files fit
    got = []
    with caplog.at_level(logging.WARNING, logger="sdsnodes.nodes._window"):
        for batch in Loader(Batcher(node, batch_size=8)):
            got += [s["__url__.file"] for s in batch]
            for sample in batch:
                release(sample)
    assert got == urls
    stalls = [r for r in caplog.records if "holds samples until it gets more" in r.getMessage()]
    assert len(stalls) == 1


def test_a_reset_releases_what_a_reading_ahead_decoder_held(http_server, http_dir, tmp_path):
    """A Decoder's threads read ahead: at a mid-epoch reset they drop samples whose files the
    downloader delivered pinned; the reset must release those pins (they used to stay until
    the process exited, shrinking the budget)."""
    from sdsnodes import Decoder

    files = make_files(http_dir, 24, seed=5)
    index = index_of(tmp_path, list(files), [len(b) for b in files.values()])
    node = downloader(tmp_path, index, fetch=FetchOptions(max_in_flight=8), max_bytes=200_000)
    graph = Evictor(
        Decoder(node, {"file": lambda path, *_: Path(path).read_bytes()}, num_threads=4)
    )
    graph.reset()
    for _ in range(3):
        next(graph)
    time.sleep(0.3)  # the Decoder's threads fill their read-ahead
    graph.reset()  # mid-epoch: the read-ahead is dropped (and a new one starts)
    keys = []
    while True:
        try:
            keys.append(next(graph)["__key__"])
        except StopIteration:
            break
    assert sorted(keys) == sorted(str(i) for i in range(24))
    root = tmp_path / "cache"
    assert Cache(root).stats()["pinned_files"] == 0  # the epoch is over: nothing is held
    node.shutdown()

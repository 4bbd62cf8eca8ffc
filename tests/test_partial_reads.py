"""Partial reads of remote videos: BlockFile and RangeReader against the real HTTP and moto S3
servers. A clip decoded from byte ranges equals the clip decoded from the local file; only the
index and the blocks around the clip travel; the blocks live in the cache, within its budget."""

import gc
import os
import shutil

import numpy as np
import pyarrow as pa
import pytest
from torchdata.nodes import Loader
from utils import check_node_resume

from sdsnodes import (
    CacheOptions,
    ErrorOptions,
    FetchOptions,
    OnError,
    Shuffler,
    StreamingDataset,
    VideoClip,
    build_video_graph,
    error_stats,
    shutdown,
)
from sdsnodes._synthetic import write_video
from sdsnodes.cache import Cache
from sdsnodes.nodes._blockfile import BlockFile, block_key
from sdsnodes.nodes.index_reader import IndexReader
from sdsnodes.nodes.range_reader import RangeReader
from sdsnodes.sample import range_url_key

BLOCK = 16 << 10  # 16 KiB: a 60-s test video of ~0.5 MB spans ~30 blocks
SEEDS = (1, 7)


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    """A 60-s fast-start H.264 mp4 (moov first), 128x96 at 24 fps, a keyframe every second."""
    path = tmp_path_factory.mktemp("partial") / "long.mp4"
    write_video(path, num_frames=60 * 24, fps=24, width=128, height=96, gop=24, faststart=True)
    return path


def clip_codec():
    return VideoClip(16, fps=8, with_info=True)  # source size: frame_index() stays readable


def decode(codec, value, seed):
    out = codec(value, np.random.default_rng(seed))
    return out.value, out.info


def served(http_server, url):
    stats = http_server.stats(url)
    return stats["bytes"], stats["get"] + stats["head"]


def test_http_clip_equals_local_moves_a_fraction_and_caches_blocks(
    http_server, http_dir, long_video, tmp_path
):
    shutil.copy(long_video, http_dir.path / "long.mp4")
    url, size = http_dir.url_for("long.mp4"), long_video.stat().st_size
    cache_dir, codec = tmp_path / "cache", clip_codec()
    sent = []
    for seed in SEEDS:
        with BlockFile(url, cache_dir, block_size=BLOCK) as file:
            clip, info = decode(codec, file, seed)
            assert Cache(cache_dir).stats()["pinned_files"] == len(file._fds)  # pinned while open
        local_clip, local_info = decode(codec, long_video, seed)
        assert info == local_info and info["clip_start"] > 5  # a clip far into the file
        assert clip.shape == (16, 3, 96, 128) and clip.equal(local_clip)
        sent.append(served(http_server, url)[0] - sum(sent))
    print(f"{size=} {sent=}")
    assert 0 < sent[0] < size / 5  # the index and the blocks around the clip, not the video
    assert 0 < sent[1] < size / 8  # the index is cached already: the blocks of the clip
    ranges = http_server.stats(url)["ranges"]
    assert all(r.startswith("bytes=") for r in ranges)  # every GET was a range request
    stats = Cache(cache_dir).stats()
    assert stats["pinned_files"] == 0  # closed: unpinned
    assert stats["bytes"] == sum(sent) + len(str(size))  # the blocks, plus the cached size
    assert stats["files"] == len(ranges) + 1
    assert Cache(cache_dir).path_for(block_key(url, 0, BLOCK - 1)).is_file()

    http_server.reset_stats()  # the same clips again: everything comes from the cache
    for seed in SEEDS:
        with BlockFile(url, cache_dir, block_size=BLOCK) as file:
            clip, _ = decode(codec, file, seed)
            assert file.stats["bytes_fetched"] == 0 and file.stats["blocks_cached"] > 0
        assert clip.equal(decode(codec, long_video, seed)[0])
    assert served(http_server, url) == (0, 0)


def test_s3_clip_equals_local_and_second_read_transfers_nothing(
    s3_server, s3_bucket, long_video, tmp_path
):
    url = f"{s3_bucket}/videos/long.mp4"
    s3_server.fs().put_file(str(long_video), url)
    options, codec = s3_server.storage_options, clip_codec()
    cache = dict(cache_dir=tmp_path / "cache", storage_options=options, block_size=BLOCK)
    with BlockFile(url, **cache) as file:
        clip, info = decode(codec, file, 3)
        fetched = file.stats["bytes_fetched"]
    assert clip.equal(decode(codec, long_video, 3)[0]) and info["clip_start"] > 0
    assert 0 < fetched < long_video.stat().st_size / 4
    with BlockFile(url, **cache) as file:
        assert decode(codec, file, 3)[0].equal(clip)
        assert file.stats["bytes_fetched"] == file.stats["blocks_fetched"] == 0
    assert Cache(tmp_path / "cache").stats()["bytes_fetched"] == fetched + len(str(file.size))


def test_blocks_count_against_max_bytes(http_server, http_dir, long_video, tmp_path):
    shutil.copy(long_video, http_dir.path / "long.mp4")
    url, budget = http_dir.url_for("long.mp4"), 6 * BLOCK
    cache_dir, codec = tmp_path / "cache", clip_codec()
    for seed in range(6):  # six clips touch more blocks than the budget holds
        with BlockFile(url, cache_dir, max_bytes=budget, block_size=BLOCK) as file:
            assert decode(codec, file, seed)[0].equal(decode(codec, long_video, seed)[0])
    Cache(cache_dir, max_bytes=budget).trim()
    stats = Cache(cache_dir).stats()
    assert stats["evictions"] > 0 and stats["bytes"] <= budget
    assert http_server.stats(url)["bytes"] > budget  # more travelled than the cache kept


def test_block_file_reads_like_a_local_file(http_dir, long_video, tmp_path):
    shutil.copy(long_video, http_dir.path / "long.mp4")
    data = long_video.read_bytes()
    rng = np.random.default_rng(0)
    with BlockFile(http_dir.url_for("long.mp4"), tmp_path / "c", block_size=4096) as file:
        assert file.size == len(data) and file.seekable() and file.readable()
        for _ in range(20):
            offset, length = int(rng.integers(len(data))), int(rng.integers(1, 3 * 4096))
            assert file.seek(offset) == offset
            assert file.read(length) == data[offset : offset + length]
            assert file.tell() == min(len(data), offset + length)
        assert file.seek(-10, os.SEEK_END) == len(data) - 10 and file.read() == data[-10:]
        assert file.read(5) == b""  # at the end
        with pytest.raises(OSError):
            file.seek(-1)
    with pytest.raises(ValueError, match="closed"):
        file.read(1)


def test_moov_at_the_end_also_decodes(http_dir, tmp_path):
    path = tmp_path / "tail.mp4"
    write_video(path, num_frames=240, fps=24, width=64, height=48, gop=24, faststart=False)
    shutil.copy(path, http_dir.path / "tail.mp4")
    codec = clip_codec()
    with BlockFile(http_dir.url_for("tail.mp4"), tmp_path / "c", block_size=4096) as file:
        assert decode(codec, file, 5)[0].equal(decode(codec, path, 5)[0])


def index(rows, tmp_path):
    return pa.table({"video": rows, "caption": [f"c{i}" for i in range(len(rows))]})


def test_video_graph_with_partial_reads_equals_the_local_graph(
    http_server, http_dir, long_video, tmp_path
):
    names = []
    for i in range(3):
        names.append(f"v{i}.mp4")
        shutil.copy(long_video, http_dir.path / names[-1])
    urls = [http_dir.url_for(n) for n in names]
    common = dict(num_frames=8, fps=4, size=32, batch_size=3, shuffle=False, num_threads=2)
    remote = build_video_graph(
        index(urls, tmp_path), partial_reads=True, block_size=BLOCK,
        cache=CacheOptions(str(tmp_path / "cache")), fetch=FetchOptions(max_in_flight=2), **common,
    )  # fmt: skip
    local = build_video_graph(index([str(long_video)] * 3, tmp_path), **common)
    (got,), (want,) = list(Loader(remote)), list(Loader(local))
    shutdown(remote), shutdown(local)  # no daemon thread left to free tensors at exit
    assert got["video"].shape == (3, 8, 3, 32, 32) and got["video"].equal(want["video"])
    assert got[range_url_key("video")] == urls and "__url__.video" not in got
    assert http_server.stats()["bytes"] < long_video.stat().st_size  # 3 clips < 1 video
    gc.collect()
    assert Cache(tmp_path / "cache").stats()["pinned_files"] == 0  # decoded: files closed


def test_range_reader_skips_or_raises_on_a_missing_object(http_dir, long_video, tmp_path):
    shutil.copy(long_video, http_dir.path / "ok.mp4")
    urls = [http_dir.url_for("missing.mp4"), http_dir.url_for("ok.mp4")]
    table = pa.table({"video": urls})

    def reader(on_error):
        return RangeReader(IndexReader(table), ["video"], cache=CacheOptions(str(tmp_path / "c")),
                           fetch=FetchOptions(max_in_flight=1),
                           errors=ErrorOptions(on_error=on_error),
                           block_size=BLOCK)  # fmt: skip

    node = reader(OnError.SKIP)
    loader = Loader(node)
    (sample,) = list(loader)
    shutdown(node)
    assert isinstance(sample["video"], BlockFile) and sample["video"].tell() == 0
    assert sample[range_url_key("video")] == urls[1]
    assert error_stats(loader.state_dict())["missing"] == 1
    sample["video"].close()
    node = reader(OnError.RAISE)
    with pytest.raises(FileNotFoundError):
        list(Loader(node))
    shutdown(node)


def test_bad_arguments_fail_at_construction(tmp_path):
    with pytest.raises(ValueError, match="block_size"):
        RangeReader(IndexReader(pa.table({"video": ["x"]})), ["video"], block_size=100)
    with pytest.raises(ValueError, match="columns"):
        RangeReader(IndexReader(pa.table({"video": ["x"]})), "video")


def test_range_reader_resumes_exactly(http_dir, tmp_path):
    write_video(http_dir.path / "short.mp4", num_frames=12, width=64, height=48)
    urls = [http_dir.url_for("short.mp4")] * 6

    def make():
        source = Shuffler(IndexReader(pa.table({"video": urls})), seed=3)
        return RangeReader(source, ["video"], cache=CacheOptions(str(tmp_path / "c")),
                           fetch=FetchOptions(max_in_flight=2),
                           block_size=4096)  # fmt: skip

    check_node_resume(make, key_fn=lambda s: (s["__key__"], s["video"].size > 0))


def test_random_access_reads_ranges_too(http_server, http_dir, long_video, tmp_path):
    shutil.copy(long_video, http_dir.path / "long.mp4")
    graph = build_video_graph(
        pa.table({"video": [http_dir.url_for("long.mp4")], "caption": ["c"]}), num_frames=4,
        size=32, partial_reads=True, block_size=BLOCK, cache=CacheOptions(str(tmp_path / "c")),
    )  # fmt: skip
    sample = StreamingDataset(graph)[0]
    assert sample["video"].shape == (4, 3, 32, 32)
    assert 0 < http_server.stats()["bytes"] < long_video.stat().st_size / 4
    gc.collect()
    assert Cache(tmp_path / "c").stats()["pinned_files"] == 0


def test_block_reads_back_off_with_jitter_and_stop_at_the_deadline(
    http_server, http_dir, tmp_path, caplog
):
    """A block read that keeps failing transiently is retried under the storage policy: waits
    drawn below doubling bounds from the file's own generator (the global RNG untouched), then
    a DownloadError once the deadline passes, naming the range, the deadline and the status."""
    import logging
    import random
    import re
    import time

    from sdsnodes.errors import DownloadError

    (http_dir.path / "a.bin").write_bytes(os.urandom(3 * 4096))
    url = http_dir.url_for("a.bin")
    http_server.faults(fail_next=10**6, status=503)
    caplog.set_level(logging.DEBUG, logger="sdsnodes._retry")
    global_rng = random.getstate()
    start = time.monotonic()
    with BlockFile(url, tmp_path / "c", size=3 * 4096, block_size=4096, retries=1000,
                   backoff_s=0.05, deadline_s=1.5) as file:  # fmt: skip
        with pytest.raises(DownloadError) as info:
            file.pread(4096, 10)
    elapsed = time.monotonic() - start
    assert random.getstate() == global_rng
    waits = [float(re.search(r" in ([\d.]+) s after", r.getMessage())[1]) for r in caplog.records]
    gets = http_server.stats(url)["get"]
    assert gets == len(waits) + 1 >= 4  # an attempt after each wait
    bounds = [min(4.0, 0.05 * 2**n) for n in range(len(waits))]
    assert all(wait <= bound + 0.005 for wait, bound in zip(waits, bounds)), (waits, bounds)
    assert len(set(waits)) > 1  # jittered, not a fixed sleep
    assert 1.5 <= elapsed < 15  # not before the deadline; a hang guard after it
    message = str(info.value)
    assert "bytes 4096-8191" in message and "1.5 s deadline" in message and "503" in message

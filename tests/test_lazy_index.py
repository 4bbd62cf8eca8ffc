"""The lazy index (sdsnodes/index/lazy.py): remote parquet read by row groups on demand.

The bound check runs the reader in a subprocess (this file run as a script: ``probe``) so its
peak RSS is its own: a 200k-row slice in CI, the 10M-row index with ``SDS_SLOW=1`` (the
``slow`` marker; writing and uploading 10M rows to moto takes ~15 s, reading them lazily ~1 min).
"""

from __future__ import annotations

import array
import json
import os
import pickle
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from utils import check_node_resume

from sdsnodes.index import footers as footers_module
from sdsnodes.index.footers import read_footers
from sdsnodes.index.permutation import LanePermutation
from sdsnodes.nodes.index_reader import IndexReader
from sdsnodes.nodes.shuffler import Shuffler

SLOW = os.environ.get("SDS_SLOW", "") == "1"


def write_index(path: str, rows: int, row_group: int, start: int = 0, fs=None) -> None:
    """``rows`` rows of (id int64, video str, score float32), written row group by row group."""
    schema = pa.schema([("id", pa.int64()), ("video", pa.string()), ("score", pa.float32())])
    sink = fs.open(path, "wb") if fs is not None else path
    with pq.ParquetWriter(sink, schema) as writer:
        for s in range(start, start + rows, row_group):
            ids = pa.array(range(s, min(start + rows, s + row_group)), pa.int64())
            video = pc.binary_join_element_wise(
                "s3://bucket/v/", pc.cast(ids, pa.string()), ".mp4", ""
            )
            score = pc.cast(pc.divide(ids, 7), pa.float32())
            writer.write_table(pa.table([ids, video, score], schema=schema))
    if fs is not None:
        sink.close()


@pytest.fixture
def shards(tmp_path):
    """Two parquet files with different row-group sizes and a column only one of them has."""
    write_index(str(tmp_path / "a.parquet"), 1000, 64)
    pq.write_table(
        pa.table(
            {"id": range(1000, 1300), "video": [f"v{i}" for i in range(300)], "extra": [1] * 300}
        ),
        tmp_path / "b.parquet",
        row_group_size=100,
    )
    return str(tmp_path / "*.parquet")


def test_rows_equal_the_materialized_index(shards, tmp_path):
    lazy = IndexReader(shards, lazy=True, lazy_chunk_rows=200, rename={"video": "clip"}, name="s")
    eager = IndexReader(
        shards, lazy=False, rename={"video": "clip"}, name="s", index_cache_dir=str(tmp_path / "ic")
    )
    assert lazy.lazy and not eager.lazy
    assert len(lazy.index) == len(eager.index) == 1300
    assert lazy.column_names == eager.column_names == ["id", "clip", "score", "extra"]
    assert lazy.index.fingerprint != eager.index.fingerprint  # the orders differ when shuffled
    for row in (0, 63, 64, 199, 200, 999, 1000, 1299):
        assert lazy.index.sample(row) == eager.index.sample(row)
    assert lazy.index.sample(1000)["score"] is None and lazy.index.sample(5)["extra"] is None
    # chunks: whole row groups of one file, up to 200 rows
    assert lazy.index.starts[:5] == [0, 192, 384, 576, 768] and 1000 in lazy.index.starts
    with pytest.raises(IndexError):
        lazy.index.sample(1300)


def test_lane_permutation_is_a_bijection_that_reads_chunks_in_lanes():
    starts = [0, 7, 20, 21, 60, 64, 100, 150, 151, 200]
    for lanes in (1, 2, 3, 4, 8, 400):
        order = LanePermutation(starts, lanes, 5, 1)
        assert sorted(order(i) for i in range(200)) == list(range(200))
    order = LanePermutation(starts, 4, 5, 1)
    assert [order(i) for i in range(200)] != [
        LanePermutation(starts, 4, 5, 2)(i) for i in range(200)
    ]
    for shard in range(2):  # 2 shards of 4 lanes: each reads 2 lanes, chunk after chunk
        chunks = [order.chunk_of(p) for p in range(shard, 200, 2)]
        runs = [c for i, c in enumerate(chunks) if i < 2 or c not in chunks[max(0, i - 4) : i]]
        assert len(runs) <= len(starts) - 1 + 4, chunks  # each chunk opened once (+ lane ends)


def test_shuffled_shards_are_disjoint_and_fetch_each_chunk_about_once(shards):
    seen, fetches = [], 0
    for rank in range(4):  # 4 shards, 8 lanes: each shard reads 2 lanes
        reader = IndexReader(
            shards, lazy=True, lazy_chunk_rows=100, lazy_lanes=8, rank=rank, world_size=4
        )
        shuffler = Shuffler(reader, seed=7)
        shuffler.reset()
        seen += [s["__index__"] for s in shuffler]
        fetches += reader.index.fetches
        assert reader.index.max_chunks == 3  # 8 lanes / gcd(8, 4) + 1
    assert sorted(seen) == list(range(1300))
    chunks = reader.index.num_chunks
    assert fetches <= chunks + 8, (fetches, chunks)  # ~one fetch per chunk over all shards


def test_shuffle_differs_per_epoch_and_resumes_exactly(shards):
    def make():
        return Shuffler(IndexReader(shards, lazy=True, lazy_chunk_rows=128, lazy_lanes=4), seed=3)

    epoch0 = check_node_resume(make, midpoints=[0, 1, 650, 1299, 1300])
    rows = [int(k[0]) for k in epoch0]
    assert sorted(rows) == list(range(1300)) and rows != list(range(1300))


def test_filter_lazily_and_auto_materializes_a_small_index(shards, tmp_path):
    lazy = IndexReader(shards, lazy=True, filter="id > 5")  # counted per chunk
    reader = IndexReader(shards, filter="id > 5", index_cache_dir=str(tmp_path / "ic"))
    assert lazy.lazy and not reader.lazy and len(reader.index) == len(lazy.index) == 1294
    pq.write_table(pa.table({"id": [1]}), tmp_path / "one.parquet")
    (tmp_path / "x.csv").write_text("id\n1\n")
    with pytest.raises(ValueError, match="lazy=False"):
        IndexReader(str(tmp_path / "x.csv"), lazy=True)
    with pytest.raises(ValueError, match="lazy="):
        IndexReader(shards, lazy="yes")


def test_lookup_by_key_and_pickle(tmp_path):
    pq.write_table(pa.table({"__key__": ["a", "b", "c"], "x": [1, 2, 3]}), tmp_path / "k.parquet")
    reader = IndexReader(str(tmp_path / "k.parquet"), lazy=True, name="n")
    assert reader.index.sample(1)["__key__"] == "n/b" and reader.index.key(2) == "n/c"
    eager = IndexReader(
        str(tmp_path / "k.parquet"), lazy=False, name="n", index_cache_dir=str(tmp_path / "ic")
    )
    assert eager.index.sample(1) == reader.index.sample(1)  # the key column, not None
    with pytest.raises(ValueError, match="lazy=False"):
        reader.index.row_of("n/b")
    copy = pickle.loads(pickle.dumps(reader.index))
    assert copy.sample(2) == reader.index.sample(2) and copy.cached_bytes() > 0
    assert reader.index.head().num_rows == 3


def test_remote_auto_lazy_txt_of_shards_and_changed_source(
    s3_server, s3_bucket, tmp_path, monkeypatch
):
    fs = s3_server.fs()
    for n in range(3):
        write_index(f"{s3_bucket}/shard{n}.parquet", 500, 100, start=500 * n, fs=fs)
    with fs.open(f"{s3_bucket}/split_file_paths.txt", "w") as f:
        f.write("".join(f"{s3_bucket}/shard{n}.parquet\n" for n in range(3)))
    url, options = f"{s3_bucket}/split_file_paths.txt", s3_server.storage_options
    assert read_footers(url, options).num_rows == 1500
    cache = tmp_path / "ic"
    assert not IndexReader(url, storage_options=options, index_cache_dir=str(cache)).lazy  # small
    monkeypatch.setattr(footers_module, "LAZY_AUTO_BYTES", 1000)
    reader = IndexReader(url, storage_options=options, index_cache_dir=str(tmp_path / "ic2"))
    assert reader.lazy and len(reader.index) == 1500 and not (tmp_path / "ic2").exists()
    assert reader.index.sample(1234)["video"] == "s3://bucket/v/1234.mp4"
    filtered = IndexReader(
        url, storage_options=options, filter="id < 3", index_cache_dir=str(cache)
    )
    assert filtered.lazy and len(filtered.index) == 3  # counted per chunk, not converted
    loader = Shuffler(reader, seed=1)
    loader.reset()
    for _ in range(10):
        next(loader)
    state = loader.state_dict()
    write_index(f"{s3_bucket}/shard1.parquet", 400, 100, start=500, fs=fs)  # the source changed
    changed = Shuffler(IndexReader(url, storage_options=options, lazy=True), seed=1)
    with pytest.raises(ValueError, match="index"):
        changed.reset(state)


def test_order_is_the_same_for_every_layout(shards):
    """Elastic resume needs a layout-free order: rank r of 3 reads positions r, r + 3, … of the
    one-reader epoch."""

    def epoch(rank: int, world_size: int) -> list[int]:
        reader = IndexReader(
            shards, lazy=True, lazy_chunk_rows=100, rank=rank, world_size=world_size, uneven="keep"
        )
        shuffler = Shuffler(reader, seed=11)
        shuffler.reset()
        return [s["__index__"] for s in shuffler]

    whole = epoch(0, 1)
    for rank in range(3):
        assert epoch(rank, 3) == whole[rank::3]


def test_worker_processes_read_a_remote_lazy_index(s3_server, s3_bucket):
    from utils import stateful_loader

    from sdsnodes.dataset import StreamingDataset

    write_index(f"{s3_bucket}/i.parquet", 3000, 250, fs=s3_server.fs())
    reader = IndexReader(
        f"{s3_bucket}/i.parquet",
        storage_options=s3_server.storage_options,
        lazy=True,
        lazy_chunk_rows=500,
    )
    reader.index.sample(0)  # the parent opened the file: each worker must open its own
    dataset = StreamingDataset(Shuffler(reader, seed=2))
    rows = [s["__index__"] for s in stateful_loader(dataset, num_workers=2)]
    assert sorted(rows) == list(range(3000))


def test_one_ranged_get_per_chunk_and_transient_errors_retried(http_server, http_dir):
    write_index(str(http_dir.path / "i.parquet"), 4000, 500)
    url = http_dir.url_for("i.parquet")
    reader = IndexReader(url, lazy=True, lazy_chunk_rows=1000, lazy_prefetch=False)
    assert reader.lazy and reader.index.num_chunks == 4
    http_server.reset_stats()
    rows = [reader.index.sample(i)["id"] for i in (0, 999, 1000, 3999)]
    assert rows == [0, 999, 1000, 3999] and reader.index.fetches == 3
    ranges = [r for r in http_server.stats(url)["ranges"]]
    assert len(ranges) == 3 and all(r and r.startswith("bytes=") for r in ranges), ranges
    http_server.faults(fail_next=2, status=503, path="i.parquet")
    assert reader.index.sample(2500)["id"] == 2500  # two 503s, then the chunk
    statuses = http_server.stats(url)["statuses"]
    assert statuses.count(503) == 2 and statuses[-1] == 206, statuses


# -- bounded RSS and disk ------------------------------------------------------------------------
def probe(url: str, options: dict, cache_dir: str, samples: int, world_size: int) -> dict:
    """Open ``url`` lazily, read ``samples`` shuffled samples of rank 0 and a few random rows;
    the figures of this process (run alone, in a subprocess)."""

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    before = rss()
    reader = IndexReader(url, storage_options=options, lazy=True, index_cache_dir=cache_dir,
                         lazy_chunk_rows=16_384, rank=0, world_size=world_size)  # fmt: skip
    shuffler = Shuffler(reader, seed=0)
    shuffler.reset()
    opened = rss()  # s3fs and botocore imported, footers read: what does not grow with reading
    count = min(samples, len(shuffler))
    rows = array.array("q", bytes(8 * count))  # preallocated: a list would grow the RSS we measure
    start = time.perf_counter()
    rows[0] = next(shuffler)["__index__"]
    warm = rss()  # the first chunk read: parquet reader, connections, allocator pools
    peak = warm  # sampled every 5,000 samples (ru_maxrss would count the imports' peak)
    for i in range(1, count):
        rows[i] = next(shuffler)["__index__"]
        peak = max(peak, rss()) if i % 5000 == 0 else peak
    seconds = time.perf_counter() - start
    n = len(reader.index)
    far = [reader.index.sample(i)["id"] for i in (n - 1, n // 2, 0)]
    peak = max(peak, rss())
    return {
        "rows": n, "read": len(rows), "distinct": len(set(rows)), "far_ok": far == [n - 1, n // 2, 0],
        "chunks": reader.index.num_chunks, "fetches": reader.index.fetches,
        "max_chunks": reader.index.max_chunks, "cached_bytes": reader.index.cached_bytes(),
        "rss_before": before, "rss_opened": opened, "rss_warm": warm, "rss_peak": peak, "samples_per_s": len(rows) / seconds,
    }  # fmt: skip


def bounded(s3_server, bucket, tmp_path, rows: int, samples: int) -> dict:
    fs = s3_server.fs()
    start = time.perf_counter()
    write_index(f"{bucket}/big.parquet", rows, 8192, fs=fs)
    written = time.perf_counter() - start
    cache = tmp_path / "index-cache"
    args = [
        f"{bucket}/big.parquet",
        json.dumps(s3_server.storage_options),
        str(cache),
        str(samples),
        "2",
    ]
    env = {**os.environ, **s3_server.env, "SDS_CACHE_DIR": str(tmp_path / "cache")}
    out = subprocess.run(
        [sys.executable, __file__, "probe", *args], capture_output=True, text=True, env=env,
        cwd=os.path.dirname(os.path.dirname(__file__)), timeout=600, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    uncompressed = sum(
        m.row_group(g).total_byte_size
        for m in [read_footers(f"{bucket}/big.parquet", s3_server.storage_options).metadata[0]]
        for g in range(m.num_row_groups)
    )
    grown = figures["rss_peak"] - figures["rss_warm"]
    opening = figures["rss_warm"] - figures["rss_before"]
    print(
        f"lazy {rows:,} rows ({uncompressed / 2**20:.0f} MiB uncompressed, written+uploaded in "
        f"{written:.1f} s): read {figures['read']:,} at {figures['samples_per_s']:,.0f}/s, "
        f"{figures['fetches']} fetches of {figures['chunks']} chunks, RSS +{opening / 2**20:.0f} MiB "
        f"to open and read a first chunk (s3fs, footers, parquet), +{grown / 2**20:.0f} MiB "
        f"reading the rest, "
        f"cache {figures['cached_bytes'] / 2**20:.1f} MiB in {figures['max_chunks']} chunks"
    )
    assert figures["rows"] == rows and figures["far_ok"] and figures["distinct"] == figures["read"]
    assert not cache.exists() and not (tmp_path / "cache").exists()  # nothing on disk
    chunk_bytes = 16_384 * 64  # 2 row groups of ~40-byte rows, with Arrow's offsets
    assert figures["cached_bytes"] <= figures["max_chunks"] * chunk_bytes
    assert figures["max_chunks"] <= 16 // 2 + 1  # 16 lanes over 2 shards
    # measured: +17 MiB over 50k samples of 200k rows, +25 MiB over 300k samples of 10M rows
    assert grown < 48 * 2**20, f"RSS grew by {grown / 2**20:.0f} MiB reading"  # whatever the rows
    assert grown + opening < 160 * 2**20, f"RSS grew by {(grown + opening) / 2**20:.0f} MiB"
    return figures


def test_lazy_remote_index_bounded_fast_slice(s3_server, s3_bucket, tmp_path):
    figures = bounded(s3_server, s3_bucket, tmp_path, 200_000, 50_000)
    assert figures["fetches"] <= figures["chunks"] + 16  # each chunk ~once, not once per row


@pytest.mark.slow
@pytest.mark.skipif(not SLOW, reason="the 10M-row index: SDS_SLOW=1")
def test_lazy_remote_index_bounded_10m_rows(s3_server, s3_bucket, tmp_path):
    figures = bounded(s3_server, s3_bucket, tmp_path, 10_000_000, 300_000)
    assert figures["rss_peak"] - figures["rss_before"] < 10_000_000 * 40 / 2  # a copy: 400 MB


if __name__ == "__main__" and sys.argv[1:2] == ["probe"]:
    url, options, cache_dir, samples, world_size = sys.argv[2:]
    print(json.dumps(probe(url, json.loads(options), cache_dir, int(samples), int(world_size))))

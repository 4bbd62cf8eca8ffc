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
    from utils import check_node_resume

    url, options, _ = remote_index

    def make():
        reader = IndexReader(
            url, storage_options=options, lazy=True, lazy_chunk_rows=250, lazy_lanes=4,
            filter="id >= 1000",
        )  # fmt: skip
        return Shuffler(reader, seed=5)

    epoch = check_node_resume(make, midpoints=[0, 700, 2000])
    assert sorted(int(k[0]) for k in epoch) == list(range(2000))


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

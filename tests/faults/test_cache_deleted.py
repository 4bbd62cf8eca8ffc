"""The cache directory deleted under a live process (a notebook: ``rm -rf cache``, then the
same graph again): the ledger is recreated, nothing is blamed on the samples."""

from __future__ import annotations

import logging
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image
from torchdata.nodes import Loader

from sdsnodes import CacheOptions, FetchOptions, build_image_graph, error_stats
from sdsnodes.cache import Cache


def _write(tmp):
    tmp.write_bytes(b"x" * 100)


def test_cache_recreates_a_deleted_ledger(tmp_path, caplog):
    root = tmp_path / "cache"
    cache = Cache(root, max_bytes=10_000)
    held = cache.get("s3://b/held", _write)  # pinned when the directory goes
    cache.get("s3://b/done", _write)
    cache.unpin("s3://b/done")
    shutil.rmtree(root)
    with caplog.at_level(logging.WARNING, logger="sdsnodes.cache"):
        path = cache.get("s3://b/again", _write)
    assert path.read_bytes() == b"x" * 100
    assert any("deleted or replaced" in r.getMessage() for r in caplog.records)
    assert not held.exists()
    cache.unpin("s3://b/held")  # a pin of the deleted ledger: nothing to release, no error
    cache.unpin("s3://b/again")
    stats = cache.stats()
    assert stats["files"] == 1 and stats["pinned_files"] == 0 and stats["misses"] == 1
    cache.close()
    assert Cache(root).stats()["files"] == 1  # a fresh process view agrees


def test_the_same_graph_after_rm_rf_cache(http_server, http_dir, tmp_path):
    n = 12
    for i in range(n):
        Image.new("RGB", (20, 16), (10 * i, 0, 0)).save(http_dir.path / f"{i}.png")
    index = tmp_path / "index.parquet"
    pq.write_table(pa.table({"image": [http_dir.url_for(f"{i}.png") for i in range(n)]}), index)
    cache_dir = tmp_path / "cache"
    graph = build_image_graph(
        str(index),
        size=8,
        batch_size=4,
        caption_column=None,
        cache=CacheOptions(str(cache_dir), max_bytes=10**6),
        fetch=FetchOptions(http_server.storage_options, max_in_flight=16),
    )
    loader = Loader(graph)
    first = [k for b in loader for k in b["__key__"]]
    shutil.rmtree(cache_dir)
    second = [k for b in loader for k in b["__key__"]]  # the same graph, next epoch
    assert sorted(first) == sorted(second) and len(second) == n
    assert error_stats(loader.state_dict()) == {}
    assert cache_dir.joinpath("ledger.sqlite").exists()

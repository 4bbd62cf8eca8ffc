"""sdsnodes.stats(): counts equal to what is known, summed over real DataLoader workers."""

from __future__ import annotations

import shutil
import time
import uuid
import warnings

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client.parser import text_string_to_metric_families
from torchdata.nodes import Batcher, IterableWrapper, Loader, Mapper
from torchdata.stateful_dataloader import StatefulDataLoader

from sdsnodes import CacheOptions, StreamingDataset, build_image_graph
from sdsnodes._metrics_board import SLOT_BYTES, MetricsBoard
from sdsnodes.metrics import flat, instrument, postfix, stats, timed, to_prometheus
from sdsnodes.nodes._gcs_compose import COMPOSE_COUNTS

NUM_IMAGES = 8


@pytest.fixture(scope="module")
def remote_images(http_server, image_index, tmp_path_factory):
    """An index of ``NUM_IMAGES`` images served over HTTP (with sizes) and their total bytes."""
    http_server.ensure_running()
    served = http_server.root / f"metrics-{uuid.uuid4().hex[:8]}"
    served.mkdir()
    rows = pq.read_table(image_index).to_pylist()[:NUM_IMAGES]
    urls, sizes = [], []
    for row in rows:
        dst = served / row["image"].rsplit("/", 1)[1]
        shutil.copy(row["image"], dst)
        urls.append(http_server.url_for(dst))
        sizes.append(dst.stat().st_size)
    index = tmp_path_factory.mktemp("metrics") / "index.parquet"
    captions = [r["caption"] for r in rows]
    pq.write_table(pa.table({"image": urls, "caption": captions, "size": sizes}), index)
    return str(index), sum(sizes)


@pytest.fixture(scope="module")
def two_epochs(remote_images, tmp_path_factory):
    """Two epochs over the HTTP images with 2 (non-persistent) workers and a full budget."""
    index, _ = remote_images
    cache = CacheOptions(str(tmp_path_factory.mktemp("cache")), max_bytes=10**9)
    ds = StreamingDataset(
        lambda: build_image_graph(index, size=16, batch_size=2, cache=cache, num_threads=2)
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "'set_vital' is deprecated", UserWarning)
        loader = timed(StatefulDataLoader(ds, batch_size=None, num_workers=2))
    received = [sum(len(b["__key__"]) for b in loader) for _ in range(2)]
    return loader, stats(loader), received


def test_counts_equal_what_is_known_over_two_workers(two_epochs, remote_images):
    loader, s, received = two_epochs
    _, total_bytes = remote_images
    assert received == [NUM_IMAGES, NUM_IMAGES]
    assert s["workers"] == 2  # both workers' slots, summed
    assert s["samples"] == 2 * NUM_IMAGES == s["loop_samples"]
    assert s["batches"] == 2 * NUM_IMAGES // 2  # each worker batches its own half
    cache = s["cache"]
    assert cache["misses"] == NUM_IMAGES  # the first epoch downloads each file once
    assert cache["hits"] == s["samples"] - NUM_IMAGES  # the second finds every file
    assert cache["bytes_downloaded"] == total_bytes == cache["bytes"]
    assert cache["hit_rate"] == pytest.approx(0.5)
    assert cache["evictions"] == 0 and cache["max_bytes"] == 10**9
    assert cache["in_flight"] == 0 and cache["pinned_files"] == 0
    assert s["skipped"] == {}
    assert s["compose"] == dict.fromkeys(COMPOSE_COUNTS, 0)  # S3: no compose
    assert s["decoded"] == {"ImageTensor": 2 * NUM_IMAGES, "Text": 2 * NUM_IMAGES}
    assert s["decode_s"]["ImageTensor"] > 0
    assert s["nodes"]["CachingDownloader"]["items"] == 2 * NUM_IMAGES
    assert s["nodes"]["Prefetcher"]["items"] == s["batches"]
    assert 0 < s["wait_s"] <= s["elapsed_s"]


def test_prometheus_text_parses_to_the_same_figures(two_epochs):
    _, s, _ = two_epochs
    text = to_prometheus(s, labels={"rank": "0"})
    samples = {
        (m.name, tuple(sorted(m.labels.items()))): m.value
        for family in text_string_to_metric_families(text)
        for m in family.samples
    }
    rank = ("rank", "0")
    assert samples[("sds_samples_total", (rank,))] == s["samples"]
    assert samples[("sds_cache_hits_total", (rank,))] == s["cache"]["hits"]
    assert samples[("sds_cache_bytes_downloaded_total", (rank,))] == s["cache"]["bytes_downloaded"]
    assert samples[("sds_wait_seconds_total", (rank,))] == pytest.approx(s["wait_s"])
    key = ("sds_decode_seconds_total", (("codec", "ImageTensor"), rank))
    assert samples[key] == pytest.approx(s["decode_s"]["ImageTensor"])
    node = ("sds_node_items_total", (("node", "Decoder"), rank))
    assert samples[node] == s["nodes"]["Decoder"]["items"]
    composed = {**s, "compose": {**s["compose"], "composed_objects": 7}}
    text = to_prometheus(composed, labels={"rank": "0"})
    assert 'sds_compose_composed_objects_total{rank="0"} 7.0' in text


def test_flat_dict_and_postfix(two_epochs):
    _, s, _ = two_epochs
    logged = flat(s)
    assert logged["data/cache/hits"] == s["cache"]["hits"]
    assert logged["data/nodes/Decoder/items"] == s["nodes"]["Decoder"]["items"]
    assert logged["data/wait_fraction"] == pytest.approx(s["wait_s"] / s["elapsed_s"])
    assert all(isinstance(v, (int, float)) for v in logged.values())
    bar = postfix(s)
    assert bar["hit"] == "50%" and bar["wait"].endswith("%") and float(bar["samples/s"]) > 0


def _sleepy(x: int) -> int:
    time.sleep(0.01)
    return x


def test_wait_time_when_a_node_sleeps():
    graph = instrument(Batcher(Mapper(IterableWrapper(range(10)), _sleepy), batch_size=5))
    loader = timed(Loader(graph))
    assert [len(b) for b in loader] == [5, 5]
    s = stats(loader)
    assert s["samples"] == 10 and s["batches"] == 2 and s["workers"] == 1
    mapper, batcher = s["nodes"]["ParallelMapper"], s["nodes"]["Batcher"]
    assert mapper["items"] == 10 and mapper["busy_s"] >= 10 * 0.01
    assert batcher["wait_s"] >= mapper["busy_s"] > 10 * batcher["busy_s"]
    assert s["wait_s"] >= 10 * 0.01  # the loop waited for the sleeps
    assert s["cache"]["hit_rate"] is None and s["cache"]["max_bytes"] is None


def test_instrumenting_again_starts_afresh():
    graph = instrument(Batcher(IterableWrapper(range(4)), batch_size=2))
    list(Loader(graph))
    instrument(graph)  # no timer around a timer
    assert stats(graph)["samples"] == 0
    list(Loader(graph))
    assert stats(graph)["nodes"]["Batcher"]["items"] == 2


def test_a_graph_instrumented_before_the_dataset_copies_it(image_index):
    graph = instrument(build_image_graph(image_index, size=16, batch_size=8, num_threads=1))
    ds = StreamingDataset(graph)  # takes the timers off; its private copy gets its own
    assert sum(len(b["__key__"]) for b in ds) == 24
    s = stats(ds)
    assert s["samples"] == 24 and s["decoded"]["ImageTensor"] == 24 and s["workers"] == 1
    assert stats(graph)["samples"] == 0  # the template never ran
    assert ds.__getstate__()["_template"]  # pickles: no timer left (spawned workers get it so)
    ds.shutdown()


def test_what_stats_cannot_read_says_the_fix():
    with pytest.raises(ValueError, match="instrument"):
        stats(Batcher(IterableWrapper(range(4)), batch_size=2))


def test_board_slots():
    board = MetricsBoard()
    assert board.read() == [] and board.read_slot(3) is None
    board.write(3, {"samples": 5, "nodes": {"A": {"items": 5}}})
    board.write(3, {"samples": 7, "nodes": {"A": {"items": 7}}})  # the latest wins
    assert board.read() == [{"samples": 7, "nodes": {"A": {"items": 7}}}]
    huge = {"samples": 1, "nodes": {f"N{i}": {"items": i} for i in range(SLOT_BYTES)}}
    board.write(0, huge)  # too big for a slot: the totals are kept
    assert board.read_slot(0) == {"samples": 1}


def test_a_board_on_a_reused_block_holds_no_old_slot():
    """The multiprocessing heap hands a freed block out again: a new board over a dirty block
    reads empty, as only its headers are zeroed."""
    import ctypes
    import gc

    dirty = MetricsBoard()
    for slot in range(64):
        dirty.write(slot, {"samples": slot})
    address = ctypes.addressof(dirty._buffer)
    del dirty
    gc.collect()
    boards = [MetricsBoard() for _ in range(3)]
    assert address in [ctypes.addressof(b._buffer) for b in boards]  # the dirty block, again
    assert all(b.read() == [] for b in boards)
    boards[1].write(5, {"samples": 1})
    assert boards[1].read() == [{"samples": 1}] and boards[0].read() == boards[2].read() == []


_RESIDENT = """
import ctypes, json
from sdsnodes._metrics_board import MetricsBoard
board = MetricsBoard()
start = ctypes.addressof(board._buffer)
def resident_kib():
    found = False
    for line in open("/proc/self/smaps"):
        head = line.split()
        if "-" in head[0] and not head[0].endswith(":"):
            low, high = (int(x, 16) for x in head[0].split("-"))
            found = low <= start < high
        elif found and head[0] == "Rss:":
            return int(head[1])
before = resident_kib()
board.write(1, {"samples": 3})
print(json.dumps([before, resident_kib(), board.read()]))
"""


def test_a_board_keeps_resident_only_the_pages_written():
    """In a fresh process: the board's headers page, then one page more for a written slot,
    of its 516 KiB (a zeroed board made all of it resident in the training process)."""
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _RESIDENT], capture_output=True, text=True, check=True, timeout=120
    )
    before, after, read = json.loads(out.stdout)
    assert read == [{"samples": 3}]
    assert before <= 8 and after <= before + 8, (before, after)

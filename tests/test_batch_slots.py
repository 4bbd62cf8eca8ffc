"""Clips decoded straight into the batch (SlotBatcher + VideoClip), the presets' Prefetcher that
passes batches through in DataLoader workers, and index checks that leave pyarrow's default
memory pool alone."""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torchdata.nodes import BaseNode, IterableWrapper, Loader, Mapper
from torchdata.stateful_dataloader import StatefulDataLoader
from utils import json_roundtrip

from sdsnodes import CacheOptions, StreamingDataset, build_video_graph, collate
from sdsnodes.codecs import _batch_slots
from sdsnodes.nodes.prefetcher import Prefetcher

# -- the rows of one batch --------------------------------------------------------------------


def test_each_row_is_handed_out_once_per_column():
    slots = _batch_slots.BatchSlots(3)
    slots.position = 1
    row = slots.claim("video", (2, 4), torch.uint8)
    assert row is not None and row.shape == (2, 4) and row.is_contiguous()
    assert slots.claim("video", (2, 4), torch.uint8) is None  # a second sample in one pull
    assert slots.claim("video_2", (2, 4), torch.uint8) is not None  # another column: own rows
    assert slots.claim("other", (2, 4), torch.uint8) is not None
    slots.position = 2
    assert slots.claim("video", (2, 5), torch.uint8) is None  # not the column's shape
    assert slots.claim("video", (2, 4), torch.float32) is None  # nor its dtype
    slots.position = 3
    assert slots.claim("video", (2, 4), torch.uint8) is None  # past the batch


def _filled(size: int, count: int) -> list[torch.Tensor]:
    slots = _batch_slots.BatchSlots(size)
    rows = []
    for k in range(count):
        slots.position = k
        row = slots.claim("x", (3,), torch.int64)
        row.fill_(k)
        rows.append(row)
    return rows


def test_gather_returns_the_rows_tensor_only_when_every_row_is_in_place():
    rows = _filled(4, 4)
    whole = _batch_slots.gather(rows)
    assert whole is not None and whole.shape == (4, 3)
    assert whole.data_ptr() == rows[0].data_ptr()  # the same memory: nothing copied
    assert whole[:, 0].tolist() == [0, 1, 2, 3]
    part = _batch_slots.gather(_filled(4, 2))  # a last, smaller batch
    assert part is not None and part.shape == (2, 3) and part[:, 0].tolist() == [0, 1]
    assert _batch_slots.gather(rows[::-1]) is None  # out of order
    assert _batch_slots.gather(rows[1:]) is None  # not from row 0
    assert _batch_slots.gather([*rows[:3], rows[3].clone()]) is None  # a copy, not the row
    assert _batch_slots.gather([torch.zeros(3)]) is None  # not a row at all
    other = _filled(4, 4)
    assert _batch_slots.gather([*rows[:2], *other[2:]]) is None  # rows of two batches


def test_collate_copies_whatever_gather_refuses():
    rows = _filled(3, 3)
    out = collate([{"x": rows[2]}, {"x": rows[1]}, {"x": rows[0]}])["x"]
    assert out[:, 0].tolist() == [2, 1, 0]
    assert out.data_ptr() != rows[0].data_ptr()


def test_rows_are_in_shared_memory_in_a_worker(monkeypatch):
    assert not _batch_slots.allocate((2, 3), torch.uint8).is_shared()
    monkeypatch.setattr(_batch_slots, "get_worker_info", lambda: object())
    rows = _batch_slots.allocate((2, 3), torch.uint8)
    assert rows.is_shared() and rows.shape == (2, 3)  # sent to the main process uncopied


# -- the video preset --------------------------------------------------------------------------


def _graph(src, **kw):
    args = dict(num_frames=4, fps=8, size=32, batch_size=5, shuffle=False, prefetch_factor=0)
    args.update(kw)
    return build_video_graph(src, **args)


GATHERED = [0]  # batches gathered in this process (and, forked with it, in a worker)


@pytest.fixture
def gathered(monkeypatch):
    """Counts the batches collate returned without copying (this process and forked workers)."""
    counts = {"gathered": 0, "copied": 0}
    real = _batch_slots.gather
    GATHERED[0] = 0

    def spy(values):
        out = real(values)
        counts["gathered" if out is not None else "copied"] += 1
        GATHERED[0] += out is not None  # what a forked worker's _Probe reads
        return out

    monkeypatch.setattr(_batch_slots, "gather", spy)
    return counts


def test_clips_are_decoded_into_the_batch_and_equal_the_copied_ones(video_index, gathered):
    inline = list(Loader(_graph(video_index, num_threads=0)))
    assert gathered == {"gathered": 3, "copied": 0}  # 12 clips: 5 + 5 + 2, none copied
    threaded = list(Loader(_graph(video_index, num_threads=2)))  # pool threads: copied
    assert gathered == {"gathered": 3, "copied": 3}
    assert [b["video"].shape[0] for b in inline] == [5, 5, 2]
    for a, b in zip(inline, threaded, strict=True):
        assert a["__key__"] == b["__key__"]
        assert torch.equal(a["video"], b["video"])


def test_a_clip_that_fails_to_open_leaves_its_row_to_the_next(tmp_path, gathered):
    from media import corrupt_mp4, video

    paths = [str(video(tmp_path, f"{i}.mp4", num_frames=8 + i)) for i in range(7)]
    paths.insert(2, str(corrupt_mp4(tmp_path)))  # the third sample fails before any frame
    pq.write_table(pa.table({"video": paths}), tmp_path / "index.parquet")
    src = str(tmp_path / "index.parquet")
    inline = list(Loader(_graph(src, num_threads=0, batch_size=4, caption_column=None)))
    reference = list(Loader(_graph(src, num_threads=2, batch_size=4, caption_column=None)))
    assert [len(b["__key__"]) for b in inline] == [4, 3]  # 7 good clips, the corrupt one skipped
    for a, b in zip(inline, reference, strict=True):
        assert a["__key__"] == b["__key__"]
        assert torch.equal(a["video"], b["video"])
    assert gathered == {"gathered": 2, "copied": 2}  # inline: both uncopied; threads: copied


class _FailsAfterClaiming:
    """A codec that writes ``value`` into its row, then raises for odd values."""

    def __call__(self, value, rng):
        row = _batch_slots.claim((3,), torch.int64)
        out = torch.empty(3, dtype=torch.int64) if row is None else row
        out.fill_(value)
        if value % 2:
            raise ValueError(f"odd {value}")
        return out


def test_a_sample_that_fails_after_claiming_its_row_costs_the_saving_not_the_values(gathered):
    from sdsnodes.nodes.collate import SlotBatcher
    from sdsnodes.nodes.decoder import Decoder

    samples = [{"x": v} for v in [0, 2, 4, 6, 7, 8, 10, 12, 14]]
    node = Decoder(IterableWrapper(samples), {"x": _FailsAfterClaiming()}, num_threads=0)
    batches = list(Loader(Mapper(SlotBatcher(node, batch_size=4, drop_last=False), collate)))
    assert [b["x"][:, 0].tolist() for b in batches] == [[0, 2, 4, 6], [8, 10, 12, 14]]
    assert gathered == {"gathered": 1, "copied": 1}  # 7 took row 0 of batch 2, then 8 had none


def _node_names(root: BaseNode) -> set[str]:
    names, stack = set(), [root]
    while stack:
        node = stack.pop()
        names.add(type(node).__name__)
        stack.extend(v for v in vars(node).values() if isinstance(v, BaseNode))
    return names


def test_rows_are_not_used_where_a_node_holds_samples_back(video_index):
    from sdsnodes import RotationOptions

    held = _node_names(_graph(video_index, rotation=RotationOptions(times=2, window=4)))
    assert {"Rotator", "Batcher"} <= held and "SlotBatcher" not in held
    assert "SlotBatcher" in _node_names(_graph(video_index))


class _Probe:
    """Adds to each batch the worker's count of gathered batches and its pulling thread."""

    def __call__(self, batch):
        batch["gathered"] = GATHERED[0]
        batch["thread"] = threading.current_thread().name
        return batch


def test_in_dataloader_workers_batches_are_gathered_and_not_prefetched(video_index, gathered):
    def build():
        return Mapper(_graph(video_index, num_threads=0, prefetch_factor=2, batch_size=3), _Probe())

    loader = StatefulDataLoader(StreamingDataset(build), batch_size=None, num_workers=2)
    batches = list(loader)
    assert sorted(int(k) for b in batches for k in b["__key__"]) == list(range(12))
    assert all(b["thread"] == "MainThread" for b in batches)  # the worker's own thread
    assert max(b["gathered"] for b in batches) == 2  # each worker: its 2 batches, uncopied
    reference = {  # each clip as decoded (and copied) in threads, in this process
        key: clip
        for b in Loader(_graph(video_index, num_threads=2, batch_size=3))
        for key, clip in zip(b["__key__"], b["video"], strict=True)
    }
    for b in batches:
        for key, clip in zip(b["__key__"], b["video"], strict=True):
            assert torch.equal(clip, reference[key])


# -- Prefetcher(in_workers=False) -------------------------------------------------------------


def _numbers(n: int = 10) -> BaseNode:
    return Mapper(
        IterableWrapper(range(n)), lambda i: {"i": i, "thread": threading.current_thread().name}
    )


def test_prefetcher_prefetches_in_the_training_process():
    items = list(Loader(Prefetcher(_numbers(), 2, in_workers=False)))
    assert [x["i"] for x in items] == list(range(10))
    assert all(x["thread"] != "MainThread" for x in items)  # torchdata's prefetch thread


@pytest.mark.parametrize("saved_in_worker", [True, False])
def test_prefetcher_states_resume_across_passing_through_and_prefetching(
    monkeypatch, saved_in_worker
):
    from sdsnodes.nodes import prefetcher as module

    def in_worker(flag):
        monkeypatch.setattr(
            module, "get_worker_info", (lambda: object()) if flag else (lambda: None)
        )

    for k in (0, 3, 9):
        in_worker(saved_in_worker)
        node = Prefetcher(_numbers(), 2, in_workers=False)
        loader = Loader(node)
        it = iter(loader)
        first = [next(it) for _ in range(k)]
        assert all((x["thread"] == "MainThread") == saved_in_worker for x in first)
        state = json_roundtrip(loader.state_dict())
        in_worker(not saved_in_worker)
        fresh = Loader(Prefetcher(_numbers(), 2, in_workers=False))
        fresh.load_state_dict(state)
        rest = [x["i"] for x in fresh]
        assert [x["i"] for x in first] + rest == list(range(10)), f"{k=}"


def test_prefetcher_in_workers_default_is_torchdatas(monkeypatch):
    from sdsnodes.nodes import prefetcher as module

    monkeypatch.setattr(module, "get_worker_info", lambda: object())
    items = list(Loader(Prefetcher(_numbers(), 2)))
    assert all(x["thread"] != "MainThread" for x in items)


# -- pyarrow's default pool ---------------------------------------------------------------------


def test_building_a_graph_allocates_nothing_from_pyarrows_default_pool(video_index, tmp_path):
    """The index checks at build time run on glibc's malloc: the first mimalloc allocation of
    a process leaves ~4 MiB resident (docs/speed.md)."""
    cache = tmp_path / "cache"
    options = CacheOptions(str(cache))
    build_video_graph(video_index, num_frames=4, size=32, batch_size=2, cache=options)  # converts
    script = (
        "import pyarrow as pa\n"
        "from sdsnodes import CacheOptions, build_video_graph\n"
        f"build_video_graph({video_index!r}, num_frames=4, size=32, batch_size=2, "
        f"cache=CacheOptions({str(cache)!r}))\n"
        "print(pa.default_memory_pool().max_memory())\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-1] == "0"
    shutil.rmtree(cache)


def test_clips_of_a_short_side_size_keep_their_own_memory(video_index, gathered):
    """With an int size clips may differ in shape: a row would pin a batch that stays a list."""
    from sdsnodes.codecs import VideoClip
    from sdsnodes.nodes.collate import SlotBatcher
    from sdsnodes.nodes.decoder import Decoder
    from sdsnodes.nodes.index_reader import IndexReader

    node = Decoder(IndexReader(video_index), {"video": VideoClip(4, fps=8, size=24)}, num_threads=0)
    batches = list(Loader(Mapper(SlotBatcher(node, batch_size=4, drop_last=False), collate)))
    assert sum(len(b["__key__"]) for b in batches) == 12
    for batch in batches:
        clips = batch["video"] if isinstance(batch["video"], list) else list(batch["video"])
        assert all(not hasattr(c, "sds_batch_row") for c in clips)
    assert gathered["gathered"] == 0

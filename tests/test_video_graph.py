"""The main job end to end: build_video_graph over real H.264 files, exact resume, bad input."""

import functools
import logging
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torchdata.nodes import Loader
from utils import check_dataloader_resume, check_node_resume, keys_of, stateful_loader

from sdsnodes import (
    ErrorOptions,
    StreamingDataset,
    TooManyErrors,
    build_image_graph,
    build_video_graph,
    error_stats,
)


def graph(src, **kw):
    args = dict(num_frames=4, fps=8, size=32, batch_size=3, num_threads=2)
    args.update(kw)
    return build_video_graph(src, **args)


def test_batches_have_fixed_shapes_from_mixed_sources(video_index):
    batches = list(Loader(graph(video_index)))
    assert len(batches) == 4  # 12 clips, batch 3
    for batch in batches:
        assert batch["video"].dtype == torch.uint8
        assert batch["video"].shape == (3, 4, 3, 32, 32)  # [B, T, C, H, W]
        assert len(batch["caption"]) == 3 and all(
            isinstance(c, str) and c for c in batch["caption"]
        )
    keys = [k for b in batches for k in b["__key__"]]
    assert sorted(keys, key=int) == [str(i) for i in range(12)]
    assert keys != [str(i) for i in range(12)]  # shuffled


def test_clips_differ_between_epochs_and_are_deterministic(video_index):
    loader = Loader(graph(video_index, shuffle=False, batch_size=12))
    e0, e1 = next(iter(loader))["video"], next(iter(loader))["video"]
    again = next(iter(Loader(graph(video_index, shuffle=False, batch_size=12))))["video"]
    assert torch.equal(e0, again)
    assert not torch.equal(e0, e1)  # a new random clip start each epoch


@pytest.mark.parametrize("prefetch_factor", [0, 2])
def test_node_graph_resumes_exactly(video_index, prefetch_factor):
    check_node_resume(lambda: graph(video_index, prefetch_factor=prefetch_factor))


@pytest.mark.parametrize("num_workers", [0, 2])
def test_stateful_dataloader_resumes_exactly(video_index, num_workers):
    make = lambda: StreamingDataset(functools.partial(graph, video_index, batch_size=2))  # noqa: E731
    epoch0 = check_dataloader_resume(make, num_workers, midpoints=[0, 1, 3, 6])
    assert len(epoch0) == 6
    assert sorted(k for b in epoch0 for k in b) == sorted(str(i) for i in range(12))


def test_values_are_identical_after_resume(video_index):
    """Not only the keys: the decoded clips after resume equal the uninterrupted ones."""
    make = lambda: StreamingDataset(functools.partial(graph, video_index, batch_size=2))  # noqa: E731
    full = [b["video"] for b in stateful_loader(make(), 2)]
    dl = stateful_loader(make(), 2)
    it = iter(dl)
    next(it), next(it), next(it)
    state = dl.state_dict()
    fresh = stateful_loader(make(), 2)
    fresh.load_state_dict(state)
    rest = [b["video"] for b in fresh]
    assert len(rest) == len(full) - 3
    assert all(torch.equal(a, b) for a, b in zip(rest, full[3:]))


def test_epochs_advance_with_non_persistent_workers(video_index):
    dl = stateful_loader(StreamingDataset(functools.partial(graph, video_index)), 2)
    epochs = [{e for b in dl for e in b["__epoch__"].tolist()} for _ in range(3)]
    assert epochs == [{0}, {1}, {2}]


@pytest.fixture
def index_with_bad_files(video_index, tmp_path):
    table = pq.read_table(video_index)
    videos = table.column("video").to_pylist()
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x01garbage" * 100)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(Path(videos[0]).read_bytes()[:300])
    copy = tmp_path / "ok.mp4"
    shutil.copy(videos[1], copy)
    rows = {
        "video": [str(corrupt), str(truncated), str(tmp_path / "missing.mp4"), str(copy)]
        + videos[2:8],
        "caption": ["bad"] * 3 + ["ok"] * 7,
    }
    path = tmp_path / "index.parquet"
    pq.write_table(pa.table(rows), path)
    return path


def test_bad_samples_are_skipped_counted_and_logged_once(index_with_bad_files, caplog):
    caplog.set_level(logging.WARNING)
    # unshuffled, the bad rows come first: counted before the first batch is yielded
    loader = Loader(graph(index_with_bad_files, batch_size=1, shuffle=False))
    batches = list(loader)
    assert len(batches) == 7
    assert all(b["caption"] == ["ok"] for b in batches)
    stats = error_stats(loader.state_dict())
    assert stats["decode"] == 2 and stats["missing"] == 1
    assert len([r for r in caplog.records if "skipped" in r.getMessage()]) == 2  # once per reason
    list(loader)  # a second epoch skips them again, quietly counted
    assert error_stats(loader.state_dict())["decode"] == 4


def test_bad_samples_raise_under_on_error_raise(index_with_bad_files):
    with pytest.raises(Exception, match="corrupt.mp4|truncated.mp4|missing.mp4"):
        list(
            Loader(
                graph(
                    index_with_bad_files,
                    batch_size=1,
                    errors=ErrorOptions(on_error="raise"),
                    shuffle=False,
                )
            )
        )


def test_too_many_errors_is_a_systemic_fault(index_with_bad_files):
    loader = Loader(
        graph(
            index_with_bad_files,
            batch_size=1,
            errors=ErrorOptions(max_error_rate=0.1),
            shuffle=False,
        )
    )
    with pytest.raises(TooManyErrors, match="max_error_rate"):
        for _ in range(3):  # judged once 20 samples were seen: 6 of 20 skipped > 10%
            list(loader)


def test_bad_samples_with_workers_do_not_crash(index_with_bad_files):
    make = functools.partial(graph, index_with_bad_files, batch_size=1, shuffle=False)
    dl = stateful_loader(StreamingDataset(make), 2)
    assert len(list(dl)) == 7
    assert error_stats(dl.state_dict())["decode"] == 2  # rows 0 and 1 went to workers 0 and 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(video_column="clip"), "no column 'clip'.*columns are"),
        (dict(caption_column="text"), "caption_column=None"),
        (dict(batch_size=0), "batch_size"),
        (dict(num_frames=0), "num_frames"),
    ],
)
def test_user_mistakes_fail_at_construction(video_index, kwargs, match):
    with pytest.raises(ValueError, match=match):
        graph(video_index, **kwargs)


def test_image_graph(image_index):
    batches = list(Loader(build_image_graph(image_index, size=24, batch_size=8)))
    assert [tuple(b["image"].shape) for b in batches] == [(8, 3, 24, 24)] * 3
    assert keys_of(batches[0]) != keys_of(batches[1])


def test_null_captions_stay_none(video_index, tmp_path):
    videos = pq.read_table(video_index).column("video").to_pylist()[:2]
    pq.write_table(pa.table({"video": videos, "caption": ["a", None]}), tmp_path / "i.parquet")
    batch = next(iter(Loader(graph(tmp_path / "i.parquet", batch_size=2, shuffle=False))))
    assert batch["caption"] == ["a", None]

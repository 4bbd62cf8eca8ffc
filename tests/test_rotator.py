"""Rotator: each decoded sample k times per epoch, never in a row, exact resume, both media."""

from __future__ import annotations

import collections
import itertools

import pytest
import torch
from torchdata.nodes import IterableWrapper, Loader

from sdsnodes import StreamingDataset, build_video_graph
from sdsnodes._rotation_options import RotationOptions
from sdsnodes.codecs import VideoClip
from sdsnodes.nodes import Decoder, IndexReader, Shuffler
from sdsnodes.nodes.rotator import Rotator
from sdsnodes.options import CacheOptions, IndexOptions
from tests.utils import check_dataloader_resume, check_node_resume, stateful_loader

ROWS = IndexOptions(max_rows=7)  # an odd count: windows of 3 leave a last one of 1 (merged)
CLIP = {"video": VideoClip(2, fps=8.0, size=(16, 16))}  # [2, 3, 16, 16] uint8: 1536 bytes


def graph(video_index, tmp_path, **kw) -> Rotator:
    decoded = Decoder(Shuffler(IndexReader(video_index, index=ROWS), seed=1), CLIP, num_threads=1)
    return Rotator(decoded, cache=CacheOptions(cache_dir=tmp_path / "cache"), seed=3, **kw)


def max_run(keys: list) -> int:
    return max(len(list(g)) for _, g in itertools.groupby(keys))


@pytest.mark.parametrize("medium", ["memory", "disk"])
def test_each_sample_k_times_never_in_a_row(video_index, tmp_path, medium):
    root = graph(video_index, tmp_path, times=3, window=3, medium=medium)
    loader = Loader(root)
    epochs = [[s["__key__"] for s in loader] for _ in range(2)]
    for keys in epochs:
        assert len(keys) == 3 * 7
        assert set(collections.Counter(keys).values()) == {3}
        assert max_run(keys) == 1  # window >= times: not even twice in a row
    assert epochs[0] != epochs[1]
    if medium == "disk":  # every window's files removed once it is done
        assert root._cache().stats()["files"] == 0
    first = next(iter(Loader(graph(video_index, tmp_path, times=3, window=3, medium=medium))))
    assert first["video"].shape == (2, 3, 16, 16) and first["video"].dtype == torch.uint8


def test_disk_window_lives_in_the_cache(video_index, tmp_path):
    root = graph(video_index, tmp_path, times=2, window=3, medium="disk")
    it = iter(Loader(root))
    next(it)
    stats = root._cache().stats()
    assert (stats["files"], stats["pinned_files"]) == (3, 3)  # the window, pinned, in the ledger
    assert stats["bytes"] > 3 * 1536
    assert len(list(it)) == 13 and root._cache().stats()["files"] == 0


def test_max_bytes_sets_the_window(video_index, tmp_path):
    keys = [s["__key__"] for s in Loader(graph(video_index, tmp_path, times=2, window=None,
                                               max_bytes=2 * 1536 + 1))]  # fmt: skip
    assert len(set(keys[:4])) == 2 and not set(keys[:4]) & set(keys[4:])  # windows of 2


def test_resume_at_several_points(video_index, tmp_path):
    check_node_resume(
        lambda: graph(video_index, tmp_path, times=2, window=3), midpoints=[0, 1, 5, 6, 13, 14]
    )


def test_last_single_sample_is_merged_and_state_is_small():
    rows = [{"__key__": str(i), "__index__": i, "x": torch.full((2,), i)} for i in range(5)]
    root = Rotator(IterableWrapper(rows), 4, window=2)
    loader = Loader(root)
    it = iter(loader)
    keys = [next(it)["__key__"] for _ in range(9)]
    state = loader.state_dict()
    assert "x" not in str(state) and len(str(state)) < 400  # the window is not in the state
    keys += [s["__key__"] for s in it]
    assert len(keys) == 20 and max_run(keys) < 4  # 5 = 2 + 3: never 4 in a row


@pytest.mark.parametrize("num_workers", [0, 2])
def test_preset_rotation_through_dataloader(video_index, tmp_path, num_workers):
    def make():
        return StreamingDataset(build_video_graph(
            video_index, num_frames=2, size=16, batch_size=3, index=ROWS,
            cache=CacheOptions(cache_dir=tmp_path / "c"), rotation=RotationOptions(times=2, window=2),
            num_threads=1, prefetch_factor=0,
        ))  # fmt: skip

    if num_workers == 2:  # resumes exactly; its uninterrupted epoch is checked below
        batches = check_dataloader_resume(make, num_workers, midpoints=[2])
        keys = [k for batch in batches for k in batch]
    else:
        keys = [k for batch in stateful_loader(make(), num_workers) for k in batch["__key__"]]
    assert set(collections.Counter(keys).values()) == {2} and len(keys) == 14


def test_bad_arguments():
    src = IterableWrapper([])
    for kw, fix in [
        ({"times": 0}, "times"),
        ({"window": 1}, "window"),
        ({"window": None}, "max_bytes"),
        ({"medium": "tape"}, "medium"),
        ({"max_bytes": 0}, "max_bytes"),
    ]:
        with pytest.raises(ValueError, match=fix):
            Rotator(src, **kw)
    with pytest.raises(ValueError, match="window"):
        RotationOptions(times=2, window=None)

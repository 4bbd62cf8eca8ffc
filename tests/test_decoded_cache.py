"""DecodedCache: later epochs read decoded entries (no decode), a refresh every K epochs, a
changed config never reads stale tensors, unusable entries are recomputed and counted."""

from __future__ import annotations

import pytest
import torch
from torchdata.nodes import Loader

from sdsnodes import StreamingDataset, build_video_graph
from sdsnodes._rotation_options import DecodedCacheOptions
from sdsnodes.codecs import VideoClip
from sdsnodes.nodes import Decoder, IndexReader, Shuffler, _tensor_files
from sdsnodes.nodes.decoded_cache import DecodedCache
from sdsnodes.options import CacheOptions, IndexOptions
from tests.utils import check_node_resume, stateful_loader

ROWS = IndexOptions(max_rows=6)


class Counted:
    """A real step after the Decoder that counts the samples it sees (decodes run)."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, sample: dict) -> dict:
        self.calls += 1
        return sample


def make(video_index, cache_dir, size=16, refresh_every=2, counted=None) -> DecodedCache:
    rows = Shuffler(IndexReader(video_index, index=ROWS), seed=0)
    clip = VideoClip(2, fps=8.0, size=(size, size), with_info=True)
    steps = [Decoder(rows, {"video": clip}, seed=0), counted or Counted()]
    return DecodedCache(rows, steps, refresh_every=refresh_every,
                        cache=CacheOptions(cache_dir=cache_dir), num_threads=2)  # fmt: skip


def epoch(loader) -> dict:
    return {s["__key__"]: s for s in loader}


@pytest.fixture(scope="module")
def three_epochs(video_index, tmp_path_factory):
    """Epochs 0, 1, 2 of one node with refresh_every=2, and the decodes each ran."""
    counted = Counted()
    root = make(video_index, tmp_path_factory.mktemp("dc") / "cache", counted=counted)
    loader, out = Loader(root), []
    for _ in range(3):
        before = counted.calls
        out.append((epoch(loader), counted.calls - before))
    return root, out


def test_second_epoch_is_read_from_disk(three_epochs):
    root, [(e0, n0), (e1, n1), _] = three_epochs
    assert (n0, n1) == (6, 0)  # epoch 1: no decode at all
    for key, sample in e0.items():
        assert torch.equal(sample["video"], e1[key]["video"])
        assert sample["video.clip_start"] == e1[key]["video.clip_start"]
        assert e1[key]["__epoch__"] == 1 and e1[key]["video"].shape == (2, 3, 16, 16)
    assert root._cache().stats()["files"] >= 6


def test_refresh_every_k_epochs_draws_new_clips(three_epochs):
    _, [(e0, _), _, (e2, n2)] = three_epochs
    assert n2 == 6  # a new generation: decoded again
    assert any(e0[k]["video.clip_start"] != e2[k]["video.clip_start"] for k in e0)


def test_changed_config_never_reads_stale_tensors(video_index, tmp_path):
    list(Loader(make(video_index, tmp_path)))
    counted = Counted()
    out = list(Loader(make(video_index, tmp_path, size=24, counted=counted)))
    assert counted.calls == 6 and {tuple(s["video"].shape) for s in out} == {(2, 3, 24, 24)}


def forge(path, sample: dict, meta: dict) -> None:
    """Write ``sample`` over ``path`` at the same size (the ledger's check passes): padded with
    a text value, so only the content is wrong."""
    size = path.stat().st_size
    for pad in range(size):
        data = _tensor_files.encode({**sample, "pad": "x" * pad}, meta)
        if len(data) == size:
            path.write_bytes(data)
            return
    raise AssertionError("cannot forge an entry of that size")


@pytest.mark.parametrize("damage", ["torn", "config", "shape"])
def test_unusable_entry_is_recomputed_and_counted(video_index, tmp_path, damage):
    root = make(video_index, tmp_path)
    loader = Loader(root)
    good = epoch(loader)
    key = sorted(good)[0]
    path = root._cache().path_for(root.url_of(good[key]))
    entry, meta = _tensor_files.read(path)
    if damage == "torn":
        path.write_bytes(b"\0" * path.stat().st_size)
    elif damage == "config":
        forge(path, entry, {**meta, "config": ""})  # another config
    else:
        forge(path, {**entry, "video": torch.zeros(1, 3, 8, 8, dtype=torch.uint8)}, meta)
    again = epoch(loader)  # epoch 1, same generation
    assert root.counts() == {damage: 1}
    assert root.state_dict()["skipped_entries"] == {damage: 1}
    assert torch.equal(again[key]["video"], good[key]["video"])
    assert _tensor_files.read(path)[1] == meta  # rewritten


def test_resume_at_several_points(video_index, tmp_path):
    check_node_resume(lambda: make(video_index, tmp_path), midpoints=[0, 2, 5, 6])


def test_preset_with_workers_reads_entries(video_index, tmp_path):
    def dataset():
        return StreamingDataset(build_video_graph(
            video_index, num_frames=2, size=16, batch_size=2, index=ROWS, num_threads=1,
            cache=CacheOptions(cache_dir=tmp_path / "c"), prefetch_factor=0,
            decoded_cache=DecodedCacheOptions(refresh_every=3),
        ))  # fmt: skip

    loader = stateful_loader(dataset(), 2)
    e0, e1 = ({k: v for b in loader for k, v in zip(b["__key__"], b["video"])} for _ in range(2))
    assert len(e0) == 6 and all(torch.equal(e0[k], e1[k]) for k in e0)  # entries shared


def test_bad_arguments(video_index):
    rows = IndexReader(video_index)
    with pytest.raises(ValueError, match="steps"):
        DecodedCache(rows, [])
    with pytest.raises(ValueError, match="refresh_every"):
        DecodedCache(rows, [Counted()], refresh_every=0)
    with pytest.raises(ValueError, match="refresh_every"):
        DecodedCacheOptions(refresh_every=0)

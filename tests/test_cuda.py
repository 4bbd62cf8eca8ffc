"""Batches out of the loader onto a CUDA device: pinned host memory, exact resume with
``pin_memory=True``, video clips through torchdata's ``PinMemory`` node.

Skipped where CUDA is not available (CI has no GPU); run them on a machine with one
(``pytest tests/test_cuda.py``).
"""

from __future__ import annotations

import functools

import pytest
import torch

from sdsnodes import (
    StreamingDataLoader,
    StreamingDataset,
    build_image_graph,
    build_video_graph,
)
from sdsnodes._synthetic import make_image_dataset, make_video_dataset

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

BATCH = 8


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_dataset(tmp_path_factory.mktemp("cuda-images"), num_images=48)


def _loader(index, num_workers: int, pin_memory: bool) -> StreamingDataLoader:
    build = functools.partial(build_image_graph, index, size=32, batch_size=BATCH, seed=3)
    return StreamingDataLoader(
        StreamingDataset(build), num_workers=num_workers, pin_memory=pin_memory
    )


def _on_device(batch: dict) -> tuple[torch.Tensor, list[int]]:
    image = batch["image"]
    assert image.is_pinned(), "pin_memory=True must hand out page-locked tensors"
    moved = image.to("cuda", non_blocking=True)
    torch.cuda.synchronize()
    assert moved.is_cuda and moved.dtype == image.dtype and moved.shape == image.shape
    assert torch.equal(moved.cpu(), image)
    return moved, batch["__index__"].tolist()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_pinned_batches_reach_the_gpu_intact(images, num_workers):
    """Pinned batches equal the pageable ones, and arrive on the GPU unchanged."""
    pageable = [(b["image"], b["__index__"].tolist()) for b in _loader(images, num_workers, False)]
    pinned = [_on_device(b) for b in _loader(images, num_workers, True)]
    assert [i for _, i in pinned] == [i for _, i in pageable]
    assert sorted(i for _, rows in pinned for i in rows) == list(range(48))
    for (gpu, _), (cpu, _) in zip(pinned, pageable, strict=True):
        assert torch.equal(gpu.cpu(), cpu)


def test_resume_with_pinned_memory_is_exact(images):
    """``state_dict`` after batch 2 with ``pin_memory=True``, 2 workers: the rest, exactly."""
    full = [rows for _, rows in map(_on_device, _loader(images, 2, True))]
    loader = _loader(images, 2, True)
    seen = []
    for k, batch in enumerate(loader):
        seen.append(_on_device(batch)[1])
        if k == 1:
            state = loader.state_dict()
            break
    resumed = _loader(images, 2, True)
    resumed.load_state_dict(state)
    rest = [rows for _, rows in map(_on_device, resumed)]
    assert seen + rest == full


def test_video_clips_through_pin_memory_node(tmp_path):
    """torchdata's PinMemory at the end of the clip graph: pinned uint8 [B, T, 3, H, W]."""
    from torchdata.nodes import Loader, PinMemory

    index = make_video_dataset(tmp_path, num_videos=6)
    graph = build_video_graph(index, num_frames=8, fps=8, size=64, batch_size=3)
    batches = list(Loader(PinMemory(graph)))
    assert len(batches) == 2
    for batch in batches:
        video = batch["video"]
        assert video.is_pinned() and video.dtype == torch.uint8
        assert tuple(video.shape) == (3, 8, 3, 64, 64)
        on_gpu = video.to("cuda", non_blocking=True)
        torch.cuda.synchronize()
        assert torch.equal(on_gpu.cpu(), video)

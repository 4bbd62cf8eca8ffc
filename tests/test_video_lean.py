"""The lean clip path: frames copied once by numpy into the clip, batches stacked once (into
shared memory inside a DataLoader worker)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, IterableDataset

from sdsnodes import collate
from sdsnodes.codecs.video import _Clip


def test_clip_frames_from_cropped_views():
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (10, 14, 3), dtype=np.uint8)[1:9, 2:12] for _ in range(3)]
    clip = _Clip(3)
    for frame in frames:
        clip.append(frame)  # a strided HWC view
    expected = torch.stack([torch.from_numpy(f).permute(2, 0, 1) for f in frames])
    assert clip.tensor.shape == (3, 3, 8, 10) and clip.tensor.is_contiguous()
    assert torch.equal(clip.tensor, expected)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.bfloat16, torch.bool])
def test_stack_matches_torch_stack(dtype):
    base = torch.arange(4 * 6 * 5).reshape(4, 6, 5).to(dtype)
    values = [base[i].t() for i in range(4)]  # non-contiguous views, [5, 6]
    out = collate([{"x": v} for v in values])["x"]
    assert out.dtype == dtype and out.is_contiguous()
    assert torch.equal(out, torch.stack(values))


def test_stack_keeps_autograd():
    values = [torch.ones(2, requires_grad=True) for _ in range(3)]
    out = collate([{"x": v} for v in values])["x"]
    out.sum().backward()
    assert all(torch.equal(v.grad, torch.ones(2)) for v in values)


class _Batches(IterableDataset):
    """Yields, from the worker, whether collate's batch was allocated in shared memory."""

    def __iter__(self):
        clips = [{"video": torch.full((2, 3, 4, 4), i, dtype=torch.uint8)} for i in range(3)]
        batch = collate(clips)
        yield {"shared": batch["video"].is_shared(), "video": batch["video"]}


def test_batch_is_written_into_shared_memory_in_a_worker():
    assert not collate([{"v": torch.zeros(2)}])["v"].is_shared()  # in this process: plain
    loader = DataLoader(_Batches(), batch_size=None, num_workers=1)
    (item,) = list(loader)
    assert item["shared"] is True  # so sending it to the main process copies nothing
    assert torch.equal(item["video"][:, 0, 0, 0, 0], torch.tensor([0, 1, 2], dtype=torch.uint8))

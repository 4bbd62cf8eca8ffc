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


def _gc_in_forked_child() -> None:
    import gc

    gc.collect()  # frees the parent's cyclic garbage here, in a process without its threads


def test_swscale_contexts_left_in_garbage_free_in_a_forked_child(tmp_path):
    """A DataLoader worker is forked with the parent's cyclic garbage and collects it. Freeing a
    swscale context that had slice threads waits on them in the child, forever (seen: a worker
    stuck in ``sws_freeContext`` → ``pthread_cond_destroy``). The reformatters are 1-thread."""
    import gc
    import multiprocessing

    import av
    from media import video

    from sdsnodes.codecs._video_stream import picked_frames
    from sdsnodes.codecs.video import VideoClip

    path = video(tmp_path, width=320, height=240, num_frames=24)
    gc.disable()  # keep the garbage for the child
    try:
        container = av.open(str(path))
        frames = picked_frames(container, container.streams.video[0], 8.0, 0, (64, 64), False)
        next(frames)  # a reformatter in use inside the suspended generator
        cycle: list = [frames, container]
        cycle.append(cycle)
        VideoClip(4, fps=8.0, size=64)(str(path), np.random.default_rng(0))
        del frames, container, cycle
        child = multiprocessing.get_context("fork").Process(target=_gc_in_forked_child)
        child.start()
        child.join(timeout=30)
        hung = child.is_alive()
        if hung:
            child.kill()
        assert not hung, "the forked child hung freeing a swscale context"
        assert child.exitcode == 0
    finally:
        gc.enable()
        gc.collect()


@pytest.mark.parametrize(
    ("size", "shape"), [(112, (112, 149, 3)), ((112, 112), (112, 112, 3)), (None, (192, 256, 3))]
)
def test_odd_resized_width_is_scaled_even_and_cropped(tmp_path, size, shape):
    """256x192 → short side 112 is 149.3 wide: swscale scales to 150 (its fast path) and the
    extra column is cropped; the shape is the exact one and the pixels within ~2 levels of an
    exact 149-wide resize."""
    import av
    from av.video.reformatter import VideoReformatter

    from sdsnodes._synthetic import write_video
    from sdsnodes.codecs._av import rgb_frame

    path = tmp_path / "v.mp4"
    write_video(path, num_frames=2, width=256, height=192)
    with av.open(str(path)) as container:
        frame = next(container.decode(video=0))
    rgb = rgb_frame(VideoReformatter(), frame, size, None)
    assert rgb.shape == shape and rgb.dtype == np.uint8
    if size == 112:
        exact = VideoReformatter().reformat(frame, width=149, height=112, format="rgb24")
        diff = np.abs(rgb.astype(int) - exact.to_ndarray().astype(int))
        assert diff.mean() < 4, diff.mean()
    if size is None:
        assert np.array_equal(rgb, frame.to_ndarray(format="rgb24"))

"""The clip task of ``bench_peers``: 16-frame H.264 clips (112x112 crops) from local mp4 files,
through a plain DataLoader, torchdata.nodes and ``build_video_graph``; batches of
(uint8 [B, 16, 3, 112, 112], row ids [B]).

The peers decode with ``benchmarks.bench_video.handwritten_clip`` (seek, decode the clip's
frames at 8 frames/s with one swscale context, centre crop); sdsnodes with its ``VideoClip``.
The shard-based peers (webdataset, litdata, mosaicml-streaming) have no clip decoder of their
own and are left out of this task.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from typing import Any

FRAMES, FPS, SIZE, BATCH = 16, 8.0, 112, 8


class ClipDataset:
    """The plain map-style Dataset: ``(handwritten_clip(paths[i]), i)``."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        import torch

        from benchmarks.bench_video import handwritten_clip

        clip = handwritten_clip((self.paths[i], i, FRAMES, FPS, SIZE))
        return torch.from_numpy(clip), i


def plain(paths: Sequence[str], workers: int) -> Any:
    from torch.utils.data import DataLoader

    return DataLoader(ClipDataset(paths), batch_size=BATCH, shuffle=True, num_workers=workers)


def _collate(items: list[tuple[Any, int]]) -> tuple[Any, list[int]]:
    import torch

    return torch.stack([x for x, _ in items]), [i for _, i in items]


def torchdata_nodes(paths: Sequence[str], threads: int) -> Any:
    """torchdata.nodes with a thread pool in this process (PyAV releases the GIL)."""
    import torchdata.nodes as tn
    from torch.utils.data import RandomSampler

    dataset = ClipDataset(paths)
    node = tn.SamplerWrapper(RandomSampler(range(len(paths))))
    node = tn.ParallelMapper(node, dataset.__getitem__, num_workers=threads, method="thread")
    node = tn.Mapper(tn.Batcher(node, batch_size=BATCH, drop_last=False), _collate)
    return tn.Loader(node)


def sdsnodes_clips(index: str, cache: str, workers: int) -> Iterator[tuple[Any, list[int]]]:
    from torchdata.stateful_dataloader import StatefulDataLoader

    from sdsnodes import CacheOptions, ErrorOptions, StreamingDataset, build_video_graph

    build = functools.partial(
        build_video_graph, index, num_frames=FRAMES, fps=FPS, size=SIZE, batch_size=BATCH,
        cache=CacheOptions(cache), errors=ErrorOptions(on_error="raise"),
    )  # fmt: skip
    loader = StatefulDataLoader(StreamingDataset(build), batch_size=None, num_workers=workers)
    for batch in loader:
        yield batch["video"], batch["__index__"].tolist()


def loaders(paths: Sequence[str], index: str, cache: str, workers: int) -> dict[str, Any]:
    return {
        "plain DataLoader": functools.partial(plain, paths, workers),
        "torchdata.nodes (threads)": functools.partial(torchdata_nodes, paths, 2 * workers),
        "sdsnodes (raw files)": functools.partial(sdsnodes_clips, index, cache, workers),
    }

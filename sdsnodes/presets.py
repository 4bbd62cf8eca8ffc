"""Ready-made graphs: ``build_video_graph``, ``build_image_graph``.

Each chains IndexReader → Shuffler → CachingDownloader → Decoder → Evictor → Batcher + collate
→ Prefetcher, and yields batch dicts. The media output size is fixed (resize + center crop), so
sources of any resolution, aspect ratio and frame rate batch together.
"""

from __future__ import annotations

import os
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from torchdata.nodes import BaseNode, Batcher, Mapper, Prefetcher

from sdsnodes.codecs import Codec, ImageTensor, Text, VideoClip
from sdsnodes.nodes.collate import collate
from sdsnodes.nodes.decoder import Decoder
from sdsnodes.nodes.downloader import CachingDownloader
from sdsnodes.nodes.evictor import Evictor
from sdsnodes.nodes.index_reader import IndexReader
from sdsnodes.nodes.shuffler import Shuffler


def _square(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        if size < 1:
            raise ValueError(f"{size=} must be >= 1")
        return (size, size)
    return (int(size[0]), int(size[1]))


def _has_urls(reader: IndexReader, column: str) -> bool:
    """Whether any value of ``column`` is a remote URL (``scheme://``, not ``file://``)."""
    values = reader.index.table.column(column)
    if not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
        return False
    remote = pc.and_(
        pc.match_substring(values, "://"), pc.invert(pc.starts_with(values, "file://"))
    )
    return bool(pc.any(remote).as_py())


def _build(
    src: str | os.PathLike | pa.Table,
    media_column: str,
    media_codec: Codec,
    caption_column: str | None,
    *,
    batch_size: int,
    cache_dir: str | None,
    max_bytes: int | None,
    storage_options: dict[str, Any] | None,
    shuffle: bool,
    seed: int,
    num_threads: int,
    download_threads: int,
    retries: int,
    timeout: float | None,
    prefetch_factor: int,
    drop_last: bool,
    on_error: str,
    max_error_rate: float,
    rank: int | None,
    world_size: int | None,
) -> BaseNode:
    if batch_size < 1:
        raise ValueError(f"{batch_size=} must be >= 1")
    if prefetch_factor < 0:
        raise ValueError(f"{prefetch_factor=} must be >= 0")
    reader = IndexReader(src, storage_options=storage_options, rank=rank, world_size=world_size)
    present = reader.column_names
    if media_column not in present:
        raise ValueError(
            f"the index {reader.src!r} has no column {media_column!r}; its columns are {present}. "
            "Name the column of file paths or URLs (video_column=... / image_column=...)."
        )
    if caption_column is not None and caption_column not in present:
        raise ValueError(
            f"the index {reader.src!r} has no caption column {caption_column!r}; its columns are "
            f"{present}. Pass caption_column=<one of them>, or caption_column=None for none."
        )
    node: BaseNode = Shuffler(reader, seed=seed) if shuffle else reader
    if _has_urls(reader, media_column):  # all-local indexes skip the download threads entirely
        node = CachingDownloader(
            node,
            [media_column],
            cache_dir=cache_dir,
            max_bytes=max_bytes,
            storage_options=storage_options,
            num_threads=download_threads,
            retries=retries,
            timeout=timeout,
            on_error=on_error,
            max_error_rate=max_error_rate,
        )
    codecs: dict[str, Codec] = {media_column: media_codec}
    if caption_column is not None:
        codecs[caption_column] = Text()
    node = Decoder(
        node,
        codecs,
        num_threads=num_threads,
        seed=seed,
        on_error=on_error,
        max_error_rate=max_error_rate,
    )
    node = Evictor(node)
    node = Mapper(Batcher(node, batch_size=batch_size, drop_last=drop_last), collate)
    return Prefetcher(node, prefetch_factor) if prefetch_factor else node


def build_video_graph(
    src: str | os.PathLike | pa.Table,
    *,
    num_frames: int = 16,
    fps: float | None = 8.0,
    size: int | tuple[int, int] = 128,
    batch_size: int = 4,
    video_column: str = "video",
    caption_column: str | None = "caption",
    cache_dir: str | None = None,
    max_bytes: int | None = None,
    storage_options: dict[str, Any] | None = None,
    shuffle: bool = True,
    seed: int = 0,
    num_threads: int = 4,
    download_threads: int = 8,
    retries: int = 3,
    timeout: float | None = 60.0,
    prefetch_factor: int = 2,
    drop_last: bool = False,
    on_error: str = "skip",
    max_error_rate: float = 0.5,
    rank: int | None = None,
    world_size: int | None = None,
) -> BaseNode:
    """A graph yielding batches of video clips and captions.

    Args:
        src: index source (see :class:`~sdsnodes.IndexReader`) with a ``video_column`` of local
            paths or URLs.
        num_frames (int): frames per clip T.
        fps (float | None): clip frame rate in frames/s (None: the source's).
        size (int | tuple[int, int]): output (H, W) in pixels; an int means square.
        batch_size (int): clips per batch B.
        video_column (str), caption_column (str | None): index columns to read.
        cache_dir (str | None), max_bytes (int | None), storage_options (dict | None): download
            cache and fsspec options (see :class:`~sdsnodes.CachingDownloader`).
        shuffle (bool), seed (int): a new permutation each epoch, deterministic in (seed, epoch).
        num_threads (int): decoding threads; download_threads (int): download threads.
        retries (int), timeout (float | None): retries of transient download errors (with
            exponential backoff) and seconds one download attempt may take.
        prefetch_factor (int): batches prefetched in the background (0 for none).
        drop_last (bool): drop a last, smaller batch.
        on_error (str), max_error_rate (float): bad-sample policy (see docs/nodes.md).
        rank (int | None), world_size (int | None): explicit distributed position.

    Returns:
        BaseNode: yields dicts with ``video`` uint8 [B, T, 3, H, W], ``caption`` list[str | None],
        ``__key__`` list[str], ``__index__`` int64 [B], ``__epoch__`` int64 [B], the other
        index columns (lists or tensors), and ``__url__.<video_column>`` list[str] when the
        index holds URLs (they go through a CachingDownloader; local paths are read in place).

    Raises:
        ValueError: a bad argument, or a column missing from the index (the message lists the
            columns there are).
    """
    codec = VideoClip(num_frames, fps=fps, size=_square(size))
    return _build(
        src, video_column, codec, caption_column, batch_size=batch_size, cache_dir=cache_dir,
        max_bytes=max_bytes, storage_options=storage_options, shuffle=shuffle, seed=seed,
        num_threads=num_threads, download_threads=download_threads, retries=retries, timeout=timeout,
        prefetch_factor=prefetch_factor,
        drop_last=drop_last, on_error=on_error, max_error_rate=max_error_rate, rank=rank,
        world_size=world_size,
    )  # fmt: skip


def build_image_graph(
    src: str | os.PathLike | pa.Table,
    *,
    size: int | tuple[int, int] = 256,
    batch_size: int = 32,
    image_column: str = "image",
    caption_column: str | None = "caption",
    cache_dir: str | None = None,
    max_bytes: int | None = None,
    storage_options: dict[str, Any] | None = None,
    shuffle: bool = True,
    seed: int = 0,
    num_threads: int = 4,
    download_threads: int = 16,
    retries: int = 3,
    timeout: float | None = 60.0,
    prefetch_factor: int = 2,
    drop_last: bool = False,
    on_error: str = "skip",
    max_error_rate: float = 0.5,
    rank: int | None = None,
    world_size: int | None = None,
) -> BaseNode:
    """A graph yielding batches of images and captions.

    Args: as :func:`build_video_graph`, with ``image_column`` and ``size`` the output (H, W).

    Returns:
        BaseNode: yields dicts with ``image`` uint8 [B, 3, H, W], ``caption`` list[str | None]
        and the reserved keys as in :func:`build_video_graph`.

    Raises:
        ValueError: a bad argument, or a column missing from the index.
    """
    codec = ImageTensor(size=_square(size))
    return _build(
        src, image_column, codec, caption_column, batch_size=batch_size, cache_dir=cache_dir,
        max_bytes=max_bytes, storage_options=storage_options, shuffle=shuffle, seed=seed,
        num_threads=num_threads, download_threads=download_threads, retries=retries, timeout=timeout,
        prefetch_factor=prefetch_factor,
        drop_last=drop_last, on_error=on_error, max_error_rate=max_error_rate, rank=rank,
        world_size=world_size,
    )  # fmt: skip

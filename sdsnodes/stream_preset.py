"""``build_stream_graph``: batches of temporally coherent streams for recurrent models.

IndexReader → Shuffler (the order of streams) → CachingDownloader (URLs) → StreamOpener (a
chunker per modality) → StreamBatcher → Prefetcher. See ``docs/streams.md``.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Callable
from typing import Any

import pyarrow as pa
from torchdata.nodes import BaseNode

from sdsnodes._preset_parts import has_urls, square
from sdsnodes.codecs.chunks import AudioChunks, LatentChunks, TextChunks, VideoChunks
from sdsnodes.nodes.downloader import CachingDownloader
from sdsnodes.nodes.index_reader import IndexReader
from sdsnodes.nodes.prefetcher import Prefetcher
from sdsnodes.nodes.shuffler import Shuffler
from sdsnodes.nodes.stream_batcher import PadMode, StreamBatcher
from sdsnodes.nodes.stream_opener import StreamOpener
from sdsnodes.options import CacheOptions, ErrorOptions, FetchOptions, IndexOptions


class Modality(str, enum.Enum):
    """What the streams of :func:`build_stream_graph` hold."""

    VIDEO = "video"
    """Videos, cut into consecutive clips (:class:`~sdsnodes.codecs.chunks.VideoChunks`)."""
    AUDIO = "audio"
    """Audio files or videos' tracks, into windows (:class:`~sdsnodes.codecs.chunks.AudioChunks`)."""
    TEXT = "text"
    """UTF-8 text files, into character or token windows
    (:class:`~sdsnodes.codecs.chunks.TextChunks`)."""
    LATENT = "latent"
    """Precomputed video latents, into runs of latent frames
    (:class:`~sdsnodes.codecs.chunks.LatentChunks`)."""


def build_stream_graph(
    src: str | os.PathLike | pa.Table,
    *,
    modality: Modality | str = Modality.VIDEO,
    batch_size: int = 8,
    column: str | None = None,
    num_frames: int = 16,
    fps: float = 8.0,
    size: int | tuple[int, int] | None = 128,
    seconds: float = 1.0,
    sample_rate: int = 16000,
    channels: int = 1,
    chunk_size: int = 256,
    tokenizer: Callable[[str], Any] | None = None,
    latent_frames: int = 4,
    stride: int | float | None = None,
    pad: PadMode | str = PadMode.PAD,
    index: IndexOptions | None = None,
    cache: CacheOptions | None = None,
    fetch: FetchOptions | None = None,
    errors: ErrorOptions | None = None,
    shuffle: bool = True,
    seed: int = 0,
    num_threads: int = 4,
    prefetch_factor: int = 2,
    rank: int | None = None,
    world_size: int | None = None,
) -> BaseNode:
    """A graph yielding batches whose row r continues the same stream from batch to batch.

    Each index row is one stream (a long file); the graph keeps ``batch_size`` streams open and
    cuts each into consecutive chunks. Shuffling permutes the order of the streams each epoch,
    never the chunks inside one. With DataLoader workers iterate it through
    :class:`~sdsnodes.StreamLoader` (full batches, coherent rows); ranks read disjoint streams.

    Args:
        src: index source (see :class:`~sdsnodes.IndexReader`) with a ``column`` of local paths
            or URLs.
        modality (str): ``"video"``, ``"audio"``, ``"text"`` or ``"latent"``; see :class:`Modality`.
        batch_size (int): rows B (8), all DataLoader workers together.
        column (str | None): the column of files; None: the modality's name.
        num_frames (int), fps (float), size (int | tuple[int, int] | None): video: clips of T
            (16) frames at ``fps`` (8.0 frames/s), resized to (H, W) (128: square; None keeps
            the source size).
        seconds (float), sample_rate (int), channels (int): audio: windows of ``seconds`` (1.0)
            at ``sample_rate`` Hz (16000), 1 (mono) or 2 channels.
        chunk_size (int), tokenizer (Callable | None): text: windows of ``chunk_size`` (256)
            characters, or tokens of ``tokenizer``.
        latent_frames (int): latent: latent frames per chunk (4), on dimension 1 ([C, T, h, w]).
        stride (int | float | None): from one chunk's start to the next, in the chunk's unit
            (frames at ``fps``, seconds, characters/tokens, latent frames); None: the chunk's
            length (consecutive chunks).
        pad (str): ``"pad"``, ``"reread"`` or ``"drop"``; see :class:`~sdsnodes.nodes.stream_batcher.PadMode`.
        index (IndexOptions | None): which rows, under which names (as
            :func:`~sdsnodes.build_video_graph`).
        cache (CacheOptions | None): the download cache, for URLs.
        fetch (FetchOptions | None): how URLs are fetched (``storage_options`` also to the
            IndexReader).
        errors (ErrorOptions | None): bad files (a download, or a stream that cannot be
            opened or breaks off mid-way) are skipped and counted, or raised.
        shuffle (bool), seed (int): a Shuffler over the streams, a new order each epoch.
        num_threads (int): the StreamBatcher's threads reading the rows' chunks side by side
            (4; 0: one after the other).
        prefetch_factor (int): batches prepared in a thread of the training process (2; 0 for
            none); none in DataLoader workers (``Prefetcher(in_workers=False)``).
        rank (int | None), world_size (int | None): the IndexReader's distributed position;
            each stream is read by one rank (``uneven="keep"``: no row repeated to even the
            shards, since the ranks' batch counts depend on their streams' lengths anyway).

    Returns:
        BaseNode: yields dicts with the chunk under ``column`` — video uint8 [B, T, 3, H, W]
        (and ``<column>.clip_start``/``.clip_end`` s, ``.source_fps``, float64 [B]); audio
        float32 [B, C, S] (``.audio_start`` s); text list[str] or int64 [B, chunk_size]
        (``.length``); latent float32 [B, C, latent_frames, h, w] — ``is_first``, ``is_pad``,
        ``is_reread`` bool [B], ``__key__`` list[str | None], ``__chunk__``, ``__row__``,
        ``__worker__`` int64 [B], and the other index columns.

    Raises:
        ValueError: a bad argument, or ``column`` missing from the index.
    """
    try:
        modality = Modality(modality)
    except ValueError:
        raise ValueError(f"{modality=} must be one of {[m.value for m in Modality]}") from None
    if prefetch_factor < 0:
        raise ValueError(f"{prefetch_factor=} must be >= 0")
    column = column or modality.value
    chunker: Any
    if modality is Modality.VIDEO:
        chunker = VideoChunks(num_frames, fps, size=square(size), stride=stride)  # type: ignore[arg-type]
    elif modality is Modality.AUDIO:
        chunker = AudioChunks(seconds, sample_rate, channels, stride=stride)
    elif modality is Modality.TEXT:
        chunker = TextChunks(chunk_size, tokenizer, stride=stride)  # type: ignore[arg-type]
    else:
        chunker = LatentChunks(latent_frames, stride=stride)  # type: ignore[arg-type]
    if pad not in [m.value for m in PadMode]:  # checked before the index is read
        raise ValueError(f"{pad=} must be one of {[m.value for m in PadMode]}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{batch_size=} must be an int >= 1")
    cache, fetch = cache or CacheOptions(), fetch or FetchOptions()
    index_cache_dir = None if cache.cache_dir is None else os.path.join(cache.cache_dir, "index")
    reader = IndexReader(  # "keep": ranks' batch counts differ anyway; no stream read twice
        src, storage_options=fetch.storage_options, rank=rank, world_size=world_size,
        index_cache_dir=index_cache_dir, index=index, uneven="keep",
    )  # fmt: skip
    if column not in reader.column_names:
        raise ValueError(
            f"the index {reader.src!r} has no column {column!r} (column); its columns are "
            f"{reader.column_names}. Pass column=<one of them>."
        )
    node: BaseNode = Shuffler(reader, seed=seed) if shuffle else reader
    if has_urls(reader, column):
        node = CachingDownloader(node, [column], cache=cache, fetch=fetch, errors=errors)
    node = StreamOpener(node, column, chunker)
    node = StreamBatcher(node, batch_size, pad=pad, errors=errors, num_threads=num_threads)
    return Prefetcher(node, prefetch_factor, in_workers=False) if prefetch_factor else node

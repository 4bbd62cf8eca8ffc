"""Ready-made graphs: ``build_image_graph``, ``build_video_graph``, ``build_audio_graph``,
``build_text_to_video_graph`` and ``build_metadata_graph`` (index rows only, no media).

Each chains IndexReader → Shuffler → (Selector) → CachingDownloader (every column of URLs) →
RangeReader (``partial_reads``) → Decoder → Evictor → Batcher + collate → Prefetcher and yields
batch dicts.
Output sizes are fixed (resize + crop, clip length, audio length), so sources of any resolution,
frame rate and sample rate batch together. The shared plumbing is in ``sdsnodes._preset_parts``;
the option groups (``index``, ``cache``, ``fetch``, ``errors``) in :mod:`sdsnodes.options`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import pyarrow as pa
from torchdata.nodes import BaseNode

from sdsnodes._metadata_preset import build_metadata_graph  # noqa: F401 - a preset of this module
from sdsnodes._preset_parts import add_audio, add_caption, add_embeddings, assemble, square
from sdsnodes._renamed import renamed_keywords
from sdsnodes._rotation_options import DecodedCacheOptions, RotationOptions
from sdsnodes.codecs import AudioWaveform, Codec, ImageTensor, Latent, VideoClip
from sdsnodes.options import (
    CacheOptions,
    ErrorOptions,
    FetchOptions,
    IndexOptions,
)

Src = str | os.PathLike | pa.Table
IMAGE_MAX_IN_FLIGHT = 32
"""Samples the image preset fetches ahead and at once unless ``fetch.max_in_flight`` says:
small files, each request short, so more of them in flight (``benchmarks/bench_peers.py``)."""
IMAGE_FETCH = FetchOptions(max_in_flight=IMAGE_MAX_IN_FLIGHT)
"""The image preset's default fetch options."""


@renamed_keywords
def build_video_graph(
    src: Src,
    *,
    num_frames: int = 16,
    fps: float | None = 8.0,
    size: int | tuple[int, int] = 128,
    batch_size: int = 4,
    video_column: str = "video",
    caption_column: str | None = "caption",
    partial_reads: bool = False,
    block_size: int = 1 << 20,
    index: IndexOptions | None = None,
    cache: CacheOptions | None = None,
    fetch: FetchOptions | None = None,
    errors: ErrorOptions | None = None,
    shuffle: bool = True,
    seed: int = 0,
    num_threads: int | None = None,
    prefetch_factor: int = 2,
    drop_last: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    balance: bool = True,
    rotation: RotationOptions | None = None,
    decoded_cache: DecodedCacheOptions | None = None,
) -> BaseNode:
    """A graph yielding batches of video clips and captions.

    Args:
        src: index source (see :class:`~sdsnodes.IndexReader`) with a ``video_column`` of local
            paths or URLs.
        num_frames (int): frames per clip T (16).
        fps (float | None): clip frame rate in frames/s (8.0; None: the source's).
        size (int | tuple[int, int]): output (H, W) in pixels (128); an int means square.
        batch_size (int): clips per batch B (4).
        video_column (str), caption_column (str | None): index columns to read.
        partial_reads (bool): read remote videos in byte ranges (a
            :class:`~sdsnodes.RangeReader` of ``block_size``-byte blocks, default 1 MiB) instead
            of downloading them whole: only the container index and the blocks around the clip
            travel (False).
        index (IndexOptions | None): which rows of the index are read and under which names,
            to the IndexReader: ``filter``, ``rename``, ``key_column`` (the column that gives
            ``__key__``), ``max_rows`` / ``max_index_files`` (caps for debugging runs),
            ``lazy``, ``txt``; column options of the preset name columns after ``rename``.
            None: ``IndexOptions()``, every row of every file.
        cache (CacheOptions | None): the download cache, to the CachingDownloader and
            RangeReader (its ``cache_dir`` also keeps the converted index, under ``index/``);
            None: ``CacheOptions()``.
        fetch (FetchOptions | None): to the CachingDownloader and RangeReader
            (``storage_options`` also to the IndexReader); None: ``FetchOptions()``, 30 retries
            within a 30 s deadline, 60 s per attempt, 8 samples in flight (docs/retries.md).
        errors (ErrorOptions | None): bad-sample policy of the CachingDownloader, RangeReader
            and Decoder; None: ``ErrorOptions()``, skip, raise past a rate of 0.5 (docs/nodes.md).
        shuffle (bool), seed (int): a Shuffler, a new permutation each epoch, deterministic in
            (seed, epoch); the seed also seeds the Decoder's codecs.
        num_threads (int | None): the Decoder's threads; None (default): sized to the cores of
            each process that runs the graph (its CPUs over the DataLoader's workers, at most
            8; inline, in the thread that pulls the batches, when that is one core or less,
            e.g. 2 workers on 2 cores); 0 decodes inline.
        prefetch_factor (int): the Prefetcher's batches, prepared in a thread of the training
            process (2; 0 for none). In DataLoader workers the DataLoader's own
            ``prefetch_factor`` does that, and the graph passes its batches through
            (``Prefetcher(in_workers=False)``).
        drop_last (bool): the Batcher drops a last, smaller batch.
        rank (int | None), world_size (int | None): the IndexReader's distributed position.
        balance (bool): a packed dataset under ``world_size > 1``: every rank reads as many
            whole batches per epoch, the rest of the epoch left unread (docs/packing.md,
            "Ranks"); False reads every row, ranks unequal. Raw-file indexes pad instead.
        rotation (RotationOptions | None): yield each decoded sample ``rotation.times`` times,
            interleaved (a :class:`~sdsnodes.nodes.rotator.Rotator` after the Evictor; the
            epoch grows that many times); None: once (docs/rotation.md).
        decoded_cache (DecodedCacheOptions | None): keep decoded samples in the cache
            directory (a :class:`~sdsnodes.nodes.decoded_cache.DecodedCache` in place of the
            downloads and the Decoder), refreshed every ``refresh_every`` epochs; None: none.

    Returns:
        BaseNode: yields dicts with ``video`` uint8 [B, T, 3, H, W], ``caption`` list[str | None],
        ``__key__`` list[str], ``__index__`` int64 [B], ``__epoch__`` int64 [B], the other
        index columns (lists or tensors), and ``__url__.<video_column>`` list[str] when the
        index holds URLs (they go through a CachingDownloader; local paths are read in place;
        with ``partial_reads`` the key is ``__range_url__.<video_column>``).

    Raises:
        ValueError: a bad argument, or a column missing from the index (the message lists the
            columns there are).
    """
    codecs: dict[str, Codec] = {video_column: VideoClip(num_frames, fps=fps, size=square(size))}
    columns = {video_column: "video_column"}
    add_caption(codecs, columns, caption_column)
    return assemble(
        src, codecs, columns=columns, files=[video_column], block_size=block_size,
        partial=[video_column] if partial_reads else [],
        index=index, cache=cache, fetch=fetch, errors=errors, batch_size=batch_size, shuffle=shuffle,
        seed=seed, num_threads=num_threads, prefetch_factor=prefetch_factor, drop_last=drop_last,
        rank=rank, world_size=world_size, rotation=rotation, decoded_cache=decoded_cache,
        balance=balance,
    )  # fmt: skip


@renamed_keywords
def build_image_graph(
    src: Src,
    *,
    size: int | tuple[int, int] = 256,
    batch_size: int = 32,
    image_column: str = "image",
    caption_column: str | None = "caption",
    index: IndexOptions | None = None,
    cache: CacheOptions | None = None,
    fetch: FetchOptions | None = IMAGE_FETCH,
    errors: ErrorOptions | None = None,
    shuffle: bool = True,
    seed: int = 0,
    num_threads: int | None = None,
    prefetch_factor: int = 2,
    drop_last: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    balance: bool = True,
    rotation: RotationOptions | None = None,
    decoded_cache: DecodedCacheOptions | None = None,
) -> BaseNode:
    """A graph yielding batches of images and captions.

    Args: as :func:`build_video_graph`, with ``image_column`` ("image") and ``size`` the output
    (H, W) (256), ``batch_size`` 32 and :data:`IMAGE_MAX_IN_FLIGHT` (32) samples downloaded
    ahead, also when ``fetch`` leaves ``max_in_flight`` None.

    Returns:
        BaseNode: yields dicts with ``image`` uint8 [B, 3, H, W], ``caption`` list[str | None]
        and the reserved keys as in :func:`build_video_graph`.

    Raises:
        ValueError: a bad argument, or a column missing from the index.
    """
    codecs: dict[str, Codec] = {image_column: ImageTensor(size=square(size))}
    fetch = (fetch or IMAGE_FETCH).with_window(IMAGE_MAX_IN_FLIGHT)
    columns = {image_column: "image_column"}
    add_caption(codecs, columns, caption_column)
    return assemble(
        src, codecs, columns=columns, files=[image_column],
        index=index, cache=cache, fetch=fetch, errors=errors, batch_size=batch_size, shuffle=shuffle,
        seed=seed, num_threads=num_threads, prefetch_factor=prefetch_factor, drop_last=drop_last,
        rank=rank, world_size=world_size, rotation=rotation, decoded_cache=decoded_cache,
        balance=balance,
    )  # fmt: skip


@renamed_keywords
def build_audio_graph(
    src: Src,
    *,
    sample_rate: int = 16000,
    channels: int = 1,
    duration: float | None = 10.0,
    start: str = "random",
    batch_size: int = 16,
    audio_column: str = "audio",
    caption_column: str | None = "caption",
    index: IndexOptions | None = None,
    cache: CacheOptions | None = None,
    fetch: FetchOptions | None = None,
    errors: ErrorOptions | None = None,
    shuffle: bool = True,
    seed: int = 0,
    num_threads: int | None = None,
    prefetch_factor: int = 2,
    drop_last: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    balance: bool = True,
    rotation: RotationOptions | None = None,
    decoded_cache: DecodedCacheOptions | None = None,
) -> BaseNode:
    """A graph yielding batches of audio crops (resampled, mixed) and captions.

    The ``audio_column`` holds audio files (WAV, FLAC, MP3, AAC/m4a, Opus…) or videos, whose
    first audio track is read. Each sample is a crop of ``duration`` seconds starting at a
    random time (seeded; ``start="uniform"``: the middle), mixed to ``channels`` and resampled
    to ``sample_rate`` (see :class:`~sdsnodes.AudioWaveform`); a file shorter than the crop is
    padded with zeros at the end. Other options: as :func:`build_video_graph`.

    Args:
        src: index source with an ``audio_column`` of local paths or URLs.
        sample_rate (int): output rate in Hz (16000).
        channels (int): 1 (mono mixdown, default) or 2 (stereo).
        duration (float | None): crop length in seconds (10.0); None keeps whole files, whose
            lengths then differ (``audio`` is a list).
        start (str): ``"random"`` (default) or ``"uniform"`` (centred).
        batch_size (int): crops per batch B (16).
        audio_column (str): the column of files ("audio"); caption_column (str | None):
            ("caption").

    Returns:
        BaseNode: yields dicts with ``audio`` float32 [B, C, S] in [-1, 1], S ==
        round(duration * sample_rate), C == channels; ``audio.sample_rate`` int64 [B] (Hz);
        ``audio.audio_start`` float64 [B] (s, the crop's start in the file); ``caption``
        list[str | None]; and the reserved keys as in :func:`build_video_graph`.

    Raises:
        ValueError: a bad argument, or a column missing from the index.
    """
    codecs: dict[str, Codec] = {
        audio_column: AudioWaveform(
            sample_rate, channels, duration=duration, start=start, with_info=True
        )
    }
    columns = {audio_column: "audio_column"}
    add_caption(codecs, columns, caption_column)
    return assemble(
        src, codecs, columns=columns, files=[audio_column],
        index=index, cache=cache, fetch=fetch, errors=errors, batch_size=batch_size, shuffle=shuffle,
        seed=seed, num_threads=num_threads, prefetch_factor=prefetch_factor, drop_last=drop_last,
        rank=rank, world_size=world_size, rotation=rotation, decoded_cache=decoded_cache,
        balance=balance,
    )  # fmt: skip


@renamed_keywords
def build_text_to_video_graph(
    src: Src,
    *,
    num_frames: int = 16,
    fps: float = 8.0,
    size: int | tuple[int, int] = 256,
    video_column: str = "video",
    caption_column: str | Sequence[str] | None = "caption",
    caption_choice: str = "random",
    audio: bool | str = False,
    audio_sample_rate: int = 16000,
    audio_channels: int = 1,
    latent_columns: Sequence[str] = (),
    latent_fps: float | None = None,
    latent_stride: int | None = None,
    latent_causal: bool = False,
    latent_sample: bool = False,
    embedding_columns: Sequence[str] = (),
    embedding_tokens: int | None = None,
    allow_pickle: bool = False,
    pair_embeddings: bool | None = None,
    partial_reads: bool = False,
    block_size: int = 1 << 20,
    batch_size: int = 4,
    index: IndexOptions | None = None,
    cache: CacheOptions | None = None,
    fetch: FetchOptions | None = None,
    errors: ErrorOptions | None = None,
    shuffle: bool = True,
    seed: int = 0,
    num_threads: int | None = None,
    prefetch_factor: int = 2,
    drop_last: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    balance: bool = True,
    rotation: RotationOptions | None = None,
    decoded_cache: DecodedCacheOptions | None = None,
) -> BaseNode:
    """A graph yielding batches of video clips with a caption, and optionally the clip's audio,
    precomputed latents sliced to the clip, and caption embeddings.

    Every column of files may hold local paths or URLs (each is downloaded through the cache,
    the video in byte ranges with ``partial_reads``). Decoding order: the clip first, then what
    aligns to it (audio, latents), then captions and embeddings.

    Args:
        src: index source with a ``video_column`` of local paths or URLs.
        num_frames (int), fps (float), size (int | tuple[int, int]): clip T (16), frame rate
            in frames/s (8.0) and (H, W) in pixels (256).
        video_column (str): the column of videos ("video").
        caption_column (str | Sequence[str] | None): a caption column ("caption"), or several
            to choose one among per sample (``caption_choice``: ``"random"``, seeded, or
            ``"first"`` non-empty), or None.
        audio (bool | str): False (default): no audio; True: the video's own audio track;
            a column name: separate audio files (.wav, .flac…), one per video. Either way the
            waveform covers exactly the clip [clip_start, clip_end).
        audio_sample_rate (int), audio_channels (int): 16000 Hz, 1 (mono) or 2.
        latent_columns (Sequence[str]): columns of precomputed video latents (.npy, .pt;
            [C, T', h, w]), sliced to the clip when their time base is given, by ``latent_fps``
            (latent frames/s) or ``latent_stride`` (source frames per latent frame,
            ``latent_causal`` for causal VAEs whose first latent frame is frame 0 alone); else
            loaded whole. ``latent_sample``: draw from stored mean/logvar (seeded).
        embedding_columns (Sequence[str]): columns of caption embeddings (.npy, .pt; .pkl with
            ``allow_pickle``), loaded whole (``Latent()``) unless ``embedding_tokens`` is set.
        embedding_tokens (int | None): decode embeddings with ``TextEmbedding(num_tokens=
            embedding_tokens)``: rows after the end-of-text token zeroed, padded with zeros or
            cut to ``embedding_tokens`` rows, so captions of any length batch (SDS's
            ``TextEmbLoaderTransform``); None (default): the stored shape.
        allow_pickle (bool): load ``.pkl``/``.pkl.gz`` latents and embeddings (SDS's format).
            Unsafe: unpickling runs any code the file holds, so only for files you trust;
            False (default) refuses them (a decode error naming the file).
        pair_embeddings (bool | None): True: ``embedding_columns[i]`` is the embedding of
            ``caption_column[i]`` (as many of each): a :class:`~sdsnodes.nodes.select.Selector`
            before the downloads chooses the caption (``caption_choice``, seeded by (seed,
            epoch, row)) together with its own embedding, and only that embedding is
            downloaded, into ``caption_embedding``; the other embedding columns are set to
            None. False: every embedding column is downloaded and decoded. None (default):
            paired when ``caption_column`` is a list as long as ``embedding_columns``.
        partial_reads (bool), block_size (int): read remote videos in byte ranges (False,
            1 MiB blocks); see :func:`build_video_graph`.
        batch_size (int): clips per batch B (4).

    The other options are as in :func:`build_video_graph`.

    Returns:
        BaseNode: yields dicts with ``video`` uint8 [B, T, 3, H, W]; ``video.clip_start``,
        ``video.clip_end`` (s) and ``video.source_fps`` (frames/s), float64 [B]; ``caption``
        list[str] (with several columns, ``caption.caption_column`` list[str] says which);
        with ``audio``: ``audio`` (True) or ``<audio>`` float32 [B, C, S] in [-1, 1], S ==
        round(num_frames / fps * audio_sample_rate), with ``.sample_rate`` int64 [B] and
        ``.audio_start`` float64 [B]; each latent column float32 [B, C, T', h, w] (T' the
        clip's latent frames) and each embedding column float32 [B, ...] (lists where shapes
        differ; [B, embedding_tokens, D] with ``embedding_tokens``) — paired:
        ``caption_embedding`` float32 [B, ...], the chosen caption's, and the embedding columns list[str | None] (the chosen file, None for the others); and
        the reserved keys as in :func:`build_video_graph`.

    Raises:
        ValueError: a bad argument, or a column missing from the index.
    """
    if isinstance(latent_columns, str) or isinstance(embedding_columns, str):
        raise ValueError("latent_columns and embedding_columns take a list of column names")
    clip = VideoClip(num_frames, fps=fps, size=square(size), with_info=True)
    codecs: dict[str, Codec] = {video_column: clip}
    columns = {video_column: "video_column"}
    audio_files = add_audio(codecs, columns, audio, video_column, audio_sample_rate, audio_channels)
    timed = latent_fps is not None or latent_stride is not None
    for column in latent_columns:
        codecs[column] = Latent(
            sample=latent_sample, align_to=video_column if timed else None, allow_pickle=allow_pickle,
            latent_fps=latent_fps, temporal_stride=latent_stride, causal=latent_causal,
        )  # fmt: skip
        columns[column] = "latent_columns"
    files = [video_column, *audio_files, *latent_columns]
    select = add_embeddings(
        codecs, columns, files, caption_column, caption_choice, embedding_columns,
        pair_embeddings, embedding_tokens=embedding_tokens, allow_pickle=allow_pickle,
    )  # fmt: skip
    return assemble(
        src, codecs, columns=columns, files=files, select=select,
        partial=[video_column] if partial_reads else [], block_size=block_size,
        index=index, cache=cache, fetch=fetch, errors=errors, batch_size=batch_size, shuffle=shuffle,
        seed=seed, num_threads=num_threads, prefetch_factor=prefetch_factor, drop_last=drop_last,
        rank=rank, world_size=world_size, rotation=rotation, decoded_cache=decoded_cache,
        balance=balance,
    )  # fmt: skip

"""Chunkers: one long file (a video, an audio track, a text, a latent) as consecutive chunks.

A chunker is the stream counterpart of a codec: ``chunker.chunks(value, start)`` yields the
chunks ``start, start + 1, …`` of ``value`` in order, each a :class:`~sdsnodes.codecs.Decoded`
(the chunk and facts about it, e.g. ``clip_start`` in seconds). Chunk ``c`` is a pure function of
``(value, c)``, so a stream resumed at chunk ``c`` yields exactly what the uninterrupted stream
would have (see :class:`~sdsnodes.nodes.stream_batcher.StreamBatcher`). Audio, text and
latent chunkers call the codec of their modality (``AudioWaveform``, ``Text``, ``Latent``);
video clips take ``VideoClip``'s frames, decoded in one pass over the file
(:mod:`sdsnodes.codecs._video_stream`). Chunk ``c`` starts at ``c * stride`` (frames, seconds, tokens or latent frames);
``stride`` defaults to the chunk length: consecutive chunks, no gap, no overlap.

Errors: a file that cannot be opened raises :class:`~sdsnodes.errors.DecodeError` at the first
chunk; one that breaks off mid-way (corrupt or truncated: its frames stop before the length its
header states) raises it at the first chunk it cannot fill.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from sdsnodes.codecs._av import av_open, stream_seconds
from sdsnodes.codecs._resize import Size, as_source, check_max_pixels, check_size, describe
from sdsnodes.codecs._video_stream import FramesRanOut, SeekMissed, picked_frames
from sdsnodes.codecs.audio import AudioWaveform
from sdsnodes.codecs.base import Decoded
from sdsnodes.codecs.latent import Latent
from sdsnodes.codecs.text import Text
from sdsnodes.codecs.video import DEFAULT_MAX_FRAME_PIXELS
from sdsnodes.errors import DecodeError, TooLarge

_EPS = 1e-6  # chunks of a length that is a float: a chunk ending within this of the end fits


def _count(length: float, chunk: float, stride: float) -> int:
    """Whole chunks of ``chunk`` units every ``stride`` units in ``length`` units."""
    if length + _EPS < chunk:
        return 0
    return math.floor((length - chunk) / stride + _EPS) + 1


def _positive(name: str, value: Any, integer: bool) -> None:
    kind = int if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r} must be a number > 0")
    if value <= 0:
        raise ValueError(f"{name}={value!r} must be > 0")


class VideoChunks:
    """A video as consecutive clips of ``num_frames`` frames at ``fps``.

    Clip ``c`` holds the frames for times ``(c * stride + i) / fps`` s, i < ``num_frames``, each
    the latest source frame at or before that time (by timestamp), as
    ``VideoClip(num_frames, fps, size, start="given")`` at ``c * stride / fps`` s gives it. The
    clips of one stream are decoded in one pass: the file stays open, each frame is decoded once
    (seeking once, to the keyframe before the first clip asked). Only whole clips are yielded: a
    video of ``d`` seconds has ``floor((d * fps - num_frames) / stride) + 1`` clips (none when
    shorter than a clip).

    Args:
        num_frames (int): frames per clip T, >= 1.
        fps (float): clip frame rate in frames/s, > 0.
        size (int | tuple[int, int] | None): resize as :class:`~sdsnodes.VideoClip` (an int: the
            short side; a pair: cover and centre-crop to (H, W)); None keeps the source size.
        stride (int | None): frames (at ``fps``) from one clip's start to the next; None:
            ``num_frames`` (consecutive). Less overlaps clips, more leaves gaps.
        max_pixels (int | None): refuse frames of more pixels (as :class:`~sdsnodes.VideoClip`).

    Yields:
        Decoded: uint8 [T, 3, H, W] with ``clip_start``, ``clip_end`` (s) and ``source_fps``.

    Raises:
        ValueError: at construction, for an invalid argument.
        DecodeError: not a video, or frames that run out before the stated duration.
        TooLarge: frames of more than ``max_pixels`` pixels.
    """

    def __init__(
        self,
        num_frames: int,
        fps: float,
        size: Size = None,
        stride: int | None = None,
        max_pixels: int | None = DEFAULT_MAX_FRAME_PIXELS,
    ) -> None:
        _positive("num_frames", num_frames, integer=True)
        _positive("fps", fps, integer=False)
        if stride is not None:
            _positive("stride", stride, integer=True)
        self.num_frames, self.fps = int(num_frames), float(fps)
        self.stride = int(stride or num_frames)
        self.size = check_size(size)
        self.max_pixels = check_max_pixels(max_pixels)

    def __repr__(self) -> str:
        return (
            f"VideoChunks(num_frames={self.num_frames}, fps={self.fps}, size={self.size}, "
            f"stride={self.stride}, max_pixels={self.max_pixels})"
        )

    def count(self, value: Any) -> int:
        """Clips in the video at ``value`` (a path or bytes), from its header."""
        with _decoding(value), av_open(as_source(value)) as container:
            return self._count(value, container)

    def _count(self, value: Any, container: Any) -> int:
        if not container.streams.video:
            raise DecodeError(describe(value), "no video stream")
        stream = container.streams.video[0]
        pixels = stream.codec_context.width * stream.codec_context.height
        if self.max_pixels is not None and pixels > self.max_pixels:
            raise TooLarge(describe(value), f"{pixels} pixels per frame > {self.max_pixels=}")
        duration = stream_seconds(container, stream)
        return _count(duration * self.fps, self.num_frames, self.stride)

    def chunks(self, value: Any, start: int = 0) -> Iterator[Decoded]:
        """Clips ``start, start + 1, …`` of the video at ``value`` (see the class docstring)."""
        with _decoding(value), contextlib.ExitStack() as files:
            container = files.enter_context(av_open(as_source(value)))
            n = self._count(value, container)
            if start >= n:
                return
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or 25.0)
            first = start * self.stride
            frames = picked_frames(container, stream, self.fps, first, self.size, first > 0)
            buffer: dict[int, np.ndarray] = {}  # target → frame [H, W, 3], of this clip on
            k = first  # the next target to read
            for c in range(start, n):
                lo = c * self.stride
                while k < lo + self.num_frames:
                    try:
                        frame = next(frames)
                    except SeekMissed:  # read again from the start, without seeking
                        container = files.enter_context(av_open(as_source(value)))
                        stream = container.streams.video[0]
                        frames = picked_frames(container, stream, self.fps, k, self.size, False)
                        continue
                    except FramesRanOut:
                        raise DecodeError(
                            describe(value), f"the frames stop in clip {c} of the {n} its "
                            f"header states ({stream_seconds(container, stream):.3f} s; truncated?)"
                        ) from None  # fmt: skip
                    if k >= lo:
                        buffer[k] = frame
                    k += 1
                clip = np.stack(
                    [buffer[t] for t in range(lo, lo + self.num_frames)]
                )  # [T, H, W, 3]
                for t in [t for t in buffer if t < lo + self.stride]:
                    del buffer[t]
                info = {"clip_start": lo / self.fps, "source_fps": rate}
                info["clip_end"] = (lo + self.num_frames) / self.fps
                yield Decoded(torch.from_numpy(clip).permute(0, 3, 1, 2).contiguous(), info)


@contextlib.contextmanager
def _decoding(value: Any) -> Iterator[None]:
    """Errors of PyAV and FFmpeg as DecodeError (ours pass through)."""
    try:
        yield
    except DecodeError:
        raise
    except Exception as error:
        raise DecodeError(describe(value), f"{type(error).__name__}: {error}") from error


class AudioChunks:
    """An audio track (an audio file, or a video's) as consecutive windows of ``seconds``.

    Window ``c`` is ``AudioWaveform(sample_rate, channels, duration=seconds, start="given")`` at
    ``c * stride`` seconds: decoded from about 0.1 s before it and resampled with real signal on
    both sides, so consecutive windows join without edge effects. Only whole windows are
    yielded (``floor((d - seconds) / stride) + 1`` for a track of ``d`` seconds).

    Args:
        seconds (float): window length in seconds, > 0.
        sample_rate (int): output rate in Hz.
        channels (int): 1 (mono mixdown) or 2.
        stride (float | None): seconds from one window's start to the next; None: ``seconds``.

    Yields:
        Decoded: float32 [C, S] in [-1, 1], S == round(seconds * sample_rate), with
        ``sample_rate`` (Hz) and ``audio_start`` (s).

    Raises:
        ValueError: at construction, for an invalid argument.
        DecodeError: no audio stream, or samples that stop before the stated length.
    """

    def __init__(
        self,
        seconds: float,
        sample_rate: int = 16000,
        channels: int = 1,
        stride: float | None = None,
    ) -> None:
        _positive("seconds", seconds, integer=False)
        if stride is not None:
            _positive("stride", stride, integer=False)
        self.seconds = float(seconds)
        self.stride = float(stride or seconds)
        self._wave = AudioWaveform(
            sample_rate, channels, duration=self.seconds, start="given", with_info=True
        )

    def __repr__(self) -> str:
        return (
            f"AudioChunks(seconds={self.seconds}, sample_rate={self._wave.sample_rate}, "
            f"channels={self._wave.channels}, stride={self.stride})"
        )

    def count(self, value: Any) -> int:
        """Windows in the audio track at ``value``, from its header."""
        try:
            with av_open(as_source(value)) as container:
                if not container.streams.audio:
                    raise DecodeError(describe(value), "no audio stream")
                seconds = stream_seconds(container, container.streams.audio[0])
        except DecodeError:
            raise
        except Exception as error:
            raise DecodeError(describe(value), f"{type(error).__name__}: {error}") from error
        return _count(seconds, self.seconds, self.stride)

    def chunks(self, value: Any, start: int = 0) -> Iterator[Decoded]:
        """Windows ``start, start + 1, …`` of the track at ``value``."""
        for c in range(start, self.count(value)):
            yield self._wave(value, None, {"clip_start": c * self.stride})  # [C, S] float32


class TextChunks:
    """A text file as consecutive windows of ``chunk_size`` characters or tokens.

    The file (a path, or bytes) is read as UTF-8 (``Text``). Without ``tokenizer``, chunk ``c``
    is the str ``text[c * stride : c * stride + chunk_size]``; with it, the text is tokenized
    once and chunk ``c`` is int64 [chunk_size] of token ids, the last one padded with
    ``pad_id`` (``length`` says how many are real). Every character or token is in a chunk (the
    last may be short); an empty text has none.

    Args:
        chunk_size (int): characters or tokens per chunk, >= 1.
        tokenizer (Callable[[str], list[int]] | None): text → token ids (picklable for
            DataLoader workers); None: characters.
        stride (int | None): characters or tokens from one chunk's start to the next; None:
            ``chunk_size``.
        pad_id (int): the id padding the last token chunk.

    Yields:
        Decoded: str, or int64 [chunk_size], with ``length`` (real characters or tokens).

    Raises:
        ValueError: at construction, for an invalid argument.
        DecodeError: the file is missing or not UTF-8; the tokenizer failed.
    """

    def __init__(
        self,
        chunk_size: int,
        tokenizer: Callable[[str], Any] | None = None,
        stride: int | None = None,
        pad_id: int = 0,
    ) -> None:
        _positive("chunk_size", chunk_size, integer=True)
        if stride is not None:
            _positive("stride", stride, integer=True)
        self.chunk_size, self.stride = int(chunk_size), int(stride or chunk_size)
        self.tokenizer, self.pad_id = tokenizer, int(pad_id)
        self._text = Text(strip=False, tokenizer=tokenizer)

    def __repr__(self) -> str:
        return (
            f"TextChunks(chunk_size={self.chunk_size}, tokenizer={self.tokenizer!r}, "
            f"stride={self.stride}, pad_id={self.pad_id})"
        )

    def chunks(self, value: Any, start: int = 0) -> Iterator[Decoded]:
        """Chunks ``start, start + 1, …`` of the text at ``value``."""
        if isinstance(value, (str, os.PathLike)):
            try:
                with open(value, "rb") as file:
                    value = file.read()
            except OSError as error:
                raise DecodeError(describe(value), f"{type(error).__name__}: {error}") from error
        units = self._text(value)  # str, or the tokenizer's ids
        n = (
            0
            if not len(units)
            else 1 + math.ceil(max(len(units) - self.chunk_size, 0) / self.stride)
        )
        for c in range(start, n):
            piece = units[c * self.stride : c * self.stride + self.chunk_size]
            if self.tokenizer is None:
                yield Decoded(piece, {"length": len(piece)})
                continue
            ids = torch.full((self.chunk_size,), self.pad_id, dtype=torch.int64)  # [L]
            ids[: len(piece)] = torch.as_tensor(list(piece), dtype=torch.int64)
            yield Decoded(ids, {"length": len(piece)})


class LatentChunks:
    """A precomputed video latent as consecutive runs of ``frames`` latent frames.

    The file is loaded once per stream with :class:`~sdsnodes.Latent` (``.npy``, ``.npz``,
    ``.pt``…); chunk ``c`` is the slice ``[c * stride, c * stride + frames)`` of dimension
    ``temporal_dim``. Only whole chunks are yielded.

    Args:
        frames (int): latent frames per chunk, >= 1.
        temporal_dim (int): the time dimension of the stored latent (1 for [C, T, h, w]).
        stride (int | None): latent frames between chunk starts; None: ``frames``.
        key (str | None), allow_pickle (bool): as :class:`~sdsnodes.Latent`.

    Yields:
        Decoded: float32, the stored shape with ``frames`` on ``temporal_dim``; ``latent_start``
        (the first latent frame).

    Raises:
        ValueError: at construction, for an invalid argument.
        DecodeError: the file is not a latent :class:`~sdsnodes.Latent` can load.
    """

    def __init__(
        self,
        frames: int,
        temporal_dim: int = 1,
        stride: int | None = None,
        key: str | None = None,
        allow_pickle: bool = False,
    ) -> None:
        _positive("frames", frames, integer=True)
        if stride is not None:
            _positive("stride", stride, integer=True)
        self.frames, self.temporal_dim = int(frames), int(temporal_dim)
        self.stride = int(stride or frames)
        self._latent = Latent(key=key, allow_pickle=allow_pickle)

    def __repr__(self) -> str:
        return (
            f"LatentChunks(frames={self.frames}, temporal_dim={self.temporal_dim}, "
            f"stride={self.stride})"
        )

    def chunks(self, value: Any, start: int = 0) -> Iterator[Decoded]:
        """Chunks ``start, start + 1, …`` of the latent at ``value``."""
        latent = self._latent(value)
        if not -latent.ndim <= self.temporal_dim < latent.ndim:
            raise DecodeError(
                describe(value), f"temporal_dim={self.temporal_dim} of a {latent.ndim}-d latent"
            )
        n = _count(latent.shape[self.temporal_dim], self.frames, self.stride)
        for c in range(start, n):
            piece = latent.narrow(self.temporal_dim, c * self.stride, self.frames).contiguous()
            yield Decoded(piece, {"latent_start": c * self.stride})

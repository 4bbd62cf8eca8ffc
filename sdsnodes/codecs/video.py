"""Video clips decoded with PyAV: seek to the clip, decode only what it needs, resize in swscale."""

from __future__ import annotations

import enum
import math
import numbers
from typing import Any

import numpy as np
import torch

from sdsnodes.codecs import _batch_slots
from sdsnodes.codecs._av import av_open, rgb_frame, stream_seconds
from sdsnodes.codecs._resize import (
    Size,
    as_source,
    check_crop,
    check_max_pixels,
    check_size,
    describe,
    draw_crop,
)
from sdsnodes.codecs._torchcodec import check_backend, video_clip
from sdsnodes.codecs.base import ClipStart, Decoded, check_choice, given_start
from sdsnodes.errors import DecodeError, TooLarge

_EPS = 1e-3  # s: a frame at t_i + _EPS still counts as "at or before" target time t_i
_DEFAULT_FPS = 25.0  # FFmpeg's own guess when a stream states no rate at all
DEFAULT_MAX_FRAME_PIXELS = 1 << 26
"""Default frame-size limit of :class:`VideoClip`: 67,108,864 pixels (8192 x 8192; 8K UHD is
33 M), about 0.2 GB per RGB frame."""


class OnShort(str, enum.Enum):
    """What a video codec does when the clip reaches past the last frame."""

    PAD = "pad"
    """Repeat the last frame until the clip is full."""
    SKIP = "skip"
    """Raise ``DecodeError("... shorter than the clip")``, so the Decoder skips the sample."""


class _SeekMissed(Exception):
    """Seeking failed or landed after the clip start: decode again from the start."""


class _Unusable(Exception):
    """The file opened but has nothing to decode (its message is the whole cause)."""


class VideoClip:
    """Decode a clip of ``num_frames`` frames sampled at ``fps`` from a video file.

    The clip start ``t0`` (``start``) is drawn uniformly from ``rng`` in
    [0, duration - num_frames / fps], or centred in the video, either snapped down to a source
    frame; or read in seconds from the sample column ``start_column``. The target times are
    ``t0 + i / fps``; each takes the latest source frame at or before it (by timestamp, so a
    variable frame rate is handled), so ``fps`` below the source rate drops frames and above it
    repeats them. A clip reaching past the last frame is padded by repeating it, or skipped
    (``on_short``). The decoder seeks to the keyframe at or before ``t0`` and stops once the last
    target is covered. Frames are resized by swscale while converting to RGB, then cropped.

    Args:
        num_frames (int): frames per clip, >= 1.
        fps (float | None): output frame rate in frames/s; None keeps the source rate.
        size (int | tuple[int, int] | None): resize the short side to ``size`` (int), or cover
            and crop to exactly (height, width) pixels; None keeps the source size.
        crop (str): ``"center"`` or ``"random"`` (offsets drawn from ``rng``, the same for every
            frame of a clip); used only when ``size`` is a pair.
        threads (int): FFmpeg decoder threads per clip; 0 lets FFmpeg choose. The scaler
            (resize, RGB) always runs in one thread.
        start (str): ``"random"``, ``"uniform"`` (centred) or ``"given"``; see :class:`ClipStart`.
        start_column (str): with ``start="given"``, the sample column holding the start in
            seconds (the codec then has ``needs_sample``).
        on_short (str): ``"pad"`` or ``"skip"``; see :class:`OnShort`.
        with_info (bool): return ``Decoded(clip, info)`` with the ``info`` of :meth:`clip`, which
            the Decoder stores as ``"<column>.clip_start"``, ``.clip_end`` and ``.source_fps``.
        max_pixels (int | None): refuse videos whose frames declare more than this many pixels
            (width x height, from the stream header, before any frame is decoded; default
            67,108,864 = 8192 x 8192). None: no limit.
        backend (str): ``"pyav"`` (default) or ``"torchcodec"`` (optional; the same clips, see
            :mod:`sdsnodes.codecs._torchcodec`); ValueError here when torchcodec cannot load.

    Returns:
        torch.Tensor: uint8 [T, C, H, W], T == num_frames, C == 3 (RGB); or ``Decoded``.

    Raises:
        ValueError: at construction, for an invalid argument.
        DecodeError: the input is missing, not a video, corrupt, truncated, has no video stream
            or no decodable frame; with ``on_short="skip"``, the video is shorter than the clip;
            with ``start="given"``, the start is missing, invalid or past the end of the video.
        TooLarge: frames of more than ``max_pixels`` pixels (reason ``"too_large"``).
        NotAFile: a path naming a directory, FIFO, device or socket (reason ``"not_a_file"``).
    """

    def __init__(
        self,
        num_frames: int,
        fps: float | None = None,
        size: Size = None,
        crop: str = "center",
        threads: int = 1,
        start: ClipStart | str = ClipStart.RANDOM,
        start_column: str = "clip_start",
        on_short: OnShort | str = OnShort.PAD,
        with_info: bool = False,
        max_pixels: int | None = DEFAULT_MAX_FRAME_PIXELS,
        backend: str = "pyav",
    ) -> None:
        self.backend = check_backend(backend)  # "torchcodec": sdsnodes.codecs._torchcodec
        if not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
            raise ValueError(f"{num_frames=} must be an int >= 1")
        if fps is not None and not (isinstance(fps, numbers.Real) and math.isfinite(fps)):
            raise ValueError(f"{fps=} must be a number > 0 or None")
        if fps is not None and fps <= 0:
            raise ValueError(f"{fps=} must be > 0 or None")
        if not isinstance(threads, int) or threads < 0:
            raise ValueError(f"{threads=} must be an int >= 0")
        self.num_frames = int(num_frames)
        self.fps = None if fps is None else float(fps)
        self.size = check_size(size)
        self.crop = check_crop(crop)
        self.threads = threads
        self.start = check_choice(ClipStart, start, "start")
        self.start_column = str(start_column)
        self.on_short = check_choice(OnShort, on_short, "on_short")
        self.with_info = bool(with_info)
        self.max_pixels = check_max_pixels(max_pixels)
        self.needs_sample = self.start is ClipStart.GIVEN

    def __repr__(self) -> str:
        return (
            f"VideoClip(num_frames={self.num_frames}, fps={self.fps}, size={self.size}, "
            f"crop={self.crop.value!r}, threads={self.threads}, start={self.start.value!r}, "
            f"start_column={self.start_column!r}, on_short={self.on_short.value!r}, "
            f"with_info={self.with_info}, max_pixels={self.max_pixels})"
        )

    def __call__(
        self, value: Any, rng: np.random.Generator | None = None, sample: Any = None
    ) -> torch.Tensor | Decoded:
        """Decode one clip; see the class docstring. ``rng`` None means ``default_rng(0)``."""
        clip, info = self.clip(value, rng, sample)
        return Decoded(clip, info) if self.with_info else clip

    def clip(
        self, value: Any, rng: np.random.Generator | None = None, sample: Any = None
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Decode one clip and say where it came from.

        Args:
            value (str | os.PathLike | bytes): a local video file, or its bytes.
            rng (numpy.random.Generator | None): draws the start (and a random crop);
                None means ``numpy.random.default_rng(0)``.
            sample (Mapping | None): the sample, read for ``start="given"``.

        Returns:
            tuple[torch.Tensor, dict[str, float]]: the clip, uint8 [T, C, H, W], and
            ``{"clip_start": s, "clip_end": s, "source_fps": frames/s}``: the clip covers
            [clip_start, clip_end) seconds from the start of the stream,
            clip_end == clip_start + num_frames / fps.
        """
        rng = np.random.default_rng(0) if rng is None else rng
        try:
            return self._clip(value, rng, sample)
        except DecodeError:
            raise  # refused before decoding (NotAFile, TooLarge…): keeps its reason
        except _Unusable as error:
            raise DecodeError(describe(value), str(error)) from error
        except Exception as error:
            raise DecodeError(describe(value), f"{type(error).__name__}: {error}") from error

    def _clip(
        self, value: Any, rng: np.random.Generator, sample: Any
    ) -> tuple[torch.Tensor, dict[str, float]]:
        if self.backend == "torchcodec":
            return video_clip(self, value, rng, sample)
        if self.start is ClipStart.GIVEN:
            try:
                t0 = given_start(sample, self.start_column)
            except ValueError as error:
                raise _Unusable(str(error)) from None
        with av_open(as_source(value)) as container:
            if not container.streams.video:
                raise _Unusable("no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            if self.max_pixels is not None and width * height > self.max_pixels:
                raise TooLarge(
                    describe(value),
                    f"{width}x{height} pixels per frame, more than max_pixels={self.max_pixels}",
                )
            rate, duration = _rate_and_duration(container, stream)
            fps = self.fps or rate
            length = self.num_frames / fps  # s
            span = max(0.0, duration - length)
            if self.start is not ClipStart.GIVEN:
                where = rng.random() if self.start is ClipStart.RANDOM else 0.5
                t0 = math.floor(where * span * rate + _EPS) / rate  # on the source frame grid
            elif duration and t0 >= duration:
                raise _Unusable(f"clip start {t0} s is past the end of the video ({duration} s)")
            if self.on_short is OnShort.SKIP and duration and t0 + length > duration + _EPS:
                raise _Unusable(f"the video ({duration:.3f} s) is shorter than the clip")
            targets = t0 + np.arange(self.num_frames) / fps  # [T] s from the stream start
            position = draw_crop(self.size, self.crop, rng)
            try:
                frames, padded = self._decode(container, stream, rate, targets, position, t0 > 0)
            except _SeekMissed:
                frames = None
        if frames is None:  # the seek failed: decode again from the start, without seeking
            with av_open(as_source(value)) as container:
                stream = container.streams.video[0]
                frames, padded = self._decode(container, stream, rate, targets, position, False)
        if padded and self.on_short is OnShort.SKIP:
            raise _Unusable("the video is shorter than the clip (its frames ran out)")
        clip = frames  # [T, C, H, W] uint8, each frame written once
        info = {"clip_start": t0, "clip_end": t0 + self.num_frames / fps, "source_fps": rate}
        return clip, info

    def _decode(
        self,
        container: Any,
        stream: Any,
        rate: float,
        targets: np.ndarray,
        position: tuple[float, float] | None,
        seek: bool,
    ) -> tuple[torch.Tensor, bool]:
        """The frames picked for ``targets`` (seconds from the start), uint8 [T, 3, H, W], and
        whether the clip was padded (targets past the end of the last frame).

        Each picked frame is converted once (swscale) and copied once, into the clip tensor; only
        the last converted frame is held besides it (a clip never holds T frames twice)."""
        stream.codec_context.thread_count = self.threads
        if self.threads != 1:
            stream.codec_context.thread_type = "AUTO"
        time_base = stream.time_base
        start = stream.start_time or 0
        if seek:
            try:
                offset = start + round(targets[0] / time_base)
                container.seek(offset, stream=stream, backward=True, any_frame=False)
            except Exception as error:
                raise _SeekMissed from error
        from av.video.reformatter import VideoReformatter

        reformatter = VideoReformatter()  # one per clip: its swscale context is reused per frame
        picked = _Clip(len(targets), in_batch=isinstance(self.size, tuple))  # a fixed shape
        converted: tuple[Any, np.ndarray] | None = None  # the last frame converted, and its pixels

        def take(frame: Any) -> None:
            nonlocal converted
            if converted is None or converted[0] is not frame:
                converted = (frame, rgb_frame(reformatter, frame, self.size, position))
            picked.append(converted[1])

        previous, previous_time, padded = None, -math.inf, False
        seconds = float(time_base) if time_base else None  # per tick: floats, not Fractions
        due = [t + _EPS for t in targets.tolist()]  # Python floats: no numpy scalar per frame
        total, last = len(due), due[-1]
        for frame in container.decode(stream):
            pts = frame.pts
            if pts is not None and seconds is not None:
                now = (pts - start) * seconds
            else:  # no timestamp: assume the stated rate
                now = previous_time + 1.0 / rate if previous is not None else 0.0
            if previous is None and seek and now > due[0]:
                raise _SeekMissed  # landed after the clip start
            while picked.count < total and due[picked.count] < now:
                take(previous if previous is not None else frame)
            if picked.count == total:
                break
            # the frame's own duration (exact with a variable frame rate), else the stated rate
            duration = frame.duration
            step = duration * seconds if duration and seconds else 1.0 / rate
            previous, previous_time = frame, now
            if now + step > last:  # the next frame would be past the clip
                break
        else:  # the frames ran out: padded if the last one ends before the clip does
            if previous is None:
                raise _Unusable("no decodable video frame")
            padded = last >= previous_time + step
        while picked.count < total:  # the rest of the clip is at or after the last frame
            take(previous)
        return picked.tensor, padded


class _Clip:
    """A clip tensor uint8 [T, 3, H, W] filled one frame at a time (allocated at the first: the
    batch's row when a SlotBatcher is filling one, :mod:`sdsnodes.codecs._batch_slots`, if
    ``in_batch``: every clip of the codec has one shape, ``size`` being a pair. With an int or
    None ``size`` clips differ in shape, the batch stays a list, and a row would keep its whole
    batch's memory alive).

    Frames are copied with ``np.copyto`` into the tensor's numpy view, not ``Tensor.copy_``: a
    strided HWC -> CHW copy through torch's intra-op thread pool cost 3.7-8 ms per 112x112
    frame with 2 torch threads on a busy 2-core machine, against 0.05 ms for numpy (measured
    with ``torch.set_num_threads(2)`` in the main process; DataLoader workers run torch with one
    thread, where the two cost about the same).
    """

    __slots__ = ("count", "in_batch", "pixels", "size", "tensor")

    def __init__(self, size: int, in_batch: bool = False) -> None:
        self.size, self.count = size, 0
        self.in_batch = in_batch  # may take a batch row: every clip of the codec has one shape
        self.tensor: torch.Tensor = torch.empty(0, dtype=torch.uint8)
        self.pixels: np.ndarray = self.tensor.numpy()  # the same memory, [T, 3, H, W]

    def __len__(self) -> int:
        return self.count

    def append(self, frame: np.ndarray) -> None:
        """Copy ``frame`` (uint8 [H, W, 3], a view is fine) into the next slot."""
        if self.count == 0:
            shape = (self.size, frame.shape[2], *frame.shape[:2])
            row = _batch_slots.claim(shape) if self.in_batch else None  # under a SlotBatcher
            if row is None:  # numpy's malloc, not torch's posix_memalign (_batch_slots.allocate)
                self.pixels = np.empty(shape, np.uint8)
                self.tensor = torch.from_numpy(self.pixels)
            else:
                self.tensor, self.pixels = row, row.numpy()
        np.copyto(self.pixels[self.count], frame.transpose(2, 0, 1))
        self.count += 1


def _rate_and_duration(container: Any, stream: Any) -> tuple[float, float]:
    """The stream's frame rate (frames/s) and duration (s); 0.0 where the duration is unknown."""
    rate = 0.0
    for candidate in (stream.average_rate, stream.guessed_rate):
        if candidate:
            rate = float(candidate)
            break
    duration = stream_seconds(container, stream)
    if not rate:
        rate = stream.frames / duration if stream.frames and duration else _DEFAULT_FPS
    if not duration and stream.frames:
        duration = stream.frames / rate
    return rate, duration

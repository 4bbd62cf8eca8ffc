"""Consecutive clips of one video decoded in one pass: the container stays open, frames are
decoded once each, in order (for :class:`~sdsnodes.codecs.chunks.VideoChunks`).

Frame choice is :class:`~sdsnodes.VideoClip`'s: target ``k`` is at ``k / fps`` seconds and takes
the latest source frame at or before it (by timestamp), so a clip read here equals
``VideoClip(start="given")`` at the clip's start, without seeking to the keyframe before every
clip (with keyframes every few seconds, that re-decoded most of each GOP once per clip).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from sdsnodes.codecs._av import rgb_frame
from sdsnodes.codecs._resize import Size

_EPS = 1e-3  # s, as VideoClip: a frame at t + _EPS still counts as "at or before" t


class SeekMissed(Exception):
    """Seeking failed or landed after the first target: read again from the start."""


class FramesRanOut(Exception):
    """The frames ended before a target (its number is ``args[0]``)."""


def picked_frames(
    container: Any, stream: Any, fps: float, first: int, size: Size, seek: bool
) -> Iterator[np.ndarray]:
    """The frames for targets ``first, first + 1, …`` (target k at ``k / fps`` s from the stream
    start), uint8 [H, W, 3] RGB, resized to cover ``size`` and centre-cropped.

    Raises:
        SeekMissed: ``seek`` failed or landed after target ``first``.
        FramesRanOut: past the last frame's end (its duration, else one frame at the stated rate).
    """
    from av.video.reformatter import VideoReformatter

    rate = float(stream.average_rate or stream.guessed_rate or 25.0)
    time_base, start = stream.time_base, stream.start_time or 0
    stream.codec_context.thread_count = 1  # as VideoClip: B streams open, no FFmpeg pool each
    if seek:
        try:
            offset = start + round(first / fps / time_base)
            container.seek(offset, stream=stream, backward=True, any_frame=False)
        except Exception as error:
            raise SeekMissed from error
    reformatter = VideoReformatter()
    converted: tuple[Any, np.ndarray] | None = None

    def convert(frame: Any) -> np.ndarray:
        nonlocal converted
        if converted is None or converted[0] is not frame:
            converted = (frame, rgb_frame(reformatter, frame, size, None))  # [H, W, 3]
        return converted[1]

    k, previous, previous_time, step = first, None, -math.inf, 1.0 / rate
    seconds = float(time_base) if time_base else None  # per tick: floats, not Fractions
    for frame in container.decode(stream):
        if frame.pts is not None and seconds is not None:
            now = (frame.pts - start) * seconds
        else:
            now = previous_time + 1.0 / rate if previous is not None else 0.0
        if previous is None and seek and now > k / fps + _EPS:
            raise SeekMissed  # landed after the first target
        while k / fps + _EPS < now:
            yield convert(previous if previous is not None else frame)
            k += 1
        step = frame.duration * seconds if frame.duration and seconds else 1.0 / rate
        previous, previous_time = frame, now
    while previous is not None and k / fps + _EPS < previous_time + step:
        yield convert(previous)  # targets within the last frame's duration
        k += 1
    raise FramesRanOut(k)

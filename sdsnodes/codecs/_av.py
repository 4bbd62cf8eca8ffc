"""Opening containers with PyAV across its versions."""

from __future__ import annotations

from typing import Any

import av
import numpy as np

from sdsnodes.codecs._resize import Size, cover_shape, crop_box

_METADATA_ERRORS: bool | None = None  # whether av.open takes metadata_errors (PyAV < 19)


def av_open(source: Any, **kwargs: Any) -> Any:
    """``av.open(source, **kwargs)``, ignoring undecodable metadata where PyAV lets us choose.

    PyAV up to 18 raises on non-UTF-8 metadata tags unless ``metadata_errors="ignore"``; PyAV 19
    dropped the argument (seen on av 19.0.2) and no longer raises. Try it once, remember.
    """
    global _METADATA_ERRORS
    if _METADATA_ERRORS is not False:
        try:
            container = av.open(source, metadata_errors="ignore", **kwargs)
            _METADATA_ERRORS = True
            return container
        except TypeError as error:
            if "metadata_errors" not in str(error):
                raise
            _METADATA_ERRORS = False
    return av.open(source, **kwargs)


def stream_seconds(container: Any, stream: Any) -> float:
    """A stream's duration in seconds as its header states it (the stream's, else the
    container's; 0.0 when neither says)."""
    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    return (container.duration or 0) / 1_000_000  # AV_TIME_BASE units


def rgb_frame(
    reformatter: Any,
    frame: Any,
    size: Size,
    position: tuple[float, float] | None,
) -> np.ndarray:
    """One decoded frame as uint8 [H, W, 3] RGB: resized by swscale to
    :func:`~sdsnodes.codecs._resize.cover_shape`, then cropped (:func:`crop_box`); a view.

    swscale runs in one thread: a scaler with slice threads hangs a forked DataLoader worker that
    frees it (``pthread_cond_destroy`` waits on threads the fork did not copy;
    tests/test_video_lean.py). An odd resized width is scaled to the next even width and the
    extra column cropped: swscale's packed-RGB output falls off its fast path at odd widths
    (``benchmarks/bench_swscale.py``, PyAV 18, one thread: yuv420p 256x192 → 149x112 rgb24
    0.171 CPU ms against 0.116 at 150x112, 640x480 → 299x224 0.92 against 0.60, 1280x720 →
    199x112 0.74 against 0.60). The image is then scaled at most one pixel in ``width`` wider
    than exact (0.7% at 149 pixels; a mean difference of about 2 levels in 255).
    """
    height, width = cover_shape(frame.height, frame.width, size)
    resized = (height, width) != (frame.height, frame.width)
    scaled = width + 1 if resized and width % 2 else width
    rgb = reformatter.reformat(
        frame, width=scaled, height=height, format="rgb24", threads=1
    ).to_ndarray()  # [H, W, 3]
    top, left, h, w = crop_box(height, scaled, size, position)
    w = min(w, width)  # no crop asked for: drop the extra column
    return rgb[top : top + h, left : left + w]

"""Codecs: turn a local file path or bytes into what a sample holds (tensors, text).

A codec is a small picklable object called as ``codec(value, rng)``: ``value`` is a local path
(str or os.PathLike) or bytes, ``rng`` a ``numpy.random.Generator`` the caller seeds per sample.
Every failure to decode raises :class:`sdsnodes.errors.DecodeError`, with the original error as
its ``__cause__``.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from sdsnodes.codecs.image import ImageTensor
from sdsnodes.codecs.text import Text
from sdsnodes.codecs.video import VideoClip


@runtime_checkable
class Codec(Protocol):
    """Anything called as ``codec(value, rng) -> decoded value``, raising ``DecodeError``."""

    def __call__(self, value: Any, rng: np.random.Generator) -> Any: ...


__all__ = ["Codec", "ImageTensor", "Text", "VideoClip"]

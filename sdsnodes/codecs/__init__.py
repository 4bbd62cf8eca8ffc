"""Codecs: turn a local file path or bytes into what a sample holds (tensors, text).

A codec is a small picklable object called as ``codec(value, rng)``: ``value`` is a local path
(str or os.PathLike) or bytes, ``rng`` a ``numpy.random.Generator`` the caller seeds per sample.
Every failure to decode raises :class:`sdsnodes.errors.DecodeError`, with the original error as
its ``__cause__``. Hostile input is refused before any decoder sees it: a path must name a
regular file (:class:`~sdsnodes.errors.NotAFile` for a directory, FIFO, device or socket, checked
with ``os.stat``, so a FIFO is never opened), and images and video frames declaring more than
the codec's ``max_pixels`` raise :class:`~sdsnodes.errors.TooLarge` from their header. Each
subclass carries the ``reason`` the Decoder counts a skipped sample under.

Optional codec attributes the :class:`~sdsnodes.Decoder` honours:

- ``source_column`` (str | None): read the value from this column of the (undecoded) sample
  instead of the codec's own column (e.g. audio decoded from the ``video`` file).
- ``needs_sample`` (bool): call as ``codec(value, rng, sample=out)`` where ``out`` is the sample
  as decoded so far (codecs run in the order given), e.g. to align audio to the video clip.
- ``accepts_none`` (bool): the codec handles a None value itself (else the sample is skipped).

A codec may return :class:`Decoded` to add facts next to its value: ``Decoded(value, {"k": v})``
puts ``value`` in the column and each ``v`` under ``"<column>.<k>"``.

This package only re-exports: :class:`Codec`, :class:`Decoded` and what codecs share live in
:mod:`sdsnodes.codecs.base`, each codec in its module.
"""

from sdsnodes.codecs.audio import AudioWaveform, OnMissing
from sdsnodes.codecs.base import ClipStart, Codec, Decoded
from sdsnodes.codecs.image import ImageTensor
from sdsnodes.codecs.latent import Latent, TextEmbedding
from sdsnodes.codecs.text import CaptionChoice, Text
from sdsnodes.codecs.video import OnShort, VideoClip

__all__ = [
    "AudioWaveform",
    "CaptionChoice",
    "ClipStart",
    "Codec",
    "Decoded",
    "ImageTensor",
    "Latent",
    "TextEmbedding",
    "OnMissing",
    "OnShort",
    "Text",
    "VideoClip",
]

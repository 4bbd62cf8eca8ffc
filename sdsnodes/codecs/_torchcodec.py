"""The torchcodec backend of :class:`~sdsnodes.VideoClip` and :class:`~sdsnodes.AudioWaveform`
(``backend="torchcodec"``).

`torchcodec <https://github.com/pytorch/torchcodec>`_ (PyTorch's decoder over FFmpeg's shared
libraries) decodes the frames "played at" given times — the latest frame at or before each
time, the rule PyAV's path applies by hand — and resizes them in FFmpeg (swscale) while
decoding. The clip's start, its target times, the crop and the returned ``info`` are computed as
the PyAV path computes them (same draws from ``rng``, in the same order), so a graph switches
backend without changing which clips it samples; pixels may differ by rounding (another swscale
call). It is optional: ``pip install torchcodec`` plus FFmpeg 4–7 shared libraries (``apt-get
install ffmpeg``); :func:`check_backend` says what is missing when they do not load.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from sdsnodes.codecs._resize import as_source, cover_shape, crop_box, describe, draw_crop
from sdsnodes.codecs.base import ClipStart, given_start
from sdsnodes.errors import DecodeError, TooLarge

BACKENDS = ("pyav", "torchcodec")
_EPS = 1e-3  # s, as in video.py
_DEFAULT_FPS = 25.0


def check_backend(backend: str) -> str:
    """``backend`` itself once it is usable here.

    Raises:
        ValueError: not one of :data:`BACKENDS`, or ``"torchcodec"`` where torchcodec or the
            FFmpeg libraries it needs do not load (the message has the import error).
    """
    if backend not in BACKENDS:
        raise ValueError(f"{backend=} must be one of {list(BACKENDS)}")
    if backend == "torchcodec":
        try:
            import torchcodec.decoders  # noqa: F401 - loads FFmpeg's libraries
        except Exception as error:  # noqa: BLE001 - ImportError, OSError or RuntimeError
            raise ValueError(
                "backend='torchcodec' needs `pip install torchcodec` and FFmpeg's shared "
                f"libraries (apt-get install ffmpeg); loading it failed: {type(error).__name__}: "
                f"{str(error)[:300]}. Use backend='pyav'"
            ) from None
    return backend


def _decoder(value: Any, threads: int, mode: str, transforms: list | None = None) -> Any:
    from torchcodec.decoders import VideoDecoder

    source = as_source(value)
    if not isinstance(source, str):  # a file object: torchcodec reads bytes or a path
        source = source.read()
    return VideoDecoder(
        source, num_ffmpeg_threads=threads, seek_mode=mode, transforms=transforms or None
    )


def video_clip(
    codec: Any, value: Any, rng: np.random.Generator, sample: Any
) -> tuple[torch.Tensor, dict[str, float]]:
    """:meth:`VideoClip.clip <sdsnodes.VideoClip.clip>` decoded by torchcodec.

    Returns:
        tuple[torch.Tensor, dict[str, float]]: uint8 [T, C, H, W] and ``clip_start``,
        ``clip_end``, ``source_fps``, as the PyAV path.

    Raises:
        DecodeError: as the PyAV path (``TooLarge`` from the header, before any frame).
    """
    from torchcodec.transforms import Resize

    name = describe(value)
    if codec.start is ClipStart.GIVEN:
        try:
            t0 = given_start(sample, codec.start_column)
        except ValueError as error:
            raise DecodeError(name, str(error)) from None
    probe = _decoder(value, codec.threads, "approximate")
    meta = probe.metadata
    width, height = meta.width or 0, meta.height or 0
    if codec.max_pixels is not None and width * height > codec.max_pixels:
        raise TooLarge(
            name, f"{width}x{height} pixels per frame, more than max_pixels={codec.max_pixels}"
        )
    rate = float(meta.average_fps or _DEFAULT_FPS)
    duration = float(meta.duration_seconds or (meta.num_frames or 0) / rate)
    begin = float(meta.begin_stream_seconds or 0.0)
    fps = codec.fps or rate
    length = codec.num_frames / fps  # s
    if codec.start is not ClipStart.GIVEN:
        where = rng.random() if codec.start is ClipStart.RANDOM else 0.5
        t0 = math.floor(where * max(0.0, duration - length) * rate + _EPS) / rate
    elif duration and t0 >= duration:
        raise DecodeError(name, f"clip start {t0} s is past the end of the video ({duration} s)")
    short = bool(duration) and t0 + length > duration + _EPS
    if codec.on_short.value == "skip" and short:
        raise DecodeError(name, f"the video ({duration:.3f} s) is shorter than the clip")
    targets = t0 + np.arange(codec.num_frames) / fps  # [T] s from the stream start
    position = draw_crop(codec.size, codec.crop, rng)
    h, w = cover_shape(height, width, codec.size)
    resize = [Resize((h, w))] if (h, w) != (height, width) else None
    # each target takes the latest frame at or before it (the PyAV path's rule and tolerance);
    # torchcodec decodes forward between the sorted times, converting only the frames taken
    last = begin + duration - _EPS  # a target past the last frame repeats it (padding)
    times = [min(begin + float(t) + _EPS, last) for t in targets]
    for mode in ("approximate", "exact"):  # header times can be off: exact scans the file
        try:
            reuse = mode == "approximate" and resize is None  # the probe is that decoder
            decoder = probe if reuse else _decoder(value, codec.threads, mode, resize)
            frames = decoder.get_frames_played_at(times)
            break
        except (RuntimeError, IndexError, ValueError) as error:
            failure: Exception = error
    else:
        raise DecodeError(name, f"{type(failure).__name__}: {failure}") from failure
    data = frames.data  # [T, C, H, W] uint8
    top, left, ch, cw = crop_box(h, w, codec.size, position)
    clip = data[:, :, top : top + ch, left : left + cw].contiguous()  # [T, C, H, W] uint8
    info = {"clip_start": t0, "clip_end": t0 + codec.num_frames / fps, "source_fps": rate}
    return clip, info


def audio_crop(
    codec: Any, value: Any, rng: np.random.Generator, t0: float | None, length: float | None
) -> tuple[torch.Tensor, dict[str, Any]]:
    """:class:`~sdsnodes.AudioWaveform`'s crop decoded by torchcodec, resampled by FFmpeg
    (swresample, while decoding: no torchaudio) rather than torchaudio's windowed sinc.

    The start is drawn as the PyAV path draws it (in source samples, the same ``rng`` draw), so
    both backends crop the same span; samples differ by the resampling filter.

    Returns:
        tuple[torch.Tensor, dict]: float32 [C, S] in [-1, 1] and ``sample_rate`` (Hz),
        ``audio_start`` (s), as the PyAV path.

    Raises:
        DecodeError: no audio stream (unless ``on_missing="silence"``), or undecodable audio.
    """
    from torchcodec.decoders import AudioDecoder

    source = as_source(value)
    if not isinstance(source, str):
        source = source.read()
    try:
        meta = AudioDecoder(source).metadata
    except (RuntimeError, ValueError) as error:
        if "stream" in str(error).lower() and codec.on_missing.value == "silence":
            rate = int(codec.sample_rate)  # set with on_missing="silence" (validated)
            zeros = torch.zeros(codec.channels or 1, round(float(length) * rate))  # [C, S]
            return zeros, {"sample_rate": rate, "audio_start": t0 or 0.0}
        what = "no audio stream" if "stream" in str(error).lower() else str(error)
        raise DecodeError(describe(value), what) from error
    source_rate = int(meta.sample_rate or 0)
    if not source_rate:
        raise DecodeError(describe(value), "the audio stream states no sample rate")
    rate = codec.sample_rate or source_rate
    size = None if length is None else round(length * rate)  # output samples
    wanted = None if size is None else math.ceil(size * source_rate / rate)  # source samples
    total = int((meta.duration_seconds or 0.0) * source_rate)  # stated; 0: unknown
    if t0 is not None:
        first = round(t0 * source_rate)
    elif wanted is None:
        first = 0
    else:  # the PyAV path's draw, in source samples
        spare = max(0, total - wanted)
        where = rng.random() if codec.start is ClipStart.RANDOM else 0.5
        first = min(spare, math.floor(where * (spare + 1)))
    begin = float(meta.begin_stream_seconds or 0.0)
    start = begin + first / source_rate
    stop = None if wanted is None else start + wanted / source_rate
    decoder = AudioDecoder(source, sample_rate=rate if rate != source_rate else None)
    wave = decoder.get_samples_played_in_range(start, stop).data  # [C, n] float32 at rate
    if codec.channels == 1 and wave.shape[0] > 1:  # mixed as the PyAV path mixes
        wave = wave.mean(0, keepdim=True)
    elif codec.channels == 2:
        wave = wave.repeat(2, 1) if wave.shape[0] == 1 else wave[:2]  # [channels, n]
    if size is not None:  # cut, or zero-pad at the end (a file shorter than the crop)
        wave = torch.nn.functional.pad(wave[:, :size], (0, max(0, size - wave.shape[1])))
    wave = wave.clamp_(-1.0, 1.0).contiguous()  # [C, S] float32
    return wave, {"sample_rate": int(rate), "audio_start": first / source_rate}

"""Audio waveforms decoded with PyAV (an audio file or a video's audio track), cropped to a
duration or to a video clip, mixed to mono/stereo and resampled with torchaudio."""

from __future__ import annotations

import enum
import math
import numbers
from typing import Any

import numpy as np
import torch

from sdsnodes.codecs._av import av_open
from sdsnodes.codecs._resize import as_source, describe
from sdsnodes.codecs._torchcodec import audio_crop, check_backend
from sdsnodes.codecs.base import ClipStart, Decoded, check_choice, given_start
from sdsnodes.errors import DecodeError

_PREROLL_S = 0.1  # s decoded before the crop after a seek: AAC/MP3/Opus need a frame or more
_CONTEXT = 64  # source samples (at least) of real signal each side of a crop for the resampler


class OnMissing(str, enum.Enum):
    """What :class:`AudioWaveform` does with a file without an audio stream (or a None value)."""

    RAISE = "raise"
    """Raise ``DecodeError("no audio stream")``, so the Decoder skips the sample."""
    SILENCE = "silence"
    """Return zeros, float32 [channels or 1, round(duration * sample_rate)]."""


class _Unusable(Exception):
    """The file opened but cannot give what is asked (its message is the whole cause)."""


class AudioWaveform:
    """Decode a waveform from an audio file or from the audio track of a video file.

    The crop starts at a random time (seeded by ``rng``), in the middle (``start="uniform"``), at
    seconds read from a sample column (``"given"``), or at the clip of a video column decoded
    before (``align_to``); it lasts ``duration`` seconds (the whole file, or the clip, if None).
    The decoder seeks to about 0.1 s before the crop (so codecs with overlapping frames warm up)
    rather than decoding from the start. Times count from the start of the audio stream, as
    :class:`~sdsnodes.codecs.VideoClip` counts them from the start of the video stream.
    Channels are mixed (mean) to mono, or mono duplicated to stereo (of more than two, the first
    two are kept). Resampling is ``torchaudio.functional.resample`` (windowed sinc, its
    defaults), run on the crop plus >= 64 source samples of real signal each side when the rate
    ratio allows, so the crop's edges are not filtered against zeros. Audio missing at the end
    (a file shorter than the crop) is zeros.

    Args:
        sample_rate (int | None): output rate in Hz; None keeps the source rate (no resampling
            either when it equals the source rate).
        channels (int | None): 1 (mono mixdown), 2 (stereo), or None (keep the source's).
        duration (float | None): crop length in seconds; None: the whole file (or the clip).
        start (str): ``"random"``, ``"uniform"`` (centred) or ``"given"``; see
            :class:`~sdsnodes.codecs.video.ClipStart`. Ignored with ``align_to``.
        start_column (str): with ``start="given"``, the column holding the start in seconds.
        align_to (str | None): a column decoded before by ``VideoClip(with_info=True)``; the
            crop is ``[sample["<align_to>.clip_start"], sample["<align_to>.clip_end"])``
            (or ``duration`` seconds from that start). The codec then has ``needs_sample``.
        source_column (str | None): read the file from this column instead of the codec's own
            (``"video"`` for the video's own track); None: the codec's column (e.g. a .wav).
        on_missing (str): ``"raise"`` or ``"silence"``; see :class:`OnMissing`. ``"silence"``
            needs ``sample_rate``, and ``duration`` or ``align_to``.
        with_info (bool): return ``Decoded(waveform, {"sample_rate": Hz (int), "audio_start":
            s (float)})``; ``audio_start`` is the time of the first sample.
        probesize (int | None): bytes FFmpeg reads to find the streams' parameters on opening;
            small (64 KiB), since audio states them early and probing a WAV reads (and costs)
            as much as allowed; None: FFmpeg's default (5 MB), for containers whose streams
            start late (MPEG-TS).
        backend (str): ``"pyav"`` (default) or ``"torchcodec"`` (optional; resampled by FFmpeg,
            no torchaudio; see :mod:`sdsnodes.codecs._torchcodec`).

    Returns:
        torch.Tensor: float32 [C, S] in [-1, 1]; S == round(duration * sample_rate) (or of the
        clip length) whenever a length is set; or ``Decoded``.

    Raises:
        ValueError: at construction, for an invalid argument.
        DecodeError: the input is missing, empty, corrupt or not audio FFmpeg can decode; it has
            no audio stream (unless ``on_missing="silence"``); the start or clip is missing.
    """

    def __init__(
        self,
        sample_rate: int | None = None,
        channels: int | None = None,
        duration: float | None = None,
        start: ClipStart | str = ClipStart.RANDOM,
        start_column: str = "clip_start",
        align_to: str | None = None,
        source_column: str | None = None,
        on_missing: OnMissing | str = OnMissing.RAISE,
        with_info: bool = False,
        probesize: int | None = 1 << 16,
        backend: str = "pyav",
    ) -> None:
        self.backend = check_backend(backend)  # "torchcodec": sdsnodes.codecs._torchcodec
        if probesize is not None and not (isinstance(probesize, int) and probesize >= 32):
            raise ValueError(f"{probesize=} must be an int >= 32 (bytes) or None")
        if sample_rate is not None and not (isinstance(sample_rate, int) and sample_rate > 0):
            raise ValueError(f"{sample_rate=} must be an int > 0 (Hz) or None")
        if channels not in (None, 1, 2):
            raise ValueError(f"{channels=} must be 1 (mono), 2 (stereo) or None (keep)")
        if duration is not None and not (
            isinstance(duration, numbers.Real) and math.isfinite(duration) and duration > 0
        ):
            raise ValueError(f"{duration=} must be a number of seconds > 0 or None")
        if align_to is not None and not (isinstance(align_to, str) and align_to):
            raise ValueError(f"{align_to=} must be a column name (e.g. 'video') or None")
        self.sample_rate = sample_rate
        self.channels = channels
        self.duration = None if duration is None else float(duration)
        self.start = check_choice(ClipStart, start, "start")
        self.start_column = str(start_column)
        self.align_to = align_to
        self.source_column = source_column
        self.on_missing = check_choice(OnMissing, on_missing, "on_missing")
        if self.on_missing is OnMissing.SILENCE and (
            sample_rate is None or (duration is None and align_to is None)
        ):
            raise ValueError("on_missing='silence' needs sample_rate, and duration or align_to")
        self.with_info = bool(with_info)
        self.probesize = probesize
        self.needs_sample = align_to is not None or self.start is ClipStart.GIVEN
        self.accepts_none = self.on_missing is OnMissing.SILENCE

    def __repr__(self) -> str:
        return (
            f"AudioWaveform(sample_rate={self.sample_rate}, channels={self.channels}, "
            f"duration={self.duration}, start={self.start.value!r}, "
            f"start_column={self.start_column!r}, align_to={self.align_to!r}, "
            f"source_column={self.source_column!r}, on_missing={self.on_missing.value!r}, "
            f"with_info={self.with_info}, probesize={self.probesize})"
        )

    def __call__(
        self, value: Any, rng: np.random.Generator | None = None, sample: Any = None
    ) -> torch.Tensor | Decoded:
        """Decode one crop; see the class docstring. ``rng`` None means ``default_rng(0)``;
        ``sample`` (a mapping) is read with ``align_to`` or ``start="given"``."""
        rng = np.random.default_rng(0) if rng is None else rng
        try:
            wave, info = self._waveform(value, rng, sample)
        except DecodeError:
            raise  # refused before decoding (NotAFile, TooLarge…): keeps its reason
        except _Unusable as error:
            raise DecodeError(describe(value), str(error)) from error
        except Exception as error:
            raise DecodeError(describe(value), f"{type(error).__name__}: {error}") from error
        return Decoded(wave, info) if self.with_info else wave

    def _span(self, sample: Any) -> tuple[float | None, float | None]:
        """The crop start (s; None: to be drawn) and length (s; None: to the end)."""
        if self.align_to is not None:
            keys = [f"{self.align_to}.clip_start", f"{self.align_to}.clip_end"]
            bounds = [None if sample is None else sample.get(key) for key in keys]
            if not all(isinstance(b, numbers.Real) and math.isfinite(b) for b in bounds):
                raise _Unusable(
                    f"no clip to align to: {keys} are {bounds}; decode {self.align_to!r} "
                    "before with VideoClip(with_info=True)"
                )
            start, end = float(bounds[0]), float(bounds[1])
            return max(0.0, start), self.duration or max(0.0, end - start)
        if self.start is ClipStart.GIVEN:
            try:
                return given_start(sample, self.start_column), self.duration
            except ValueError as error:
                raise _Unusable(str(error)) from None
        return None, self.duration

    def _waveform(
        self, value: Any, rng: np.random.Generator, sample: Any
    ) -> tuple[torch.Tensor, dict[str, Any]]:

        t0, length = self._span(sample)
        if value is None:  # only with on_missing="silence" (accepts_none)
            return self._silence(t0, length)
        if self.backend == "torchcodec":
            return audio_crop(self, value, rng, t0, length)
        with self._open(value) as container:
            if not container.streams.audio:
                if self.on_missing is OnMissing.SILENCE:
                    return self._silence(t0, length)
                raise _Unusable("no audio stream")
            stream = container.streams.audio[0]
            source_rate = stream.codec_context.sample_rate or stream.rate
            if not source_rate:
                raise _Unusable("the audio stream states no sample rate")
            rate = self.sample_rate or source_rate
            size = None if length is None else round(length * rate)  # output samples
            wanted = None if size is None else math.ceil(size * source_rate / rate)  # source
            total = _total_samples(container, stream, source_rate)  # stated; 0: unknown
            if t0 is not None:
                first = round(t0 * source_rate)
            elif wanted is None:
                first = 0
            else:  # draw the start among those that fit, in source samples
                spare = max(0, total - wanted)
                where = rng.random() if self.start is ClipStart.RANDOM else 0.5
                first = min(spare, math.floor(where * (spare + 1)))
            left, left_out = _context(source_rate, rate) if first else (0, 0)
            if left > first:
                left, left_out = 0, 0
            right = 0 if rate == source_rate else _CONTEXT
            lo = first - left
            hi = None if wanted is None else first + wanted + right
            try:
                raw = _decode(container, stream, source_rate, (lo, hi, total), seek=lo > 0)
            except _SeekMissed:
                raw = None
        if raw is None:  # the seek missed: decode again from the start, without seeking
            with self._open(value) as container:
                stream = container.streams.audio[0]
                raw = _decode(container, stream, source_rate, (lo, hi, total), seek=False)
        wave = torch.from_numpy(self._mix(raw))  # [C, n] float32 at source_rate
        if rate != source_rate:
            import torchaudio.functional

            wave = torchaudio.functional.resample(wave, source_rate, rate)  # [C, ~n * r / sr]
        wave = wave[:, left_out:] if size is None else _fit(wave[:, left_out:], size)
        wave = wave.clamp_(-1.0, 1.0).contiguous()  # [C, S] float32
        return wave, {"sample_rate": int(rate), "audio_start": first / source_rate}

    def _open(self, value: Any) -> Any:

        options = {} if self.probesize is None else {"probesize": str(self.probesize)}
        return av_open(as_source(value), options=options)

    def _mix(self, raw: np.ndarray) -> np.ndarray:
        """float32 [C_src, n] to [channels, n] (mean to mono, mono to stereo, first two)."""
        if self.channels == 1 and raw.shape[0] > 1:
            return raw.mean(axis=0, keepdims=True)
        if self.channels == 2:
            return np.repeat(raw, 2, axis=0) if raw.shape[0] == 1 else raw[:2]
        return raw

    def _silence(self, t0: float | None, length: float | None) -> tuple[torch.Tensor, dict]:
        rate = int(self.sample_rate)  # validated: set with on_missing="silence"
        size = round(float(length) * rate)
        wave = torch.zeros(self.channels or 1, size, dtype=torch.float32)  # [C, S]
        return wave, {"sample_rate": rate, "audio_start": t0 or 0.0}


class _SeekMissed(Exception):
    """Seeking failed or landed after the crop: decode again from the start."""


def _decode(
    container: Any, stream: Any, rate: int, span: tuple[int, int | None, int], seek: bool
) -> np.ndarray:
    """Source samples ``[lo, hi)`` (hi None: to the end), float32 [C, n]; zeros where the
    stream has none (before its first frame, after its end). Positions count from the stream
    start; the first frame's timestamp places the decoded run, which is then contiguous.
    Frames running out well before the stated length (``total`` samples) mean a truncated file.
    """
    lo, hi, total = span
    time_base = stream.time_base
    origin = stream.start_time or 0
    if seek:
        try:
            target = max(0, lo - math.ceil(_PREROLL_S * rate))
            offset = origin + math.floor(target / rate / time_base)
            container.seek(offset, stream=stream, backward=True, any_frame=False)
        except Exception as error:
            raise _SeekMissed from error
    chunks: list[np.ndarray] = []
    begin = position = None  # source sample index of chunks[0], and of the next frame
    for frame in container.decode(stream):
        if position is None:
            position = 0 if frame.pts is None else round((frame.pts - origin) * time_base * rate)
            if seek and (frame.pts is None or position > lo):
                raise _SeekMissed  # landed after the crop start
        samples = _samples(frame)  # [C, k] float32
        end = position + samples.shape[1]
        if end > lo:
            if begin is None:
                begin = position
            chunks.append(samples)
        position = end
        if hi is not None and position >= hi:
            break
    else:
        if position is None:
            raise _Unusable("no decodable audio frame")
        if position < min(total, hi or total) - math.ceil(0.05 * rate):
            raise _Unusable(
                f"the audio stops at {position / rate:.3f} s of the {total / rate:.3f}"
                " s the file states (truncated?)"
            )
    channels = chunks[0].shape[0] if chunks else stream.codec_context.channels or 1
    run = np.concatenate(chunks, axis=1) if chunks else np.zeros((channels, 0), np.float32)
    begin = position if begin is None else begin
    stop = begin + run.shape[1] if hi is None else hi
    out = np.zeros((channels, stop - lo), np.float32)  # [C, hi - lo]
    a, b = max(lo, begin), min(stop, begin + run.shape[1])
    if b > a:
        out[:, a - lo : b - lo] = run[:, a - begin : b - begin]
    return out


def _samples(frame: Any) -> np.ndarray:
    """One audio frame as float32 [C, k] in [-1, 1] (any FFmpeg sample format)."""
    array = frame.to_ndarray()
    if not frame.format.is_planar:  # packed: [1, k * C], channels interleaved
        array = array.reshape(-1, len(frame.layout.channels)).T
    if array.dtype == np.uint8:
        return (array.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(array.dtype, np.integer):
        return array.astype(np.float32) / float(np.iinfo(array.dtype).max + 1)
    return array.astype(np.float32, copy=False)


def _total_samples(container: Any, stream: Any, rate: int) -> int:
    """The stream's length in source samples, from its metadata (0 when unknown)."""
    if stream.duration and stream.time_base:
        return int(stream.duration * stream.time_base * rate)
    return int((container.duration or 0) * rate / 1_000_000)  # AV_TIME_BASE units


def _context(source_rate: int, rate: int) -> tuple[int, int]:
    """Context before a crop, in source and output samples, a whole number of resampling
    periods (``source_rate / gcd`` source samples) so output sample 0 falls on the crop's first
    source sample; (0, 0) when no resampling, or when a period is longer than 4096 samples."""
    if rate == source_rate:
        return 0, 0
    g = math.gcd(source_rate, rate)
    periods = math.ceil(_CONTEXT / (source_rate // g))
    if periods * source_rate // g > 4096:
        return 0, 0
    return periods * source_rate // g, periods * rate // g


def _fit(wave: torch.Tensor, size: int) -> torch.Tensor:
    """[C, n] cut or zero-padded at the end to [C, size]."""
    if wave.shape[1] >= size:
        return wave[:, :size]
    return torch.nn.functional.pad(wave, (0, size - wave.shape[1]))

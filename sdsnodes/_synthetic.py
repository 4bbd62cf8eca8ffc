"""Real (encoded) synthetic media for the demo, the tests and the benchmarks.

Videos are H.264 mp4 files written with PyAV: a coloured square moving over a gradient that
shifts every frame. The frame's index is written into its top-left corner as 8 black/white
8x8-pixel blocks (bit ``b`` of the index, least significant first, in block ``b``), which survive
compression and can be read back with :func:`frame_index` to check which frames a decoder picked.
Images are JPEG/PNG/WebP files written with Pillow. Audio (WAV, FLAC, AAC in m4a, or an AAC
track in a video) is :func:`audio_signal`: tones whose loudness steps each second, so a decoded
span tells where in the file it came from.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np

INDEX_BITS = 8
"""Bits of the frame index written into each synthetic video frame (the index modulo 256)."""
_BLOCK = 8

_COLOURS = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 220, 40),
    "magenta": (220, 40, 200),
    "cyan": (40, 210, 220),
}
_DIRECTIONS = {
    "left to right": (1, 0),
    "right to left": (-1, 0),
    "top to bottom": (0, 1),
    "bottom to top": (0, -1),
    "diagonally": (1, 1),
}


def _scene(seed: int) -> tuple[str, str, str]:
    """Square colour, background colour and direction for a seed."""
    rng = np.random.default_rng(seed)
    names = list(_COLOURS)
    square, background = rng.choice(len(names), size=2, replace=False)
    direction = list(_DIRECTIONS)[rng.integers(len(_DIRECTIONS))]
    return names[square], names[background], direction


def caption(seed: int, moving: bool = True) -> str:
    """The caption describing the video (``moving``) or the image drawn for ``seed``."""
    square, background, direction = _scene(seed)
    if not moving:
        return f"a {square} square on a {background} gradient"
    return f"a {square} square moving {direction} over a shifting {background} gradient"


def _frames(count: int, width: int, height: int, seed: int, code: bool):
    """Yield ``count`` frames, uint8 [H, W, 3] RGB, the first being frame 0."""
    square, background, direction = _scene(seed)
    period = width + height
    ys, xs = np.mgrid[0:height, 0:width]
    base = xs + ys  # [H, W]
    lut = (np.arange(period)[:, None] / period * _COLOURS[background]).astype(np.uint8)  # [P, 3]
    side = max(4, min(width, height) // 4)
    dx, dy = _DIRECTIONS[direction]
    for index in range(count):
        frame = lut[(base + 4 * index) % period]  # [H, W, 3]
        x = (width // 2 - side // 2 + 3 * dx * index) % max(1, width - side)
        y = (height // 2 - side // 2 + 3 * dy * index) % max(1, height - side)
        frame[y : y + side, x : x + side] = _COLOURS[square]
        if code:
            frame[:_BLOCK, : _BLOCK * INDEX_BITS] = 0
            for bit in range(INDEX_BITS):
                if (index >> bit) & 1:
                    frame[:_BLOCK, bit * _BLOCK : (bit + 1) * _BLOCK] = 255
        yield frame


def frame_index(frame: object) -> int:
    """Read back the frame index (modulo 256) written by :func:`write_video`.

    Args:
        frame: one decoded frame at the source size, uint8 [3, H, W] (``VideoClip`` output) or
            [H, W, 3]; a numpy array or a torch tensor.

    Returns:
        int: the index of the source frame, in [0, 256).
    """
    array = np.asarray(frame)
    if array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    value = 0
    for bit in range(INDEX_BITS):
        block = array[2 : _BLOCK - 2, bit * _BLOCK + 2 : (bit + 1) * _BLOCK - 2]
        if block.mean() > 127:
            value |= 1 << bit
    return value


def write_video(
    path: str | os.PathLike,
    *,
    num_frames: int = 48,
    fps: int = 24,
    width: int = 128,
    height: int = 96,
    seed: int = 0,
    codec: str = "libx264",
    gop: int = 12,
    faststart: bool = False,
    times: Sequence[float] | None = None,
    audio_rate: int | None = None,
    audio_channels: int = 1,
) -> None:
    """Write a real encoded video (H.264 in mp4 by default) of moving synthetic content.

    Frames carry their index as a bit pattern (see :func:`frame_index`) when ``width >= 64``.
    With ``audio_rate``, the file also holds an AAC track of :func:`audio_signal` lasting
    ``num_frames / fps`` seconds, interleaved with the frames.

    Args:
        path: output file; the container format follows its extension.
        num_frames (int): frames to write, >= 1.
        fps (int): frame rate in frames/s.
        width (int): frame width in pixels, even (yuv420p).
        height (int): frame height in pixels, even.
        seed (int): picks colours and motion (see :func:`caption`).
        codec (str): FFmpeg encoder name.
        gop (int): keyframe interval in frames.
        faststart (bool): put the mp4 index (moov atom) before the data.
        times (Sequence[float] | None): presentation time of each frame in seconds, increasing
            (a variable frame rate, kept to the millisecond); None means ``i / fps``.
        audio_rate (int | None): sample rate in Hz of an AAC audio track; None writes none.
        audio_channels (int): channels of the audio track, 1 or 2.

    Raises:
        ValueError: odd or non-positive sizes, ``num_frames`` or ``fps`` < 1, ``times`` not
            increasing or of the wrong length.
    """
    import av

    if num_frames < 1 or fps < 1 or gop < 1:
        raise ValueError(f"{num_frames=}, {fps=} and {gop=} must be >= 1")
    if width < 2 or height < 2 or width % 2 or height % 2:
        raise ValueError(f"{width=} and {height=} must be even and >= 2 (yuv420p)")
    tick = Fraction(1, fps) if times is None else Fraction(1, 1000)  # frame time base, s
    pts = list(range(num_frames)) if times is None else [round(t * 1000) for t in times]
    if len(pts) != num_frames or np.any(np.diff(pts) <= 0) or pts[0] < 0:
        raise ValueError(f"{times=} must hold {num_frames} increasing times >= 0 (ms apart)")
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(os.fspath(path), "w", options=options) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        stream.codec_context.time_base = tick
        if codec == "libx264":
            stream.options = {"preset": "ultrafast", "g": str(gop)}
        audio = None
        if audio_rate is not None:
            samples = _pcm16(audio_signal(num_frames / fps, audio_rate, audio_channels))
            audio = _add_audio_stream(container, "aac", audio_rate, audio_channels)
        code = width >= _BLOCK * INDEX_BITS and height >= 2 * _BLOCK
        written = 0  # audio samples muxed so far
        for i, array in enumerate(_frames(num_frames, width, height, seed, code)):
            frame = av.VideoFrame.from_ndarray(array, format="rgb24")
            frame.pts, frame.time_base = pts[i], tick
            container.mux(stream.encode(frame))
            if audio is not None:  # interleave: the audio up to the end of this frame
                end = round((i + 1) / fps * audio_rate)
                _mux_audio(container, audio, samples, written, end, audio_rate)
                written = end
        container.mux(stream.encode(None))
        if audio is not None:
            _mux_audio(container, audio, samples, written, samples.shape[1], audio_rate)
            container.mux(audio.encode(None))


AUDIO_HZ = 440.0
"""Frequency in Hz of channel 0 of :func:`audio_signal` (channel ``c`` is at ``(c + 1)`` times)."""


def audio_step(t: float | np.ndarray) -> float | np.ndarray:
    """The amplitude of :func:`audio_signal` at ``t`` seconds: ``0.1 * (1 + floor(t) % 9)``."""
    return 0.1 * (1 + np.floor(t) % 9)


def audio_signal(seconds: float, sample_rate: int, channels: int = 1) -> np.ndarray:
    """The synthetic sound: per channel ``c`` a sine at ``AUDIO_HZ * (c + 1)`` Hz whose
    amplitude steps each second (:func:`audio_step`), so any window tells its second (mod 9).

    Returns:
        numpy.ndarray: float32 [C, S], S == round(seconds * sample_rate), in [-0.9, 0.9]; every
        value is a multiple of 1/32768, so 16-bit PCM (WAV, FLAC) stores it exactly.
    """
    t = np.arange(round(seconds * sample_rate)) / sample_rate  # [S] s
    tones = [np.sin(2 * np.pi * AUDIO_HZ * (c + 1) * t) for c in range(channels)]
    return (np.round(np.stack(tones) * audio_step(t) * 32767) / 32768).astype(np.float32)


def write_audio(
    path: str | os.PathLike, *, seconds: float = 1.0, sample_rate: int = 16000, channels: int = 1
) -> None:
    """Write :func:`audio_signal` as a real encoded audio file, the codec following the
    extension: ``.wav`` (16-bit PCM), ``.flac`` (16-bit) or ``.m4a`` (AAC in mp4).

    Raises:
        ValueError: another extension, ``channels`` not 1 or 2, or ``seconds`` <= 0.
    """
    import av

    codec = {".wav": "pcm_s16le", ".flac": "flac", ".m4a": "aac"}.get(Path(path).suffix.lower())
    if codec is None or channels not in (1, 2) or seconds <= 0:
        raise ValueError(f"{path=} must end in .wav, .flac or .m4a, {channels=} be 1 or 2")
    samples = _pcm16(audio_signal(seconds, sample_rate, channels))
    with av.open(os.fspath(path), "w") as container:
        stream = _add_audio_stream(container, codec, sample_rate, channels)
        _mux_audio(container, stream, samples, 0, samples.shape[1], sample_rate)
        container.mux(stream.encode(None))


def _pcm16(signal: np.ndarray) -> np.ndarray:
    """float [C, S] (multiples of 1/32768) to int16 [C, S]."""
    return np.round(signal * 32768).astype(np.int16)


def _add_audio_stream(container, codec: str, sample_rate: int, channels: int):
    stream = container.add_stream(codec, rate=sample_rate)
    stream.layout = "mono" if channels == 1 else "stereo"
    return stream


def _mux_audio(container, stream, samples: np.ndarray, start: int, end: int, rate: int) -> None:
    """Encode and mux int16 [C, S] ``samples[:, start:end]`` (the encoder converts the format)."""
    import av

    layout = "mono" if samples.shape[0] == 1 else "stereo"
    for a in range(start, end, 4096):
        chunk = samples[:, a : min(a + 4096, end)]  # [C, n] int16
        frame = av.AudioFrame.from_ndarray(
            chunk.T.reshape(1, -1).copy(), format="s16", layout=layout
        )
        frame.sample_rate, frame.pts, frame.time_base = rate, a, Fraction(1, rate)
        container.mux(stream.encode(frame))


def write_image(
    path: str | os.PathLike,
    *,
    width: int = 64,
    height: int = 48,
    seed: int = 0,
    format: str | None = None,
) -> None:
    """Write an RGB image of synthetic content with Pillow.

    Args:
        path: output file.
        width (int): pixels, >= 1.
        height (int): pixels, >= 1.
        seed (int): picks colours (see :func:`caption`).
        format (str | None): Pillow format name (``"JPEG"``, ``"PNG"``, ``"WEBP"``); None
            follows the extension.
    """
    from PIL import Image

    *_, array = _frames(1 + seed % 7, width, height, seed, code=False)
    image = Image.fromarray(array)  # [H, W, 3] uint8: RGB
    fmt = (format or Path(path).suffix.lstrip(".")).upper()
    fmt = "JPEG" if fmt == "JPG" else fmt
    options = {"quality": 90} if fmt in ("JPEG", "WEBP") else {}
    image.save(os.fspath(path), format=fmt, **options)


def _make_dataset(
    root: str | os.PathLike, column: str, count: int, progress: bool, write: Callable
) -> Path:
    """Write ``count`` files with ``write(i, tmp_path) -> (file name, extra columns)`` into
    ``root/<column>s/``, each under a temporary name renamed into place, then the index, last and
    atomically, so a crash never leaves a dataset that looks complete. Skipped if complete."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if count < 1:
        raise ValueError(f"{count=} must be >= 1")
    root = Path(root).absolute()
    index = root / "index.parquet"
    try:
        paths = pq.read_table(index, columns=[column])[column].to_pylist()
        if len(paths) == count and all(os.path.exists(p) for p in paths):
            return index
    except (OSError, ValueError, KeyError, pa.ArrowException):
        pass
    folder = root / f"{column}s"
    folder.mkdir(parents=True, exist_ok=True)
    items = range(count)
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc=f"writing {column}s", unit=column)
    columns: dict[str, list] = {column: []}
    for i in items:
        name, extra = write(i, folder / f".{i:05d}.tmp-{os.getpid()}")
        os.replace(folder / f".{i:05d}.tmp-{os.getpid()}{Path(name).suffix}", folder / name)
        columns[column].append(str(folder / name))
        for key, value in extra.items():
            columns.setdefault(key, []).append(value)
    tmp = index.with_name(f".{index.name}.tmp-{os.getpid()}")
    pq.write_table(pa.table(columns), tmp)
    os.replace(tmp, index)
    return index


def make_video_dataset(
    root: str | os.PathLike,
    *,
    num_videos: int = 64,
    seconds: float = 3.0,
    fps: int = 24,
    width: int = 128,
    height: int = 96,
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """Write a small text-to-video dataset of real H.264 mp4 files and its index.

    Sources differ so batching across them is exercised: every 4th video (from the 2nd) is
    portrait (``width`` and ``height`` swapped), every 4th (from the 4th) is wider (5/4
    ``width``), and every 3rd (from the 3rd) runs at 30 frames/s instead of ``fps``.

    Writes ``root/videos/{i:05d}.mp4`` and, last, ``root/index.parquet`` with columns ``video``
    (absolute local path, str), ``caption`` (str), ``num_frames`` (int64) and ``fps`` (float64).
    Idempotent: returns at once if a complete index with ``num_videos`` rows is already there.
    With ``progress``, shows a tqdm bar.

    Returns:
        Path: the index file ``root/index.parquet``.
    """

    def write(i: int, tmp: Path) -> tuple[str, dict]:
        w, h = {1: (height, width), 3: (width * 5 // 8 * 2, height)}.get(i % 4, (width, height))
        rate = 30 if i % 3 == 2 else fps
        frames = max(1, round(seconds * rate))
        video_seed = seed * 100_003 + i
        write_video(f"{tmp}.mp4", num_frames=frames, fps=rate, width=w, height=h, seed=video_seed)
        extra = {"caption": caption(video_seed), "num_frames": frames, "fps": float(rate)}
        return f"{i:05d}.mp4", extra

    return _make_dataset(root, "video", num_videos, progress, write)


def make_image_dataset(
    root: str | os.PathLike,
    *,
    num_images: int = 64,
    seed: int = 0,
    width: int = 64,
    height: int = 48,
    progress: bool = False,
) -> Path:
    """Write a small text-to-image dataset (mostly JPEG, some PNG and WebP) and its index.

    Every 4th image (from the 2nd) is portrait, every 5th (from the 5th) is PNG and every 7th
    (from the 7th) WebP. Writes ``root/images/{i:05d}.<ext>`` and, last, ``root/index.parquet``
    with columns ``image`` (absolute local path, str) and ``caption`` (str). Idempotent, like
    :func:`make_video_dataset`.

    Returns:
        Path: the index file ``root/index.parquet``.
    """

    def write(i: int, tmp: Path) -> tuple[str, dict]:
        ext = "png" if i % 5 == 4 else "webp" if i % 7 == 6 else "jpg"
        w, h = (height, width) if i % 4 == 1 else (width, height)
        write_image(f"{tmp}.{ext}", width=w, height=h, seed=seed * 100_003 + i)
        return f"{i:05d}.{ext}", {"caption": caption(seed * 100_003 + i, moving=False)}

    return _make_dataset(root, "image", num_images, progress, write)

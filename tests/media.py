"""Real media files for tests: good ones from sdsnodes._synthetic, and broken copies.

Each helper writes one file into ``directory`` and returns its path.
"""

from __future__ import annotations

import pickle
import wave
from pathlib import Path

import numpy as np
from PIL import Image

from sdsnodes._synthetic import write_audio, write_image, write_video

ORIENTATION = 0x0112  # EXIF tag


def video(directory: Path, name: str = "clip.mp4", **kwargs) -> Path:
    """A real H.264 mp4 (see ``write_video`` for kwargs: num_frames, fps, width, height...)."""
    path = Path(directory) / name
    write_video(path, **kwargs)
    return path


def one_frame_video(directory: Path) -> Path:
    return video(directory, "one_frame.mp4", num_frames=1)


def corrupt_mp4(directory: Path) -> Path:
    """Random bytes named .mp4."""
    path = Path(directory) / "corrupt.mp4"
    path.write_bytes(np.random.default_rng(0).bytes(20_000))
    return path


def truncated_mp4(directory: Path, faststart: bool = False) -> Path:
    """The first 30% of a real mp4; with ``faststart`` the index survives, the frames do not."""
    whole = video(directory, f"whole_{faststart}.mp4", num_frames=48, faststart=faststart)
    path = Path(directory) / f"truncated_{faststart}.mp4"
    data = whole.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.3)])
    return path


def zero_byte(directory: Path, name: str = "empty.mp4") -> Path:
    path = Path(directory) / name
    path.write_bytes(b"")
    return path


def text_file(directory: Path, name: str = "notes.mp4") -> Path:
    """Plain text named like a video."""
    path = Path(directory) / name
    path.write_text("this is not a video\n" * 50)
    return path


def audio_only(directory: Path) -> Path:
    """A WAV file: a container FFmpeg opens, with no video stream."""
    path = Path(directory) / "tone.wav"
    samples = (np.sin(np.arange(8000) / 8000 * 2 * np.pi * 440) * 20000).astype(np.int16)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        out.writeframes(samples.tobytes())
    return path


def image(directory: Path, name: str = "image.jpg", **kwargs) -> Path:
    """A real RGB image, format from the extension (see ``write_image``)."""
    path = Path(directory) / name
    write_image(path, **kwargs)
    return path


def _save(image: Image.Image, directory: Path, name: str, **kwargs) -> Path:
    path = Path(directory) / name
    image.save(path, **kwargs)
    return path


def _gradient(width: int, height: int) -> np.ndarray:
    """uint8 [H, W] horizontal ramp."""
    return np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1))


def gray_jpeg(directory: Path) -> Path:
    return _save(Image.fromarray(_gradient(40, 30)), directory, "gray.jpg")


def cmyk_jpeg(directory: Path) -> Path:
    rgb = Image.new("RGB", (40, 30), (200, 30, 30))
    return _save(rgb.convert("CMYK"), directory, "cmyk.jpg", quality=95)


def rgba_png(directory: Path) -> Path:
    """Red, with the left half fully transparent."""
    pixels = np.zeros((30, 40, 4), np.uint8)
    pixels[..., 0] = 255
    pixels[:, 20:, 3] = 255
    return _save(Image.fromarray(pixels), directory, "alpha.png")


def la_png(directory: Path) -> Path:
    return _save(Image.fromarray(_gradient(40, 30)).convert("LA"), directory, "la.png")


def palette_png(directory: Path, transparency: bool = False) -> Path:
    rgb = Image.new("RGB", (40, 30), (10, 120, 240))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    kwargs = {"transparency": 0} if transparency else {}
    return _save(palette, directory, f"palette_{transparency}.png", **kwargs)


def i16_png(directory: Path) -> Path:
    """16-bit grayscale: the left half 65535, the right half 100 * 256."""
    pixels = np.full((30, 40), 100 * 256, np.uint16)
    pixels[:, :20] = 65535
    return _save(Image.fromarray(pixels), directory, "gray16.png")


def bilevel_png(directory: Path) -> Path:
    return _save(Image.fromarray(_gradient(40, 30)).convert("1"), directory, "bilevel.png")


def exif_rotated_jpeg(directory: Path) -> Path:
    """Stored 64 wide x 48 high, red top-left corner, EXIF orientation 6 (rotate 90 deg CW)."""
    pixels = np.full((48, 64, 3), 40, np.uint8)
    pixels[:16, :16] = (255, 0, 0)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    return _save(Image.fromarray(pixels), directory, "rotated.jpg", exif=exif, quality=95)


def big_jpeg(directory: Path, width: int = 1600, height: int = 1200) -> Path:
    return image(directory, "big.jpg", width=width, height=height)


def truncated_jpeg(directory: Path) -> Path:
    whole = image(directory, "whole.jpg", width=256, height=192)
    path = Path(directory) / "truncated.jpg"
    data = whole.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    return path


# ---------------------------------------------------------------- audio, VFR video, latents


def audio(directory: Path, name: str = "tone.flac", **kwargs) -> Path:
    """Real encoded ``audio_signal`` (see ``write_audio``: seconds, sample_rate, channels);
    the codec follows the extension (.wav, .flac, .m4a)."""
    path = Path(directory) / name
    write_audio(path, **kwargs)
    return path


def video_with_audio(directory: Path, name: str = "av.mp4", **kwargs) -> Path:
    """H.264 + AAC mp4: ``write_video(audio_rate=44100, ...)`` unless kwargs say otherwise."""
    kwargs.setdefault("audio_rate", 44100)
    return video(directory, name, **kwargs)


VFR_TIMES = [0.0, 0.1, 0.15, 0.4, 0.5, 0.55, 0.9, 1.0, 1.3, 1.35]
"""Frame times (s) of :func:`vfr_video`: gaps of 50 to 350 ms."""


def vfr_video(directory: Path, times: list[float] = VFR_TIMES) -> Path:
    """A variable-frame-rate mp4: frame ``i`` (index coded in its pixels) shown at ``times[i]``."""
    return video(directory, "vfr.mp4", num_frames=len(times), fps=10, times=times, gop=4)


def truncated(path: Path, fraction: float = 0.4) -> Path:
    """The first ``fraction`` of the bytes of ``path``, as ``truncated_<name>`` beside it."""
    out = path.with_name(f"truncated_{path.name}")
    data = path.read_bytes()
    out.write_bytes(data[: int(len(data) * fraction)])
    return out


def garbage(directory: Path, name: str) -> Path:
    """20 kB of random bytes under ``name``."""
    path = Path(directory) / name
    path.write_bytes(np.random.default_rng(1).bytes(20_000))
    return path


def jpeg_named(directory: Path, name: str) -> Path:
    """A real JPEG under a name of another kind (e.g. ``"sound.wav"``)."""
    path = Path(directory) / name
    write_image(path, format="JPEG")
    return path


class Payload:
    """A custom class: what a malicious or careless pickle carries (with state, so unpickling
    it would call ``__setstate__``)."""

    def __init__(self) -> None:
        self.note = "unpickled"


def pickle_as_pt(directory: Path, name: str = "x.pt") -> Path:
    """A plain pickle of a custom object named like a torch file."""
    path = Path(directory) / name
    path.write_bytes(pickle.dumps(Payload()))
    return path

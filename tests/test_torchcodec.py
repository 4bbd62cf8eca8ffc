"""VideoClip and AudioWaveform with backend="torchcodec" crop what the PyAV path crops (same
start, same frames, same info; audio resampled by FFmpeg within 0.05), on real H.264 and FLAC
files. Skipped where torchcodec or FFmpeg's shared libraries do not load (CI has none)."""

from __future__ import annotations

import numpy as np
import pytest

from sdsnodes import AudioWaveform, VideoClip
from sdsnodes.codecs._torchcodec import check_backend
from sdsnodes.errors import DecodeError, TooLarge

try:
    check_backend("torchcodec")
    MISSING = None
except ValueError as error:
    MISSING = str(error)

pytestmark = pytest.mark.skipif(MISSING is not None, reason=f"torchcodec unusable: {MISSING}")


def write_video(path, frames: int, rate: int, width: int = 64, height: int = 48) -> str:
    """An H.264 mp4 whose frame i is uniformly grey level 4 * i (frames tell themselves apart)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("h264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            image = np.full((height, width, 3), 4 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchcodec")
    return [write_video(root / "a.mp4", 48, 24), write_video(root / "b.mp4", 45, 30, 80, 40)]


@pytest.mark.parametrize(
    "options",
    [
        {"num_frames": 8, "fps": 8},  # frames dropped
        {"num_frames": 12, "fps": 60, "start": "uniform"},  # frames repeated
        {"num_frames": 70},  # past the end: the last frame repeats
        {"num_frames": 4, "size": 32},  # resized (swscale in both)
        {"num_frames": 4, "size": (24, 24), "crop": "random"},
    ],
)
def test_same_clips_as_pyav(videos, options):
    pyav = VideoClip(**options, with_info=True)
    torchcodec = VideoClip(**options, with_info=True, backend="torchcodec")
    for video in videos:
        for seed in range(2):
            a = pyav(video, np.random.default_rng(seed))
            b = torchcodec(video, np.random.default_rng(seed))
            assert a.info == b.info and a.value.shape == b.value.shape
            assert b.value.dtype == a.value.dtype == np.uint8 or str(b.value.dtype) == "torch.uint8"
            difference = (a.value.float() - b.value.float()).abs().max().item()
            assert difference <= (4 if "size" in options else 0), (video, seed, difference)


def test_bytes_and_errors(videos, tmp_path):
    clip = VideoClip(num_frames=4, backend="torchcodec")
    with open(videos[0], "rb") as f:
        data = f.read()
    assert clip(data, np.random.default_rng(0)).shape == (4, 3, 48, 64)
    with pytest.raises(DecodeError):
        clip(data[: len(data) // 8], np.random.default_rng(0))  # truncated
    with pytest.raises(DecodeError):
        clip(b"not a video", np.random.default_rng(0))
    with pytest.raises(DecodeError, match="shorter than the clip"):
        VideoClip(num_frames=90, on_short="skip", backend="torchcodec")(videos[0])
    with pytest.raises(TooLarge):
        VideoClip(num_frames=1, max_pixels=100, backend="torchcodec")(videos[0])
    with pytest.raises(ValueError, match="backend="):
        VideoClip(num_frames=1, backend="opencv")


@pytest.fixture(scope="module")
def flac(tmp_path_factory):
    from sdsnodes._synthetic import write_audio

    path = tmp_path_factory.mktemp("torchcodec-audio") / "a.flac"
    write_audio(path, seconds=3.0, sample_rate=44100, channels=2)
    return str(path)


@pytest.mark.parametrize(
    "options",
    [
        {"duration": 0.5},  # no resampling: the very samples
        {"channels": 1, "duration": 4.0},  # longer than the file: zeros at the end
        {"sample_rate": 16000, "channels": 1, "duration": 1.0},  # FFmpeg's resampler
        {"sample_rate": 16000, "duration": 1.0, "start": "uniform"},
    ],
)
def test_audio_same_crops_as_pyav(flac, options):
    pyav = AudioWaveform(**options, with_info=True)
    torchcodec = AudioWaveform(**options, with_info=True, backend="torchcodec")
    for seed in range(2):
        a = pyav(flac, np.random.default_rng(seed))
        b = torchcodec(flac, np.random.default_rng(seed))
        assert (
            a.info == b.info and a.value.shape == b.value.shape and b.value.dtype == a.value.dtype
        )
        difference = (a.value - b.value).abs().max().item()  # torchaudio's sinc vs swresample
        assert difference <= (0.05 if "sample_rate" in options else 0.0), (seed, difference)


def test_audio_without_a_stream(videos):
    with pytest.raises(DecodeError, match="no audio stream"):
        AudioWaveform(duration=0.5, backend="torchcodec")(videos[0])
    silent = AudioWaveform(
        duration=0.5, sample_rate=8000, on_missing="silence", backend="torchcodec"
    )(videos[0])
    assert silent.shape == (1, 4000) and not silent.any()

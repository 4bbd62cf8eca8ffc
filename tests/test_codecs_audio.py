"""AudioWaveform on real WAV/FLAC/AAC files and video tracks: crops, channels, resampling,
seeking, alignment to a video clip, missing audio and bad input."""

from __future__ import annotations

import math
import pickle

import av
import numpy as np
import pytest
import torch
from torchdata.nodes import IterableWrapper

from sdsnodes._synthetic import AUDIO_HZ, audio_signal, audio_step
from sdsnodes.codecs import AudioWaveform, Decoded, VideoClip
from sdsnodes.errors import DecodeError
from sdsnodes.nodes.decoder import Decoder
from sdsnodes.options import ErrorOptions
from tests import media

SECONDS = 4.0


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def analytic(t: np.ndarray, channels: int) -> np.ndarray:
    """The continuous synthetic signal at times ``t`` (s), [C, len(t)]."""
    return np.stack(
        [np.sin(2 * np.pi * AUDIO_HZ * (c + 1) * t) * audio_step(t) for c in range(channels)]
    )


def steady(t: np.ndarray, margin: float = 0.01) -> np.ndarray:
    """Mask of times at least ``margin`` s away from an amplitude step (whole seconds)."""
    return np.abs(t - np.round(t)) > margin


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("audio")
    return {
        "wav": media.audio(d, "stereo.wav", seconds=SECONDS, sample_rate=44100, channels=2),
        "flac": media.audio(d, "mono.flac", seconds=SECONDS, sample_rate=16000, channels=1),
        "m4a": media.audio(d, "stereo.m4a", seconds=SECONDS, sample_rate=44100, channels=2),
        "av": media.video_with_audio(d, num_frames=72, fps=24),  # 3 s, AAC mono 44.1 kHz
        "mute": media.video(d, "mute.mp4", num_frames=24),
        "dir": d,
    }


# ---------------------------------------------------------------- crops, shapes, values


@pytest.mark.parametrize("kind", ["wav", "flac"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lossless_crop_is_exact(files, kind, seed):
    rate, channels = (44100, 2) if kind == "wav" else (16000, 1)
    out = AudioWaveform(duration=0.75, with_info=True)(files[kind], rng(seed))
    first = round(out.info["audio_start"] * rate)
    assert out.info["sample_rate"] == rate and first / rate == out.info["audio_start"]
    assert out.value.dtype == torch.float32 and out.value.shape == (channels, round(0.75 * rate))
    expected = audio_signal(SECONDS, rate, channels)[:, first : first + round(0.75 * rate)]
    np.testing.assert_array_equal(out.value.numpy(), expected)


@pytest.mark.parametrize("kind", ["wav", "flac", "m4a", "av"])
@pytest.mark.parametrize(("rate", "channels"), [(16000, 1), (22050, 2), (None, None)])
@pytest.mark.parametrize("duration", [0.3337, 1.0])
def test_length_is_exact(files, kind, rate, channels, duration):
    out = AudioWaveform(sample_rate=rate, channels=channels, duration=duration)(files[kind], rng(4))
    source = {"wav": (44100, 2), "flac": (16000, 1), "m4a": (44100, 2), "av": (44100, 1)}[kind]
    assert out.shape == (channels or source[1], round(duration * (rate or source[0])))
    assert out.dtype == torch.float32 and out.is_contiguous()
    assert out.abs().max() <= 1.0 and out.abs().max() > 0.05


def test_mono_mixdown_and_stereo_duplication(files):
    mono = AudioWaveform(channels=1, duration=0.5, with_info=True)(files["wav"], rng(1))
    first = round(mono.info["audio_start"] * 44100)
    stereo = audio_signal(SECONDS, 44100, 2)[:, first : first + 22050]
    np.testing.assert_allclose(mono.value.numpy(), stereo.mean(0, keepdims=True), atol=1e-7)
    dup = AudioWaveform(channels=2, duration=0.5)(files["flac"], rng(1))
    assert dup.shape == (2, 8000) and torch.equal(dup[0], dup[1])


@pytest.mark.parametrize(("kind", "tolerance"), [("wav", 2e-3), ("m4a", 0.05)])
@pytest.mark.parametrize("seed", [0, 1])
def test_resampled_crop_follows_the_signal(files, kind, tolerance, seed):
    out = AudioWaveform(sample_rate=16000, duration=1.0, with_info=True)(files[kind], rng(seed))
    t = out.info["audio_start"] + np.arange(16000) / 16000  # output sample times, s
    error = np.abs(out.value.numpy() - analytic(t, 2))[:, steady(t)]
    assert error.max() < tolerance  # the edges too: the resampler saw real context
    assert np.abs(out.value.numpy()[:, :8] - analytic(t[:8], 2)).max() < tolerance


def test_resample_only_when_rates_differ(files, monkeypatch):
    import torchaudio.functional

    calls = []
    real = torchaudio.functional.resample
    monkeypatch.setattr(
        torchaudio.functional, "resample", lambda w, a, b: calls.append((a, b)) or real(w, a, b)
    )
    AudioWaveform(sample_rate=44100, duration=0.5)(files["wav"], rng())
    AudioWaveform(duration=0.5)(files["wav"], rng())
    assert calls == []
    AudioWaveform(sample_rate=16000, duration=0.5)(files["wav"], rng())
    assert calls == [(44100, 16000)]


def test_random_start_seeded_uniform_centred_given(files):
    codec = AudioWaveform(duration=1.0, with_info=True)
    starts = {codec(files["flac"], rng(s)).info["audio_start"] for s in range(8)}
    assert len(starts) == 8 and all(0 <= s <= SECONDS - 1.0 for s in starts)
    assert torch.equal(codec(files["flac"], rng(3)).value, codec(files["flac"], rng(3)).value)
    centred = AudioWaveform(duration=1.0, start="uniform", with_info=True)(files["flac"], rng(7))
    assert centred.info["audio_start"] == pytest.approx(1.5, abs=1 / 16000)
    given = AudioWaveform(duration=0.5, start="given", start_column="s", with_info=True)
    out = given(files["flac"], rng(), sample={"s": 2.25})
    assert out.info["audio_start"] == 2.25
    np.testing.assert_array_equal(
        out.value.numpy(), audio_signal(SECONDS, 16000, 1)[:, 36000:44000]
    )


def test_whole_file_and_crop_longer_than_file(files):
    whole = AudioWaveform()(files["wav"], rng())
    np.testing.assert_array_equal(whole.numpy(), audio_signal(SECONDS, 44100, 2))
    long = AudioWaveform(duration=5.5, with_info=True)(files["flac"], rng(2))
    assert long.info["audio_start"] == 0.0 and long.value.shape == (1, 88000)
    np.testing.assert_array_equal(long.value[:, :64000].numpy(), audio_signal(SECONDS, 16000, 1))
    assert not long.value[:, 64000:].any()  # zeros past the end


# ---------------------------------------------------------------- seeking


class CountingContainer:
    """Wraps a PyAV container and counts the audio frames it decodes."""

    decoded = 0

    def __init__(self, container):
        self._container = container

    def __getattr__(self, name):
        return getattr(self._container, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._container.close()

    def decode(self, *args, **kwargs):
        for frame in self._container.decode(*args, **kwargs):
            CountingContainer.decoded += 1
            yield frame


@pytest.mark.parametrize("kind", ["wav", "flac", "m4a", "av"])
def test_late_crop_seeks_and_matches_full_decode(files, kind, monkeypatch):
    real_open = av.open
    monkeypatch.setattr(av, "open", lambda *a, **k: CountingContainer(real_open(*a, **k)))
    CountingContainer.decoded = 0
    whole = AudioWaveform()(files[kind], rng())
    everything = CountingContainer.decoded
    CountingContainer.decoded = 0
    late = AudioWaveform(duration=0.25, start="given", with_info=True)
    out = late(files[kind], rng(), sample={"clip_start": 2.6})
    assert CountingContainer.decoded < everything / 3  # it did not decode from 0
    first = round(out.info["audio_start"] * late_rate(files[kind]))
    expected = whole[:, first : first + out.value.shape[1]]
    np.testing.assert_allclose(out.value.numpy(), expected.numpy(), atol=1e-4)  # AAC: ~1e-5


def late_rate(path) -> int:
    with av.open(str(path)) as container:
        return container.streams.audio[0].rate


# ---------------------------------------------------------------- alignment to a video clip


def decode_like_the_decoder(codecs: dict, sample: dict, seed: int = 0) -> dict:
    """Run the real Decoder's per-sample step (codecs in order, Decoded facts as columns)."""
    decoder = Decoder(
        IterableWrapper([]), codecs, num_threads=0, seed=seed, errors=ErrorOptions(on_error="raise")
    )
    return decoder.process({"__index__": 0, **sample})


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_audio_aligned_to_the_clip_of_the_same_video(files, seed):
    out = decode_like_the_decoder(
        {
            "video": VideoClip(16, fps=8, with_info=True),
            "audio": AudioWaveform(16000, channels=1, align_to="video", source_column="video"),
        },
        {"video": files["av"]},
        seed,
    )
    start, end = out["video.clip_start"], out["video.clip_end"]
    assert end - start == pytest.approx(2.0)
    assert out["audio"].shape == (1, 32000)
    t = start + np.arange(32000) / 16000
    error = np.abs(out["audio"].numpy() - analytic(t, 1))[:, steady(t)]
    assert error.max() < 0.05  # a 1 ms shift would give errors near 1


def test_audio_aligned_from_a_separate_wav_column(files):
    wav = media.audio(files["dir"], "beside.wav", seconds=3.0, sample_rate=16000, channels=1)
    out = decode_like_the_decoder(
        {
            "video": VideoClip(8, fps=4, start="given", with_info=True),
            "audio": AudioWaveform(align_to="video", with_info=True),
        },
        {"video": files["av"], "audio": wav, "clip_start": 0.875},
    )
    assert out["audio.audio_start"] == 0.875 and out["audio.sample_rate"] == 16000
    expected = audio_signal(3.0, 16000, 1)[:, 14000:46000]
    np.testing.assert_array_equal(out["audio"].numpy(), expected)


def test_aligned_span_past_the_audio_end_is_zero_padded(files):
    codec = AudioWaveform(16000, align_to="video", duration=1.0)
    out = codec(files["flac"], rng(), sample={"video.clip_start": 3.5, "video.clip_end": 4.5})
    assert out.shape == (1, 16000)
    assert out[:, :7000].abs().max() > 0.35 and not out[:, 8000:].any()  # 0.4 in 3 s..4 s


@pytest.mark.parametrize("sample", [None, {}, {"video.clip_start": 1.0}, {"video.clip_start": "a"}])
def test_aligned_without_clip_info_raises(files, sample):
    with pytest.raises(DecodeError, match="with_info=True"):
        AudioWaveform(align_to="video")(files["flac"], rng(), sample=sample)


# ---------------------------------------------------------------- missing audio, bad input


def test_video_without_audio_raises_or_is_silence(files):
    with pytest.raises(DecodeError, match="no audio stream"):
        AudioWaveform(16000, duration=1.0)(files["mute"], rng())
    codec = AudioWaveform(16000, channels=2, duration=1.5, on_missing="silence", with_info=True)
    out = codec(files["mute"], rng())
    assert out.value.shape == (2, 24000) and not out.value.any()
    assert out.info == {"sample_rate": 16000, "audio_start": 0.0}
    assert codec.accepts_none and codec(None, rng()).value.shape == (2, 24000)
    aligned = AudioWaveform(8000, align_to="video", on_missing="silence")
    clip = {"video.clip_start": 0.5, "video.clip_end": 1.25}
    assert aligned(files["mute"], rng(), sample=clip).shape == (1, 6000)


BAD_AUDIO = {
    "truncated_m4a": lambda d: media.truncated(media.audio(d, "t.m4a", seconds=2.0)),
    "truncated_flac": lambda d: media.truncated(media.audio(d, "t.flac", seconds=2.0)),
    "truncated_faststart_video": lambda d: media.truncated(
        media.video_with_audio(d, "fs.mp4", num_frames=48, faststart=True)
    ),
    "zero_byte_wav": lambda d: media.zero_byte(d, "empty.wav"),
    "jpeg_named_wav": lambda d: media.jpeg_named(d, "picture.wav"),
    "garbage_flac": lambda d: media.garbage(d, "noise.flac"),
    "garbage_m4a": lambda d: media.garbage(d, "noise.m4a"),
    "text_wav": lambda d: media.text_file(d, "notes.wav"),
    "missing": lambda d: d / "missing.wav",
    "directory": lambda d: d,
}


@pytest.mark.parametrize("kind", sorted(BAD_AUDIO))
def test_bad_audio_raises_decode_error(tmp_path, kind):
    path = BAD_AUDIO[kind](tmp_path)
    with pytest.raises(DecodeError) as caught:
        AudioWaveform(16000)(path, rng())
    assert str(path) in str(caught.value)
    if kind == "directory":  # refused by a stat, before anything opens it
        assert caught.value.reason == "not_a_file"
    else:
        assert caught.value.__cause__ is not None


def test_truncated_wav_reads_as_the_shorter_file_it_is(tmp_path):
    """Documented fallback: FFmpeg takes a cut WAV's length from its size, so it decodes."""
    whole = media.audio(tmp_path, "t.wav", seconds=2.0, sample_rate=8000)
    header = whole.stat().st_size - 2 * 16000  # 16-bit mono
    path = media.truncated(whole, 0.5)
    out = AudioWaveform(duration=2.0)(path, rng())
    kept = (path.stat().st_size - header) // 2
    np.testing.assert_array_equal(out[:, :kept].numpy(), audio_signal(2.0, 8000, 1)[:, :kept])
    assert not out[:, kept:].any()


@pytest.mark.parametrize("value", [b"", b"\x00" * 1000, 12, [1, 2]])
def test_bad_values_raise_decode_error(value):
    with pytest.raises(DecodeError):
        AudioWaveform(16000, duration=1.0)(value, rng())


def test_bytes_equal_path(files):
    codec = AudioWaveform(16000, channels=1, duration=0.5)
    assert torch.equal(codec(files["m4a"], rng(2)), codec(files["m4a"].read_bytes(), rng(2)))


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sample_rate": 0}, "sample_rate=0"),
        ({"sample_rate": 16000.0}, "sample_rate=16000.0"),
        ({"channels": 3}, "channels=3"),
        ({"duration": 0}, "duration=0"),
        ({"duration": math.inf}, "duration=inf"),
        ({"start": "late"}, "start='late'"),
        ({"align_to": ""}, "align_to=''"),
        ({"on_missing": "zeros"}, "on_missing='zeros'"),
        ({"on_missing": "silence", "duration": 1.0}, "needs sample_rate"),
        ({"on_missing": "silence", "sample_rate": 16000}, "duration or align_to"),
        ({"probesize": 0}, "probesize=0"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AudioWaveform(**kwargs)


def test_codec_attributes_and_pickle(files):
    assert not AudioWaveform().needs_sample and not AudioWaveform().accepts_none
    codec = AudioWaveform(16000, 1, 0.5, align_to="video", source_column="video", with_info=True)
    assert codec.needs_sample and codec.source_column == "video"
    clone = pickle.loads(pickle.dumps(codec))
    assert repr(clone) == repr(codec)
    sample = {"video.clip_start": 0.5, "video.clip_end": 1.0}
    a, b = codec(files["av"], rng(), sample=sample), clone(files["av"], rng(), sample=sample)
    assert isinstance(a, Decoded) and torch.equal(a.value, b.value) and a.info == b.info

"""VideoClip start modes (random, uniform, given), on_short pad/skip, with_info, variable rate."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from sdsnodes._synthetic import frame_index
from sdsnodes.codecs import Decoded, VideoClip
from sdsnodes.codecs import video as video_module
from sdsnodes.errors import DecodeError
from tests import media


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def indices(clip: torch.Tensor) -> list[int]:
    return [frame_index(frame) for frame in clip]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("video_modes")
    return {
        "video": media.video(d),  # 48 frames, 24 fps: 2.0 s
        "long": media.video(d, "long.mp4", num_frames=240, gop=24),  # 10 s
        "one_frame": media.one_frame_video(d),
        "vfr": media.vfr_video(d),
    }


def expected_vfr(targets: np.ndarray) -> list[int]:
    """Index of the latest VFR frame at or before each target time."""
    times = np.array(media.VFR_TIMES)
    return [int(np.searchsorted(times, t + 1e-3, side="right")) - 1 for t in targets]


# ---------------------------------------------------------------- start modes


def test_uniform_start_is_the_centred_clip_whatever_the_rng(files):
    codec = VideoClip(16, start="uniform", with_info=True)
    out = codec(files["long"], rng(0))
    assert isinstance(out, Decoded)
    assert indices(out.value) == list(range(112, 128))  # (240 - 16) / 2 = 112
    assert out.info["clip_start"] == pytest.approx(112 / 24)
    assert torch.equal(codec(files["long"], rng(9)).value, out.value)


def test_random_start_varies_with_seed_and_stays_inside(files):
    starts = {VideoClip(16).clip(files["long"], rng(s))[1]["clip_start"] for s in range(10)}
    assert len(starts) >= 8
    assert all(0 <= s <= 10 - 16 / 24 + 1e-9 for s in starts)


@pytest.mark.parametrize("start", [0.0, 2.5, 4.99, 7.0])
def test_given_start_from_sample_column(files, start):
    codec = VideoClip(8, fps=8, start="given", start_column="t0")
    assert codec.needs_sample and not VideoClip(8).needs_sample
    clip, info = codec.clip(files["long"], rng(), sample={"t0": start})
    first = int(np.floor(start * 24 + 1e-3))
    assert indices(clip) == [first + 3 * i for i in range(8)]
    assert info["clip_start"] == start and info["clip_end"] == pytest.approx(start + 1.0)
    assert torch.equal(codec(files["long"], rng(5), sample={"t0": start}), clip)  # no randomness


@pytest.mark.parametrize(
    ("sample", "message"),
    [
        (None, "needs a number of seconds in column 'clip_start'"),
        ({}, "column 'clip_start'"),
        ({"clip_start": "soon"}, "'soon'"),
        ({"clip_start": -1.0}, "must be finite and >= 0"),
        ({"clip_start": float("nan")}, "must be finite"),
        ({"clip_start": 10.5}, "past the end of the video"),
    ],
)
def test_given_start_bad_values_raise_decode_error(files, sample, message):
    with pytest.raises(DecodeError, match=message):
        VideoClip(4, start="given")(files["long"], rng(), sample=sample)


# ---------------------------------------------------------------- short videos


def test_short_video_pad_or_skip(files):
    assert (
        indices(VideoClip(60, on_short="pad")(files["video"], rng())) == list(range(48)) + [47] * 12
    )
    with pytest.raises(DecodeError, match="shorter than the clip"):
        VideoClip(60, on_short="skip")(files["video"], rng())
    exact = VideoClip(48, on_short="skip")(files["video"], rng())  # exactly as long: kept
    assert indices(exact) == list(range(48))


def test_given_start_near_the_end_pads_or_skips(files):
    sample = {"clip_start": 1.5}  # 12 frames left of 48
    clip = VideoClip(16, start="given", on_short="pad")(files["video"], rng(), sample=sample)
    assert indices(clip) == list(range(36, 48)) + [47] * 4
    with pytest.raises(DecodeError, match="shorter than the clip"):
        VideoClip(16, start="given", on_short="skip")(files["video"], rng(), sample=sample)


def test_skip_detects_short_video_from_frames_when_duration_unknown(files, monkeypatch):
    real = video_module._rate_and_duration
    monkeypatch.setattr(video_module, "_rate_and_duration", lambda c, s: (real(c, s)[0], 0.0))
    with pytest.raises(DecodeError, match="frames ran out"):
        VideoClip(49, on_short="skip")(files["video"], rng())
    assert indices(VideoClip(48, on_short="skip")(files["video"], rng())) == list(range(48))


def test_one_frame_video_pads_or_skips(files):
    out = VideoClip(5, fps=10, with_info=True)(files["one_frame"], rng())
    assert out.value.shape == (5, 3, 96, 128) and indices(out.value) == [0] * 5
    assert out.info["clip_start"] == 0.0
    assert indices(VideoClip(1, on_short="skip")(files["one_frame"], rng())) == [0]
    with pytest.raises(DecodeError, match="shorter than the clip"):
        VideoClip(2, on_short="skip")(files["one_frame"], rng())


# ---------------------------------------------------------------- info


def test_with_info_returns_decoded_with_float_facts(files):
    out = VideoClip(8, fps=12, with_info=True)(files["long"], rng(3))
    assert isinstance(out, Decoded) and out.value.shape == (8, 3, 96, 128)
    assert set(out.info) == {"clip_start", "clip_end", "source_fps"}
    assert all(type(v) is float for v in out.info.values())
    assert out.info["clip_end"] - out.info["clip_start"] == pytest.approx(8 / 12)
    assert out.info["source_fps"] == pytest.approx(24.0)
    assert indices(out.value)[0] == round(out.info["clip_start"] * 24)


# ---------------------------------------------------------------- variable frame rate


@pytest.mark.parametrize(("start", "num_frames"), [(0.0, 14), (0.4, 3), (0.5, 6), (1.0, 4)])
def test_vfr_frames_chosen_by_timestamp(files, start, num_frames):
    codec = VideoClip(num_frames, fps=10, start="given")
    clip = codec(files["vfr"], rng(), sample={"clip_start": start})
    targets = start + np.arange(num_frames) / 10
    assert indices(clip) == expected_vfr(targets)


def test_vfr_random_starts_match_timestamps(files):
    for seed in range(6):
        clip, info = VideoClip(5, fps=10).clip(files["vfr"], rng(seed))
        targets = info["clip_start"] + np.arange(5) / 10
        assert indices(clip) == expected_vfr(targets)
        assert info["source_fps"] == pytest.approx(10 / 1.45, rel=0.01)  # 10 frames in 1.45 s


# ---------------------------------------------------------------- arguments


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"start": "middle"}, "start='middle'"), ({"on_short": "crop"}, "on_short='crop'")],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VideoClip(4, **kwargs)


def test_pickles_with_new_options(files):
    codec = VideoClip(4, start="given", on_short="skip", with_info=True, start_column="s")
    clone = pickle.loads(pickle.dumps(codec))
    assert repr(clone) == repr(codec) and clone.needs_sample
    a = codec(files["long"], rng(), sample={"s": 3.0})
    b = clone(files["long"], rng(), sample={"s": 3.0})
    assert torch.equal(a.value, b.value) and a.info == b.info

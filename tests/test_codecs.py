"""Codecs on real encoded media: shapes, frame selection, determinism, bad input."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile

from sdsnodes._synthetic import frame_index, make_image_dataset, make_video_dataset
from sdsnodes.codecs import Codec, ImageTensor, Text, VideoClip
from sdsnodes.errors import DecodeError, NotAFile
from tests import media


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def indices(clip: torch.Tensor) -> list[int]:
    return [frame_index(frame) for frame in clip]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("media")
    return {
        "video": media.video(d),  # 48 frames, 24 fps, 128x96, keyframe every 12
        "long": media.video(d, "long.mp4", num_frames=240, gop=24),
        "portrait": media.video(d, "portrait.mp4", width=96, height=128, fps=30, num_frames=30),
        "one_frame": media.one_frame_video(d),
        "dir": d,
    }


# ---------------------------------------------------------------- VideoClip: shapes and sizes


@pytest.mark.parametrize(
    ("size", "crop", "shape"),
    [
        (None, "center", (8, 3, 96, 128)),
        (64, "center", (8, 3, 64, 85)),
        ((48, 48), "center", (8, 3, 48, 48)),
        ((40, 100), "random", (8, 3, 40, 100)),
        ((128, 64), "random", (8, 3, 128, 64)),
    ],
)
def test_video_shapes(files, size, crop, shape):
    clip = VideoClip(8, size=size, crop=crop)(files["video"], rng())
    assert clip.shape == shape
    assert clip.dtype == torch.uint8
    assert clip.is_contiguous()


def test_video_portrait_short_side_and_rate(files):
    clip, info = VideoClip(4, size=48).clip(files["portrait"], rng())
    assert clip.shape == (4, 3, 64, 48)
    assert info["source_fps"] == pytest.approx(30.0)


def test_video_center_crop_matches_full_frame(files):
    full = VideoClip(4)(files["video"], rng(3))
    cropped = VideoClip(4, size=(96, 64))(files["video"], rng(3))  # 96x128 covers: no resize
    assert torch.equal(cropped, full[:, :, :, 32:96])


def test_video_random_crop_same_window_for_every_frame(files):
    seen = []
    for seed in range(6):
        clip = VideoClip(5, size=(32, 32), crop="random")(files["one_frame"], rng(seed))
        assert all(torch.equal(clip[0], frame) for frame in clip)  # padded: one window
        seen.append(clip[0])
    assert any(not torch.equal(seen[0], other) for other in seen[1:])


# ---------------------------------------------------------------- VideoClip: frame selection


def test_video_native_rate_gives_consecutive_frames(files):
    clip, info = VideoClip(16).clip(files["long"], rng(5))
    first = indices(clip)[0]
    assert indices(clip) == list(range(first, first + 16))
    assert first == round(info["clip_start"] * 24)
    assert info["clip_end"] == pytest.approx(info["clip_start"] + 16 / 24)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_video_fps_down_picks_every_third_frame(files, seed):
    clip, info = VideoClip(8, fps=8).clip(files["long"], rng(seed))
    got = indices(clip)
    assert got == [got[0] + 3 * i for i in range(8)]
    assert got[0] == round(info["clip_start"] * 24)  # the seek landed on the right frame
    assert info["clip_end"] == pytest.approx(info["clip_start"] + 1.0)


def test_video_fps_up_repeats_frames(files):
    got = indices(VideoClip(8, fps=48)(files["long"], rng(1)))
    assert got == [got[0] + i // 2 for i in range(8)]


def test_video_same_seed_same_clip_other_seeds_other_starts(files):
    codec = VideoClip(8, fps=12, size=(64, 64), crop="random")
    a, info_a = codec.clip(files["long"], rng(7))
    b, info_b = codec.clip(files["long"], rng(7))
    assert torch.equal(a, b) and info_a == info_b
    starts = {codec.clip(files["long"], rng(seed))[1]["clip_start"] for seed in range(8)}
    assert len(starts) >= 4
    assert all(0.0 <= s <= 10.0 - 8 / 12 for s in starts)


def test_video_shorter_than_clip_is_padded_with_last_frame(files):
    clip, info = VideoClip(60).clip(files["video"], rng(3))
    assert info["clip_start"] == 0.0
    assert indices(clip) == list(range(48)) + [47] * 12


def test_video_one_frame(files):
    clip = VideoClip(3, fps=2)(files["one_frame"], rng())
    assert clip.shape == (3, 3, 96, 128)
    assert indices(clip) == [0, 0, 0]


def test_video_bytes_equal_path(files):
    codec = VideoClip(6, fps=6, size=32)
    assert torch.equal(codec(files["long"], rng(4)), codec(files["long"].read_bytes(), rng(4)))


def test_video_threads_do_not_change_result(files):
    one = VideoClip(8, threads=1)(files["long"], rng(2))
    two = VideoClip(8, threads=2)(files["long"], rng(2))
    assert torch.equal(one, two)


def test_codecs_pickle_and_satisfy_protocol(files):
    for codec in (VideoClip(4, fps=8, size=(32, 48)), ImageTensor(size=16), Text()):
        assert isinstance(codec, Codec)
        clone = pickle.loads(pickle.dumps(codec))
        assert repr(clone) == repr(codec)
    codec = VideoClip(4, fps=8, size=(32, 48))
    clone = pickle.loads(pickle.dumps(codec))
    assert torch.equal(codec(files["video"], rng(1)), clone(files["video"], rng(1)))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_frames": 0}, "num_frames=0"),
        ({"num_frames": 4, "fps": 0}, "fps=0"),
        ({"num_frames": 4, "fps": float("nan")}, "fps=nan"),
        ({"num_frames": 4, "size": 0}, "size=0"),
        ({"num_frames": 4, "size": (32,)}, "size="),
        ({"num_frames": 4, "size": "big"}, "size="),
        ({"num_frames": 4, "crop": "left"}, "crop='left'"),
        ({"num_frames": 4, "threads": -1}, "threads=-1"),
    ],
)
def test_video_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VideoClip(**kwargs)


# ---------------------------------------------------------------- VideoClip: bad input

BAD_VIDEOS = {
    "corrupt": media.corrupt_mp4,
    "truncated": media.truncated_mp4,
    "zero_byte": media.zero_byte,
    "text": media.text_file,
    "no_video_stream": media.audio_only,
    "missing": lambda d: d / "missing.mp4",
    "directory": lambda d: d,
}


@pytest.mark.parametrize("kind", sorted(BAD_VIDEOS))
def test_video_bad_file_raises_decode_error(tmp_path, kind):
    path = BAD_VIDEOS[kind](tmp_path)
    with pytest.raises(DecodeError) as caught:
        VideoClip(4)(path, rng())
    assert str(path) in str(caught.value)
    if kind == "directory":  # refused by a stat, before anything opens it
        assert isinstance(caught.value, NotAFile) and caught.value.reason == "not_a_file"
    else:
        assert caught.value.__cause__ is not None


def test_video_truncated_data_raises_when_clip_reaches_it(tmp_path):
    path = media.truncated_mp4(tmp_path, faststart=True)  # index intact, frames cut
    with pytest.raises(DecodeError):
        VideoClip(48)(path, rng())


@pytest.mark.parametrize("value", [b"", b"\x00" * 1000, None, 12])
def test_video_bad_values_raise_decode_error(value):
    with pytest.raises(DecodeError):
        VideoClip(4)(value, rng())


# ---------------------------------------------------------------- ImageTensor


@pytest.mark.parametrize(
    ("size", "crop", "shape"),
    [
        (None, "center", (3, 48, 64)),
        (24, "center", (3, 24, 32)),
        (100, "center", (3, 100, 133)),
        ((20, 20), "center", (3, 20, 20)),
        ((30, 60), "random", (3, 30, 60)),
    ],
)
@pytest.mark.parametrize("ext", ["jpg", "png", "webp"])
def test_image_shapes(tmp_path, size, crop, shape, ext):
    path = media.image(tmp_path, f"image.{ext}", width=64, height=48)
    out = ImageTensor(size=size, crop=crop)(path, rng())
    assert out.shape == shape and out.dtype == torch.uint8


MODES = {
    "gray": media.gray_jpeg,
    "cmyk": media.cmyk_jpeg,
    "rgba": media.rgba_png,
    "la": media.la_png,
    "palette": media.palette_png,
    "palette_transparent": lambda d: media.palette_png(d, transparency=True),
    "i16": media.i16_png,
    "bilevel": media.bilevel_png,
}


@pytest.mark.parametrize("kind", sorted(MODES))
def test_image_any_mode_becomes_rgb_uint8(tmp_path, kind):
    out = ImageTensor()(MODES[kind](tmp_path), rng())
    assert out.shape == (3, 30, 40) and out.dtype == torch.uint8
    gray = ImageTensor(mode="L")(MODES[kind](tmp_path), rng())
    assert gray.shape == (1, 30, 40) and gray.dtype == torch.uint8


def test_image_mode_values(tmp_path):
    rgba = ImageTensor()(media.rgba_png(tmp_path), rng())
    assert rgba[:, 0, 0].tolist() == [255, 255, 255]  # transparent: over white
    assert rgba[:, 0, 39].tolist() == [255, 0, 0]
    i16 = ImageTensor()(media.i16_png(tmp_path), rng())
    assert i16[:, 0, 0].tolist() == [255] * 3 and i16[:, 0, 39].tolist() == [100] * 3
    cmyk = ImageTensor()(media.cmyk_jpeg(tmp_path), rng())
    assert cmyk[0].float().mean() > 150 and cmyk[1:].float().mean() < 80  # still red


def test_image_exif_orientation_applied(tmp_path):
    out = ImageTensor()(media.exif_rotated_jpeg(tmp_path), rng())
    assert out.shape == (3, 64, 48)  # stored 64 wide x 48 high, shown rotated
    assert out[0, 4, 44] > 200 and out[1, 4, 44] < 60  # red corner moved to the top right
    assert out[0, 4, 4] < 100
    resized = ImageTensor(size=(32, 16))(media.exif_rotated_jpeg(tmp_path), rng())
    assert resized.shape == (3, 32, 16)


def test_image_big_jpeg_uses_draft(tmp_path, monkeypatch):
    calls = []
    original = JpegImageFile.draft

    def spy(self, mode, size):
        calls.append((mode, size))
        return original(self, mode, size)

    monkeypatch.setattr(JpegImageFile, "draft", spy)
    path = media.big_jpeg(tmp_path)
    out = ImageTensor(size=64, decoder="pillow")(path, rng())
    assert out.shape == (3, 64, 85)
    assert calls == [("RGB", (85, 64))]
    assert ImageTensor(size=(100, 100), decoder="pillow")(path, rng()).shape == (3, 100, 100)
    calls.clear()
    ImageTensor(size=800, decoder="pillow")(path, rng())  # not 2x smaller: full decode
    assert calls == []


def test_image_random_crop_is_deterministic_and_varies(tmp_path):
    path = media.image(tmp_path, "image.png", width=64, height=48)
    codec = ImageTensor(size=(16, 16), crop="random")
    assert torch.equal(codec(path, rng(3)), codec(path, rng(3)))
    assert len({codec(path, rng(s)).numpy().tobytes() for s in range(8)}) > 1
    covering = ImageTensor(size=16)(path, rng())  # [3, 16, 21]
    crop = codec(path, rng(5))
    windows = covering.unfold(1, 16, 1).unfold(2, 16, 1)  # [C, 1, 6, 16, 16]
    assert (windows == crop[:, None, None]).all(-1).all(-1).all(0).any()


def test_image_bytes_equal_path(tmp_path):
    path = media.image(tmp_path, "image.jpg", width=64, height=48)
    assert torch.equal(ImageTensor(size=20)(path, rng()), ImageTensor(size=20)(path.read_bytes()))


@pytest.mark.parametrize(
    "make",
    [media.truncated_jpeg, media.zero_byte, media.corrupt_mp4, lambda d: d / "missing.jpg"],
)
def test_image_bad_file_raises_decode_error(tmp_path, make):
    with pytest.raises(DecodeError) as caught:
        ImageTensor(size=16)(make(tmp_path), rng())
    assert caught.value.__cause__ is not None


def test_image_bad_arguments():
    with pytest.raises(ValueError, match="mode='CMYK'"):
        ImageTensor(mode="CMYK")
    with pytest.raises(ValueError, match="crop="):
        ImageTensor(crop=None)


# ---------------------------------------------------------------- Text


def test_text():
    text = Text()
    assert text("  a cat \n", rng()) == "a cat"
    assert text(" caf\u00e9 ".encode(), rng()) == "caf\u00e9"
    assert text(None, rng()) is None
    assert text(3, rng()) == "3"
    assert Text(strip=False)(" a ", rng()) == " a "
    with pytest.raises(DecodeError):
        text(b"\xff\xfe\xfa", rng())


# ---------------------------------------------------------------- synthetic datasets


def test_make_video_dataset_is_real_varied_and_idempotent(tmp_path):
    index = make_video_dataset(tmp_path, num_videos=4, seconds=0.5)
    table = pq.read_table(index).to_pydict()
    assert list(table) == ["video", "caption", "num_frames", "fps"]
    assert table["fps"] == [24.0, 24.0, 30.0, 24.0] and table["num_frames"][2] == 15
    shapes = {tuple(VideoClip(2)(p, rng()).shape[2:]) for p in table["video"]}
    assert shapes == {(96, 128), (128, 96), (96, 160)}
    stamp = index.stat().st_mtime_ns
    assert make_video_dataset(tmp_path, num_videos=4, seconds=0.5) == index
    assert index.stat().st_mtime_ns == stamp


def test_make_image_dataset(tmp_path):
    index = make_image_dataset(tmp_path, num_images=8)
    table = pq.read_table(index).to_pydict()
    assert {p.rsplit(".", 1)[1] for p in table["image"]} == {"jpg", "png", "webp"}
    for path in table["image"]:
        with Image.open(path) as image:
            assert image.size in ((64, 48), (48, 64))
        assert ImageTensor(size=(32, 32))(path, rng()).shape == (3, 32, 32)

"""Latent on real .npy/.npz/.pt files: loading, keys, VAE moments and sampling, clip slicing,
dtypes, and refusal of pickles and broken files."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch

from sdsnodes.codecs import Latent
from sdsnodes.errors import DecodeError
from tests import media


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def video_latent(channels: int = 4, frames: int = 12) -> torch.Tensor:
    """float32 [C, T, 2, 3] whose every value in frame j is j + c / 100 (frame-readable)."""
    values = (
        torch.arange(frames).view(1, frames, 1, 1) + torch.arange(channels).view(-1, 1, 1, 1) / 100
    )
    return values.expand(channels, frames, 2, 3).contiguous().float()


def frames_of(latent: torch.Tensor, dim: int = 1) -> list[int]:
    """The frame numbers (see video_latent) along ``dim``, read from channel 0."""
    per_frame = latent.movedim(dim, 0).reshape(latent.shape[dim], -1)  # [T, C * H * W]
    return [int(v) for v in per_frame[:, 0].round()]


def clip(start: float, end: float, fps: float = 24.0) -> dict:
    return {"video.clip_start": start, "video.clip_end": end, "video.source_fps": fps}


# ---------------------------------------------------------------- formats and keys


def test_npy_pt_npz_and_bytes_load_the_same(tmp_path):
    x = video_latent()
    np.save(tmp_path / "a.npy", x.numpy())
    torch.save(x, tmp_path / "a.pt")
    torch.save({"latent": x, "fps": 24}, tmp_path / "d.pt")
    np.savez(tmp_path / "a.npz", latent=x.numpy())
    legacy = io.BytesIO()
    torch.save(x, legacy, _use_new_zipfile_serialization=False)
    for value in [tmp_path / "a.npy", tmp_path / "a.pt", (tmp_path / "a.pt").read_bytes()]:
        out = Latent()(value, rng())
        assert torch.equal(out, x) and out.dtype == torch.float32
    for value in [tmp_path / "d.pt", tmp_path / "a.npz", (tmp_path / "a.npz").read_bytes()]:
        assert torch.equal(Latent(key="latent")(value, rng()), x)
    assert torch.equal(Latent()(legacy.getvalue(), rng()), x)
    assert torch.equal(Latent()(tmp_path / "a.npz", rng()), x)  # a lone entry needs no key


def test_wrong_extension_is_sniffed(tmp_path):
    x = video_latent()
    np.save(tmp_path / "a.npy", x.numpy())
    (tmp_path / "npy_named.pt").write_bytes((tmp_path / "a.npy").read_bytes())
    assert torch.equal(Latent()(tmp_path / "npy_named.pt", rng()), x)


def test_missing_or_ambiguous_key_raises(tmp_path):
    torch.save({"a": torch.zeros(2), "b": torch.ones(2)}, tmp_path / "two.pt")
    with pytest.raises(DecodeError, match="pass key="):
        Latent()(tmp_path / "two.pt", rng())
    with pytest.raises(DecodeError, match=r"no entry 'latent': the file holds \['a', 'b'\]"):
        Latent(key="latent")(tmp_path / "two.pt", rng())
    torch.save({"a": "text"}, tmp_path / "str.pt")
    with pytest.raises(DecodeError, match="real-valued tensor"):
        Latent(key="a")(tmp_path / "str.pt", rng())


@pytest.mark.parametrize("stored", [torch.float16, torch.bfloat16])
def test_dtype_float32_by_default_or_kept(tmp_path, stored):
    torch.save(video_latent().to(stored), tmp_path / "h.pt")
    assert Latent()(tmp_path / "h.pt", rng()).dtype == torch.float32
    assert Latent(dtype=None)(tmp_path / "h.pt", rng()).dtype == stored
    np.save(tmp_path / "h.npy", video_latent().half().numpy())
    assert Latent(dtype=None)(tmp_path / "h.npy", rng()).dtype == torch.float16


# ---------------------------------------------------------------- VAE moments


def moments(shape=(4, 6, 8, 8)) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.linspace(-2, 2, int(np.prod(shape))).view(shape)
    logvar = torch.full(shape, 2 * np.log(0.5))  # std 0.5
    return mean, logvar


def test_mean_logvar_dict_mean_or_sample(tmp_path):
    mean, logvar = moments()
    torch.save({"mean": mean, "logvar": logvar}, tmp_path / "m.pt")
    assert torch.equal(Latent()(tmp_path / "m.pt", rng()), mean)
    a = Latent(sample=True)(tmp_path / "m.pt", rng(1))
    eps = torch.from_numpy(rng(1).standard_normal(mean.shape, dtype=np.float32))
    torch.testing.assert_close(a, mean + 0.5 * eps)
    assert torch.equal(a, Latent(sample=True)(tmp_path / "m.pt", rng(1)))
    assert not torch.equal(a, Latent(sample=True)(tmp_path / "m.pt", rng(2)))
    assert (a - mean).std().item() == pytest.approx(0.5, rel=0.05)


def test_moments_tensor_split_on_channel_dim(tmp_path):
    mean, logvar = moments()
    np.save(tmp_path / "c0.npy", torch.cat([mean, logvar], 0).numpy())
    torch.save({"latent_dist": torch.cat([mean, logvar], 1)}, tmp_path / "c1.pt")
    assert torch.equal(Latent(moments=True)(tmp_path / "c0.npy", rng()), mean)
    out = Latent(key="latent_dist", moments=True, channel_dim=1)(tmp_path / "c1.pt", rng())
    assert torch.equal(out, torch.cat([mean, logvar], 1)[:, :6])
    sampled = Latent(moments=True, sample=True)(tmp_path / "c0.npy", rng(3))
    eps = torch.from_numpy(rng(3).standard_normal(mean.shape, dtype=np.float32))
    torch.testing.assert_close(sampled, mean + 0.5 * eps)


def test_logvar_is_clamped_and_bad_moments_raise(tmp_path):
    mean = torch.zeros(2, 3)
    torch.save({"mean": mean, "logvar": torch.full((2, 3), 1000.0)}, tmp_path / "big.pt")
    out = Latent(sample=True)(tmp_path / "big.pt", rng())
    assert torch.isfinite(out).all() and out.abs().max() <= np.exp(10) * 10
    np.save(tmp_path / "odd.npy", np.zeros((3, 4), np.float32))
    with pytest.raises(DecodeError, match="even size on dim 0"):
        Latent(moments=True)(tmp_path / "odd.npy", rng())
    with pytest.raises(DecodeError, match="no logvar"):
        Latent(sample=True)(tmp_path / "odd.npy", rng())


# ---------------------------------------------------------------- alignment to a video clip


@pytest.mark.parametrize(
    ("start_frame", "frames", "kwargs", "expected"),
    [
        (8, 16, {"temporal_stride": 4}, [2, 3, 4, 5]),  # frames 8..23
        (10, 16, {"temporal_stride": 4}, [2, 3, 4, 5]),  # starts inside latent 2
        (0, 17, {"temporal_stride": 4, "causal": True}, [0, 1, 2, 3, 4]),
        (5, 17, {"temporal_stride": 4, "causal": True}, [2, 3, 4, 5, 6]),  # 5..21
        (4, 17, {"temporal_stride": 4, "causal": True}, [1, 2, 3, 4, 5]),
        (12, 12, {"latent_fps": 6.0}, [3, 4, 5]),  # 0.5 s .. 1.0 s at 6 latent frames/s
        (36, 16, {"temporal_stride": 4}, [9, 10, 11, 11]),  # past the end: last one repeated
    ],
)
def test_clip_slicing(tmp_path, start_frame, frames, kwargs, expected):
    np.save(tmp_path / "v.npy", video_latent(frames=12).numpy())
    codec = Latent(align_to="video", **kwargs)
    assert codec.needs_sample
    out = codec(
        tmp_path / "v.npy", rng(), sample=clip(start_frame / 24, (start_frame + frames) / 24)
    )
    assert out.shape == (4, len(expected), 2, 3)
    assert frames_of(out) == expected


def test_clip_slicing_other_time_dim_and_moments(tmp_path):
    mean = video_latent(frames=10).permute(1, 0, 2, 3)  # [T, C, H, W]
    torch.save({"mean": mean, "logvar": torch.zeros_like(mean)}, tmp_path / "t0.pt")
    codec = Latent(align_to="video", temporal_dim=0, temporal_stride=2, sample=True)
    out = codec(tmp_path / "t0.pt", rng(), sample=clip(4 / 24, 12 / 24))
    assert out.shape == (4, 4, 2, 3)
    assert (out - mean[2:6]).abs().max() > 0.1  # sampled with std 1
    plain = Latent(align_to="video", temporal_dim=-4, temporal_stride=2)
    assert torch.equal(plain(tmp_path / "t0.pt", rng(), sample=clip(4 / 24, 12 / 24)), mean[2:6])


@pytest.mark.parametrize(
    ("sample", "message"),
    [
        (None, "with_info=True"),
        ({"video.clip_start": 0.0, "video.clip_end": 1.0}, "with_info=True"),  # no source_fps
        (clip(2.0, 2.5), "after the last"),  # latent frame 12 of 12
    ],
)
def test_clip_slicing_failures(tmp_path, sample, message):
    np.save(tmp_path / "v.npy", video_latent(frames=12).numpy())
    with pytest.raises(DecodeError, match=message):
        Latent(align_to="video", temporal_stride=4)(tmp_path / "v.npy", rng(), sample=sample)


def test_temporal_dim_out_of_range(tmp_path):
    np.save(tmp_path / "flat.npy", np.zeros((4, 8), np.float32))
    with pytest.raises(DecodeError, match="temporal_dim=2"):
        Latent(align_to="video", temporal_dim=2, latent_fps=6.0)(
            tmp_path / "flat.npy", rng(), sample=clip(0, 1)
        )


# ---------------------------------------------------------------- bad input


def torch_saved_custom_object(d):
    torch.save(media.Payload(), d / "obj.pt")
    return d / "obj.pt"


def object_npy(d):
    np.save(d / "o.npy", np.array([{"a": 1}], dtype=object))  # needs pickle to load
    return d / "o.npy"


def truncated_npy(d):
    np.save(d / "t.npy", np.zeros((64, 64), np.float32))
    return media.truncated(d / "t.npy", 0.5)


def truncated_pt(d):
    torch.save(torch.zeros(64, 64), d / "t.pt")
    return media.truncated(d / "t.pt", 0.5)


BAD_LATENTS = {
    "pickle_as_pt": media.pickle_as_pt,
    "torch_saved_custom_object": torch_saved_custom_object,
    "object_npy": object_npy,
    "truncated_npy": truncated_npy,
    "truncated_pt": truncated_pt,
    "zero_byte": lambda d: media.zero_byte(d, "empty.pt"),
    "garbage_pt": lambda d: media.garbage(d, "noise.pt"),
    "garbage_npy": lambda d: media.garbage(d, "noise.npy"),
    "jpeg_named_npy": lambda d: media.jpeg_named(d, "picture.npy"),
    "missing": lambda d: d / "missing.pt",
    "directory": lambda d: d,
}


@pytest.mark.parametrize("kind", sorted(BAD_LATENTS))
def test_bad_latent_raises_decode_error(tmp_path, kind):
    path = BAD_LATENTS[kind](tmp_path)
    with pytest.raises(DecodeError) as caught:
        Latent()(path, rng())
    assert str(path) in str(caught.value)
    if kind == "directory":  # refused by a stat, before anything opens it
        assert caught.value.reason == "not_a_file"
    else:
        assert caught.value.__cause__ is not None


def test_pickles_are_never_run(tmp_path, monkeypatch):
    ran = []
    monkeypatch.setattr(
        media.Payload, "__setstate__", lambda self, state: ran.append(1), raising=False
    )
    for path in (media.pickle_as_pt(tmp_path), torch_saved_custom_object(tmp_path)):
        with pytest.raises(DecodeError):
            Latent()(path, rng())
    assert ran == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"align_to": "video"}, "exactly one of latent_fps and temporal_stride"),
        ({"align_to": "video", "latent_fps": 6.0, "temporal_stride": 4}, "exactly one"),
        ({"latent_fps": 0}, "latent_fps=0"),
        ({"temporal_stride": 0}, "temporal_stride=0"),
        ({"causal": True}, "causal=True needs temporal_stride"),
        ({"dtype": "float32"}, "dtype='float32'"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Latent(**kwargs)


def test_pickle_and_repr(tmp_path):
    codec = Latent(key="latent", sample=True, align_to="video", temporal_stride=4, causal=True)
    clone = pickle.loads(pickle.dumps(codec))
    assert repr(clone) == repr(codec) and "causal=True" in repr(codec)

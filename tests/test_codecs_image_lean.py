"""The lean image path: interpolation/antialias options, EXIF orientation read once, one copy
into the batch, and the decoder's lazily seeded generators."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from sdsnodes.codecs import ImageTensor
from sdsnodes.errors import DecodeError
from sdsnodes.nodes.collate import collate
from sdsnodes.nodes.decoder import LazyRng, sample_rng
from sdsnodes.sample import EPOCH, INDEX


def smooth(width: int = 96, height: int = 64) -> np.ndarray:
    """A smooth RGB gradient, uint8 [H, W, 3] (no detail for filters to disagree on)."""
    ys, xs = np.mgrid[0:height, 0:width]
    return np.stack([xs * 255 // width, ys * 255 // height, (xs + ys) * 255 // (width + height)],
                    axis=-1).astype(np.uint8)  # fmt: skip


def png(pixels: np.ndarray, exif: Image.Exif | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", exif=exif or Image.Exif())
    return buffer.getvalue()


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "lanczos", "box", "hamming"])
def test_interpolation_follows_pillow(interpolation):
    data = png(smooth())
    out = ImageTensor(size=32, interpolation=interpolation)(data)
    assert out.shape == (3, 32, 48) and out.dtype == torch.uint8
    method = Image.Resampling[interpolation.upper()]
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((48, 32), method))
    diff = np.abs(out.permute(1, 2, 0).numpy().astype(int) - expected.astype(int))
    assert diff.max() <= 2, (interpolation, diff.max())


def test_nearest_picks_source_pixels():
    pixels = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    out = ImageTensor(size=20, interpolation="nearest")(png(pixels))
    assert torch.equal(out.permute(1, 2, 0), torch.from_numpy(pixels[1::2, 1::2]))


def test_antialias_false_aliases():
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = png(noise)
    smooth_out = ImageTensor(size=16, interpolation="bilinear")(data).float()
    aliased = ImageTensor(size=16, interpolation="bilinear", antialias=False)(data).float()
    assert 2 * smooth_out.std() < aliased.std()  # ~16 pixels averaged per output vs 4


def test_bad_interpolation_names_the_fix():
    with pytest.raises(ValueError, match="must be one of"):
        ImageTensor(interpolation="cubic")
    with pytest.raises(ValueError, match="antialias=True"):
        ImageTensor(interpolation="lanczos", antialias=False)
    assert "interpolation='bilinear'" in repr(ImageTensor(interpolation="bilinear"))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_as_pillow(orientation):
    pixels = smooth(48, 32)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = png(pixels, exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB"))
    out = ImageTensor()(data)  # size None: no resize, exact
    assert torch.equal(out.permute(1, 2, 0), torch.from_numpy(expected.copy()))


def test_one_copy_into_a_contiguous_batch():
    data = png(smooth())
    codec = ImageTensor(size=(32, 32), crop="random")
    images = [codec(data, np.random.default_rng(i)) for i in range(4)]
    images[0].add_(0)  # writable: no warning, no shared read-only buffer
    batch = collate([{"image": x} for x in images])["image"]
    assert batch.shape == (4, 3, 32, 32) and batch.is_contiguous()
    assert all(torch.equal(batch[i], images[i]) for i in range(4))


def test_lazy_rng_draws_as_the_eager_one():
    sample = {EPOCH: 3, INDEX: 17}
    lazy, eager = LazyRng(5, sample, 1), sample_rng(5, sample, 1)
    assert lazy.integers(0, 1000, 8).tolist() == eager.integers(0, 1000, 8).tolist()
    assert lazy.random() == eager.random()
    codec = ImageTensor(size=(24, 24), crop="random")
    data = png(smooth())
    assert torch.equal(codec(data, LazyRng(0, sample, 0)), codec(data, sample_rng(0, sample, 0)))


# ---------------------------------------------------------------- simplejpeg, with Pillow's fallback


def jpeg(pixels: np.ndarray, exif: Image.Exif | None = None) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=95, exif=exif or Image.Exif())
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("pixels", "kwargs"),
    [
        (smooth(), {"size": (32, 32)}),  # RGB, resized
        (smooth()[:, :, 0], {"size": 24, "mode": "L"}),  # greyscale
        (smooth()[:, :, 0], {"size": 24}),  # greyscale JPEG to RGB
        (smooth(512, 384), {"size": 64}),  # draft: DCT-scaled by libjpeg in both
    ],
)
def test_simplejpeg_agrees_with_pillow(pixels, kwargs):
    pytest.importorskip("simplejpeg")
    data = jpeg(pixels)
    fast = ImageTensor(decoder="simplejpeg", **kwargs)(data)
    slow = ImageTensor(decoder="pillow", **kwargs)(data)
    assert fast.shape == slow.shape
    assert (fast.int() - slow.int()).abs().max() <= 2


def test_simplejpeg_leaves_rotated_and_truncated_jpegs_to_the_rules():
    pytest.importorskip("simplejpeg")
    exif = Image.Exif()
    exif[0x0112] = 6
    data = jpeg(smooth(48, 32), exif)
    rotated = ImageTensor(decoder="simplejpeg")(data)
    assert torch.equal(rotated, ImageTensor(decoder="pillow")(data))  # Pillow decoded it
    assert rotated.shape == (3, 48, 32)
    with pytest.raises(DecodeError):
        ImageTensor(decoder="simplejpeg")(jpeg(smooth())[:-200])


def test_decoder_choice_and_the_fallback_without_simplejpeg():
    with pytest.raises(ValueError, match="must be one of"):
        ImageTensor(decoder="turbo")
    code = (
        "import sys; sys.modules['simplejpeg'] = None\n"  # import simplejpeg now fails
        "from sdsnodes.codecs import ImageTensor\n"
        "assert ImageTensor(decoder='auto').decoder == 'pillow'\n"
        "try:\n    ImageTensor(decoder='simplejpeg')\nexcept ValueError as e:\n    print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "pip install simplejpeg" in done.stdout
    assert ImageTensor().decoder == "simplejpeg"  # the default: a dependency, installed

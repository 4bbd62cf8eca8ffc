"""Codecs against hostile input: only regular files are opened, pixel limits refuse bombs from
the header, lying or truncated JPEGs raise, and the Decoder names the URL the user knows."""

from __future__ import annotations

import io
import os
import pickle
import re
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile
from torchdata.nodes import IterableWrapper
from utils import hang_guard

from sdsnodes.codecs import AudioWaveform, ImageTensor, Latent, VideoClip
from sdsnodes.codecs._files import regular_file
from sdsnodes.errors import DecodeError, NotAFile, TooLarge
from sdsnodes.nodes.decoder import Decoder
from sdsnodes.options import ErrorOptions
from tests import media


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def jpeg_declaring(path: Path, width: int, height: int, progressive: bool = False) -> Path:
    """A real 64 x 48 JPEG whose frame header declares ``width`` x ``height`` pixels."""
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8)
    Image.fromarray(pixels).save(buffer, "JPEG", progressive=progressive)
    data = bytearray(buffer.getvalue())
    sof = data.find(b"\xff\xc2" if progressive else b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


# ---------------------------------------------------------------- regular files only


@pytest.fixture
def specials(tmp_path) -> dict[str, str]:
    """A directory, a FIFO, a character device, a socket and a NUL byte: no regular file."""
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "folder").mkdir()
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "sock"))
    os.symlink(tmp_path / "pipe", tmp_path / "link_to_pipe")
    yield {
        "a directory": str(tmp_path / "folder"),
        "a FIFO (named pipe)": str(tmp_path / "pipe"),
        "a character device": "/dev/null",
        "a socket": str(tmp_path / "sock"),
        "a FIFO (named pipe) ": str(tmp_path / "link_to_pipe"),  # symlinks are followed
        "NUL byte": str(tmp_path / "a\x00.jpg"),
    }
    listener.close()


def test_regular_file_refuses_everything_else_by_a_stat(tmp_path, specials):
    path = media.image(tmp_path, "ok.jpg")
    assert regular_file(str(path)) == str(path)
    for kind, special in specials.items():
        with pytest.raises(NotAFile, match=re.escape(kind.strip())) as caught:
            regular_file(special)
        assert caught.value.reason == "not_a_file"
    with pytest.raises(FileNotFoundError):
        regular_file(str(tmp_path / "missing.jpg"))


CODECS = {
    "image": ImageTensor(size=16),
    "video": VideoClip(4),
    "audio": AudioWaveform(16000),
    "latent": Latent(),
}


@pytest.mark.parametrize("name", sorted(CODECS))
def test_every_codec_refuses_a_fifo_without_opening_it(specials, name):
    for special in specials.values():
        with hang_guard(), pytest.raises(NotAFile) as caught:
            CODECS[name](special, rng())
        assert caught.value.reason == "not_a_file"


# ---------------------------------------------------------------- pixel limits and lying JPEGs


def test_image_max_pixels_refuses_from_the_header(tmp_path, monkeypatch):
    path = media.image(tmp_path, "image.png", width=64, height=48)
    loads = []
    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(1) or original(self))
    with pytest.raises(TooLarge, match="64x48 pixels declared, more than max_pixels=3071"):
        ImageTensor(size=16, max_pixels=64 * 48 - 1)(path, rng())
    assert loads == []  # refused before any pixel was decoded
    assert ImageTensor(size=16, max_pixels=64 * 48)(path, rng()).shape == (3, 16, 21)
    assert ImageTensor(size=16, max_pixels=None)(path, rng()).shape == (3, 16, 21)


def test_image_bombs_beyond_pillows_limit_are_too_large(tmp_path):
    path = jpeg_declaring(tmp_path / "bomb.jpg", 30_000, 30_000)
    for max_pixels in (None, 10**12):  # Pillow's own limit (2x MAX_IMAGE_PIXELS) still holds
        with pytest.raises(TooLarge, match="900000000 pixels"):
            ImageTensor(size=16, max_pixels=max_pixels)(path, rng())


@pytest.mark.parametrize("progressive", [False, True])
def test_a_jpeg_declaring_more_pixels_than_its_data_holds_is_not_grey(tmp_path, progressive):
    path = jpeg_declaring(tmp_path / "liar.jpg", 4000, 3000, progressive)
    with pytest.raises(DecodeError, match="cannot hold the 4000x3000 pixels"):
        ImageTensor(size=32, max_pixels=None)(path, rng())
    with pytest.raises(DecodeError, match="cannot hold"):
        ImageTensor(size=32)(path.read_bytes(), rng())


@pytest.mark.parametrize("mode", ["L", "RGB"])
@pytest.mark.parametrize("progressive", [False, True])
def test_a_flat_jpeg_compressed_to_the_bone_still_decodes(mode, progressive):
    buffer = io.BytesIO()
    Image.new(mode, (4000, 3000), 128 if mode == "L" else (128, 128, 128)).save(
        buffer, "JPEG", progressive=progressive, optimize=True
    )
    out = ImageTensor(size=16)(buffer.getvalue(), rng())  # ~2 bits per block: over the bound
    assert out.shape == (3, 16, 21) and int(out.float().mean().round()) == 128


def test_truncated_jpeg_raises_even_with_load_truncated_images(tmp_path, monkeypatch):
    path = media.truncated_jpeg(tmp_path)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    for draft in (True, False):
        with pytest.raises(DecodeError, match="truncated"):
            ImageTensor(size=16, draft=draft)(path, rng())


def test_video_max_pixels_refuses_large_frames(tmp_path):
    path = media.video(tmp_path, num_frames=4, width=64, height=48)
    with pytest.raises(TooLarge, match="64x48 pixels per frame"):
        VideoClip(2, max_pixels=64 * 48 - 1)(path, rng())
    assert VideoClip(2, max_pixels=64 * 48)(path, rng()).shape == (2, 3, 48, 64)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "1e6"])
@pytest.mark.parametrize("codec", [ImageTensor, lambda **kw: VideoClip(4, **kw)])
def test_max_pixels_is_validated(codec, bad):
    with pytest.raises(ValueError, match="max_pixels="):
        codec(max_pixels=bad)


def test_refusals_pickle_and_keep_their_reason():
    for error in (NotAFile("/x", "a FIFO"), TooLarge("/x", "too big")):
        again = pickle.loads(pickle.dumps(error))
        assert type(again) is type(error) and str(again) == str(error)
        assert again.reason == error.reason


# ---------------------------------------------------------------- the Decoder names the URL


def decode_one(sample: dict, codecs: dict) -> Decoder:
    decoder = Decoder(
        IterableWrapper([]), codecs, num_threads=0, errors=ErrorOptions(on_error="raise")
    )
    return decoder, decoder.process({"__index__": 0, **sample})


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda d: media.text_file(d, "page.jpg"), "decode"),
        (lambda d: jpeg_declaring(d / "bomb.jpg", 30_000, 30_000), "too_large"),
        (lambda d: d, "not_a_file"),
        (lambda d: d / "gone.jpg", "missing"),
    ],
)
def test_decode_errors_name_the_url_key_and_column_then_the_cache_path(tmp_path, make, reason):
    path = make(tmp_path)
    url = "https://data.example.com/shard 7/ünï.jpg"
    sample = {"__key__": "img:42", "image": str(path), "__url__.image": url}
    with pytest.raises(DecodeError) as caught:
        decode_one(sample, {"image": ImageTensor(size=16)})
    message = str(caught.value)
    assert message.startswith(f"cannot decode {url!r}: ")
    assert "column 'image' of __key__='img:42'" in message
    assert message.index(url) < message.index(f"cached as {str(path)!r}")
    decoder = Decoder(IterableWrapper([]), {"image": ImageTensor()}, num_threads=0)
    assert decoder.classify(caught.value) == reason


def test_local_files_are_named_by_their_path_once(tmp_path):
    path = media.text_file(tmp_path, "page.jpg")
    with pytest.raises(DecodeError) as caught:
        decode_one({"__key__": "k", "image": str(path)}, {"image": ImageTensor()})
    assert str(caught.value).startswith(f"cannot decode {str(path)!r}: ")
    assert "cached as" not in str(caught.value) and "column 'image' of __key__='k'" in str(
        caught.value
    )


def test_a_good_sample_still_decodes_through_the_decoder(tmp_path):
    path = media.image(tmp_path, "ok.jpg")
    _, out = decode_one({"__key__": "k", "image": str(path), "__url__.image": "s3://b/ok.jpg"},
                        {"image": ImageTensor(size=8)})  # fmt: skip
    assert isinstance(out["image"], torch.Tensor) and out["image"].shape == (3, 8, 11)


def test_a_column_read_in_ranges_is_named_by_its_url(tmp_path):
    path = media.text_file(tmp_path, "page.jpg")
    url = "https://data.example.com/page.jpg"
    with open(path, "rb") as file, pytest.raises(DecodeError) as caught:
        decode_one({"__key__": "k", "image": file, "__range_url__.image": url},
                   {"image": ImageTensor()})  # fmt: skip
    assert str(caught.value).startswith(f"cannot decode {url!r}: ")

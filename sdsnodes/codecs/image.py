"""Images decoded with Pillow: JPEG draft mode, EXIF orientation, any mode to RGB or L."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np
import torch

from sdsnodes.codecs._resize import (
    Size,
    as_source,
    check_crop,
    check_interpolation,
    check_max_pixels,
    check_size,
    cover_shape,
    crop_box,
    describe,
    draw_crop,
    resize,
)
from sdsnodes.errors import DecodeError, TooLarge

try:
    import simplejpeg as _SIMPLEJPEG  # a dependency; Pillow decodes where it does not import
except ImportError:  # pragma: no cover - depends on the environment
    _SIMPLEJPEG = None

DEFAULT_MAX_PIXELS = 89_478_485
"""Default pixel limit of :class:`ImageTensor` (about 0.27 GB as RGB): Pillow's own warning
threshold (the default ``PIL.Image.MAX_IMAGE_PIXELS``), so images within it never warn."""

_MODES = {"RGB": 3, "L": 1}
_ORIENTATION = 0x0112  # EXIF tag; values 5-8 rotate by 90 degrees, swapping width and height
_REDUCING_GAP = 3.0  # Pillow: reduce by an integer factor first while >= 3x the target size
_BACKGROUND = (255, 255, 255)  # transparent pixels are composited over white
_PILLOW_ONLY = {"box": 4, "hamming": 5, "lanczos": 1}  # PIL.Image.Resampling values
# EXIF orientation -> PIL.Image.Transpose value (as PIL.ImageOps.exif_transpose)
_TRANSPOSE = {2: 0, 3: 3, 4: 1, 5: 5, 6: 4, 7: 6, 8: 2}
_SWAPS = (2, 4, 5, 6)  # Transpose values that swap width and height
_ARITHMETIC_SOF = (b"\xff\xc9", b"\xff\xca", b"\xff\xcb")  # arithmetic-coded JPEG frames
_HEADER_LIMIT = 1 << 20  # bytes of a JPEG header searched for an arithmetic-coded frame


class ImageTensor:
    """Decode an image file into a uint8 tensor, optionally resized and cropped.

    EXIF orientation is applied first, so sizes refer to the upright image. JPEGs much larger
    than the target (2x or more on both sides) are decoded at a reduced scale (Pillow's
    ``draft``, i.e. libjpeg DCT scaling). Any Pillow mode is converted to ``mode``: images with
    transparency are composited over white, 16-bit images keep their 8 most significant bits.
    Resizing is antialiased bicubic by default (``interpolation``/``antialias`` as in
    torchvision's ``Resize``): nearest, bilinear and bicubic run in torch's uint8 kernels, which
    follow Pillow's filters to within one level and cost 0.4x (bicubic) to 0.5x (bilinear) the
    CPU of Pillow's ``resize`` (``benchmarks/bench_resize.py``); box, hamming and lanczos run in
    Pillow
    (``reducing_gap=3``). The EXIF header is parsed once per image.

    The result is written once: Pillow's pixels are copied out into a tensor, resized by torch
    into a new one, and the crop is a view of it, with channels-last strides; the collate's
    ``torch.stack`` writes it into the batch (contiguous). Call ``.contiguous()`` on a single
    image if you need it.

    Hostile input is refused, never padded: an image declaring more than ``max_pixels`` pixels
    (a decompression bomb) is refused from its header, before any pixel is decoded; a truncated
    file raises (even when ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` is set, for JPEG), and so does
    a JPEG whose header declares more pixels than its data could hold (at least one bit per 8x8
    block: a lying header would decode as a grey image). Paths must name regular files.

    Args:
        size (int | tuple[int, int] | None): resize the short side to ``size`` (int), or cover
            and crop to exactly (height, width) pixels; None keeps the source size.
        crop (str): ``"center"`` or ``"random"`` (offsets drawn from ``rng``); used only when
            ``size`` is a pair.
        mode (str): ``"RGB"`` (C == 3) or ``"L"`` (grayscale, C == 1).
        draft (bool): let libjpeg decode large JPEGs at a reduced scale (default True); False
            decodes every pixel first (slower; the result differs slightly, as the scaling
            differs).
        max_pixels (int | None): refuse images declaring more than this many pixels (width x
            height; default 89,478,485, about 0.27 GB as RGB). None: no limit of ours. Pillow's
            own limit still applies above it (it refuses more than twice
            ``PIL.Image.MAX_IMAGE_PIXELS``, warns above it); raise that too for larger images.
        interpolation (str): the resampling filter: ``"bicubic"`` (default), ``"bilinear"``
            (cheaper, a little softer), ``"nearest"`` (cheapest, aliases), or Pillow's
            ``"box"``, ``"hamming"``, ``"lanczos"``; torchvision's ``InterpolationMode`` works
            too.
        antialias (bool): widen the filter when shrinking (default True, as Pillow and
            torchvision); False is cheaper and aliases. Only for nearest/bilinear/bicubic.
        decoder (str): JPEG decoder: ``"auto"`` (default: simplejpeg, a dependency of
            sdsnodes, when it imports, else Pillow), ``"simplejpeg"`` (ValueError here when it
            does not import) or ``"pillow"``. simplejpeg decodes a 256x256 JPEG in 0.6x Pillow's
            CPU (``benchmarks/bench_resize.py``), into a writable array (one copy less); it
            takes RGB and greyscale JPEGs without an EXIF rotation, Pillow the rest. Both are
            libjpeg-turbo: the pixels agree to within a level or two.

    Returns:
        torch.Tensor: uint8 [C, H, W] (channels-last strides when resized or cropped).

    Raises:
        ValueError: at construction, for an invalid argument (an unknown ``interpolation`` or
            ``decoder``, ``antialias=False`` with a Pillow-only filter, ``decoder="simplejpeg"``
            without simplejpeg).
        DecodeError: the input is missing, empty, truncated or not an image Pillow can decode.
        TooLarge: the image declares more than ``max_pixels`` pixels (reason ``"too_large"``).
        NotAFile: a path naming a directory, FIFO, device or socket (reason ``"not_a_file"``).
    """

    def __init__(
        self,
        size: Size = None,
        crop: str = "center",
        mode: str = "RGB",
        draft: bool = True,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        interpolation: str = "bicubic",
        antialias: bool = True,
        decoder: str = "auto",
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"{mode=} must be one of {list(_MODES)}")
        self.max_pixels = check_max_pixels(max_pixels)
        self.size = check_size(size)
        self.crop = check_crop(crop)
        self.mode = mode
        self.draft = bool(draft)
        self.interpolation, self.antialias = check_interpolation(interpolation, antialias)
        self.decoder = _check_decoder(decoder)

    def __repr__(self) -> str:
        return (
            f"ImageTensor(size={self.size}, crop={self.crop.value!r}, mode={self.mode!r}, "
            f"draft={self.draft}, max_pixels={self.max_pixels}, "
            f"interpolation={self.interpolation!r}, antialias={self.antialias}, "
            f"decoder={self.decoder!r})"
        )

    def __call__(self, value: Any, rng: np.random.Generator | None = None) -> torch.Tensor:
        """Decode one image; see the class docstring.

        Args:
            value (str | os.PathLike | bytes): a local image file, or its bytes.
            rng (numpy.random.Generator | None): draws a random crop; None means
                ``numpy.random.default_rng(0)``.

        Returns:
            torch.Tensor: uint8 [C, H, W].
        """
        rng = np.random.default_rng(0) if rng is None else rng
        position = draw_crop(self.size, self.crop, rng)
        try:
            return self._decode(value, position)
        except DecodeError:
            raise  # refused before decoding (NotAFile, TooLarge…): keeps its reason
        except Exception as error:
            raise DecodeError(describe(value), f"{type(error).__name__}: {error}") from error

    def _decode(self, value: Any, position: tuple[float, float] | None) -> torch.Tensor:
        from PIL import Image

        try:
            opened = Image.open(as_source(value))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
            # over twice Pillow's own limit, or over it with warnings turned into errors
            raise TooLarge(describe(value), str(error)) from error
        with opened as image:
            width, height = image.size
            if self.max_pixels is not None and width * height > self.max_pixels:
                raise TooLarge(
                    describe(value),
                    f"{width}x{height} pixels declared, more than max_pixels={self.max_pixels}",
                )
            if image.format == "JPEG":
                _check_jpeg_length(image, describe(value))
            transpose = _TRANSPOSE.get(image.getexif().get(_ORIENTATION, 1))  # EXIF read once
            rotated = transpose in _SWAPS
            if rotated:
                width, height = height, width  # the upright size
            target_h, target_w = cover_shape(height, width, self.size)
            large = height >= 2 * target_h and width >= 2 * target_w
            fast = self._simplejpeg(image, transpose, large, (target_h, target_w))
            if fast is not None:
                return self._finish(fast, (target_h, target_w), position)
            if self.draft and image.format == "JPEG" and large:
                # decode at 1/2, 1/4 or 1/8 scale, still covering the target; size is (w, h) as stored
                image.draft(self.mode, (target_h, target_w) if rotated else (target_w, target_h))
            image.load()
            if getattr(image, "_ended", False):  # Pillow padded it (LOAD_TRUNCATED_IMAGES)
                raise OSError("image file is truncated (no end of image marker)")
            if transpose is not None:
                image = image.transpose(transpose)
            image = _to_mode(image, self.mode)
            if image.size != (target_w, target_h) and self.interpolation in _PILLOW_ONLY:
                image = image.resize(
                    (target_w, target_h), _PILLOW_ONLY[self.interpolation],
                    reducing_gap=_REDUCING_GAP,
                )  # fmt: skip
            pixels = np.asarray(image)  # [H, W] or [H, W, C]: Pillow's one copy out, read-only
        return self._finish(pixels.copy(), (target_h, target_w), position)  # writable (memcpy)

    def _finish(
        self, pixels: np.ndarray, target: tuple[int, int], position: tuple[float, float] | None
    ) -> torch.Tensor:
        """Writable uint8 [H, W(, C)] pixels, upright, as [C, h, w]: resized, then cropped."""
        tensor = torch.from_numpy(pixels)
        tensor = tensor.view(tensor.shape[0], tensor.shape[1], -1).permute(2, 0, 1)  # [C, H, W]
        if tensor.shape[1:] != target:
            tensor = resize(tensor, target, self.interpolation, self.antialias)
        top, left, h, w = crop_box(*target, self.size, position)
        return tensor[:, top : top + h, left : left + w]  # a view: the collate copies it once

    def _simplejpeg(
        self, image: Any, transpose: int | None, large: bool, target: tuple[int, int]
    ) -> np.ndarray | None:
        """The JPEG decoded by simplejpeg, uint8 [H, W, C] (writable), or None where it does not
        apply (another decoder or format, an EXIF rotation, CMYK…)."""
        if self.decoder == "pillow" or image.format != "JPEG" or transpose is not None:
            return None
        if image.mode not in ("RGB", "L") or _SIMPLEJPEG is None:
            return None
        fp = image.fp
        fp.seek(0)
        data = fp.read()
        scale = {"min_height": target[0], "min_width": target[1]} if self.draft and large else {}
        colorspace = "RGB" if self.mode == "RGB" else "GRAY"
        return _SIMPLEJPEG.decode_jpeg(data, colorspace=colorspace, **scale)


def _check_decoder(decoder: Any) -> str:
    """Validate ``decoder``; "auto" becomes "simplejpeg" or "pillow".

    Raises:
        ValueError: an unknown decoder, or "simplejpeg" when it is not installed.
    """
    if decoder not in ("auto", "simplejpeg", "pillow"):
        raise ValueError(f"{decoder=} must be one of ['auto', 'simplejpeg', 'pillow']")
    if decoder == "simplejpeg" and _SIMPLEJPEG is None:
        raise ValueError(
            "decoder='simplejpeg' needs simplejpeg: pip install simplejpeg, or pass "
            "decoder='auto' (Pillow when it is missing)"
        )
    if decoder == "auto":
        return "pillow" if _SIMPLEJPEG is None else "simplejpeg"
    return decoder


def _check_jpeg_length(image: Any, name: str) -> None:
    """Raise if a JPEG's scan data is shorter than any JPEG of its declared size could be.

    Huffman coding spends at least one bit on every 8x8 block of every component (its DC
    code), so a file with fewer bytes after its header than ``blocks / 8`` is truncated, or its
    header lies about its size; libjpeg would decode it as grey blocks. Arithmetic-coded JPEGs
    (no such bound) are not checked.

    Raises:
        DecodeError: the data cannot hold the declared image.
    """
    fp, tile = image.fp, image.tile
    if not tile or not getattr(image, "layer", None):
        return
    position = fp.tell()
    try:
        start = tile[0][2]  # where the scan data begins
        fp.seek(0)
        header = fp.read(min(start, _HEADER_LIMIT))
        fp.seek(0, os.SEEK_END)
        length = fp.tell() - start
    finally:
        fp.seek(position)
    if any(marker in header for marker in _ARITHMETIC_SOF):
        return
    width, height = image.size
    h_max = max(layer[1] for layer in image.layer)
    v_max = max(layer[2] for layer in image.layer)
    blocks = sum(
        math.ceil(math.ceil(width * h / h_max) / 8) * math.ceil(math.ceil(height * v / v_max) / 8)
        for _, h, v, _ in image.layer
    )
    if length * 8 < blocks:
        raise DecodeError(
            name,
            f"{length} bytes of JPEG data cannot hold the {width}x{height} pixels its header "
            f"declares (at least {math.ceil(blocks / 8)} bytes): truncated, or a lying header",
        )


def _to_mode(image: Any, mode: str) -> Any:
    """Convert any Pillow image to ``mode`` ("RGB" or "L")."""
    from PIL import Image

    if image.mode == mode:
        return image
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        shift = 8 if image.mode != "F" else 0  # 16-bit ranges keep their top byte
        pixels = np.asarray(image, dtype=np.float64 if image.mode == "F" else np.int64)
        pixels = np.clip(pixels / (1 << shift), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels)  # mode L
    elif image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    elif image.mode in ("PA", "La"):
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "RGBa"):
        background = Image.new("RGBA", image.size, _BACKGROUND + (255,))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert(mode)

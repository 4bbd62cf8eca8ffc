"""Images decoded with Pillow: JPEG draft mode, EXIF orientation, any mode to RGB or L."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sdsnodes.codecs._resize import (
    Size,
    as_source,
    check_crop,
    check_size,
    cover_shape,
    crop_box,
    describe,
    draw_crop,
)
from sdsnodes.errors import DecodeError

_MODES = {"RGB": 3, "L": 1}
_ORIENTATION = 0x0112  # EXIF tag; values 5-8 rotate by 90 degrees, swapping width and height
_REDUCING_GAP = 3.0  # Pillow: reduce by an integer factor first while >= 3x the target size
_BACKGROUND = (255, 255, 255)  # transparent pixels are composited over white


class ImageTensor:
    """Decode an image file into a uint8 tensor, optionally resized and cropped.

    EXIF orientation is applied first, so sizes refer to the upright image. JPEGs much larger
    than the target (2x or more on both sides) are decoded at a reduced scale (Pillow's
    ``draft``, i.e. libjpeg DCT scaling). Any Pillow mode is converted to ``mode``: images with
    transparency are composited over white, 16-bit images keep their 8 most significant bits.
    Resizing is Pillow's antialiased bicubic with ``reducing_gap=3``.

    Args:
        size (int | tuple[int, int] | None): resize the short side to ``size`` (int), or cover
            and crop to exactly (height, width) pixels; None keeps the source size.
        crop (str): ``"center"`` or ``"random"`` (offsets drawn from ``rng``); used only when
            ``size`` is a pair.
        mode (str): ``"RGB"`` (C == 3) or ``"L"`` (grayscale, C == 1).
        draft (bool): let libjpeg decode large JPEGs at a reduced scale (default True); False
            decodes every pixel first (slower; the result differs slightly, as the scaling
            differs).

    Returns:
        torch.Tensor: uint8 [C, H, W].

    Raises:
        ValueError: at construction, for an invalid argument.
        DecodeError: the input is missing, empty, truncated or not an image Pillow can decode.
    """

    def __init__(
        self, size: Size = None, crop: str = "center", mode: str = "RGB", draft: bool = True
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"{mode=} must be one of {list(_MODES)}")
        self.size = check_size(size)
        self.crop = check_crop(crop)
        self.mode = mode
        self.draft = bool(draft)

    def __repr__(self) -> str:
        return (
            f"ImageTensor(size={self.size}, crop={self.crop.value!r}, mode={self.mode!r}, "
            f"draft={self.draft})"
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
            pixels = self._decode(value, position)
        except Exception as error:
            raise DecodeError(describe(value), f"{type(error).__name__}: {error}") from error
        if pixels.ndim == 2:
            pixels = pixels[:, :, None]  # [H, W, 1]
        return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()  # [C, H, W] uint8

    def _decode(self, value: Any, position: tuple[float, float] | None) -> np.ndarray:
        from PIL import Image, ImageOps

        with Image.open(as_source(value)) as image:
            width, height = image.size
            rotated = image.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8)
            if rotated:
                width, height = height, width  # the upright size
            target_h, target_w = cover_shape(height, width, self.size)
            large = height >= 2 * target_h and width >= 2 * target_w
            if self.draft and image.format == "JPEG" and large:
                # decode at 1/2, 1/4 or 1/8 scale, still covering the target; size is (w, h) as stored
                image.draft(self.mode, (target_h, target_w) if rotated else (target_w, target_h))
            image = ImageOps.exif_transpose(image)
            image = _to_mode(image, self.mode)
            if image.size != (target_w, target_h):
                image = image.resize(
                    (target_w, target_h), Image.Resampling.BICUBIC, reducing_gap=_REDUCING_GAP
                )
            top, left, h, w = crop_box(target_h, target_w, self.size, position)
            if (h, w) != (target_h, target_w):
                image = image.crop((left, top, left + w, top + h))
            return np.array(image, dtype=np.uint8)  # [H, W, 3] or [H, W]; a writable copy


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

"""Size and crop arithmetic shared by the image and video codecs.

Every codec that resizes follows the same rules for ``size``:

- ``None``: keep the source size.
- ``int``: resize so the short side equals ``size``, keeping the aspect ratio.
- ``(height, width)``: resize to cover (height, width) keeping the aspect ratio, then crop to
  exactly (height, width), centred (``Crop.CENTER``) or at an offset drawn from the caller's
  ``numpy.random.Generator`` (``Crop.RANDOM``).
"""

from __future__ import annotations

import enum
import io
import os
from typing import Any, BinaryIO

import numpy as np

from sdsnodes.codecs._files import regular_file

Size = int | tuple[int, int] | None


class Crop(str, enum.Enum):
    """Where a ``(height, width)`` crop is taken from the covering resize."""

    CENTER = "center"
    """The middle of the resized image (no randomness)."""
    RANDOM = "random"
    """Offsets drawn uniformly from the sample's random generator."""


def check_size(size: Any) -> Size:
    """Validate a ``size`` argument; return it normalized (tuples of two ints).

    Raises:
        ValueError: not None, a positive int, or a pair of positive ints.
    """
    if size is None:
        return None
    if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
        if size < 1:
            raise ValueError(f"{size=} must be >= 1")
        return int(size)
    if isinstance(size, (tuple, list)) and len(size) == 2:
        if all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) for s in size):
            if min(size) < 1:
                raise ValueError(f"{size=} must be positive (height, width)")
            return int(size[0]), int(size[1])
    raise ValueError(f"{size=} must be None, an int (short side) or a (height, width) pair")


def check_crop(crop: Any) -> Crop:
    """Validate a ``crop`` argument.

    Raises:
        ValueError: not one of ``"center"``, ``"random"``.
    """
    try:
        return Crop(crop)
    except ValueError:
        raise ValueError(f"{crop=} must be one of {[c.value for c in Crop]}") from None


def check_max_pixels(max_pixels: Any) -> int | None:
    """Validate a ``max_pixels`` argument (a pixel limit, width x height).

    Raises:
        ValueError: not None or an int >= 1.
    """
    if max_pixels is None:
        return None
    if isinstance(max_pixels, (int, np.integer)) and not isinstance(max_pixels, bool):
        if max_pixels >= 1:
            return int(max_pixels)
    raise ValueError(f"{max_pixels=} must be an int >= 1 (width x height pixels) or None")


def cover_shape(height: int, width: int, size: Size) -> tuple[int, int]:
    """The (height, width) to resize a ``height`` x ``width`` source to, before any crop.

    Returns:
        tuple[int, int]: pixels; equals the source for ``size=None``, has its short side equal to
        ``size`` for an int, and covers ``size`` (both sides >=) for a pair.
    """
    if size is None:
        return height, width
    if isinstance(size, int):
        if height <= width:
            return size, max(size, round(width * size / height))
        return max(size, round(height * size / width)), size
    target_h, target_w = size
    scale = max(target_h / height, target_w / width)
    return max(target_h, round(height * scale)), max(target_w, round(width * scale))


def draw_crop(size: Size, crop: Crop, rng: np.random.Generator) -> tuple[float, float] | None:
    """Draw the crop position for one sample: None (centre) or fractions in [0, 1).

    Draws two floats from ``rng`` only for a random crop to a (height, width) pair, so the number
    of draws does not depend on the file (a clip's crop is drawn once, for all its frames).
    """
    if crop is Crop.RANDOM and isinstance(size, tuple):
        fy, fx = rng.random(2)
        return float(fy), float(fx)
    return None


def crop_box(
    height: int, width: int, size: Size, position: tuple[float, float] | None
) -> tuple[int, int, int, int]:
    """The crop (top, left, height, width) in pixels of a resized ``height`` x ``width`` image.

    Args:
        height (int): resized height (from :func:`cover_shape`).
        width (int): resized width.
        size (Size): the requested size; only a pair crops.
        position (tuple[float, float] | None): from :func:`draw_crop`; None centres the crop.
    """
    if not isinstance(size, tuple):
        return 0, 0, height, width
    target_h, target_w = size
    spare_h, spare_w = height - target_h, width - target_w
    if position is None:
        return spare_h // 2, spare_w // 2, target_h, target_w
    top = min(int(position[0] * (spare_h + 1)), spare_h)
    left = min(int(position[1] * (spare_w + 1)), spare_w)
    return top, left, target_h, target_w


def describe(value: Any) -> str:
    """A short name for a codec input, for error messages: the path, or ``<N bytes>``."""
    if isinstance(value, (str, os.PathLike)):
        return str(os.fspath(value))
    if isinstance(value, (bytes, bytearray, memoryview)):
        return f"<{len(value)} bytes>"
    name = getattr(value, "name", None)  # an open file: its path or URL
    return str(name) if isinstance(name, str) else f"<{type(value).__name__}>"


def as_source(value: Any) -> str | io.BytesIO | BinaryIO:
    """A local path (str) or a file object for a codec input (path-like, bytes, or a readable,
    seekable binary file, e.g. a remote file read in cached blocks).

    A file object is rewound to its start and returned as is: the codec reads it but does not
    close it (its owner does), so several codecs may read one file in turn.

    A path must name a regular file (:func:`~sdsnodes.codecs._files.regular_file`): a FIFO,
    directory, device or socket is refused before anything opens it.

    Raises:
        TypeError: anything else (None included); codecs turn it into a ``DecodeError``.
        NotAFile: a path naming no regular file, or holding a NUL byte.
        FileNotFoundError: a path naming nothing.
    """
    if isinstance(value, (str, os.PathLike)):
        path = os.fspath(value)
        return regular_file(path.decode() if isinstance(path, bytes) else path)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(value))
    if callable(getattr(value, "read", None)) and callable(getattr(value, "seek", None)):
        value.seek(0)
        return value
    raise TypeError(f"expected a local path, bytes or a binary file, got {type(value).__name__}")


INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")
"""Resampling filters: the first three run in torch (its uint8 kernels, several times faster
than Pillow's here), the last three in Pillow (always antialiased)."""

_TORCH_MODES = {"nearest": "nearest-exact", "bilinear": "bilinear", "bicubic": "bicubic"}


def check_interpolation(interpolation: Any, antialias: Any) -> tuple[str, bool]:
    """Validate ``interpolation`` and ``antialias``; return them normalized.

    Raises:
        ValueError: an unknown filter, or ``antialias=False`` with a Pillow-only filter.
    """
    name = getattr(interpolation, "value", interpolation)  # torchvision's InterpolationMode
    if name not in INTERPOLATIONS:
        raise ValueError(f"{interpolation=} must be one of {list(INTERPOLATIONS)}")
    if not antialias and name not in _TORCH_MODES:
        raise ValueError(
            f"interpolation={name!r} is always antialiased: pass antialias=True, or use one of "
            f"{list(_TORCH_MODES)}"
        )
    return name, bool(antialias)


def resize(pixels: Any, shape: tuple[int, int], interpolation: str, antialias: bool) -> Any:
    """Resize uint8 [C, H, W] pixels to ``shape`` (height, width) with ``torch``'s interpolate.

    torch's uint8 kernels for antialiased bilinear and bicubic follow Pillow's (results within
    one level); they take channels-last input as is, so an image straight from Pillow needs no
    copy first. ``antialias`` widens the filter when shrinking (as Pillow always does); False is
    faster and aliases. ``"nearest"`` takes the nearest pixel centre (Pillow's NEAREST).

    Returns:
        torch.Tensor: uint8 [C, height, width], channels-last strides.
    """
    from torch.nn import functional

    mode = _TORCH_MODES[interpolation]
    batch = pixels[None]  # [1, C, H, W]
    if mode == "nearest-exact":
        return functional.interpolate(batch, size=shape, mode=mode)[0]
    return functional.interpolate(batch, size=shape, mode=mode, antialias=antialias)[0]

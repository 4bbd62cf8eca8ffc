"""Text values: passed through, bytes decoded as UTF-8."""

from __future__ import annotations

from typing import Any

import numpy as np

from sdsnodes.codecs._resize import describe
from sdsnodes.errors import DecodeError


class Text:
    """Pass a text value through: str stays str, bytes are decoded as UTF-8.

    Args:
        strip (bool): strip leading and trailing whitespace.

    Returns:
        str | None: the text; None stays None (a missing value); any other type becomes
        ``str(value)``.

    Raises:
        DecodeError: bytes that are not valid UTF-8.
    """

    def __init__(self, strip: bool = True) -> None:
        self.strip = bool(strip)

    def __repr__(self) -> str:
        return f"Text(strip={self.strip})"

    def __call__(self, value: Any, rng: np.random.Generator | None = None) -> str | None:
        """Return ``value`` as text; ``rng`` is unused (codecs share one signature)."""
        if value is None:
            return None
        if isinstance(value, (bytes, bytearray, memoryview)):
            try:
                text = bytes(value).decode("utf-8")
            except UnicodeDecodeError as error:
                raise DecodeError(describe(value), f"not UTF-8: {error}") from error
        else:
            text = value if isinstance(value, str) else str(value)
        return text.strip() if self.strip else text

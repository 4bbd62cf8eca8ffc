"""Text values: passed through (bytes decoded as UTF-8), or one caption chosen among several
columns; optionally tokenized."""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sdsnodes.codecs._resize import describe
from sdsnodes.codecs.base import Decoded
from sdsnodes.errors import DecodeError


class CaptionChoice(str, enum.Enum):
    """Which caption :class:`Text` keeps when several columns hold one."""

    RANDOM = "random"
    """One of the non-empty captions, uniformly at random from the sample's rng (seeded)."""
    FIRST = "first"
    """The first non-empty caption, in the order of ``columns``."""


class Text:
    """Pass a text value through, or choose one caption among several columns.

    With ``columns=None`` the codec's own column is decoded: str stays str, bytes are decoded as
    UTF-8, None stays None (a missing value), any other type becomes ``str(value)``. With
    ``columns=[...]`` the codec reads those columns of the sample (it has ``needs_sample`` and
    ``accepts_none``), decodes each the same way and keeps one caption by ``choice`` among those
    that are not None, empty or only whitespace. ``tokenizer``, if given, is applied
    last: ``tokenizer(text)``; it must be picklable to run in worker processes.

    Args:
        strip (bool): strip leading and trailing whitespace.
        columns (Sequence[str] | None): caption columns to choose among; None: the own column.
        choice (str): ``"random"`` or ``"first"``; see :class:`CaptionChoice`.
        tokenizer (Callable[[str], Any] | None): turns the text into what the sample holds
            (e.g. token ids); not called on a None value.
        with_info (bool): return ``Decoded(text, {"caption_column": name})``, the column the
            text came from (None with ``columns=None``).

    Returns:
        str | None | Any: the text, or what ``tokenizer`` returns; or ``Decoded``.

    Raises:
        ValueError: at construction, for an invalid argument.
        DecodeError: bytes that are not valid UTF-8; with ``columns``, none of them holds a
            caption; the tokenizer failed.
    """

    def __init__(
        self,
        strip: bool = True,
        columns: Sequence[str] | None = None,
        choice: CaptionChoice | str = CaptionChoice.RANDOM,
        tokenizer: Callable[[str], Any] | None = None,
        with_info: bool = False,
    ) -> None:
        if columns is not None:
            if (
                isinstance(columns, str)
                or not columns
                or not all(isinstance(c, str) for c in columns)
            ):
                raise ValueError(f"{columns=} must be a non-empty list of column names or None")
            columns = list(columns)
        try:
            choice = CaptionChoice(choice)
        except ValueError:
            raise ValueError(
                f"{choice=} must be one of {[c.value for c in CaptionChoice]}"
            ) from None
        if tokenizer is not None and not callable(tokenizer):
            raise ValueError(f"{tokenizer=} must be callable (str -> tokens) or None")
        self.strip = bool(strip)
        self.columns = columns
        self.choice = choice
        self.tokenizer = tokenizer
        self.with_info = bool(with_info)
        self.needs_sample = columns is not None
        self.accepts_none = True  # a missing caption stays None (it is not a bad sample)

    def __repr__(self) -> str:
        return (
            f"Text(strip={self.strip}, columns={self.columns}, choice={self.choice.value!r}, "
            f"tokenizer={self.tokenizer!r}, with_info={self.with_info})"
        )

    def __call__(
        self, value: Any, rng: np.random.Generator | None = None, sample: Any = None
    ) -> Any:
        """Return the text (see the class docstring). ``rng`` draws the column with
        ``choice="random"`` (None means ``default_rng(0)``); ``sample`` is read with ``columns``."""
        column = None
        if self.columns is None:
            text = self._text(value)
        else:
            found = [
                (c, self._text(None if sample is None else sample.get(c))) for c in self.columns
            ]
            found = [(c, t) for c, t in found if t and t.strip()]
            if not found:
                raise DecodeError(f"columns {self.columns}", "no caption in any of them")
            if self.choice is CaptionChoice.RANDOM and len(found) > 1:
                rng = np.random.default_rng(0) if rng is None else rng
                column, text = found[int(rng.integers(len(found)))]
            else:
                column, text = found[0]
        if self.tokenizer is not None and text is not None:
            try:
                text = self.tokenizer(text)
            except Exception as error:
                raise DecodeError(
                    f"caption {text[:40]!r}", f"tokenizer failed: {error!r}"
                ) from error
        return Decoded(text, {"caption_column": column}) if self.with_info else text

    def _text(self, value: Any) -> str | None:
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

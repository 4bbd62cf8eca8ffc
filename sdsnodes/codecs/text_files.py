"""Per-sample ``.txt`` captions and ``.json`` metadata files named by an index column (SDS data
as it is: a ``caption`` column of ``…/000123.txt`` paths, a ``metadata`` column of ``.json``
paths read by SDS's ``LoadJsonMetadataTransform``).

The column holds a path or URL per sample; a :class:`~sdsnodes.CachingDownloader` over that
column fetches remote files through the cache (the presets do so for a caption column of
``.txt`` paths: :func:`text_file_codecs`), and these codecs read the local file (or bytes).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from sdsnodes.codecs._files import regular_file
from sdsnodes.codecs.base import Decoded
from sdsnodes.codecs.text import Text
from sdsnodes.errors import DecodeError, TooLarge

MAX_BYTES = 1 << 20
"""Largest ``.txt`` / ``.json`` file read, in bytes (1 MiB): a caption or metadata file, not a
corpus."""


def _read(value: Any, max_bytes: int) -> tuple[bytes, str]:
    """The bytes of ``value`` (a local path, or the bytes themselves) and what to call it."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data, name = bytes(value), "<bytes>"
    else:
        name = regular_file(os.fspath(value))
        with open(name, "rb") as f:
            data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise TooLarge(name, f"more than max_bytes={max_bytes} bytes")
    return data, name


def _check_max_bytes(max_bytes: int) -> None:
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"{max_bytes=} must be an int >= 1 (bytes)")


class TextFile:
    """Read a caption from a ``.txt`` file whose path (or URL, once downloaded) is the value.

    A str value that does not end in ``.txt`` is a caption already and passes through (a column
    may mix both), bytes are the file's contents, None stays None (a missing caption is kept
    as None, as :class:`~sdsnodes.Text` keeps it).

    Args:
        strip (bool): strip leading and trailing whitespace.
        max_bytes (int): largest file read, >= 1 (1 MiB).
        tokenizer (Callable[[str], Any] | None): applied last, as in :class:`~sdsnodes.Text`.

    Returns:
        str | None | Any: the caption (UTF-8), or what ``tokenizer`` returns.

    Raises:
        ValueError: at construction, a bad argument.
        DecodeError: the file is not UTF-8 text; ``TooLarge`` past ``max_bytes``; ``NotAFile``
            for a directory, FIFO or device; FileNotFoundError for a missing file.
    """

    accepts_none = True

    def __init__(self, strip: bool = True, max_bytes: int = MAX_BYTES, tokenizer: Any = None):
        _check_max_bytes(max_bytes)
        self.max_bytes = max_bytes
        self.text = Text(strip=strip, tokenizer=tokenizer)  # decoding, stripping, tokenizing

    def __call__(self, value: Any, rng: np.random.Generator) -> Any:
        if isinstance(value, str) and not value.lower().endswith(".txt"):
            return self.text(value, rng)
        if value is not None:
            data, name = _read(value, self.max_bytes)
            try:
                value = data.decode("utf-8")
            except UnicodeDecodeError as error:
                raise DecodeError(name, f"not UTF-8 text: {error}") from error
        return self.text(value, rng)


class JsonFile:
    """Read a ``.json`` metadata file (one JSON object) whose path is the value, as SDS's
    ``LoadJsonMetadataTransform`` did.

    The column then holds the object as a dict, and each of ``fields`` (nested objects joined
    with ``.``: ``"exif.Make"``) is put beside it under ``"<column>.<field>"``, None where the
    file lacks it, so every sample of a batch has the same keys (collated as tensors when they
    are numbers). None stays None (its fields None).

    Args:
        fields (Sequence[str] | None): the fields put into the sample; None: none (the dict
            only).
        max_bytes (int): largest file read, >= 1 (1 MiB).

    Returns:
        Decoded: ``value`` the object (dict), ``info`` ``{field: value}``.

    Raises:
        ValueError: at construction, a bad argument.
        DecodeError: the file is not JSON, or not an object; ``TooLarge``, ``NotAFile``,
            FileNotFoundError as for :class:`TextFile`.
    """

    accepts_none = True

    def __init__(self, fields: Sequence[str] | None = None, max_bytes: int = MAX_BYTES) -> None:
        if fields is not None and (
            isinstance(fields, str) or not all(isinstance(f, str) and f for f in fields)
        ):
            raise ValueError(f"{fields=} must be a list of field names, e.g. ['fps'], or None")
        _check_max_bytes(max_bytes)
        self.fields = list(fields or [])
        self.max_bytes = max_bytes

    def __call__(self, value: Any, rng: np.random.Generator) -> Decoded:
        if value is None:
            return Decoded(None, dict.fromkeys(self.fields))
        data, name = _read(value, self.max_bytes)
        try:
            obj = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise DecodeError(name, f"not JSON: {error}") from error
        if not isinstance(obj, dict):
            raise DecodeError(name, f"a JSON {type(obj).__name__}, not an object")
        flat = dict(_flatten(obj))
        return Decoded(obj, {field: flat.get(field) for field in self.fields})


def _flatten(fields: Mapping[str, Any], prefix: str = "") -> Iterable[tuple[str, Any]]:
    for name, value in fields.items():
        if isinstance(value, dict) and value:
            yield from _flatten(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def text_file_codecs(table: pa.Table, codecs: dict[str, Any]) -> list[str]:
    """Turn the :class:`~sdsnodes.Text` codecs (of their own column) whose column holds
    ``.txt`` paths (its first value that is not None) into :class:`TextFile`, in place; return
    those columns (for the preset to download when they hold URLs). Looks at the first 1024
    rows only."""
    turned = []
    for column, codec in codecs.items():
        if type(codec) is not Text or codec.columns is not None or column not in table.column_names:
            continue
        values = table.column(column).slice(0, 1024).drop_null()  # not a copy of the column
        first = values[0].as_py() if len(values) else None
        if isinstance(first, str) and first.lower().endswith(".txt"):
            codecs[column] = TextFile(strip=codec.strip, tokenizer=codec.tokenizer)
            turned.append(column)
    return turned

"""The Sample dict conventions: reserved keys and small helpers.

A sample is a plain ``dict[str, Any]``. Index columns keep their names; missing columns are
``None``, never absent, so every batch has the same keys. Reserved keys start with ``__``.
"""

from __future__ import annotations

from typing import Any

Sample = dict[str, Any]

KEY = "__key__"
"""Stable id of the sample, unique in the dataset (str)."""
INDEX = "__index__"
"""Row number in the index (int)."""
EPOCH = "__epoch__"
"""Epoch the sample was read in (int)."""
STREAM = "__stream__"
"""Name of the stream the sample came from (str), set by Mixer."""
ROUNDS_LEFT = "__rounds_left__"
"""``item[ROUNDS_LEFT]``: micro-batches of this gradient-accumulation round still to come after
this one (SDS's ``num_accum_rounds_left``): 0 on the last, where the optimizer steps. Set only
with ``num_accum_rounds > 1`` (see :class:`~sdsnodes.Mixer`)."""
CACHE_DIR = "__cache_dir__"
"""Cache directory holding the sample's downloaded files (str | None); set by CachingDownloader."""
URL_PREFIX = "__url__."
"""``__url__.<column>`` keeps the original value of a downloaded column."""


def url_key(column: str) -> str:
    """The key under which the original URL of ``column`` is kept: ``__url__.<column>``."""
    return URL_PREFIX + column


RANGE_URL_PREFIX = "__range_url__."
"""``__range_url__.<column>`` keeps the original value of a column opened by RangeReader."""


def range_url_key(column: str) -> str:
    """The key under which RangeReader keeps the URL of ``column``."""
    return RANGE_URL_PREFIX + column


def describe(sample: Sample, column: str | None = None) -> str:
    """A short human description of a sample for error messages: key, column and URL."""
    parts = [f"{KEY}={sample.get(KEY)!r}"]
    if column is not None:
        parts.append(f"column={column!r}")
        url = sample.get(url_key(column), sample.get(column))
        if isinstance(url, str):
            parts.append(f"url={url!r}")
    return " ".join(parts)

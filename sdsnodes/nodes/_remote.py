"""What CachingDownloader and RangeReader share: checking the columns they fetch, and how their
failures are classified. Their settings are the option groups of :mod:`sdsnodes.options`."""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sdsnodes.errors import SdsError
from sdsnodes.options import CacheOptions, FetchOptions
from sdsnodes.storage import default_cache_dir, is_remote, local_path


def disk_full(error: BaseException) -> bool:
    """A full disk or quota, from the file system or from SQLite writing the ledger."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(error, sqlite3.OperationalError) and "full" in str(error)


def remote_settings(
    columns: Sequence[str], cache: CacheOptions | None, fetch: FetchOptions | None
) -> tuple[list[str], CacheOptions, FetchOptions, str]:
    """The columns to fetch as a list, the groups (None: their defaults; ``fetch.max_in_flight``
    None: ``DEFAULT_MAX_IN_FLIGHT``) and the cache directory (``cache.cache_dir``, else
    ``$SDS_CACHE_DIR`` or ``~/.cache/sdsnodes``).

    Raises:
        ValueError: ``columns`` is a str or empty.
    """
    if isinstance(columns, str) or not columns:
        raise ValueError(f"{columns=} must be a non-empty list of column names")
    cache = cache or CacheOptions()
    fetch = (fetch or FetchOptions()).with_window()
    return list(columns), cache, fetch, str(cache.cache_dir or default_cache_dir())


def remote_values(
    sample: dict[str, Any], out: dict[str, Any], columns: Sequence[str], key: Callable[[str], str]
) -> Iterator[tuple[str, str]]:
    """The ``(column, url)`` of each of ``columns`` whose value in ``sample`` is a remote URL.

    Each column's original value is kept in ``out`` under ``key(column)`` (``url_key``,
    ``range_url_key``); a local path (or ``file://`` URL) is set in place, as a path.
    """
    for column in columns:
        value = sample.get(column)
        out[key(column)] = value
        if is_remote(value):
            yield column, value
        else:
            out[column] = local_path(value) if isinstance(value, str) else value


class RemoteErrors:
    """How the nodes that fetch remote columns classify their failures."""

    reason = "download"

    def classify(self, error: BaseException) -> str:
        """``"missing"`` (no such object), the error's own reason (``"checksum"``), or
        ``self.reason``."""
        if isinstance(error, FileNotFoundError):
            return "missing"
        reason = getattr(error, "reason", None) if isinstance(error, SdsError) else None
        return reason if isinstance(reason, str) else self.reason

    def is_fatal(self, error: BaseException) -> bool:
        """A full disk stops the run at once: skipping every sample would hide it."""
        return disk_full(error)

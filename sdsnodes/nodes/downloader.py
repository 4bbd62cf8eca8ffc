"""CachingDownloader: copies remote files of a sample into the shared disk cache, ahead of use."""

from __future__ import annotations

import errno
import functools
import sqlite3
from collections.abc import Sequence
from typing import Any

from torchdata.nodes import BaseNode

from sdsnodes.cache import EvictionPolicy
from sdsnodes.errors import OnError
from sdsnodes.nodes._cache_ref import default_cache_dir, open_cache
from sdsnodes.nodes._threads import Skipped, ThreadMapNode
from sdsnodes.sample import CACHE_DIR, Sample, url_key
from sdsnodes.storage import fetch, is_remote, local_path


class CachingDownloader(ThreadMapNode):
    """Replace each remote URL in ``columns_to_download`` by a local, pinned file in the cache.

    Downloads run in ``num_threads`` threads, at most ``num_threads`` samples ahead of the
    consumer, in order (files in that window are pinned, so the window is kept small next to
    ``max_bytes``). Each file is written under a temporary name and renamed into place, so a
    crash never leaves a half file that looks whole; the same URL is downloaded once even when
    several workers or processes ask for it (the cache's ledger and file locks see to it).
    Local paths (and ``file://`` URLs) are used in place. The original value is kept under
    ``__url__.<column>``; ``__cache_dir__`` tells :class:`Evictor` where to release the files.

    Args:
        source (BaseNode): upstream node yielding sample dicts.
        columns_to_download (Sequence[str]): columns holding paths or URLs.
        cache_dir (str | None): the cache directory (shared by all processes on the machine);
            None uses ``$SDS_CACHE_DIR`` or ``~/.cache/sdsnodes``.
        max_bytes (int | None): byte budget of the whole cache directory; None is unbounded.
        storage_options (dict | None): fsspec options for the URLs (credentials, endpoint_url…).
        num_threads (int): concurrent downloads.
        retries (int): retries of transient errors (5xx, resets, timeouts), with backoff.
        timeout (float | None): seconds one download attempt may take (S3, GCS, HTTP).
        policy (str): eviction policy, ``"keepset"`` (default) or ``"lru"``.
        on_error (str): ``"skip"`` (count and drop the sample) or ``"raise"``.
        max_error_rate (float): raise once more than this fraction of samples was skipped.

    State:
        as :class:`~sdsnodes.nodes._threads.ThreadMapNode`: the source's state at the last
        yielded sample and the skip counts (reasons ``"missing"``, ``"download"``).

    Errors:
        a missing object (404) is counted as ``"missing"``, other failures after retries as
        ``"download"``; under ``on_error="raise"`` they raise. A full disk always raises
        ``OSError(ENOSPC)`` naming the cache directory.

    Raises:
        ValueError: ``columns_to_download`` is empty, or an argument is out of range.
    """

    reason = "download"

    def __init__(
        self,
        source: BaseNode,
        columns_to_download: Sequence[str],
        cache_dir: str | None = None,
        max_bytes: int | None = None,
        storage_options: dict[str, Any] | None = None,
        num_threads: int = 8,
        retries: int = 3,
        timeout: float | None = 60.0,
        policy: str = "keepset",
        on_error: OnError | str = OnError.SKIP,
        max_error_rate: float = 0.5,
    ) -> None:
        if isinstance(columns_to_download, str) or not columns_to_download:
            raise ValueError(f"{columns_to_download=} must be a non-empty list of column names")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"{max_bytes=} must be > 0 (or None for no budget)")
        try:
            EvictionPolicy(policy)
        except ValueError:
            raise ValueError(
                f"{policy=} must be one of {[p.value for p in EvictionPolicy]}"
            ) from None
        # the window is pinned on disk: num_threads files, not 2x, leaves the budget to the cache
        super().__init__(source, num_threads, on_error, max_error_rate, max_in_flight=num_threads)
        self.columns = list(columns_to_download)
        self.cache_dir = str(cache_dir or default_cache_dir())
        self.max_bytes = max_bytes
        self.storage_options = dict(storage_options or {})
        self.retries = retries
        self.timeout = timeout
        self.policy = policy

    def classify(self, error: BaseException) -> str:
        return "missing" if isinstance(error, FileNotFoundError) else self.reason

    def process(self, sample: Sample) -> Sample:
        cache = open_cache(self.cache_dir, self.max_bytes, policy=self.policy)
        out = dict(sample)
        pinned: list[str] = []
        try:
            for column in self.columns:
                value = sample.get(column)
                out[url_key(column)] = value
                if not is_remote(value):
                    out[column] = local_path(value) if isinstance(value, str) else value
                    continue
                size = (
                    sample.get("size") if len(self.columns) == 1 else sample.get(f"{column}_size")
                )
                download = functools.partial(
                    fetch,
                    value,
                    storage_options=self.storage_options,
                    retries=self.retries,
                    timeout=self.timeout,
                )
                out[column] = str(cache.get(value, download, size_hint=size))
                pinned.append(value)
        except BaseException as error:
            for url in pinned:
                cache.unpin(url)
            if _disk_full(error):
                raise OSError(
                    errno.ENOSPC,
                    f"the cache directory {self.cache_dir!r} is full: free disk space, or set max_bytes "
                    f"below the free space (nothing half-written was kept); cause: {error}",
                ) from error
            raise
        out[CACHE_DIR] = self.cache_dir
        return out

    def on_skip(self, skipped: Skipped) -> None:
        """Nothing to release: ``process`` unpins its files before it fails."""

    def is_fatal(self, error: BaseException) -> bool:
        """A full disk stops the run at once: skipping every sample would hide it."""
        return _disk_full(error)


def _disk_full(error: BaseException) -> bool:
    """A full disk or quota, from the file system or from SQLite writing the ledger."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(error, sqlite3.OperationalError) and "full" in str(error)

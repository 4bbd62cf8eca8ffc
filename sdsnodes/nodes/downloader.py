"""CachingDownloader: copies remote files of a sample into the shared disk cache, ahead of use."""

from __future__ import annotations

import errno
import functools
from collections.abc import Sequence
from typing import Any

from torchdata.nodes import BaseNode

from sdsnodes.errors import OnError
from sdsnodes.nodes._cache_ref import open_cache
from sdsnodes.nodes._remote import RemoteColumnsNode, disk_full
from sdsnodes.nodes._threads import Skipped
from sdsnodes.sample import CACHE_DIR, Sample, url_key
from sdsnodes.storage import fetch, is_remote, local_path


class CachingDownloader(RemoteColumnsNode):
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
        # the window is pinned on disk: num_threads files, not 2x, leaves the budget to the cache
        super().__init__(
            source, columns_to_download, cache_dir=cache_dir, max_bytes=max_bytes,
            storage_options=storage_options, num_threads=num_threads, retries=retries,
            timeout=timeout, policy=policy, on_error=on_error, max_error_rate=max_error_rate,
            max_in_flight=num_threads,
        )  # fmt: skip

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
            if disk_full(error):
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

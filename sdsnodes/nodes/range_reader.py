"""RangeReader: opens remote files of a sample for partial reads (byte ranges in cached blocks)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torchdata.nodes import BaseNode

from sdsnodes.errors import OnError
from sdsnodes.nodes._blockfile import DEFAULT_BLOCK_SIZE, BlockFile
from sdsnodes.nodes._cache_ref import default_cache_dir
from sdsnodes.nodes._threads import Skipped, ThreadMapNode
from sdsnodes.nodes.downloader import _disk_full
from sdsnodes.sample import Sample
from sdsnodes.storage import is_remote, local_path

RANGE_URL_PREFIX = "__range_url__."
"""``__range_url__.<column>`` keeps the original value of a column opened by RangeReader."""


def range_url_key(column: str) -> str:
    """The key under which RangeReader keeps the URL of ``column``."""
    return RANGE_URL_PREFIX + column


class RangeReader(ThreadMapNode):
    """Replace each remote URL in ``columns`` by a seekable file that fetches only what is read.

    The file (a :class:`~sdsnodes.nodes._blockfile.BlockFile`) reads the object in fixed blocks
    through the shared disk cache, the one :class:`CachingDownloader` uses (same directory, same
    budget, same eviction): a codec that seeks, such as ``VideoClip`` on an mp4, moves the
    container index and the blocks around the clip, not the whole video, and a clip read again
    comes from the cache. Opening runs ahead in ``num_threads`` threads (in order, at most
    ``2 * num_threads`` samples ahead) and asks for the object's size (once per URL, cached) and,
    with ``prefetch_head``, its first block, where a fast-start mp4 keeps its index. Blocks are
    pinned while the file is open; the file closes, unpinning them, when the sample that holds it
    is dropped (the Decoder replaces it by the decoded value). Local paths (and ``file://`` URLs)
    are used in place. The original value is kept under ``__range_url__.<column>``.

    Use it instead of downloading a column whose files are long and read in part (a 16-frame
    clip of a 10-minute video); for short files a whole-file download takes fewer requests.

    Args:
        source (BaseNode): upstream node yielding sample dicts.
        columns (Sequence[str]): columns holding paths or URLs to open.
        cache_dir (str | None): the cache directory; None uses ``$SDS_CACHE_DIR`` or
            ``~/.cache/sdsnodes``.
        max_bytes (int | None): byte budget of the whole cache directory; None is unbounded.
        storage_options (dict | None): fsspec options for the URLs.
        block_size (int): bytes per block (default 1 MiB).
        prefetch_head (bool): fetch the first block while opening.
        num_threads (int): files opened concurrently.
        retries (int), timeout (float | None): retries of a request's transient errors (with
            backoff) and seconds one request may take.
        policy (str): the cache's eviction policy.
        on_error (str), max_error_rate (float): the skip/raise policy.

    State:
        as :class:`~sdsnodes.nodes._threads.ThreadMapNode` (reasons ``"missing"``,
        ``"download"``).

    Raises:
        ValueError: ``columns`` is empty, or an argument is out of range.
    """

    reason = "download"

    def __init__(
        self,
        source: BaseNode,
        columns: Sequence[str],
        cache_dir: str | None = None,
        max_bytes: int | None = None,
        storage_options: dict[str, Any] | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        prefetch_head: bool = True,
        num_threads: int = 4,
        retries: int = 3,
        timeout: float | None = 60.0,
        policy: str = "keepset",
        on_error: OnError | str = OnError.SKIP,
        max_error_rate: float = 0.5,
    ) -> None:
        if isinstance(columns, str) or not columns:
            raise ValueError(f"{columns=} must be a non-empty list of column names")
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"{max_bytes=} must be > 0 (or None for no budget)")
        if not isinstance(block_size, int) or block_size < 4096:
            raise ValueError(f"{block_size=} must be an int >= 4096 (bytes)")
        super().__init__(source, num_threads, on_error, max_error_rate)
        self.columns = list(columns)
        self.cache_dir = str(cache_dir or default_cache_dir())
        self.max_bytes = max_bytes
        self.storage_options = dict(storage_options or {})
        self.block_size = block_size
        self.prefetch_head = bool(prefetch_head)
        self.retries = retries
        self.timeout = timeout
        self.policy = policy

    def classify(self, error: BaseException) -> str:
        return "missing" if isinstance(error, FileNotFoundError) else self.reason

    def open(self, url: str) -> BlockFile:
        """A :class:`BlockFile` over ``url`` with this node's cache and options."""
        return BlockFile(
            url,
            cache_dir=self.cache_dir,
            max_bytes=self.max_bytes,
            storage_options=self.storage_options,
            block_size=self.block_size,
            retries=self.retries,
            timeout=self.timeout,
            policy=self.policy,
        )

    def process(self, sample: Sample) -> Sample:
        out = dict(sample)
        opened: list[BlockFile] = []
        try:
            for column in self.columns:
                value = sample.get(column)
                out[range_url_key(column)] = value
                if not is_remote(value):
                    out[column] = local_path(value) if isinstance(value, str) else value
                    continue
                file = self.open(value)
                opened.append(file)
                if self.prefetch_head:
                    file.prefetch(0)
                out[column] = file
        except BaseException:
            for file in opened:
                file.close()
            raise
        return out

    def on_skip(self, skipped: Skipped) -> None:
        """Nothing to release: ``process`` closes its files before it fails."""

    def is_fatal(self, error: BaseException) -> bool:
        """A full disk stops the run at once: skipping every sample would hide it."""
        return _disk_full(error)

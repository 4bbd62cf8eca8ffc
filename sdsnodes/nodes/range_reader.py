"""RangeReader: opens remote files of a sample for partial reads (byte ranges in cached blocks)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torchdata.nodes import BaseNode

from sdsnodes._retry import DEFAULT_RETRIES
from sdsnodes.errors import OnError
from sdsnodes.nodes._blockfile import DEFAULT_BLOCK_SIZE, BlockFile
from sdsnodes.nodes._remote import RemoteColumnsNode
from sdsnodes.nodes._threads import Skipped
from sdsnodes.sample import Sample, range_url_key
from sdsnodes.storage import is_remote, local_path


class RangeReader(RemoteColumnsNode):
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
        retries (int), timeout (float | None): retries of a request's transient errors (30,
            with backoff, jitter and ``Retry-After``, within a 30 s deadline per request: see
            docs/retries.md) and seconds one request may take.
        policy (str): the cache's eviction policy.
        on_error (str), max_error_rate (float): the skip/raise policy.

    State:
        as :class:`~sdsnodes.nodes._threads.ThreadMapNode` (reasons ``"missing"``,
        ``"download"``).

    Raises:
        ValueError: ``columns`` is empty, or an argument is out of range.
    """

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
        retries: int = DEFAULT_RETRIES,
        timeout: float | None = 60.0,
        policy: str = "keepset",
        on_error: OnError | str = OnError.SKIP,
        max_error_rate: float = 0.5,
    ) -> None:
        if not isinstance(block_size, int) or block_size < 4096:
            raise ValueError(f"{block_size=} must be an int >= 4096 (bytes)")
        super().__init__(
            source, columns, cache_dir=cache_dir, max_bytes=max_bytes,
            storage_options=storage_options, num_threads=num_threads, retries=retries,
            timeout=timeout, policy=policy, on_error=on_error, max_error_rate=max_error_rate,
        )  # fmt: skip
        self.block_size = block_size
        self.prefetch_head = bool(prefetch_head)

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

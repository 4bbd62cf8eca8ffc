"""RangeReader: opens remote files of a sample for partial reads (byte ranges in cached blocks)."""

from __future__ import annotations

from collections.abc import Sequence

from torchdata.nodes import BaseNode

from sdsnodes._renamed import renamed_keywords
from sdsnodes.nodes._blockfile import DEFAULT_BLOCK_SIZE, BlockFile
from sdsnodes.nodes._remote import RemoteErrors, remote_settings, remote_values
from sdsnodes.nodes._threads import Skipped, ThreadMapNode
from sdsnodes.options import CacheOptions, ErrorOptions, FetchOptions
from sdsnodes.sample import Sample, range_url_key


class RangeReader(RemoteErrors, ThreadMapNode):
    """Replace each remote URL in ``columns`` by a seekable file that fetches only what is read.

    The file (a :class:`~sdsnodes.nodes._blockfile.BlockFile`) reads the object in fixed blocks
    through the shared disk cache, the one :class:`CachingDownloader` uses (same directory, same
    budget, same eviction): a codec that seeks, such as ``VideoClip`` on an mp4, moves the
    container index and the blocks around the clip, not the whole video, and a clip read again
    comes from the cache. Opening runs ahead in ``fetch.max_in_flight`` threads (in order, at
    most twice as many samples ahead) and asks for the object's size (once per URL, cached) and,
    with ``prefetch_head``, its first block, where a fast-start mp4 keeps its index. Blocks are
    pinned while the file is open; the file closes, unpinning them, when the sample that holds it
    is dropped (the Decoder replaces it by the decoded value). Local paths (and ``file://`` URLs)
    are used in place. The original value is kept under ``__range_url__.<column>``.

    Use it instead of downloading a column whose files are long and read in part (a 16-frame
    clip of a 10-minute video); for short files a whole-file download takes fewer requests.

    Args:
        source (BaseNode): upstream node yielding sample dicts.
        columns (Sequence[str]): columns holding paths or URLs to open.
        block_size (int): bytes per block (default 1 MiB), >= 4096.
        prefetch_head (bool): fetch the first block while opening.
        cache (CacheOptions | None): the cache directory, its byte budget ``max_bytes`` and
            eviction ``policy`` (as :class:`CachingDownloader`'s); None: ``CacheOptions()``.
        fetch (FetchOptions | None): ``storage_options``, ``retries``, ``timeout`` and
            ``deadline_s`` of each request (the size, a block), and ``max_in_flight``, the files
            opened concurrently; None: ``FetchOptions()`` (8 at once).
        errors (ErrorOptions | None): the skip/raise policy; None: ``ErrorOptions()``.

    State:
        as :class:`~sdsnodes.nodes._threads.ThreadMapNode` (reasons ``"missing"``,
        ``"download"``).

    Raises:
        ValueError: ``columns`` is empty, or an argument is out of range.
    """

    @renamed_keywords
    def __init__(
        self,
        source: BaseNode,
        columns: Sequence[str],
        *,
        block_size: int = DEFAULT_BLOCK_SIZE,
        prefetch_head: bool = True,
        cache: CacheOptions | None = None,
        fetch: FetchOptions | None = None,
        errors: ErrorOptions | None = None,
    ) -> None:
        if not isinstance(block_size, int) or block_size < 4096:
            raise ValueError(f"{block_size=} must be an int >= 4096 (bytes)")
        self.columns, self.cache, self.fetch, self.cache_dir = remote_settings(
            columns, cache, fetch
        )
        errors = errors or ErrorOptions()
        super().__init__(source, self.fetch.max_in_flight, errors.on_error, errors.max_error_rate)
        self.block_size = block_size
        self.prefetch_head = bool(prefetch_head)

    def open(self, url: str) -> BlockFile:
        """A :class:`BlockFile` over ``url`` with this node's cache and options."""
        return BlockFile(
            url,
            cache_dir=self.cache_dir,
            max_bytes=self.cache.max_bytes,
            storage_options=self.fetch.storage_options,
            block_size=self.block_size,
            retries=self.fetch.retries,
            timeout=self.fetch.timeout,
            policy=self.cache.policy.value,
            deadline_s=self.fetch.deadline_s,
        )

    def process(self, sample: Sample) -> Sample:
        out = dict(sample)
        opened: list[BlockFile] = []
        try:
            for column, url in remote_values(sample, out, self.columns, range_url_key):
                file = self.open(url)
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

"""BlockFile: a read-only, seekable file over a remote object, fetched in fixed-size blocks
through the shared disk cache, so a decoder that seeks (PyAV on an mp4) moves only the byte
ranges it reads: the container index and the packets around a clip, never the whole file.

Each block is a cache entry of its own, keyed ``"<url>#bytes=<first>-<last>"`` (inclusive, as an
HTTP ``Range``), written by one ``fs.cat_file(path, start=..., end=...)`` call, and counted
against the cache's ``max_bytes`` like any downloaded file. The object's size is one
``fs.size`` call, cached too (entry ``"<url>#size"``), so reading a clip again transfers
nothing. A block is pinned from its first read until the file is closed.
"""

from __future__ import annotations

import functools
import io
import logging
import os
import threading
from typing import Any

from sdsnodes._retry import DEFAULT_BACKOFF_S, DEFAULT_DEADLINE_S, Retrier
from sdsnodes.errors import DownloadError
from sdsnodes.nodes._cache_ref import open_cache
from sdsnodes.storage import default_cache_dir, filesystem

logger = logging.getLogger(__name__)

DEFAULT_BLOCK_SIZE = 1 << 20
"""Bytes per block (1 MiB): a few requests per clip, little read beyond what the clip needs."""


def block_key(url: str, first: int, last: int) -> str:
    """The cache key of bytes ``first..last`` (inclusive) of ``url``."""
    return f"{url}#bytes={first}-{last}"


class BlockFile(io.RawIOBase):
    """A seekable, read-only binary file over the remote object ``url``, read in cached blocks.

    Give it to PyAV (``av.open(file)``) or to a codec (``VideoClip``, ``AudioWaveform``): only
    the blocks holding the bytes they read are fetched. Blocks land in the cache directory
    (``open_cache(cache_dir, max_bytes)``, the one :class:`~sdsnodes.CachingDownloader` uses),
    are pinned while the file is open and unpinned by :meth:`close` (also called when the
    object is garbage collected); a block already in the cache is read from disk, not fetched.
    :meth:`pread` is thread-safe; ``read`` and ``seek`` share one position, as in any file.

    Args:
        url (str): the remote object (``s3://``, ``gs://``, ``https://``…).
        cache_dir (str | None): the cache directory; None: ``$SDS_CACHE_DIR`` or
            ``~/.cache/sdsnodes``.
        max_bytes (int | None): byte budget of the cache directory; None is unbounded.
        storage_options (dict | None): fsspec options for ``url``.
        block_size (int): bytes per block, >= 4096.
        size (int | None): the object's size in bytes, if known; None asks the store once
            (cached).
        retries (int): retries of a block's transient errors, >= 0 (the storage retry policy,
            :class:`sdsnodes._retry.Retrier`: exponential backoff with full jitter, a 429/503's
            ``Retry-After`` honoured).
        timeout (float | None): seconds one request may take (async filesystems).
        policy (str): the cache's eviction policy.
        backoff_s (float): upper bound of the first wait between attempts, in seconds (> 0);
            doubled per retry up to 4 s.
        deadline_s (float | None): seconds after a read's first attempt when no new attempt
            starts; None: only ``retries`` bounds them.

    Attributes:
        name (str): ``url``.
        size (int): bytes in the object.
        stats (dict[str, int]): ``blocks_fetched``, ``blocks_cached`` (read from the cache) and
            ``bytes_fetched`` by this file.

    Raises:
        ValueError: a bad argument.
        FileNotFoundError: the object does not exist.
        DownloadError: the size or a block could not be fetched after the retries.
    """

    def __init__(
        self,
        url: str,
        cache_dir: str | None = None,
        max_bytes: int | None = None,
        storage_options: dict[str, Any] | None = None,
        block_size: int = DEFAULT_BLOCK_SIZE,
        size: int | None = None,
        retries: int = 3,
        timeout: float | None = 60.0,
        policy: str = "keepset",
        backoff_s: float = DEFAULT_BACKOFF_S,
        deadline_s: float | None = DEFAULT_DEADLINE_S,
    ) -> None:
        super().__init__()
        self._lock = threading.Lock()
        self._fds: dict[int, int] = {}  # block number -> descriptor of its (pinned) cached file
        if not isinstance(block_size, int) or block_size < 4096:
            raise ValueError(f"{block_size=} must be an int >= 4096 (bytes)")
        if size is not None and size < 0:
            raise ValueError(f"{size=} must be None or >= 0 (bytes)")
        self.name = url
        self.block_size = block_size
        self._retrier = functools.partial(Retrier, url, retries, backoff_s, deadline_s)
        self._retrier()  # the retry arguments, checked now
        self.timeout = timeout
        self.stats = {"blocks_fetched": 0, "blocks_cached": 0, "bytes_fetched": 0}
        self._cache = open_cache(str(cache_dir or default_cache_dir()), max_bytes, policy=policy)
        self._fs, self._path = filesystem(url, storage_options)
        self._position = 0
        self.size = self._size() if size is None else int(size)

    def __repr__(self) -> str:
        return f"BlockFile({self.name!r}, size={self.size}, block_size={self.block_size})"

    # -- io.RawIOBase --------------------------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        self._check_closed()
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        self._check_closed()
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self.size}.get(whence)
        if base is None:
            raise ValueError(f"{whence=} must be 0 (SEEK_SET), 1 (SEEK_CUR) or 2 (SEEK_END)")
        if base + offset < 0:
            raise OSError(f"seek to {base + offset} before the start of {self.name!r}")
        self._position = base + offset
        return self._position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes from the current position (all that is left for -1 or None)."""
        self._check_closed()
        start = self._position
        end = self.size if size is None or size < 0 else min(self.size, start + size)
        data = self.pread(start, end - start)
        self._position = start + len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def close(self) -> None:
        """Close the block files and unpin the blocks; idempotent."""
        if self.closed:
            return
        super().close()
        with self._lock:
            fds, self._fds = self._fds, {}
        for number, fd in fds.items():
            os.close(fd)
            try:
                self._cache.unpin(self._key(number))
            except Exception as error:  # noqa: BLE001 - closing must not fail (also at exit)
                logger.debug("could not unpin block %d of %s: %r", number, self.name, error)

    # -- blocks --------------------------------------------------------------------------------

    def pread(self, offset: int, length: int) -> bytes:
        """``length`` bytes from ``offset`` (fewer at the end of the object); the position
        does not move."""
        self._check_closed()
        end = min(self.size, offset + max(0, length))
        parts = []
        while offset < end:
            number, within = divmod(offset, self.block_size)
            count = min(end - offset, self.block_size - within)
            part = os.pread(self._block(number), count, within)
            if not part:
                raise DownloadError(self.name, f"block {number} is shorter than expected")
            parts.append(part)
            offset += len(part)
        return b"".join(parts)

    def prefetch(self, offset: int = 0, length: int = 1) -> None:
        """Fetch (and pin) the blocks holding bytes ``offset .. offset + length - 1`` now,
        e.g. the container header before a decoder asks for it."""
        self._check_closed()
        end = min(self.size, offset + max(1, length))
        for number in range(offset // self.block_size, -(-end // self.block_size)):
            self._block(number)

    def _bounds(self, number: int) -> tuple[int, int]:
        start = number * self.block_size
        return start, min(self.size, start + self.block_size)

    def _key(self, number: int) -> str:
        start, end = self._bounds(number)
        return block_key(self.name, start, end - 1)

    def _block(self, number: int) -> int:
        """The descriptor of block ``number``'s cached file, fetched and pinned on first use."""
        with self._lock:
            fd = self._fds.get(number)
            if fd is not None:
                return fd
            start, end = self._bounds(number)
            fetched = []

            def fetch(tmp: Any) -> None:
                data = self._fetch(start, end)
                with open(tmp, "wb") as file:
                    file.write(data)
                fetched.append(len(data))

            path = self._cache.get(self._key(number), fetch, size_hint=end - start)
            try:
                fd = os.open(path, os.O_RDONLY)
            except BaseException:
                self._cache.unpin(self._key(number))
                raise
            self._fds[number] = fd
        if fetched:
            self.stats["blocks_fetched"] += 1
            self.stats["bytes_fetched"] += fetched[0]
        else:
            self.stats["blocks_cached"] += 1
        return fd

    def _fetch(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the object, retrying transient errors."""
        return self._retry(f"bytes {start}-{end - 1}", lambda: self._cat(start, end))

    def _cat(self, start: int, end: int) -> bytes:
        data = self._fs.cat_file(self._path, start=start, end=end, **self._timeout())
        if len(data) == self.size and end - start != self.size:  # the Range was ignored
            data = data[start:end]
        if len(data) != end - start:
            raise DownloadError(self.name, f"asked bytes {start}-{end - 1}, got {len(data)}")
        return data

    def _size(self) -> int:
        """The object's size: one request per URL, then read from the cache."""

        def fetch(tmp: Any) -> None:
            size = self._retry("its size", lambda: self._fs.size(self._path))
            if size is None:
                raise DownloadError(self.name, "the store states no size: cannot read ranges")
            with open(tmp, "w") as file:
                file.write(str(int(size)))

        key = f"{self.name}#size"
        with self._cache.pinned(key, fetch) as path:
            return int(path.read_text())

    def _timeout(self) -> dict[str, float]:
        async_fs = getattr(self._fs, "async_impl", False)
        return {"timeout": self.timeout} if self.timeout is not None and async_fs else {}

    def _retry(self, what: str, call: Any) -> Any:
        """``call()`` under the storage retry policy (:meth:`sdsnodes._retry.Retrier.call`:
        backoff with full jitter from a generator seeded by the URL and ``what``,
        ``Retry-After``, a deadline per read)."""
        return self._retrier(what=what).call(call)

    def _check_closed(self) -> None:
        if self.closed:
            raise ValueError(f"I/O operation on a closed BlockFile ({self.name!r})")

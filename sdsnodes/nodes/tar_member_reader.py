"""TarMemberReader: reads the tar members a sample addresses (``<tar>#offset=N&size=M``), only
their bytes, through the shared cache."""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from torchdata.nodes import BaseNode

from sdsnodes._retry import Retrier
from sdsnodes.errors import DownloadError
from sdsnodes.index.table import SMALL_POOL
from sdsnodes.index.tar import parse_member
from sdsnodes.nodes._cache_ref import open_cache
from sdsnodes.nodes._remote import RemoteErrors, remote_settings
from sdsnodes.nodes._threads import Skipped, ThreadMapNode
from sdsnodes.options import CacheOptions, ErrorOptions, FetchOptions
from sdsnodes.sample import CACHE_DIR, Sample, url_key
from sdsnodes.storage import filesystem, is_remote, local_path


def addresses_members(table: pa.Table, column: str) -> bool:
    """Whether ``column`` of ``table`` holds tar member addresses (its first non-null value is
    one: :func:`sdsnodes.index.tar.parse_member`)."""
    if column not in table.column_names:
        return False
    values = table.column(column)
    if not (pa.types.is_string(values.type) or pa.types.is_large_string(values.type)):
        return False
    for chunk in values.chunks:  # the first non-null value, found without copying the column
        if len(chunk) and chunk[0].is_valid:  # the usual case, which allocates nothing
            return parse_member(chunk[0].as_py()) is not None
        if chunk.null_count < len(chunk):
            # indices_nonzero, not pc.index: its pa.scalar(True) imports pandas (0.4-0.5 s);
            # it allocates from the default pool whatever memory_pool says
            valid = pc.is_valid(chunk, memory_pool=SMALL_POOL)
            first = chunk[pc.indices_nonzero(valid)[0].as_py()].as_py()
            return parse_member(first) is not None
    return False


class TarMemberReader(RemoteErrors, ThreadMapNode):
    """Replace each tar member address in ``columns`` by the member's bytes, fetched alone.

    An address (``"https://host/shard-0001.tar#offset=1536&size=40213"``, as
    :func:`sdsnodes.index.tar.tar_index` writes it) names bytes ``[offset, offset + size)`` of
    a tar. For a remote tar those bytes are one ranged GET (``fs.cat_file(start, end)``), with
    the ``fetch`` retries and deadline, into the shared disk cache as an entry of their own,
    keyed by the address: the budget, eviction and pins are the :class:`CachingDownloader`'s,
    the column becomes the pinned cached file's path, the address is kept under
    ``__url__.<column>`` and the :class:`Evictor` unpins it. A local tar is read in place: the
    column becomes the member's bytes (one ``os.pread``), nothing is cached. Either way the
    codecs decode what they get (a path or bytes), and nothing else of the tar is read. A None
    value stays None; any other value is an error (reason ``"download"``).

    Args:
        source (BaseNode): upstream node yielding sample dicts.
        columns (Sequence[str]): columns holding member addresses.
        cache (CacheOptions | None): the cache directory, ``max_bytes`` and ``policy``.
        fetch (FetchOptions | None): ``storage_options``, ``retries``, ``timeout``,
            ``deadline_s``; ``max_in_flight`` members fetched at once (threads).
        errors (ErrorOptions | None): the skip/raise policy.

    State:
        as :class:`~sdsnodes.nodes._threads.ThreadMapNode` (reasons ``"missing"``,
        ``"download"``).

    Raises:
        ValueError: ``columns`` is empty.
    """

    def __init__(
        self,
        source: BaseNode,
        columns: Sequence[str],
        *,
        cache: CacheOptions | None = None,
        fetch: FetchOptions | None = None,
        errors: ErrorOptions | None = None,
    ) -> None:
        self.columns, self.cache, self.fetch, self.cache_dir = remote_settings(
            columns, cache, fetch
        )
        errors = errors or ErrorOptions()
        super().__init__(source, self.fetch.max_in_flight, errors.on_error, errors.max_error_rate)

    def process(self, sample: Sample) -> Sample:
        out = dict(sample)
        cache = None
        pinned: list[str] = []
        try:
            for column in self.columns:
                value = sample.get(column)
                out[url_key(column)] = value
                if value is None:
                    continue
                member = parse_member(value)
                if member is None:
                    raise DownloadError(str(value), f"column {column!r} holds no tar member "
                                        "address (<tar>#offset=N&size=M)")  # fmt: skip
                url, offset, size = member
                if not is_remote(url):
                    out[column] = _pread(local_path(url), offset, size)
                    continue
                if size == 0:
                    out[column] = b""
                    continue
                cache = cache or open_cache(
                    self.cache_dir, self.cache.max_bytes, self.cache.ttl, self.cache.policy.value
                )
                fetch = functools.partial(self._fetch, url, offset, size)
                out[column] = str(cache.get(value, fetch, size_hint=size))
                pinned.append(value)
        except BaseException:
            for address in pinned:
                cache.unpin(address)
            raise
        if pinned:
            out[CACHE_DIR] = self.cache_dir
        return out

    def _fetch(self, url: str, offset: int, size: int, tmp: Any) -> None:
        """Write bytes ``[offset, offset + size)`` of ``url`` to ``tmp``, retrying transient
        errors (:class:`sdsnodes._retry.Retrier`)."""
        fs, path = filesystem(url, self.fetch.storage_options)
        timeout = self.fetch.timeout
        kwargs = {"timeout": timeout} if timeout and getattr(fs, "async_impl", False) else {}
        what = f"bytes {offset}-{offset + size - 1}"

        def attempt() -> bytes:
            data = fs.cat_file(path, start=offset, end=offset + size, **kwargs)
            if len(data) != size:
                raise DownloadError(url, f"asked {what}, got {len(data)} bytes")
            return data

        retrier = Retrier(url, self.fetch.retries, deadline_s=self.fetch.deadline_s, what=what)
        data = retrier.call(attempt)
        with open(tmp, "wb") as file:
            file.write(data)

    def on_skip(self, skipped: Skipped) -> None:
        """Nothing to release: ``process`` unpins what it pinned before it fails."""


def _pread(path: str, offset: int, size: int) -> bytes:
    """Bytes ``[offset, offset + size)`` of the local file ``path``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        data = os.pread(fd, size, offset)
    finally:
        os.close(fd)
    if len(data) != size:
        raise DownloadError(path, f"asked {size} bytes at {offset}, the file holds {len(data)}")
    return data

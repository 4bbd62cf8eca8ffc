"""fsspec helpers: telling remote from local, one filesystem per (process, protocol, options),
and copying a remote object to a local path with retries.

Every remote access of sdsnodes goes through here, so timeouts, retries and fork-safety live in
one place. fsspec async filesystems (s3fs, gcsfs, http) are not fork-safe, so instances are kept
per process id and created lazily inside each DataLoader worker.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import ftplib
import functools
import json
import logging
import os
import shutil
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import fsspec
import fsspec.asyn
from fsspec.core import split_protocol, strip_protocol

from sdsnodes._checksum import ChecksumMismatch, parse_checksum, verify
from sdsnodes._retry import DEFAULT_DEADLINE_S, DEFAULT_RETRIES, Retrier
from sdsnodes._s3_direct import getter as direct_getter
from sdsnodes._s3_direct import time_limit as direct_time_limit
from sdsnodes.errors import DownloadError

logger = logging.getLogger(__name__)

T = TypeVar("T")
_TIMEOUT = getattr(asyncio, "timeout", None)  # Python 3.11+

LOCAL_PROTOCOLS = (None, "file", "local")
_fs_cache: dict[tuple, fsspec.AbstractFileSystem] = {}
_fs_lock = threading.Lock()
COPY_CHUNK_BYTES = 2**20


def default_cache_dir() -> str:
    """``$SDS_CACHE_DIR``, else ``~/.cache/sdsnodes``: downloads and converted indexes live here."""
    from pathlib import Path

    return os.environ.get("SDS_CACHE_DIR") or str(Path.home() / ".cache" / "sdsnodes")


def protocol_of(path: str) -> str | None:
    """The fsspec protocol of ``path`` (``"s3"``, ``"gs"``, ``"https"``…), None for a plain path."""
    return split_protocol(str(path))[0]


def is_remote(path: object) -> bool:
    """Whether ``path`` is a URL that needs downloading (not a local path or ``file://`` URL)."""
    return isinstance(path, str) and protocol_of(path) not in LOCAL_PROTOCOLS


def local_path(path: str) -> str:
    """Strip a ``file://`` prefix: the plain local path."""
    protocol, rest = split_protocol(path)
    return rest if protocol in ("file", "local") else path


def filesystem(
    url: str, storage_options: dict[str, Any] | None = None
) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem for ``url`` and the path inside it.

    One instance is kept per (process, protocol, storage_options), so threads share connection
    pools while forked or spawned workers build their own; sync filesystems other than the
    local one (FTP, SFTP…: one connection per instance, not thread-safe) get one per thread.

    Args:
        url (str): a local path or a URL (``s3://``, ``gs://``, ``https://``, ``file://``…).
        storage_options (dict | None): passed to the filesystem's constructor.

    Returns:
        tuple[AbstractFileSystem, str]: the filesystem and ``url`` stripped as it expects.
    """
    options = dict(storage_options or {})
    protocol = protocol_of(url) or "file"
    cls = fsspec.get_filesystem_class(protocol)
    key: tuple = (os.getpid(), protocol, json.dumps(options, sort_keys=True, default=repr))
    if not getattr(cls, "async_impl", False) and protocol not in LOCAL_PROTOCOLS:
        key += (threading.get_ident(),)  # one connection per sync instance (ftp, sftp…)
    with _fs_lock:
        fs = _fs_cache.get(key)
        if fs is None:
            fs = cls(**options, skip_instance_cache=True)
            _fs_cache[key] = fs
    return fs, strip_protocol(url)


def fetch(
    url: str,
    dest: str | os.PathLike,
    storage_options: dict[str, Any] | None = None,
    retries: int = DEFAULT_RETRIES,
    backoff_s: float = 0.5,
    expected_size: int | None = None,
    timeout: float | None = 60.0,
    checksum: tuple[str, str] | None = None,
    deadline_s: float | None = DEFAULT_DEADLINE_S,
    s3_direct: bool = True,
) -> int:
    """Copy the object at ``url`` to the local file ``dest``, retrying transient errors.

    Transient errors (5xx, 408, 429, refused or reset connections, timeouts, bodies shorter
    than announced or than ``expected_size``) are retried with exponential backoff and full
    jitter (waits drawn from ``[0, min(4, backoff_s * 2**n)]`` seconds), honouring a 429/503's
    ``Retry-After``, until ``retries`` retries were made or ``deadline_s`` seconds passed since
    the first attempt (see :mod:`sdsnodes._retry` and ``docs/retries.md``): the defaults ride out
    an outage shorter than 30 s. Missing objects, other 4xx, permission errors, a full disk and a
    checksum mismatch are not retried.

    Args:
        url (str): the remote object.
        dest (str | os.PathLike): local file to write (overwritten).
        storage_options (dict | None): fsspec options for ``url``'s filesystem.
        retries (int): most retries after the first attempt (>= 0).
        backoff_s (float): upper bound of the first wait, in seconds; doubled per retry.
        expected_size (int | None): size in bytes the object must have, if known.
        timeout (float | None): seconds one attempt may take (async filesystems: s3, gs,
            http); None waits as long as the filesystem does.
        checksum (tuple[str, str] | None): ``(algorithm, digest)`` the file must have, algorithm
            ``"md5"``, ``"sha256"`` or ``"crc32c"``, digest hex or base64 (as GCS gives it);
            checked on ``dest`` once complete, before success. None checks nothing.
        deadline_s (float | None): seconds after the first attempt when no new attempt
            starts; None: only ``retries`` bounds them. An attempt running then still has its
            ``timeout``, so failing takes at most ``deadline_s + timeout`` seconds.
        s3_direct (bool): an ``s3://`` GET as a presigned URL through aiohttp where the
            filesystem's options allow it (:mod:`sdsnodes._s3_direct`); False: through s3fs.

    Returns:
        int: bytes written.

    Raises:
        FileNotFoundError: the object does not exist.
        OSError: the local disk is full (``errno.ENOSPC``) or another permanent error.
        ChecksumMismatch: (a DownloadError, ``reason == "checksum"``) the file's digest is not
            ``checksum``'s; never retried, ``dest`` is removed.
        DownloadError: transient errors outlived the retries or the deadline (the message names
            the URL, the attempts, the seconds spent and the last error, redacted).
        ValueError: ``checksum`` is malformed, or ``retries`` / ``deadline_s`` out of range
            (raised before anything is downloaded).
    """
    expected = None if checksum is None else parse_checksum(checksum)
    retrier = Retrier(url, retries, backoff_s, deadline_s)
    fs, path = filesystem(url, storage_options)
    # fsspec's sync wrapper of async filesystems takes a `timeout` (FSTimeoutError past it)
    kwargs = (
        {"timeout": timeout} if timeout is not None and getattr(fs, "async_impl", False) else {}
    )

    direct = direct_getter(fs) if s3_direct else None

    def attempt() -> int:
        try:
            if direct is not None:
                limit = direct_time_limit(timeout)
                fsspec.asyn.sync(fs.loop, direct, path, os.fspath(dest), timeout=limit)
            elif getattr(fs, "async_impl", False):
                fs.get_file(path, os.fspath(dest), **kwargs)
            else:  # through our own file object: some sync get_file leak it on errors (ftp)
                with fs.open(path, "rb") as src, open(dest, "wb") as out:
                    shutil.copyfileobj(src, out, COPY_CHUNK_BYTES)
        except ftplib.error_perm as error:
            if str(error).startswith("550"):  # FTP's "no such file"
                raise FileNotFoundError(errno.ENOENT, str(error), url) from error
            raise
        return _checked(url, dest, expected_size, expected)

    return retrier.call(attempt)


def _checked(
    url: str,
    dest: str | os.PathLike,
    expected_size: int | None,
    expected: tuple[str, bytes] | None,
) -> int:
    """The size of the downloaded ``dest``; DownloadError if it is not ``expected_size`` (worth
    a retry), ChecksumMismatch (``dest`` removed) if its digest is not ``expected``."""
    size = os.path.getsize(dest)
    if expected_size is not None and size != expected_size:
        raise DownloadError(url, f"got {size} bytes, expected {expected_size}")
    if expected is not None:
        try:
            verify(url, dest, expected)
        except ChecksumMismatch:
            remove_quietly(os.fspath(dest))
            raise
    return size


def fetch_soon(
    url: str,
    dest: str | os.PathLike,
    storage_options: dict[str, Any] | None = None,
    retries: int = DEFAULT_RETRIES,
    backoff_s: float = 0.5,
    timeout: float | None = 60.0,
    executor: concurrent.futures.Executor | None = None,
    abandoned: threading.Event | None = None,
    expected_size: int | None = None,
    checksum: tuple[str, str] | None = None,
    deadline_s: float | None = DEFAULT_DEADLINE_S,
    s3_direct: bool = True,
) -> concurrent.futures.Future:
    """Start :func:`fetch` without waiting: the future of its result (bytes written).

    On an async filesystem (s3fs, gcsfs, HTTP) the download runs as a coroutine on fsspec's
    event loop, so hundreds can be in flight without a thread each. Other filesystems run
    :func:`fetch` in ``executor``. To give a download up, set ``abandoned`` (then cancel the
    future): whenever the download ends after that, it removes ``dest`` (a cancellation may
    reach the coroutine only after it finished writing).

    Args:
        url, dest, storage_options, retries, backoff_s, timeout, expected_size, checksum,
            deadline_s: as :func:`fetch` (the deadline counts from the first attempt).
        executor (concurrent.futures.Executor | None): where a sync filesystem's download runs
            (required for those).
        abandoned (threading.Event | None): set when the caller gives the download up.
        s3_direct (bool): send an ``s3://`` GET as a presigned URL through aiohttp, where the
            filesystem's options allow it (see :mod:`sdsnodes._s3_direct`: 0.68-0.83x
            s3fs's client CPU per small object); False: always through s3fs.

    Returns:
        concurrent.futures.Future: resolves to the bytes written, or to :func:`fetch`'s errors.

    Raises:
        ValueError: a sync filesystem and no ``executor``, a malformed ``checksum``, or
            ``retries`` / ``deadline_s`` out of range.
    """
    expected = None if checksum is None else parse_checksum(checksum)
    retry = functools.partial(Retrier, url, retries, backoff_s, deadline_s)
    retry()  # arguments checked here, in the caller's thread
    fs, path = filesystem(url, storage_options)
    abandoned = abandoned or threading.Event()
    dest = os.fspath(dest)
    if getattr(fs, "async_impl", False):
        coro = _fetch_async(
            fs, url, path, dest, retry, timeout, abandoned, expected_size, expected, s3_direct
        )
        return _Download(fs.loop, coro)
    if executor is None:
        raise ValueError(f"{url!r} is on a sync filesystem: fetch_soon needs an executor")

    def run() -> int:
        if abandoned.is_set():
            return 0
        try:
            return fetch(
                url, dest, storage_options, retries, backoff_s, expected_size, timeout, checksum,
                deadline_s, s3_direct,
            )  # fmt: skip
        finally:
            if abandoned.is_set():
                remove_quietly(dest)

    return executor.submit(run)


def run_soon(loop: asyncio.AbstractEventLoop, coro: Any) -> concurrent.futures.Future:
    """Run ``coro`` on ``loop`` (an fsspec filesystem's): its future, settled only once the
    coroutine ended, cancelled or not, as :func:`fetch_soon`'s downloads are."""
    return _Download(loop, coro)


class _Download(concurrent.futures.Future):
    """The future of a download coroutine on ``loop`` that resolves only once the coroutine has
    ended, cancelled or not (``run_coroutine_threadsafe``'s future is done as soon as it is
    cancelled, while the coroutine may still write its file): a caller that waits for it knows
    the file is settled. ``cancel()`` cancels the coroutine; a running download then resolves
    with ``CancelledError`` as an exception."""

    def __init__(self, loop: asyncio.AbstractEventLoop, coro: Any) -> None:
        super().__init__()
        self._loop = loop
        self._task: asyncio.Task | None = None
        self._cancel_asked = False
        loop.call_soon_threadsafe(self._start, coro)

    def _start(self, coro: Any) -> None:  # on the loop
        if self._cancel_asked or not self.set_running_or_notify_cancel():
            coro.close()
            if not self.done():
                self.set_exception(concurrent.futures.CancelledError())
            return
        self._task = self._loop.create_task(coro)
        self._task.add_done_callback(self._settle)

    def _settle(self, task: asyncio.Task) -> None:  # on the loop
        if task.cancelled():
            self.set_exception(concurrent.futures.CancelledError())
        elif task.exception() is not None:
            self.set_exception(task.exception())
        else:
            self.set_result(task.result())

    def cancel(self) -> bool:
        self._cancel_asked = True
        if super().cancel():  # not started yet
            return True
        self._loop.call_soon_threadsafe(self._cancel_task)
        return False

    def _cancel_task(self) -> None:  # on the loop
        if self._task is not None:
            self._task.cancel()


async def _fetch_async(
    fs: Any,
    url: str,
    path: str,
    dest: str,
    retry: Callable[[], Retrier],
    timeout: float | None,
    abandoned: threading.Event,
    expected_size: int | None,
    expected: tuple[str, bytes] | None,
    direct: bool,
) -> int:
    retrier = retry()  # the deadline counts from here
    direct_get = direct_getter(fs) if direct else None
    get = direct_get or fs._get_file
    if direct_get is not None:
        timeout = direct_time_limit(timeout)

    async def attempt() -> int:
        if abandoned.is_set():
            return 0
        await within(get(path, dest), timeout)
        if abandoned.is_set():  # given up while the last bytes arrived
            remove_quietly(dest)
            return 0
        if expected is None:
            return _checked(url, dest, expected_size, None)
        # hashing a large file would stall every coroutine of fsspec's loop
        return await asyncio.get_running_loop().run_in_executor(
            None, _checked, url, dest, expected_size, expected
        )

    try:
        return await retrier.call_async(attempt)
    except BaseException:
        if abandoned.is_set():
            remove_quietly(dest)
            return 0  # nobody waits for it: an exception here would be logged as unretrieved
        raise


async def within(awaitable: Awaitable[T], timeout: float | None) -> T:
    """``await awaitable``, raising ``TimeoutError`` after ``timeout`` seconds (None: no limit).

    ``asyncio.timeout`` where Python has it (3.11+): unlike ``asyncio.wait_for`` on 3.11 it runs
    the coroutine in the caller's task instead of a new one, one task fewer per download."""
    if _TIMEOUT is None:  # Python 3.10
        return await asyncio.wait_for(awaitable, timeout)
    async with _TIMEOUT(timeout):
        return await awaitable


def remove_quietly(path: str | os.PathLike) -> None:
    """Remove the file ``path`` if it is there; errors are ignored (a download given up)."""
    with contextlib.suppress(OSError):
        os.unlink(path)

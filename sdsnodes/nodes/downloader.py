"""CachingDownloader: copies remote files of a sample into the shared disk cache, ahead of use."""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import pathlib
import threading
import time
from collections.abc import Sequence
from typing import Any

from torchdata.nodes import BaseNode

from sdsnodes._renamed import renamed_keywords
from sdsnodes.cache.ledger import disk_full_error
from sdsnodes.cache.store import BUSY, NO_ROOM, Cache
from sdsnodes.errors import ErrorPolicy
from sdsnodes.nodes._cache_ref import open_cache
from sdsnodes.nodes._gcs_compose import GcsComposer, items_for
from sdsnodes.nodes._remote import RemoteErrors, disk_full, remote_settings, remote_values
from sdsnodes.nodes._threads import register_live
from sdsnodes.nodes._window import (
    BUSY_POLL_S,
    Delivered,
    WindowEntry,
    WindowFile,
    checksum_candidates,
    checksum_of,
    error_of,
    record,
    release_window,
    running,
)
from sdsnodes.options import CacheOptions, ErrorOptions, FetchOptions
from sdsnodes.sample import CACHE_DIR, Sample, describe, url_key
from sdsnodes.storage import fetch, fetch_soon


class CachingDownloader(BaseNode[Sample], RemoteErrors):
    """Replace each remote URL in ``columns_to_download`` by a local, pinned file in the cache.

    Keeps a window of up to ``fetch.max_in_flight`` samples ahead of the consumer, and downloads
    their files concurrently: on S3, GCS and HTTP each download is a coroutine on fsspec's event
    loop (no thread per download); other filesystems use ``max_in_flight`` threads. Samples come out
    in order. The cache's ledger is asked once per batch of files (hits are pinned, misses
    claimed) and each download is recorded as it ends (by the thread that ends it, so a node
    dropped mid-epoch holds no key's lock), so a cold-cache download costs little CPU beyond
    the HTTP request. A file another downloader is fetching is asked for again every 10 ms.

    The byte budget holds: a download starts only when the files pinned and in flight, all
    processes together, leave room for it under ``cache.max_bytes`` (its size from the index's
    ``size`` / ``<column>_size`` column, else the largest file the cache directory has held;
    before any, one file at a time), in window order. Samples this node delivered stay pinned
    until the :class:`Evictor` releases them (the Decoder's read-ahead holds several), and they
    count in the budget like any other. Only a sample without which nothing can progress may
    start without room: the head of the window, and only once every sample this node delivered
    was released. So the directory exceeds ``max_bytes`` by at most one file per process (per
    CachingDownloader of the process). A graph that keeps several delivered samples pinned
    until it gets more (a Batcher before the Evictor) would wait forever for room: after
    ``STALL_S`` (30 s) without any release the node logs a warning and lets each head pass the
    budget from then on (the bound is then ``max_bytes`` + the samples held before the Evictor).

    Each file is written under a temporary name and renamed into place, so a crash never leaves
    a half file that looks whole; a file whose size differs from the index's size column is
    retried, then counted as a failed download; a file whose digest differs from the index's
    checksum column is never cached (counted as ``"checksum"``); the same URL is downloaded
    once even when several workers or processes ask for it (the others wait for it). Local
    paths (and ``file://`` URLs) are used in place. The original value is kept under
    ``__url__.<column>``; ``__cache_dir__`` tells :class:`Evictor` where to release the files.

    Args:
        source (BaseNode): upstream node yielding sample dicts.
        columns_to_download (Sequence[str]): columns holding paths or URLs.
        cache (CacheOptions | None): the cache directory (shared by all processes on the
            machine), its byte budget ``max_bytes``, eviction ``policy`` and ``ttl``; None:
            ``CacheOptions()``.
        fetch (FetchOptions | None): ``storage_options``, ``retries``, ``timeout`` and
            ``deadline_s`` of each download, and ``max_in_flight``, the samples downloaded ahead
            and at once; None: ``FetchOptions()`` (30 retries within 30 s, 8 in flight). Its
            ``gcs_compose`` fetches small ``gs://`` files by compose (counts: ``compose_counts``).
        errors (ErrorOptions | None): ``on_error`` (``"skip"``: count and drop the sample, or
            ``"raise"``) and ``max_error_rate``; None: ``ErrorOptions()`` (skip, 0.5).
        checksum_columns (dict[str, str] | None): media column → index column holding the
            digest its bytes must have, checked before the file enters the cache; the digest
            column's name says the algorithm (``"video.md5"``, ``"sha256"``, ``"crc32c"``), its
            value hex or base64 (as GCS gives it), null not checked. None (default) finds
            ``<column>.md5`` / ``.sha256`` / ``.crc32c``, and plain ``md5`` / ``sha256`` /
            ``crc32c`` when one column is downloaded; ``{}`` checks nothing.

    State:
        ``{"source": <source state after the last yielded sample>, "errors": {"seen": int,
        "skipped": {reason: int}}}`` (reasons ``"missing"``, ``"download"``, ``"checksum"``):
        downloads in flight are not part of it; a resumed node starts them again (cache hits
        if they finished).

    Errors:
        a missing object (404) is counted as ``"missing"``, a digest mismatch as ``"checksum"``,
        other failures after retries as ``"download"``; under ``on_error="raise"`` they raise.
        A full disk always raises ``OSError(ENOSPC)`` naming the cache directory.

    Raises:
        ValueError: ``columns_to_download`` is empty, an argument is out of range, or
            ``checksum_columns`` names a column not downloaded or a digest column whose name
            does not end in an algorithm.
    """

    SOURCE_KEY = "source"
    ERRORS_KEY = "errors"

    @renamed_keywords
    def __init__(
        self,
        source: BaseNode,
        columns_to_download: Sequence[str],
        *,
        cache: CacheOptions | None = None,
        fetch: FetchOptions | None = None,
        errors: ErrorOptions | None = None,
        checksum_columns: dict[str, str] | None = None,
    ) -> None:
        super().__init__()
        settings = remote_settings(columns_to_download, cache, fetch)
        self.columns, self.cache, self.fetch, self.cache_dir = settings
        self.source = source
        self.max_bytes = self.cache.max_bytes
        errors = errors or ErrorOptions()
        self.errors = ErrorPolicy(errors.on_error, errors.max_error_rate)
        self.checksum_columns = checksum_columns
        self._digests = checksum_candidates(self.columns, checksum_columns)
        self._window: collections.deque[WindowEntry] = collections.deque()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._exhausted = False
        self._to_claim = False  # the window may hold unclaimed files (new, or answered busy)
        self._state: dict[str, Any] | None = None
        self._abandoned = threading.Event()  # set when the window is dropped
        self._delivered = Delivered()  # files delivered and maybe still pinned downstream
        compose = self.fetch.gcs_compose
        self._composer = None if compose is None else GcsComposer(compose)

    # -- torchdata node protocol ------------------------------------------------------------

    def reset(self, initial_state: dict[str, Any] | None = None) -> None:
        super().reset(initial_state)
        register_live(self)
        window = list(self._window)
        self._drop_window()
        if self._delivered.urls:  # downstream resets too: what it held is released here
            self._delivered.release_all(self._cache(), window)
        if initial_state is None:  # a new epoch: counts go on accumulating
            self.source.reset(None)
        else:
            self.errors.load(initial_state.get(self.ERRORS_KEY))
            self.source.reset(initial_state[self.SOURCE_KEY])
        self._exhausted = False
        self._state = self.source.state_dict()

    def next(self) -> Sample:
        while True:
            self._fill()
            if not self._window:
                raise StopIteration
            entry = self._window[0]
            if entry.busy() or entry.unclaimed():
                self._wait(entry)
                continue
            self._window.popleft()
            self._state = entry.state
            if entry.error is None:
                self.errors.ok()
                entry.out[CACHE_DIR] = self.cache_dir
                if self.max_bytes is not None:  # without a budget nothing waits for room
                    self._delivered.add(entry)
                return entry.out
            self._release(entry)
            if self.is_fatal(entry.error):
                error = self._disk_full_error(entry.error)
                raise error from (None if error is entry.error else entry.error)
            self.errors.skip(self.classify(entry.error), entry.error, describe(entry.sample))

    def get_state(self) -> dict[str, Any]:
        return {self.SOURCE_KEY: self._state, self.ERRORS_KEY: self.errors.state()}

    @property
    def in_flight(self) -> int:
        """Downloads of this node running now (read by :func:`sdsnodes.stats`)."""
        return running(self._window)

    def shutdown(self) -> None:
        """Cancel the downloads in flight, release the window's files, stop the threads."""
        self._drop_window()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # -- blocking form (random access) ------------------------------------------------------

    def process(self, sample: Sample) -> Sample:
        """Download ``sample``'s files now, one after the other (``dataset[i]``).

        Raises:
            FileNotFoundError, DownloadError, OSError: as the node's errors (never skipped).
        """
        cache = self._cache()
        out = dict(sample)
        pinned: list[str] = []
        try:
            for file in self._files_of(sample, out):
                download = functools.partial(
                    fetch, file.url, expected_size=file.size_hint, checksum=file.checksum,
                    **self.fetch.fetch_kwargs,
                )  # fmt: skip
                out[file.column] = str(cache.get(file.url, download, size_hint=file.size_hint))
                pinned.append(file.url)
        except BaseException as error:
            for url in pinned:
                cache.unpin(url)
            full = self._disk_full_error(error) if disk_full(error) else error
            if full is not error:
                raise full from error
            raise
        out[CACHE_DIR] = self.cache_dir
        return out

    # -- the window -------------------------------------------------------------------------

    def _cache(self) -> Cache:
        return open_cache(self.cache_dir, self.max_bytes, self.cache.ttl, self.cache.policy.value)

    def _files_of(self, sample: Sample, out: Sample) -> list[WindowFile]:
        files = []
        for column, value in remote_values(sample, out, self.columns, url_key):
            size = sample.get("size") if len(self.columns) == 1 else sample.get(f"{column}_size")
            hint = int(size) if isinstance(size, int) and size >= 0 else None
            digest = checksum_of(sample, self._digests.get(column, []))
            files.append(WindowFile(column, value, hint, digest))
        return files

    def _fill(self) -> None:
        """Top the window up once it is half empty (so the ledger sees batches of files), then
        start what the budget allows."""
        window = self.fetch.max_in_flight
        if len(self._window) <= window // 2:
            while not self._exhausted and len(self._window) < window:
                try:
                    sample = next(self.source)
                except StopIteration:
                    self._exhausted = True
                    break
                out = dict(sample)
                files = self._files_of(sample, out)
                self._window.append(WindowEntry(sample, out, self.source.state_dict(), files))
                self._to_claim = self._to_claim or bool(files)
        self._start()

    def _start(self) -> None:
        """Claim the unclaimed files of the window, in order, and start their downloads."""
        if not self._to_claim:  # nothing new since every file was claimed: skip the walk
            return
        todo = [(entry, f) for entry in self._window for f in entry.unclaimed()]
        self._to_claim = False
        if not todo:
            return
        head = self._window[0]
        cache = self._cache()
        may = self._delivered.all_released(cache, self._window)
        overshoot = sum(1 for entry, _ in todo if entry is head) if may else 0
        items = [(f.url, f.size_hint) for _, f in todo]  # None: the cache reserves the largest
        try:
            answers = cache.claim(items, overshoot=overshoot)
        except Exception as error:  # noqa: BLE001 - the head sample carries it
            for entry, f in todo:
                if entry is head:
                    self._fail(entry, f, error)
            self._to_claim = True  # the others are asked again
            return
        self._to_claim = any(a in (NO_ROOM, BUSY) for a in answers)  # asked again next time
        waits = any(e is head and a == NO_ROOM for (e, _), a in zip(todo, answers))
        self._delivered.watch(waits, self.cache_dir, self.max_bytes)
        fresh = []
        for (entry, f), answer in zip(todo, answers):
            if isinstance(answer, pathlib.Path):
                self._pinned(entry, f, answer)
            elif answer not in (NO_ROOM, BUSY):  # BUSY: asked again until it is a hit
                fresh.append((entry, f, answer))
        composed = self._compose(fresh)
        for (entry, f, answer), part in zip(fresh, composed):
            f.claim = answer
            try:
                f.download = part if part is not None else fetch_soon(
                    f.url, answer.tmp, executor=self._threads(), abandoned=self._abandoned,
                    expected_size=f.size_hint, checksum=f.checksum, **self.fetch.fetch_kwargs,
                )  # fmt: skip
            except Exception as error:  # noqa: BLE001 - an unknown protocol, say
                cache.finish([(answer, error)])
                f.claim = None
                self._fail(entry, f, error)
                continue
            f.future = concurrent.futures.Future()
            f.download.add_done_callback(functools.partial(record, cache, answer, f.future))

    def _compose(self, fresh: list) -> list:
        """Per new claim, its composed download (``fetch.gcs_compose``), or None."""
        if self._composer is None:
            return [None] * len(fresh)
        items = items_for([(f.url, a.tmp, f.size_hint, f.checksum) for _, f, a in fresh])
        return self._composer.start(items, self._abandoned, self.fetch.fetch_kwargs)

    @property
    def compose_counts(self) -> dict[str, int]:
        """GCS compose counts of this process (``fetch.gcs_compose``; empty when off)."""
        return {} if self._composer is None else dict(self._composer.counts)

    def _wait(self, head: WindowEntry) -> None:
        """Wait until a download of the head sample ended and take it in; when the head waits
        for a file another downloader is fetching (or for room), wait until any download of
        the window ended, at most ``BUSY_POLL_S``, and take in all that ended.

        Each download is recorded in the cache as soon as it ends (in the thread that ends it),
        so its key's lock never waits for this node, and the others of the window are taken in
        when they reach the head: a wait costs the head's futures, not the window's."""
        polling = bool(head.unclaimed())
        entries = list(self._window) if polling else [head]
        pending = [f.future for entry in entries for f in entry.files if f.future is not None]
        if pending:
            concurrent.futures.wait(
                pending,
                timeout=BUSY_POLL_S if polling else None,
                return_when=concurrent.futures.FIRST_COMPLETED,
            )
        elif polling:
            time.sleep(BUSY_POLL_S)
        for entry in entries:
            for f in list(entry.files):
                if f.future is None or not f.future.done():
                    continue
                future, claim = f.future, f.claim
                f.future, f.download, f.claim = None, None, None
                error = error_of(future)
                if error is None:
                    self._pinned(entry, f, claim.path)
                else:
                    self._fail(entry, f, error)

    def _pinned(self, entry: WindowEntry, f: WindowFile, path: pathlib.Path) -> None:
        f.pinned = True
        entry.out[f.column] = str(path)

    def _fail(self, entry: WindowEntry, f: WindowFile, error: BaseException) -> None:
        entry.files.remove(f)  # nothing left to wait for or release
        if entry.error is None:
            entry.error = error

    def _release(self, entry: WindowEntry) -> None:
        cache = self._cache()
        for f in entry.files:
            if f.pinned:
                f.pinned = False
                cache.unpin(f.url)

    def _drop_window(self) -> None:
        """Forget the window: give its downloads and waits up, release its claims and pins."""
        window, self._window = self._window, collections.deque()
        abandoned, self._abandoned = self._abandoned, threading.Event()
        abandoned.set()  # what still runs removes its file and downloads nothing more
        if window:
            release_window(self._cache(), window)

    def _threads(self) -> concurrent.futures.ThreadPoolExecutor:
        """The threads of sync filesystems' downloads (S3, GCS, HTTP need none)."""
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(
                self.fetch.max_in_flight, thread_name_prefix="sds-download"
            )
        return self._executor

    def _disk_full_error(self, error: BaseException) -> OSError:
        if isinstance(error, OSError) and self.cache_dir in str(error):
            return error  # already says which directory is full
        return disk_full_error(self.cache_dir, error)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_window"] = collections.deque()
        state["_delivered"] = Delivered()
        state["_executor"] = state["_abandoned"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._abandoned = threading.Event()

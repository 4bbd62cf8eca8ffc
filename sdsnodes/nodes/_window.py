"""The window of :class:`~sdsnodes.nodes.downloader.CachingDownloader`: its samples and files,
the digest each file must have, and recording a download in the cache as soon as it ends."""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import errno
import functools
import logging
import time
from collections.abc import Iterable
from typing import Any

from sdsnodes._checksum import ALGORITHMS
from sdsnodes.cache import paths
from sdsnodes.cache.store import Cache, Claim
from sdsnodes.sample import Sample

logger = logging.getLogger(__name__)

BUSY_POLL_S = 0.01
"""How often a sample whose file another downloader is fetching asks the cache again (s)."""
DROP_WAIT_S = 5.0
"""How long dropping a window waits for its cancelled downloads to end (s)."""
STALL_S = 30.0
"""How long the head of a window waits for room while downstream releases nothing this node
delivered, before the node concludes that downstream holds samples until it gets more (s)."""
MAX_TRACKED = 4096
"""Delivered files tracked at most; more means their releases cannot be seen (they are unpinned
through another Cache object of the process): the node then stops waiting for them."""


@dataclasses.dataclass
class WindowFile:
    """One remote column of a sample in the window, from wanted to pinned in the cache."""

    column: str
    url: str
    size_hint: int | None
    checksum: tuple[str, str] | None = None  # (algorithm, digest) the bytes must have
    claim: Claim | None = None
    download: concurrent.futures.Future | None = None  # the bytes coming
    future: concurrent.futures.Future | None = None  # then recorded in the cache: the size
    pinned: bool = False


@dataclasses.dataclass
class WindowEntry:
    """A sample in the window: its files, the source's state after it, the first error."""

    sample: Sample
    out: Sample
    state: dict[str, Any]
    files: list[WindowFile]
    error: BaseException | None = None

    def busy(self) -> bool:
        return any(f.future is not None for f in self.files)

    def unclaimed(self) -> list[WindowFile]:
        return [f for f in self.files if f.future is None and not f.pinned]


def running(window: Iterable[WindowEntry]) -> int:
    """Downloads of ``window`` not ended yet (ended ones wait there to reach the head)."""
    return sum(
        f.future is not None and not f.future.done() for entry in list(window) for f in entry.files
    )


def checksum_candidates(
    columns: list[str], checksum_columns: dict[str, str] | None
) -> dict[str, list[tuple[str, str]]]:
    """Media column → the (index column, algorithm) pairs that may hold its digest, in order.

    Given ``checksum_columns`` (media column → digest column) each digest column must name its
    algorithm (``video.md5``, ``sha256``…); None looks, for media column ``c``, at ``c.md5``,
    ``c.sha256``, ``c.crc32c``, and at plain ``md5``, ``sha256``, ``crc32c`` when ``c`` is the
    only media column. ``{}`` checks nothing.

    Raises:
        ValueError: ``checksum_columns`` maps a column not downloaded, or a digest column whose
            name does not end in an algorithm.
    """
    if checksum_columns is None:
        found = {c: [(f"{c}.{a}", a) for a in ALGORITHMS] for c in columns}
        if len(columns) == 1:
            found[columns[0]] += [(a, a) for a in ALGORITHMS]
        return found
    if not isinstance(checksum_columns, dict):
        raise ValueError(f"{checksum_columns=} must be a dict: media column -> digest column")
    out = {}
    for column, digest_column in checksum_columns.items():
        if column not in columns:
            raise ValueError(
                f"checksum_columns names {column!r}, which is not downloaded: use one of {columns}"
            )
        algorithm = str(digest_column).replace("_", ".").rsplit(".", 1)[-1].lower()
        if algorithm not in ALGORITHMS:
            raise ValueError(
                f"checksum column {digest_column!r} of {column!r} must say its algorithm: end "
                f"its name in one of {ALGORITHMS} (e.g. {column + '.md5'!r})"
            )
        out[column] = [(str(digest_column), algorithm)]
    return out


def checksum_of(sample: Sample, candidates: list[tuple[str, str]]) -> tuple[str, str] | None:
    """The first non-null digest of ``sample`` among ``candidates``: ``(algorithm, digest)``
    (bytes as hex, an int crc32c as 8 hex digits), or None (not checked)."""
    for name, algorithm in candidates:
        value = sample.get(name)
        if value is None:
            continue
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value).hex()
        elif isinstance(value, int) and not isinstance(value, bool):
            value = f"{value:08x}"
        return algorithm, str(value)
    return None


class Delivered:
    """The files a downloader delivered that may still be pinned downstream (read ahead by a
    Decoder, say): while any is, the head of the window waits for room like any other sample,
    since their release makes room; once all are released, the head may pass the budget (it
    is then the one sample without which nothing progresses).

    A delivered file counts as released once this process's pins of its key, taken through the
    downloader's Cache (the object the Evictor unpins through), are no more than the window's
    own. If the head waits ``STALL_S`` with no release at all, downstream holds samples until it
    gets more (a Batcher before the Evictor): waiting would never end, so from then on every
    head may pass the budget (warned once).
    """

    def __init__(self) -> None:
        self.urls: dict[str, str] = {}  # cache key -> URL of each delivered file not released
        self.stalled_since: float | None = None  # when the head began to wait for room
        self.gathers = False

    def add(self, entry: WindowEntry) -> None:
        """Record the files of a sample the node yields."""
        if self.gathers:
            return
        self.urls.update((paths.key_for(f.url), f.url) for f in entry.files)
        if len(self.urls) > MAX_TRACKED:
            logger.warning(
                "%d files delivered and not seen released: they are unpinned through another "
                "Cache object of this process (two nodes with other settings on one cache "
                "directory?); the next sample may now pass max_bytes whenever it waits for room",
                len(self.urls),
            )
            self.gathers = True
            self.clear()

    def clear(self) -> None:
        """Forget everything (a reset: downstream starts afresh)."""
        self.urls.clear()
        self.stalled_since = None

    def release_all(self, cache: Cache, window: Iterable[WindowEntry]) -> None:
        """At a reset, downstream dropped the samples it held (a Decoder's read-ahead, say)
        without releasing their files: unpin the delivered files this process still pins,
        except those the (dropped) ``window`` pins too, then forget everything."""
        in_window = {f.url for entry in window for f in entry.files}
        for url in self.urls.values():
            if url in in_window:
                continue
            for _ in range(cache.pins_held(url)):
                try:
                    cache.unpin(url)
                except ValueError:  # released meanwhile through another Cache object
                    break
        self.clear()

    def all_released(self, cache: Cache, window: Iterable[WindowEntry]) -> bool:
        """Whether the head may pass the budget: every delivered file released (or ``gathers``)."""
        if self.gathers or not self.urls:
            return True
        own = collections.Counter(
            f.url for entry in window for f in entry.files if f.pinned or f.future is not None
        )
        released = [k for k, url in self.urls.items() if cache.pins_held(url) <= own[url]]
        if released:
            for key in released:
                del self.urls[key]
            self.stalled_since = None  # downstream moves: waiting is not in vain
        return not self.urls

    def watch(self, waits: bool, cache_dir: str, max_bytes: int | None) -> None:
        """Time how long the head has waited for room (``waits``) while downstream still holds
        delivered files; past ``STALL_S``, set ``gathers`` and warn."""
        if not waits or not self.urls:
            self.stalled_since = None
            return
        now = time.monotonic()
        if self.stalled_since is None:
            self.stalled_since = now
        elif now - self.stalled_since > STALL_S:
            logger.warning(
                "cache %s: no room for the next sample for %.0f s while %d files delivered "
                "stay pinned: something between the CachingDownloader and the Evictor holds "
                "samples until it gets more (a Batcher before the Evictor?). From now on each "
                "next sample passes max_bytes=%s; put the Evictor right after the Decoder or "
                "raise max_bytes.",
                cache_dir, now - self.stalled_since, len(self.urls), max_bytes,
            )  # fmt: skip
            self.gathers = True
            self.clear()


def record(
    cache: Cache,
    claim: Claim,
    out: concurrent.futures.Future,
    download: concurrent.futures.Future,
) -> None:
    """Record an ended download in the cache at once, whoever waits for it (so the key's lock
    is released even if the node is never called again), and resolve ``out`` with its size."""
    error = error_of(download)
    try:
        size = cache.finish([(claim, error)])[0]
    except BaseException as e:  # noqa: BLE001 - handed to the waiting node
        size, error = None, e
    if size is not None:
        out.set_result(size)
    else:
        out.set_exception(error or FileNotFoundError(errno.ENOENT, "not written", claim.url))


def release_window(cache: Cache, window: Iterable[WindowEntry]) -> None:
    """Give a dropped window up: cancel its downloads, wait for them to end (at most
    ``DROP_WAIT_S``), and release its claims and pins (a sync download still running releases
    its own when it ends)."""
    live = [f for entry in window for f in entry.files if f.future is not None]
    for f in live:
        f.download.cancel()
    # a cancelled coroutine ends at its next await: wait, so nothing is written after this
    concurrent.futures.wait([f.future for f in live], timeout=DROP_WAIT_S)
    for entry in window:
        for f in entry.files:
            if f.future is None:
                if f.pinned:
                    cache.unpin(f.url)
            elif f.future.done():
                unpin_if_kept(cache, f.url, f.future)
            else:
                f.future.add_done_callback(functools.partial(unpin_if_kept, cache, f.url))


def unpin_if_kept(cache: Cache, url: str, future: concurrent.futures.Future) -> None:
    if not future.cancelled() and future.exception() is None:
        cache.unpin(url)


def error_of(future: concurrent.futures.Future) -> BaseException | None:
    if future.cancelled():
        return concurrent.futures.CancelledError()
    return future.exception()

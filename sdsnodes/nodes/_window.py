"""The window of :class:`~sdsnodes.nodes.downloader.CachingDownloader`: its samples and files,
and recording a download in the cache as soon as it ends."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
from typing import Any

from sdsnodes.cache.store import Cache, Claim
from sdsnodes.sample import Sample

BUSY_POLL_S = 0.01
"""How often a sample whose file another downloader is fetching asks the cache again (s)."""
DROP_WAIT_S = 5.0
"""How long dropping a window waits for its cancelled downloads to end (s)."""


@dataclasses.dataclass
class WindowFile:
    """One remote column of a sample in the window, from wanted to pinned in the cache."""

    column: str
    url: str
    size_hint: int | None
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


def unpin_if_kept(cache: Cache, url: str, future: concurrent.futures.Future) -> None:
    if not future.cancelled() and future.exception() is None:
        cache.unpin(url)


def error_of(future: concurrent.futures.Future) -> BaseException | None:
    if future.cancelled():
        return concurrent.futures.CancelledError()
    return future.exception()

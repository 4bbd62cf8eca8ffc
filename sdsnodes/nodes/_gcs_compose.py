"""Compose-then-fetch of small GCS objects for
:class:`~sdsnodes.nodes.downloader.CachingDownloader` (see :class:`~sdsnodes.GcsComposeOptions`).

Up to 32 small objects of one bucket are composed (GCS's ``objects.compose``, gcsfs ``merge``)
into one temporary object, which is fetched with one GET, split by the sizes the index gives,
and deleted. Each part is written to its claim's temporary file and checked (size, digest) as
:func:`sdsnodes.storage.fetch` checks a download, so the cache cannot tell the two apart. The
trick is the one of Google's Dataflux Dataset for PyTorch (its ``dataflux-composed-objects``).

Any failure of the group (compose refused or unsupported, a missing source, the GET, a composed
size that is not the sum of the sizes: an object changed since the index) fetches its objects
one by one with the usual retries, so no sample is lost or mixed with another's bytes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import logging
import os
import threading
import uuid
from typing import Any

from fsspec.core import strip_protocol

from sdsnodes._checksum import ChecksumMismatch, parse_checksum, verify
from sdsnodes._gcs_compose_options import GcsComposeOptions
from sdsnodes.storage import fetch_soon, filesystem, protocol_of, remove_quietly, run_soon

logger = logging.getLogger(__name__)

_warned: set[str] = set()  # fallback reasons already logged by this process


@dataclasses.dataclass
class ComposeItem:
    """One claimed download that may be composed: its URL, the claim's temporary file, its size
    in bytes from the index and the digest ``(algorithm, digest)`` it must have, if any."""

    url: str
    dest: str
    size: int
    checksum: tuple[str, str] | None = None


class _Part(concurrent.futures.Future):
    """One object's download inside a composed group: cancelling it cancels the group's."""

    def __init__(self, group: concurrent.futures.Future) -> None:
        super().__init__()
        self._group = group

    def cancel(self) -> bool:
        self._group.cancel()
        return False  # settles once the group's coroutine ended, as storage's downloads do


COMPOSE_COUNTS = ("composed_groups", "composed_objects", "fallback_groups", "fallback_objects")
"""The names of :attr:`GcsComposer.counts` (and of ``sdsnodes.stats(...)["compose"]``)."""


class GcsComposer:
    """Groups the downloads a :class:`CachingDownloader` starts and composes the groups that
    qualify; counts what it did in :attr:`counts`.

    Args:
        options (GcsComposeOptions): when and where to compose.

    Attributes:
        counts (dict[str, int]): ``composed_groups`` / ``composed_objects`` (fetched through
            one composed object) and ``fallback_groups`` / ``fallback_objects`` (a group that
            failed and was fetched one by one), in this process.
    """

    def __init__(self, options: GcsComposeOptions) -> None:
        self.options = options
        self.counts = dict.fromkeys(COMPOSE_COUNTS, 0)

    def start(
        self,
        items: list[ComposeItem | None],
        abandoned: threading.Event,
        fetch_kwargs: dict[str, Any],
    ) -> list[concurrent.futures.Future | None]:
        """Start the composed groups among ``items`` (in window order; None: not eligible).

        Returns:
            list[Future | None]: per item, the future of its bytes written (resolving as
            :func:`sdsnodes.storage.fetch_soon`'s does), or None: fetch it on its own.
        """
        out: list[concurrent.futures.Future | None] = [None] * len(items)
        by_bucket: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            if (
                item is not None and protocol_of(item.url) in ("gs", "gcs")
                and item.size <= self.options.max_object_bytes
            ):  # fmt: skip
                by_bucket.setdefault(item.url.split("://", 1)[1].split("/", 1)[0], []).append(i)
        step, least = self.options.max_objects, self.options.min_objects
        for bucket, members in by_bucket.items():
            for at in range(0, len(members), step):
                chunk = members[at : at + step]
                if len(chunk) < least:
                    continue
                group = self._start_group(
                    bucket, [items[i] for i in chunk], abandoned, fetch_kwargs
                )
                for i, part in zip(chunk, group):
                    out[i] = part
        return out

    def _start_group(
        self,
        bucket: str,
        items: list[ComposeItem],
        abandoned: threading.Event,
        fetch_kwargs: dict[str, Any],
    ) -> list[_Part]:
        options = fetch_kwargs.get("storage_options")
        fs, _ = filesystem(items[0].url, options)
        temp = f"{bucket}/{self.options.temp_prefix}{uuid.uuid4().hex}"
        coro = self._group(fs, temp, items, abandoned, fetch_kwargs)
        group = run_soon(fs.loop, coro)
        parts = [_Part(group) for _ in items]
        group.add_done_callback(functools.partial(_settle, parts))
        return parts

    async def _group(
        self,
        fs: Any,
        temp: str,
        items: list[ComposeItem],
        abandoned: threading.Event,
        fetch_kwargs: dict[str, Any],
    ) -> list[Any]:
        """The bytes written per item (or its error): composed, else one by one."""
        timeout = fetch_kwargs.get("timeout")
        expected = [None if i.checksum is None else parse_checksum(i.checksum) for i in items]
        total = sum(i.size for i in items)
        try:
            blob = await _composed(fs, temp, [strip_protocol(i.url) for i in items], timeout)
            if len(blob) != total:
                raise _SizeMismatch(f"{len(blob)} bytes composed, {total} from the index's sizes")
        except Exception as error:  # noqa: BLE001 - any failure: one by one instead
            if abandoned.is_set():
                raise
            self._fell_back(len(items), error)
            return await asyncio.gather(
                *(_alone(item, abandoned, fetch_kwargs) for item in items),
                return_exceptions=True,
            )
        self.counts["composed_groups"] += 1
        self.counts["composed_objects"] += len(items)
        if abandoned.is_set():
            return [0] * len(items)
        # writing and hashing would stall every coroutine of fsspec's loop: a thread does it
        return await asyncio.get_running_loop().run_in_executor(
            None, _split, blob, items, expected, abandoned
        )

    def _fell_back(self, n: int, error: BaseException) -> None:
        self.counts["fallback_groups"] += 1
        self.counts["fallback_objects"] += n
        reason = type(error).__name__
        if reason not in _warned:
            _warned.add(reason)
            logger.warning(
                "GCS compose of %d objects failed (%s: %s): fetching them one by one; later "
                "fallbacks of this kind are counted, not logged (does the job have "
                "storage.objects.create/delete on the bucket?)",
                n, reason, error,
            )  # fmt: skip


class _SizeMismatch(Exception):
    """The composed object is not as long as the sizes say: an object changed since the index."""


async def _composed(fs: Any, temp: str, paths: list[str], timeout: float | None) -> bytes:
    """Compose ``paths`` into ``temp``, GET it, delete it (also on failure)."""
    try:
        await asyncio.wait_for(_compose_once(fs, temp, paths), timeout)
        return await asyncio.wait_for(fs._cat_file(temp), timeout)
    finally:
        try:
            await asyncio.wait_for(fs._rm_file(temp), timeout)
        except FileNotFoundError:
            pass  # the compose did not happen
        except Exception as error:  # noqa: BLE001 - a leftover object, not a lost sample
            logger.warning("could not delete the composed object gs://%s: %s", temp, error)


async def _compose_once(fs: Any, temp: str, paths: list[str]) -> None:
    """gcsfs ``merge``'s compose request, sent once: gcsfs retries a 5xx six times over ~30 s
    (fake-gcs-server answers a missing source with 500), while a failed group is better fetched
    one by one at once, with :func:`~sdsnodes.storage.fetch`'s own retries."""
    bucket, key, _ = fs.split_path(temp)
    request = getattr(type(fs)._request, "__wrapped__", None)
    send = fs._request if request is None else functools.partial(request, fs)
    await send(
        "POST", "b/{}/o/{}/compose", bucket, key,
        headers={"Content-Type": "application/json"},
        json={
            "sourceObjects": [{"name": fs.split_path(p)[1]} for p in paths],
            "kind": "storage#composeRequest",
            "destination": {"name": key, "bucket": bucket},
        },
    )  # fmt: skip


async def _alone(
    item: ComposeItem, abandoned: threading.Event, fetch_kwargs: dict[str, Any]
) -> int:
    """The fallback: the object on its own, by :func:`sdsnodes.storage.fetch_soon` (its
    retries, checks and cancellation)."""
    download = fetch_soon(
        item.url, item.dest, abandoned=abandoned, expected_size=item.size,
        checksum=item.checksum, **fetch_kwargs,
    )  # fmt: skip
    return await asyncio.wrap_future(download)


def _split(
    blob: bytes,
    items: list[ComposeItem],
    expected: list[tuple[str, bytes] | None],
    abandoned: threading.Event,
) -> list[Any]:
    """Write each item's part of ``blob`` to its ``dest`` and check it: sizes or errors."""
    out: list[Any] = []
    view, start = memoryview(blob), 0
    for item, digest in zip(items, expected):
        part = view[start : start + item.size]
        start += item.size
        try:
            with open(item.dest, "wb") as f:
                f.write(part)
            if digest is not None:
                verify(item.url, item.dest, digest)
            out.append(item.size)
        except ChecksumMismatch as error:  # never cached, as fetch() leaves it
            remove_quietly(item.dest)
            out.append(error)
        except Exception as error:  # noqa: BLE001 - that item's own error (a full disk, say)
            out.append(error)
        if abandoned.is_set():
            remove_quietly(item.dest)
    return out


def _settle(parts: list[_Part], group: concurrent.futures.Future) -> None:
    """Resolve each part from its group's outcome."""
    if group.cancelled():
        results: list[Any] = [concurrent.futures.CancelledError()] * len(parts)
    elif group.exception() is not None:
        results = [group.exception()] * len(parts)
    else:
        results = group.result()
    for part, result in zip(parts, results):
        if isinstance(result, BaseException):
            part.set_exception(result)
        else:
            part.set_result(result)


def items_for(
    entries: list[tuple[str, os.PathLike | str, int | None, tuple[str, str] | None]],
) -> list[ComposeItem | None]:
    """``(url, dest, size, checksum)`` per claimed download → the composable ones (size known)."""
    return [
        None if size is None else ComposeItem(url, os.fspath(dest), size, checksum)
        for url, dest, size, checksum in entries
    ]

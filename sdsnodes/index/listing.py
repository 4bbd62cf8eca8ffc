"""List every file under a local or remote directory in parallel: ``list_files(url)``.

Two strategies, picked by the filesystem:

- **Object stores** (S3 via s3fs, GCS via gcsfs): one flat, recursive listing of the key space
  under the directory's prefix (no delimiter, so nested "directories" cost nothing extra), split
  into key ranges that are listed at the same time. The split is *work stealing*, as in
  dataflux's fast listing for GCS: one worker lists the first page; a worker with nothing to do
  takes the upper part of the range with the most keys estimated left (from the density of keys
  in its last page; ranges with fewer than ``SPLIT_MIN_KEYS`` left are not split), cut at a key
  between the range's last listed key and its end (halfway, or, for the open-ended last range,
  ``num_threads`` pages ahead); and so on until every range is exhausted.
- **Everything else** (local disk, HTTP, memory…): the directory tree is walked by a thread pool,
  one ``ls(detail=True)`` per directory, subdirectories queued as soon as they are found.

Why the range split loses no key and lists none twice (the invariant): a range is the set of keys
``k`` with ``after < k <= end`` (``after`` None: no lower bound; ``end`` None: no upper bound),
in the stores' order, which for both S3 and GCS is the lexicographic order of the UTF-8 bytes and
hence the order of Python's ``str`` comparison. At every moment, the keys already found plus the
ranges not yet exhausted are exactly the keys under the prefix, and the ranges are disjoint:

1. At the start there is one range, (None, None]: every key.
2. Listing a range asks the store for the keys ``> after`` under a prefix that every key of the
   range has (the common prefix of ``after`` and ``end``, else the directory's prefix: the keys
   with a given prefix are one contiguous interval of the order, so every key between two keys
   with that prefix has it too). The store answers in order and in contiguous pages, so a page
   ending at key ``p`` holds every key of ``(after, p]``: the worker keeps the page's keys in
   ``(after, end]`` (any other key the store returns is dropped, so a store that ignores
   ``StartAfter``/``startOffset`` costs time, never correctness) and sets ``after = p``. The
   range is exhausted when the page is the last one or ``p >= end``.
3. A split picks a key ``m`` with ``after < m < end`` (checked, under the lock that guards the
   range) and turns ``(after, end]`` into ``(after, m]``, kept by its worker, and ``(m, end]``,
   taken by the idle one: a partition of the range, so rule 1's invariant holds. A worker whose
   request was in flight during a split applies the *new* ``end`` to the page it gets back.

A split key that is also an object's key is fine: it belongs to the lower range (``<= m``). The
split keys only affect how evenly the work is spread, never which keys are found.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import fsspec

from sdsnodes.index._key_ranges import list_object_store, object_store_kind
from sdsnodes.storage import filesystem, protocol_of

__all__ = ["current_defaults", "list_files", "listing_defaults"]

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------


_DEFAULTS: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "sdsnodes_listing_defaults", default=None
)


@contextlib.contextmanager
def listing_defaults(
    *, num_threads: int | None = None, progress: bool | None = None
) -> Iterator[None]:
    """Within the block (in this thread), ``list_files`` calls that leave ``num_threads`` or
    ``progress`` unset use these values: how ``sds index build`` gets its progress bar and
    ``--threads`` through ``read_index`` without a parameter on every function in between.

    Args:
        num_threads (int | None): default requests in flight; None keeps the outer default (16).
        progress (bool | None): default for the tqdm bar; None keeps the outer default (off).
    """
    if num_threads is not None and num_threads < 1:
        raise ValueError(f"{num_threads=} must be >= 1")
    given = {"num_threads": num_threads, "progress": progress}
    token = _DEFAULTS.set(
        {**(_DEFAULTS.get() or {}), **{k: v for k, v in given.items() if v is not None}}
    )
    try:
        yield
    finally:
        _DEFAULTS.reset(token)


def current_defaults() -> tuple[int, bool]:
    """``(num_threads, progress)`` as an enclosing :func:`listing_defaults` sets them (16 and
    False outside one): what other parallel reads of a listed directory (its sidecar files,
    :mod:`sdsnodes.index.sources`) use."""
    defaults = _DEFAULTS.get() or {}
    return defaults.get("num_threads", 16), defaults.get("progress", False)


def list_files(
    url: str | os.PathLike,
    storage_options: dict[str, Any] | None = None,
    *,
    num_threads: int | None = None,
    progress: bool | None = None,
    extensions: Iterable[str] | None = None,
    fs: Any = None,
) -> list[tuple[str, int]]:
    """Every file under the directory ``url`` (recursively), listed with ``num_threads`` requests
    at a time.

    On S3 and GCS the key space under the prefix is split into ranges listed in parallel (see the
    module docstring for why no key is lost or doubled); elsewhere the directory tree is walked
    by a thread pool. Directory placeholder objects (keys ending in ``/``) are not files.

    Args:
        url (str | os.PathLike): a directory: a local path or a URL (``s3://bucket/prefix``,
            ``gs://…``, ``file://…``, ``https://…`` with an HTML listing). A file is listed as
            itself.
        storage_options (dict | None): fsspec options for the filesystem (e.g. ``endpoint_url``).
        num_threads (int | None): requests in flight at most, >= 1; None: 16 (or the value of an
            enclosing ``listing_defaults``).
        progress (bool | None): show a tqdm bar (on stderr) of the files found so far; None: off
            (or the value of an enclosing ``listing_defaults``).
        extensions (Iterable[str] | None): keep only names ending with one of these, case
            insensitive, e.g. ``[".mp4", ".jpg"]``; None keeps every file.
        fs (fsspec.AbstractFileSystem | None): the filesystem to list with, instead of one made
            from ``storage_options``.

    Returns:
        list[tuple[str, int]]: (URL, size in bytes) per file, sorted by URL. URLs carry the
        protocol when ``url`` has one (``s3://bucket/key``); a plain local ``url`` gives plain
        absolute paths. A size the filesystem does not report (some HTTP listings) is -1.

    Raises:
        ValueError: ``num_threads`` < 1.
        FileNotFoundError: ``url`` does not exist.
    """
    defaults = _DEFAULTS.get() or {}
    num_threads = num_threads if num_threads is not None else defaults.get("num_threads", 16)
    progress = progress if progress is not None else defaults.get("progress", False)
    if num_threads < 1:
        raise ValueError(f"{num_threads=} must be >= 1")
    url = os.fspath(url)
    suffixes = tuple(e.lower() for e in extensions) if extensions is not None else None
    if fs is None:
        fs, path = filesystem(url, storage_options)
    else:
        path = fsspec.core.strip_protocol(url)

    def keep(name: str) -> bool:
        return suffixes is None or name.lower().endswith(suffixes)

    with Progress(progress, url) as bar:
        kind = object_store_kind(fs)
        if kind is not None:
            found = list_object_store(fs, kind, path, num_threads, keep, bar)
        else:
            found = _walk_tree(fs, path, num_threads, keep, bar)
    if protocol_of(url) is not None:
        found = [(fs.unstrip_protocol(name), size) for name, size in found]
    found.sort()
    return found


class Progress:
    """A tqdm bar of files found, or read (``desc``) (thread-safe ``update``), or nothing when
    disabled."""

    def __init__(
        self, enabled: bool, url: str, desc: str = "listing", total: int | None = None
    ) -> None:
        self._bar = None
        self._lock = threading.Lock()
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(desc=f"{desc} {url}", unit=" files", unit_scale=True, total=total)

    def update(self, n: int) -> None:
        if self._bar is not None and n:
            with self._lock:
                self._bar.update(n)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()


# --------------------------------------------------------------------------------------------
# object stores: key ranges split by work stealing
# --------------------------------------------------------------------------------------------


def _walk_tree(
    fs: Any, path: str, num_threads: int, keep: Callable[[str], bool], bar: Progress
) -> list[tuple[str, int]]:
    if not fs.isdir(path):  # not info()["type"]: to HTTP, an index page is a file too
        info = fs.info(path)  # FileNotFoundError when missing
        size = info.get("size")
        return [(info["name"], -1 if size is None else int(size))] if keep(info["name"]) else []
    local = object_store_kind(fs) is None and getattr(fs, "local_file", False)
    found: list[tuple[str, int]] = []
    lock = threading.Lock()
    seen: set[str] = set()  # real paths of local directories, so a symlink loop ends
    pending = 0
    done = threading.Event()
    stopping = threading.Event()  # set on the way out (an error, KeyboardInterrupt)
    errors: list[BaseException] = []
    pool = concurrent.futures.ThreadPoolExecutor(num_threads, thread_name_prefix="sds-walk")

    def submit(directory: str) -> None:
        nonlocal pending
        if local:
            real = os.path.realpath(directory)
            with lock:
                if real in seen:
                    return
                seen.add(real)
        with lock:
            if errors or stopping.is_set():
                return
            pending += 1
        pool.submit(visit, directory)

    def visit(directory: str) -> None:
        nonlocal pending
        try:
            files = []
            for entry in fs.ls(directory, detail=True):
                name = entry["name"]
                if entry.get("type") == "directory":
                    if name.rstrip("/") != directory.rstrip("/"):
                        submit(name)
                elif not name.endswith("/") and keep(name):
                    size = entry.get("size")
                    files.append((name, -1 if size is None else int(size)))
            with lock:
                found.extend(files)
            bar.update(len(files))
        except BaseException as error:  # noqa: BLE001 - re-raised by the caller
            with lock:
                errors.append(error)
        finally:
            with lock:
                pending -= 1
                if pending == 0 or errors:
                    done.set()

    try:
        submit(path)
        done.wait()
    finally:
        stopping.set()
        pool.shutdown(wait=True, cancel_futures=True)
    if errors:
        raise errors[0]
    return found

"""List every file under a local or remote directory in parallel: ``list_files(url)``.

Two strategies, picked by the filesystem:

- **Object stores** (S3 via s3fs, GCS via gcsfs): one flat, recursive listing of the key space
  under the directory's prefix (no delimiter, so nested "directories" cost nothing extra), split
  into key ranges that are listed at the same time. The split is *work stealing*, as in
  dataflux's fast listing for GCS: one worker lists the first page; a worker with nothing to do
  takes the upper half of the widest range still being listed, at a split key computed between
  the range's last listed key and its end; it keeps going until every range is exhausted.
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

import bisect
import concurrent.futures
import logging
import os
import threading
from collections.abc import Callable, Iterable
from typing import Any

from sdsnodes.storage import filesystem, protocol_of

__all__ = ["list_files"]

logger = logging.getLogger(__name__)

PAGE_SIZE = 1000
"""Keys per listing request (the most S3 returns; GCS allows more, but 1000 splits finer)."""

_DIGITS = 12  # characters of a key (after the common prefix) that the split arithmetic looks at


# --------------------------------------------------------------------------------------------
# public entry point
# --------------------------------------------------------------------------------------------


def list_files(
    url: str | os.PathLike,
    storage_options: dict[str, Any] | None = None,
    *,
    num_threads: int = 16,
    progress: bool = False,
    extensions: Iterable[str] | None = None,
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
        num_threads (int): requests in flight at most, >= 1.
        progress (bool): show a tqdm bar of the files found so far.
        extensions (Iterable[str] | None): keep only names ending with one of these, case
            insensitive, e.g. ``[".mp4", ".jpg"]``; None keeps every file.

    Returns:
        list[tuple[str, int]]: (URL, size in bytes) per file, sorted by URL. URLs carry the
        protocol when ``url`` has one (``s3://bucket/key``); a plain local ``url`` gives plain
        absolute paths. A size the filesystem does not report (some HTTP listings) is -1.

    Raises:
        ValueError: ``num_threads`` < 1.
        FileNotFoundError: ``url`` does not exist.
    """
    if num_threads < 1:
        raise ValueError(f"{num_threads=} must be >= 1")
    url = os.fspath(url)
    suffixes = tuple(e.lower() for e in extensions) if extensions is not None else None
    fs, path = filesystem(url, storage_options)
    with _Progress(progress, url) as bar:

        def keep(name: str) -> bool:
            return suffixes is None or name.lower().endswith(suffixes)

        kind = _object_store_kind(fs)
        if kind is not None:
            found = _list_object_store(fs, kind, path, num_threads, keep, bar)
        else:
            found = _walk_tree(fs, path, num_threads, keep, bar)
    if protocol_of(url) is not None:
        found = [(fs.unstrip_protocol(name), size) for name, size in found]
    found.sort()
    return found


class _Progress:
    """A tqdm bar of files found (thread-safe ``update``), or nothing when disabled."""

    def __init__(self, enabled: bool, url: str) -> None:
        self._bar = None
        self._lock = threading.Lock()
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(desc=f"listing {url}", unit=" files", unit_scale=True)

    def update(self, n: int) -> None:
        if self._bar is not None and n:
            with self._lock:
                self._bar.update(n)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.close()


# --------------------------------------------------------------------------------------------
# object stores: key ranges split by work stealing
# --------------------------------------------------------------------------------------------


def _object_store_kind(fs: Any) -> str | None:
    """ "s3" for s3fs, "gcs" for gcsfs, None for any other filesystem."""
    for cls in type(fs).__mro__:
        module = cls.__module__.split(".")[0]
        if module == "s3fs" and cls.__name__ == "S3FileSystem":
            return "s3"
        if module == "gcsfs" and cls.__name__ == "GCSFileSystem":
            return "gcs"
    return None


class _Range:
    """Keys ``k`` with ``after < k <= end`` (None: unbounded), listed by one worker at a time."""

    __slots__ = ("after", "end", "more", "done")

    def __init__(self, after: str | None, end: str | None) -> None:
        self.after = after
        self.end = end
        self.more = False  # the last page said more keys follow: worth splitting
        self.done = False


def _common_prefix(a: str, b: str) -> str:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return a[:i]


def _listing_prefix(base: str, after: str | None, end: str | None) -> str:
    """A prefix shared by every key of ``(after, end]`` under ``base``: the longest common prefix
    of the two bounds (the keys with one prefix are a contiguous interval), else ``base``."""
    if after is None or end is None:
        return base
    common = _common_prefix(after, end)
    return common if len(common) > len(base) else base


def _digits(s: str, chars: list[str], n: int) -> list[int]:
    """The first ``n`` characters of ``s`` as digits: 0 = end of string, else 1 + the character's
    rank in the sorted ``chars`` (a character not in ``chars`` gets its insertion rank)."""
    return [1 + bisect.bisect_left(chars, c) for c in s[:n]] + [0] * max(0, n - len(s))


def _split_key(after: str, end: str | None, base: str, alphabet: set[str]) -> str | None:
    """A key ``m`` with ``after < m`` and ``m < end`` (``end`` None: unbounded), about halfway,
    or None when none is found (the range is then simply not split).

    The keys past the common prefix of ``after`` and ``end`` are read as numbers in base
    ``len(alphabet) + 2`` (the characters seen in keys so far, plus end-of-string and, for an
    unbounded ``end``, one digit above every character); the midpoint is written back with the
    same characters. The result is checked against both bounds before it is returned, which is
    all correctness needs.
    """
    common = _listing_prefix(base, after, end)
    lo, hi = after[len(common) :], None if end is None else end[len(common) :]
    chars = sorted(alphabet | set(lo[:_DIGITS]) | set((hi or "")[:_DIGITS]))
    if not chars:
        return None
    radix = len(chars) + 2
    top = radix - 1  # above every character: only for an unbounded end

    def value(digits: list[int]) -> int:
        v = 0
        for d in digits:
            v = v * radix + d
        return v

    va = value(_digits(lo, chars, _DIGITS))
    vb = radix**_DIGITS - 1 if hi is None else value(_digits(hi, chars, _DIGITS))
    mid = (va + vb) // 2
    digits = []
    for _ in range(_DIGITS):
        mid, d = divmod(mid, radix)
        digits.append(d)
    digits.reverse()
    out = []
    for i, d in enumerate(digits):
        if d == 0:
            if any(digits[i + 1 :]):
                out.append(chars[0])  # "end, then more" is no string: round up to a character
                continue
            break
        out.append(chars[min(d, top - 1) - 1])
    m = common + "".join(out)
    # the shortest prefix of m (of at least 2 characters past the common prefix) that still lies
    # strictly between the bounds: as balanced, and shorter keys share prefixes with more keys
    for n in range(min(len(m), len(common) + 2), len(m) + 1):
        if after < m[:n] and (end is None or m[:n] < end):
            return m[:n]
    return None


def _position(key: str | None, base: str, chars: list[str]) -> float:
    """Where ``key`` lies in the key space under ``base``, as a fraction in [0, 1]."""
    if key is None:
        return 1.0
    radix = len(chars) + 2
    pos, scale = 0.0, 1.0
    for d in _digits(key[len(base) :], chars, 8):
        scale /= radix
        pos += d * scale
    return pos


class _RangeLister:
    """The work-stealing listing of one prefix of an object store (see the module docstring)."""

    def __init__(
        self,
        fs: Any,
        kind: str,
        bucket: str,
        base: str,
        num_threads: int,
        keep: Callable[[str], bool],
        bar: _Progress,
    ) -> None:
        self.fs, self.kind, self.bucket, self.base = fs, kind, bucket, base
        self.num_threads, self.keep, self.bar = num_threads, keep, bar
        self.cond = threading.Condition()
        self.pending: list[_Range] = [_Range(None, None)]
        self.active: list[_Range] = []
        self.alphabet: set[str] = set()
        self.found: list[tuple[str, int]] = []
        self.failed = False

    # -- one request ----------------------------------------------------------------------

    def _page(
        self, prefix: str, after: str | None, token: str | None
    ) -> tuple[list[tuple[str, int]], str | None]:
        """One page of keys ``> after`` with ``prefix``, in order: [(key, size)], next token."""
        if self.kind == "s3":
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix, "MaxKeys": PAGE_SIZE}
            if token:
                kwargs["ContinuationToken"] = token
            elif after is not None:
                kwargs["StartAfter"] = after
            out = self.fs.call_s3("list_objects_v2", **kwargs, **self.fs.req_kw)
            keys = [(c["Key"], int(c["Size"])) for c in out.get("Contents", [])]
            return keys, (out.get("NextContinuationToken") if out.get("IsTruncated") else None)
        params: dict[str, Any] = {"prefix": prefix, "maxResults": PAGE_SIZE}
        if token:
            params["pageToken"] = token
        elif after is not None:
            params["startOffset"] = after  # inclusive: ``after`` itself is dropped by the caller
        from fsspec.asyn import sync

        out = sync(
            self.fs.loop, self.fs._call, "GET", "b/{}/o", self.bucket, json_out=True, **params
        )
        keys = [(i["name"], int(i.get("size", 0))) for i in out.get("items", [])]
        return keys, out.get("nextPageToken")

    # -- scheduling -----------------------------------------------------------------------

    def _take(self) -> _Range | None:
        """A range to list: a pending one, else the upper half of the widest one being listed;
        None when every range is exhausted (or a worker failed)."""
        with self.cond:
            while True:
                if self.failed:
                    return None
                if self.pending:
                    r = self.pending.pop()
                    self.active.append(r)
                    return r
                if not self.active:
                    return None
                stolen = self._steal()
                if stolen is not None:
                    self.active.append(stolen)
                    return stolen
                self.cond.wait(timeout=1.0)

    def _steal(self) -> _Range | None:
        """Split the widest splittable active range (caller holds the lock)."""
        chars = sorted(self.alphabet)
        candidates = [r for r in self.active if r.more and not r.done and r.after is not None]
        candidates.sort(
            key=lambda r: _position(r.end, self.base, chars) - _position(r.after, self.base, chars),
            reverse=True,
        )
        for r in candidates:
            m = _split_key(r.after, r.end, self.base, self.alphabet)
            if m is not None and r.after < m and (r.end is None or m < r.end):  # the proof's 3.
                upper = _Range(m, r.end)
                r.end = m
                return upper
        return None

    # -- a worker -------------------------------------------------------------------------

    def _list_range(self, r: _Range) -> None:
        token: str | None = None
        prefix = None
        while True:
            with self.cond:
                after, end = r.after, r.end
            wanted = _listing_prefix(self.base, after, end)
            if wanted != prefix:  # a narrower prefix after a split: start a fresh listing
                prefix, token = wanted, None
            keys, token = self._page(prefix, after, token)
            with self.cond:
                end = r.end  # may have been lowered by a split while the request was in flight
                kept = [
                    (k, s)
                    for k, s in keys
                    if (after is None or k > after) and (end is None or k <= end)
                ]
                files = [(k, s) for k, s in kept if not k.endswith("/") and self.keep(k)]
                self.found.extend((f"{self.bucket}/{k}", s) for k, s in files)
                start = len(self.base)  # the alphabet only steers the split keys
                self.alphabet.update(*(k[start : start + _DIGITS] for k, _ in kept))
                last = keys[-1][0] if keys else None
                exhausted = token is None or (end is not None and last is not None and last >= end)
                if last is not None and (r.after is None or last > r.after):
                    r.after = last
                r.more = not exhausted
                if exhausted:
                    r.done = True
                    self.active.remove(r)
                self.cond.notify_all()
            self.bar.update(len(files))
            if exhausted:
                return

    def _worker(self) -> None:
        try:
            while (r := self._take()) is not None:
                self._list_range(r)
        except BaseException:
            with self.cond:
                self.failed = True
                self.cond.notify_all()
            raise

    def run(self) -> list[tuple[str, int]]:
        with concurrent.futures.ThreadPoolExecutor(
            self.num_threads, thread_name_prefix="sds-list"
        ) as pool:
            futures = [pool.submit(self._worker) for _ in range(self.num_threads)]
            for future in futures:
                future.result()
        return self.found


def _list_object_store(
    fs: Any, kind: str, path: str, num_threads: int, keep: Callable[[str], bool], bar: _Progress
) -> list[tuple[str, int]]:
    bucket, key, _ = fs.split_path(path)
    if not bucket:
        raise ValueError(f"cannot list all of {kind}: name a bucket ({path!r})")
    base = key.strip("/") + "/" if key.strip("/") else ""
    found = _RangeLister(fs, kind, bucket, base, num_threads, keep, bar).run()
    if not found and key:
        # nothing under "key/": ``path`` may be a single object, or not exist at all
        info = fs.info(path)  # FileNotFoundError when neither
        if info.get("type") != "directory" and keep(path):
            found = [(info["name"], int(info.get("size") or 0))]
            bar.update(1)
    return found


# --------------------------------------------------------------------------------------------
# any other filesystem: the directory tree walked by a thread pool
# --------------------------------------------------------------------------------------------


def _walk_tree(
    fs: Any, path: str, num_threads: int, keep: Callable[[str], bool], bar: _Progress
) -> list[tuple[str, int]]:
    info = fs.info(path)  # FileNotFoundError when missing
    if info.get("type") != "directory":
        size = info.get("size")
        return [(info["name"], -1 if size is None else int(size))] if keep(info["name"]) else []
    local = _object_store_kind(fs) is None and getattr(fs, "local_file", False)
    found: list[tuple[str, int]] = []
    lock = threading.Lock()
    seen: set[str] = set()  # real paths of local directories, so a symlink loop ends
    pending = 0
    done = threading.Event()
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
            if errors:
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
        pool.shutdown(wait=True, cancel_futures=True)
    if errors:
        raise errors[0]
    return found

"""Listing a prefix of an object store (S3 through s3fs, GCS through gcsfs) in parallel, by
splitting the key space into ranges listed at once — see :mod:`sdsnodes.index.listing` for why
the split is complete. Private: :func:`sdsnodes.index.listing.list_files` is the API."""

from __future__ import annotations

import bisect
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sdsnodes.index.listing import Progress

logger = logging.getLogger("sdsnodes.index.listing")  # one logger for all of listing

PAGE_SIZE = 1000
"""Keys per listing request (the most S3 returns; GCS allows more, but 1000 splits finer)."""

SPLIT_MIN_KEYS = 2 * PAGE_SIZE
"""A range is split only when about this many keys are estimated to be left in it (from the
density of keys in its last page): smaller ones are not worth the extra requests."""

_DIGITS = 12  # characters of a key (after the common prefix) that the split arithmetic looks at


def object_store_kind(fs: Any) -> str | None:
    """Which object store ``fs`` lists: ``"s3"`` (s3fs), ``"gcs"`` (gcsfs), else None."""
    for cls in type(fs).__mro__:
        module = cls.__module__.split(".")[0]
        if module == "s3fs" and cls.__name__ == "S3FileSystem":
            return "s3"
        if module == "gcsfs" and cls.__name__ == "GCSFileSystem":
            return "gcs"
    return None


class _Range:
    """Keys ``k`` with ``after < k <= end`` (None: unbounded), listed by one worker at a time."""

    __slots__ = ("after", "done", "end", "sample")

    def __init__(self, after: str | None, end: str | None) -> None:
        self.after = after
        self.end = end
        self.sample: tuple[int, str, str] | None = None  # last page: (keys, first bound, last)
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


class _Scale:
    """Keys that start with ``common`` read as numbers: the first ``_DIGITS`` characters after
    it are digits in base ``len(chars) + 2`` (0: end of string, 1..: a character, the top digit:
    above every character). Only split keys and estimates come from it, never a listing's
    bounds, so its rounding costs balance, not correctness."""

    def __init__(self, common: str, chars: Iterable[str]) -> None:
        self.common = common
        self.chars = sorted(set(chars))
        self.radix = len(self.chars) + 2
        self.top = self.radix**_DIGITS  # the value of an unbounded end

    def value(self, key: str | None) -> int:
        if key is None:
            return self.top
        v = 0
        for d in _digits(key[len(self.common) :], self.chars, _DIGITS):
            v = v * self.radix + d
        return v

    def key(self, value: int) -> str:
        """A key whose value is about ``value`` (written with the known characters)."""
        digits = []
        for _ in range(_DIGITS):
            value, d = divmod(value, self.radix)
            digits.append(d)
        digits.reverse()
        out = []
        for i, d in enumerate(digits):
            if d == 0:
                if not any(digits[i + 1 :]):
                    break
                d = 1  # "end, then more" is no string: round up to the lowest character
            out.append(self.chars[min(d, len(self.chars)) - 1])
        return self.common + "".join(out)


def _between(m: str, after: str, end: str | None, keep: int) -> str | None:
    """The shortest prefix of ``m``, of at least ``keep`` characters, strictly between ``after``
    and ``end`` (None: unbounded); None if there is none. Short split keys stay as balanced and
    share prefixes with more keys (narrower listing prefixes later)."""
    for n in range(min(len(m), keep), len(m) + 1):
        if after < m[:n] and (end is None or m[:n] < end):
            return m[:n]
    return None


def _split_key(
    after: str,
    end: str | None,
    base: str,
    alphabet: set[str],
    sample: tuple[int, str, str] | None = None,
    leap: int = 16,
) -> str | None:
    """A key ``m`` with ``after < m`` and ``m < end`` (``end`` None: unbounded), or None when
    none is found (the range is then simply not split).

    A bounded range is cut about halfway (the midpoint of the two bounds, read as numbers by a
    ``_Scale`` past their common prefix). An unbounded one, whose real end is unknown, is cut
    ``leap`` pages ahead of ``after`` at the density of its last page (``sample``: keys, first
    and last key): the lower range keeps about ``leap`` pages of keys, the upper one starts
    where the data probably still goes on, and is split in its turn. Halving towards an
    unknown end would instead spend a request on every empty upper half. The result is checked
    against both bounds before it is returned, which is all correctness needs.
    """
    if end is None and sample is not None:
        _, first, last = sample
        # read past the page's common prefix, or a shorter one if the leap overflows it
        for n in range(len(_common_prefix(first, last)), len(base) - 1, -1):
            common = first[:n]
            scale = _Scale(common, alphabet | set(first[n:]) | set(last[n:]))
            va, vb = scale.value(first), scale.value(last)
            target = vb + leap * (vb - va)
            if vb <= va or target >= scale.top:
                continue
            m = scale.key(target)
            m = _between(m, after, None, len(_common_prefix(after, m)) + 2)
            if m is not None:
                return m
            break
    common = _listing_prefix(base, after, end)
    suffixes = after[len(common) :] + (end or "")[len(common) :]
    scale = _Scale(common, alphabet | set(suffixes))
    if not scale.chars:
        return None
    m = scale.key((scale.value(after) + scale.value(end) - (end is None)) // 2)
    return _between(m, after, end, len(common) + 2)


def _keys_left(r: _Range, base: str, alphabet: set[str]) -> float:
    """About how many keys range ``r`` still holds, if keys were as dense in the rest of it as in
    its last page (0 before its first page). Only decides which range to split, and whether."""
    if r.sample is None or r.after is None:
        return 0.0
    count, first, last = r.sample
    # first <= last <= after < end: they share the common prefix of first and end
    common = _listing_prefix(base, first, r.end)
    scale = _Scale(common, alphabet.union(*(k[len(common) :] for k in (first, last, r.end or ""))))
    left = scale.value(r.end) - scale.value(r.after)
    seen = scale.value(last) - scale.value(first)
    if left <= 0:
        return 0.0
    return float("inf") if seen <= 0 else count * left / seen


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
        bar: Progress,
    ) -> None:
        self.fs, self.kind, self.bucket, self.base = fs, kind, bucket, base
        self.num_threads, self.keep, self.bar = num_threads, keep, bar
        self.cond = threading.Condition()
        self.pending: list[_Range] = [_Range(None, None)]
        self.active: list[_Range] = []
        self.alphabet: set[str] = set()
        self.found: list[tuple[str, int]] = []
        self.failed = False
        self.requests = 0
        self.ranges = 1

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
        """A range to list: a pending one, else the upper part of one being listed (``_steal``);
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
        """Split the active range with the most keys left (estimated from the density of its
        last page), if that is at least ``SPLIT_MIN_KEYS`` (caller holds the lock)."""
        estimates = [
            (_keys_left(r, self.base, self.alphabet), i)
            for i, r in enumerate(self.active)
            if not r.done
        ]
        for estimate, i in sorted(estimates, reverse=True):
            if estimate < SPLIT_MIN_KEYS:
                break
            r = self.active[i]
            m = _split_key(
                r.after, r.end, self.base, self.alphabet, r.sample, leap=self.num_threads
            )
            if m is not None and r.after < m and (r.end is None or m < r.end):  # the proof's 3.
                logger.debug("split (%r, %r] at %r: ~%.0f keys left", r.after, r.end, m, estimate)
                upper = _Range(m, r.end)
                r.end = m
                self.ranges += 1
                return upper
        return None

    # -- a worker -------------------------------------------------------------------------

    def _list_range(self, r: _Range) -> None:
        token: str | None = None
        prefix = None
        while True:
            with self.cond:
                if self.failed:  # another worker failed: the listing is abandoned
                    return
                after, end = r.after, r.end
            wanted = _listing_prefix(self.base, after, end)
            if wanted != prefix:  # a narrower prefix after a split: start a fresh listing
                prefix, token = wanted, None
            keys, token = self._page(prefix, after, token)
            with self.cond:
                self.requests += 1
                end = r.end  # may have been lowered by a split while the request was in flight
                kept = [
                    (k, s)
                    for k, s in keys
                    if (after is None or k > after) and (end is None or k <= end)
                ]
                files = [(k, s) for k, s in kept if not k.endswith("/") and self.keep(k)]
                self.found.extend((f"{self.bucket}/{k}", s) for k, s in files)
                start = len(self.base)  # the alphabet only steers the split keys
                self.alphabet.update(*(k[start:] for k, _ in kept))
                last = keys[-1][0] if keys else None
                exhausted = token is None or (end is not None and last is not None and last >= end)
                if keys and not exhausted:
                    r.sample = (len(keys), keys[0][0] if after is None else after, last)
                if last is not None and (r.after is None or last > r.after):
                    r.after = last
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
            try:
                for future in futures:
                    future.result()
            except BaseException:  # a worker's error or KeyboardInterrupt: stop the others
                with self.cond:
                    self.failed = True
                    self.cond.notify_all()
                raise
        logger.debug(
            "listed %d files under %s/%s with %d requests over %d ranges",
            len(self.found), self.bucket, self.base, self.requests, self.ranges,
        )  # fmt: skip
        return self.found


def list_object_store(
    fs: Any, kind: str, path: str, num_threads: int, keep: Callable[[str], bool], bar: Progress
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

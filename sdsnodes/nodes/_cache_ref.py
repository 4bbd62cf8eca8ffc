"""One :class:`~sdsnodes.cache.Cache` per (process, cache_dir, settings), and releasing the
files a sample pinned — shared by CachingDownloader, Decoder (on skip) and Evictor."""

from __future__ import annotations

import os
import threading

from sdsnodes.cache.store import Cache
from sdsnodes.sample import CACHE_DIR, URL_PREFIX, Sample
from sdsnodes.storage import is_remote

_caches: dict[tuple, Cache] = {}
_lock = threading.Lock()


def open_cache(
    cache_dir: str, max_bytes: int | None = None, ttl: float | None = None, policy: str = "keepset"
) -> Cache:
    """The process's :class:`Cache` for ``cache_dir`` with these settings (created once)."""
    key = (os.getpid(), os.path.abspath(cache_dir), max_bytes, ttl, str(policy))
    with _lock:
        cache = _caches.get(key)
        if cache is None:
            cache = _caches[key] = Cache(cache_dir, max_bytes=max_bytes, ttl=ttl, policy=policy)
    return cache


def cache_for(cache_dir: str) -> Cache:
    """A :class:`Cache` of this process for ``cache_dir``, whatever its settings (the first
    opened; one with the default settings if none was): to unpin or trim, where the budget and
    policy do not matter."""
    path = os.path.abspath(cache_dir)
    with _lock:
        for key, cache in _caches.items():
            if key[0] == os.getpid() and key[1] == path:
                return cache
    return open_cache(cache_dir)


def process_caches(cache_dirs: set[str] | frozenset[str]) -> list[Cache]:
    """This process's open :class:`Cache` objects whose directory (an absolute path) is in
    ``cache_dirs``, whatever their settings (for counters summed over them)."""
    pid = os.getpid()
    with _lock:
        return [c for k, c in _caches.items() if k[0] == pid and k[1] in cache_dirs]


def close_caches(cache_dir: str | None = None) -> None:
    """Close this process's Cache objects (of ``cache_dir``, or all): their pins are released and
    their ledger connections closed (e.g. before unmounting the cache's disk). They stay the
    objects nodes use, reopened at their next use, so a node that still holds a pin released
    here unpins it without error (see :meth:`Cache.close`)."""
    path = None if cache_dir is None else os.path.abspath(cache_dir)
    with _lock:
        caches = [c for k, c in _caches.items() if path is None or k[1] == path]
    for cache in caches:
        cache.close()


def release(sample: Sample) -> None:
    """Unpin every file ``sample`` holds in its cache (a no-op for local files); idempotent."""
    cache_dir = sample.pop(CACHE_DIR, None)
    if not cache_dir:
        return
    cache = cache_for(cache_dir)
    for key, url in sample.items():
        if key.startswith(URL_PREFIX) and is_remote(url):
            cache.unpin(url)

"""The batch form of ``Cache.get``: ``Cache.claim`` and ``Cache.finish``, for callers
that download several files at once themselves (``CachingDownloader``)."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sqlite3
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import _transactions, ledger, paths

if TYPE_CHECKING:
    from .store import Cache

BUSY = "busy"
"""What :meth:`Cache.claim` answers for a URL another thread or process is downloading now."""
NO_ROOM = "no room"
"""What :meth:`Cache.claim` answers for a URL whose download would exceed ``max_bytes``."""


@dataclasses.dataclass
class Claim:
    """The right, given by :meth:`Cache.claim`, to download ``url`` into ``tmp``; hand it back
    to :meth:`Cache.finish`. Until then the key's download lock is held (``fd``), its
    reservation of ``reserved`` bytes counts in the budget, and this process pins it."""

    url: str
    key: str
    path: pathlib.Path
    tmp: pathlib.Path
    reserved: int
    fd: int


def claim_in(
    cache: Cache,
    conn: sqlite3.Connection,
    owner: tuple[int, int],
    items: Sequence[tuple[str, int | None]],
    overshoot: int,
    out: list[pathlib.Path | Claim | str],
) -> None:
    """The transaction of :meth:`Cache.claim`, appending its answers to ``out``."""
    blocked = False
    with ledger.write(conn):
        now = time.time()
        for i, (url, hint) in enumerate(items):
            if hint is not None and hint < 0:
                raise ValueError(f"size {hint} of {url!r} must be None or >= 0 (bytes)")
            key, path = paths.key_for(url), paths.path_for(cache.cache_dir, url)
            args = (conn, cache.cache_dir, key, url, path, cache._budget, owner)
            if _transactions.hit_in(*args, False, now):
                cache._count(key, hits=1)
                out.append(path)
                continue
            if blocked:
                out.append(NO_ROOM)
                continue
            lock = cache._pool.locks / f"{key}.lock"
            fd = paths.try_flock(lock)
            if fd is None:
                out.append(BUSY)
                continue
            if _transactions.hit_in(*args, True, now):  # finished while we looked
                paths.unflock(lock, fd)
                cache._count(key, hits=1)
                out.append(path)
                continue
            need = cache._budget.need(conn, hint)
            if need is None:  # no size known yet: the head downloads alone, the rest wait
                if i >= overshoot:
                    paths.unflock(lock, fd)
                    blocked = True
                    out.append(NO_ROOM)
                    continue
                need = 0
            if not _transactions.make_room_for(conn, cache.cache_dir, need, cache._budget, now):
                if i >= overshoot:
                    paths.unflock(lock, fd)
                    blocked = True
                    out.append(NO_ROOM)
                    continue
                cache._warn_overshoot()
            try:
                if path.parent not in cache._subdirs:
                    path.parent.mkdir(exist_ok=True)
                    cache._subdirs.add(path.parent)
            except BaseException:
                paths.unflock(lock, fd)
                raise
            _transactions.insert_reservation(conn, key, url, need, owner, now)
            cache._count(key, misses=1)
            out.append(Claim(url, key, path, paths.tmp_path_for(path, *owner), need, fd))


def finish(cache: Cache, done: Sequence[tuple[Claim, BaseException | None]]) -> list[int | None]:
    """The work of :meth:`Cache.finish`."""
    owner = (cache._pid, cache._start)
    sizes: list[int | None] = []
    for claim, error in done:
        size = None
        if error is None:
            try:
                size = claim.tmp.stat().st_size
                os.replace(claim.tmp, claim.path)
            except OSError:
                size = None
        if size is None:
            paths.unlink(claim.tmp)
        sizes.append(size)
    try:
        with cache._ledger() as conn, ledger.write(conn):
            now = time.time()
            for (claim, _), size in zip(done, sizes):
                if size is None:
                    _transactions.release_in(conn, cache.cache_dir, claim.key, claim.url, owner)
                else:
                    ledger.set_ready(conn, claim.key, size, now)
            cache._budget.make_room(conn, cache.cache_dir, 0, now)
    finally:
        for claim, _ in done:
            paths.unflock(cache._pool.locks / f"{claim.key}.lock", claim.fd)
    for (claim, _), size in zip(done, sizes):
        if size is None:
            cache._drop_held(claim.key)
        else:
            cache._count(claim.key, pins=0, bytes_fetched=size)
    return sizes

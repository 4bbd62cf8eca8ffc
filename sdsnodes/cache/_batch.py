"""The batch form of ``Cache.get``: ``Cache.claim`` and ``Cache.finish``, for callers
that download several files at once themselves (``CachingDownloader``).

The Cache hands these functions what they work on: its :class:`~sdsnodes.cache._holdings.Holdings`
(this process's pins, counters and ledger sections) and its :class:`~sdsnodes.cache.policy.Budget`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sqlite3
import time
from collections.abc import Sequence

from . import _transactions, ledger, paths
from ._holdings import Holdings
from .policy import Budget

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


def claim(
    holdings: Holdings,
    budget: Budget,
    items: Sequence[tuple[str, int | None]],
    overshoot: int,
) -> list[pathlib.Path | Claim | str]:
    """The work of :meth:`Cache.claim`: one transaction; when it fails (rolled back), the pins
    it took are forgotten and its key locks freed before the error propagates."""
    out: list[pathlib.Path | Claim | str] = []
    try:
        with holdings.section() as conn:
            _claim_in(holdings, budget, conn, items, overshoot, out)
    except BaseException:
        for answer in out:
            if isinstance(answer, Claim):
                paths.unlock_key(holdings.pool.locks, answer.key, answer.fd)
                holdings.drop(answer.key)
            elif isinstance(answer, pathlib.Path):
                holdings.drop(answer.name.split(".")[0])
        raise
    return out


def _claim_in(
    holdings: Holdings,
    budget: Budget,
    conn: sqlite3.Connection,
    items: Sequence[tuple[str, int | None]],
    overshoot: int,
    out: list[pathlib.Path | Claim | str],
) -> None:
    """The transaction of :func:`claim`, appending its answers to ``out``."""
    root, owner = holdings.pool.root, holdings.owner
    blocked = False
    with ledger.write(conn):
        now = time.time()
        for i, (url, hint) in enumerate(items):
            if hint is not None and hint < 0:
                raise ValueError(f"size {hint} of {url!r} must be None or >= 0 (bytes)")
            key, path = paths.key_for(url), paths.path_for(root, url)
            args = (conn, root, key, url, path, budget, owner)
            if _transactions.hit_in(*args, False, now):
                holdings.count(key, hits=1)
                out.append(path)
                continue
            if blocked:
                out.append(NO_ROOM)
                continue
            locks = holdings.pool.locks
            fd = paths.try_lock_key(locks, key)
            if fd is None:
                out.append(BUSY)
                continue
            if _transactions.hit_in(*args, True, now):  # finished while we looked
                paths.unlock_key(locks, key, fd)
                holdings.count(key, hits=1)
                out.append(path)
                continue
            need = budget.need(conn, hint)
            if need is None:  # no size known yet: the head downloads alone, the rest wait
                if i >= overshoot:
                    paths.unlock_key(locks, key, fd)
                    blocked = True
                    out.append(NO_ROOM)
                    continue
                need = 0
            if not _transactions.make_room_for(conn, root, need, budget, now):
                if i >= overshoot:
                    paths.unlock_key(locks, key, fd)
                    blocked = True
                    out.append(NO_ROOM)
                    continue
                holdings.warn_overshoot(budget.max_bytes)
            try:
                holdings.make_dir(path.parent)
            except BaseException:
                paths.unlock_key(locks, key, fd)
                raise
            _transactions.insert_reservation(conn, key, url, need, owner, now)
            holdings.count(key, misses=1)
            out.append(Claim(url, key, path, paths.tmp_path_for(path, *owner), need, fd))


def finish(
    holdings: Holdings, budget: Budget, done: Sequence[tuple[Claim, BaseException | None]]
) -> list[int | None]:
    """The work of :meth:`Cache.finish`."""
    root, owner = holdings.pool.root, holdings.owner
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
        with holdings.section() as conn, ledger.write(conn):
            now = time.time()
            for (claim, _), size in zip(done, sizes):
                if size is None:
                    _transactions.release_in(conn, root, claim.key, claim.url, owner)
                else:
                    ledger.set_ready(conn, claim.key, size, now)
            budget.make_room(conn, root, 0, now)
    finally:
        for claim, _ in done:
            paths.unlock_key(holdings.pool.locks, claim.key, claim.fd)
    for (claim, _), size in zip(done, sizes):
        if size is None:
            holdings.drop(claim.key)
        else:
            holdings.count(claim.key, pins=0, bytes_fetched=size)
    return sizes

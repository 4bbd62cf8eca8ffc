"""The ledger transactions of ``Cache.get``: hit, reserve, commit, release.

Each runs in one ``BEGIN IMMEDIATE`` transaction. ``owner`` is the (pid, start time) of the
calling process, the identity its pins are recorded under.
"""

from __future__ import annotations

import os
import pathlib
import sqlite3
import time

from . import _recovery, ledger
from .policy import Budget, rank_for


def take_hit(
    conn: sqlite3.Connection,
    root: pathlib.Path,
    key: str,
    url: str,
    path: pathlib.Path,
    budget: Budget,
    owner: tuple[int, int],
    clear: bool,
) -> bool:
    """Pin ``key`` for ``owner`` if it is a hit: a ready row whose file at ``path`` has the
    recorded size, and not expired (an expired file pinned by someone still hits).

    With ``clear`` (the caller holds the key's download lock, so nobody is downloading it),
    a row that is not a hit is deleted with its file and its dead owners' temporary files.

    Returns:
        bool: whether it was a hit (and is now pinned).
    """
    with ledger.write(conn):
        return hit_in(conn, root, key, url, path, budget, owner, clear, time.time())


def hit_in(
    conn: sqlite3.Connection,
    root: pathlib.Path,
    key: str,
    url: str,
    path: pathlib.Path,
    budget: Budget,
    owner: tuple[int, int],
    clear: bool,
    now: float,
) -> bool:
    """:func:`take_hit` inside the caller's write transaction."""
    row = ledger.get_row(conn, key)
    if row is None:
        return False
    known_url, size, state, created = row
    hit = False
    if state == ledger.READY and _size(path) == size:
        hit = not budget.expired(created, now) or ledger.is_pinned(conn, key)
    if hit:
        ledger.touch(conn, key, url, now)
        ledger.pin(conn, key, *owner)
        ledger.bump(conn, hits=1)
    elif clear:  # damaged, expired, or abandoned by a dead downloader
        ledger.remove(conn, root, key, known_url, size)
        _recovery.remove_dead_tmp(root, key)
    return hit


def reserve(
    conn: sqlite3.Connection,
    root: pathlib.Path,
    key: str,
    url: str,
    need: int,
    budget: Budget,
    owner: tuple[int, int],
) -> bool:
    """Make room for ``need`` bytes and record the download of ``key`` as a reservation of
    that size, pinned by ``owner``. When unpinned files cannot make the room, the pins and
    reservations of dead processes are reclaimed and eviction tried again; the reservation is
    recorded either way.

    Returns:
        bool: whether the budget holds the reservation.
    """
    now = time.time()
    with ledger.write(conn):
        fits = make_room_for(conn, root, need, budget, now)
        insert_reservation(conn, key, url, need, owner, now)
    return fits


def make_room_for(
    conn: sqlite3.Connection, root: pathlib.Path, need: int, budget: Budget, now: float
) -> bool:
    """Evict (inside the caller's transaction) until ``need`` more bytes fit, reclaiming dead
    processes' pins and reservations if unpinned files are not enough; whether they fit."""
    _, fits = budget.make_room(conn, root, need, now)
    if not fits and _recovery.reclaim_dead(conn, root):
        _, fits = budget.make_room(conn, root, need, now)
    return fits


def insert_reservation(
    conn: sqlite3.Connection, key: str, url: str, need: int, owner: tuple[int, int], now: float
) -> None:
    """Record (inside the caller's transaction) the download of ``key`` as a reservation of
    ``need`` bytes, pinned by ``owner``."""
    ledger.insert(conn, key, url, need, ledger.RESERVED, rank_for(key), now, now)
    ledger.pin(conn, key, *owner)
    ledger.bump(conn, misses=1)


def commit(
    conn: sqlite3.Connection, root: pathlib.Path, key: str, size: int, budget: Budget
) -> None:
    """Turn the reservation of ``key`` into a ready file of ``size`` bytes (now renamed into
    place), then evict to fit the real size."""
    now = time.time()
    with ledger.write(conn):
        ledger.set_ready(conn, key, size, now)
        budget.make_room(conn, root, 0, now)


def release(
    conn: sqlite3.Connection, root: pathlib.Path, key: str, url: str, owner: tuple[int, int]
) -> None:
    """Undo :func:`reserve` after a failed download: delete the reservation (and the file,
    if it was renamed into place) and ``owner``'s pin."""
    with ledger.write(conn):
        release_in(conn, root, key, url, owner)


def release_in(
    conn: sqlite3.Connection, root: pathlib.Path, key: str, url: str, owner: tuple[int, int]
) -> None:
    """:func:`release` inside the caller's write transaction."""
    row = ledger.get_row(conn, key)
    if row is not None and row[2] == ledger.RESERVED:
        ledger.remove(conn, root, key, url, row[1])
    ledger.unpin(conn, key, *owner)


def _size(path: pathlib.Path) -> int | None:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return None

"""The SQLite ledger shared by every process using a cache directory.

One database, ``cache_dir/ledger.sqlite``, in WAL mode with a busy timeout, holds:

- ``files(key, url, size, rank, created, last_use, state)``: one row per cached file (``state``
  ``'ready'``) or download in progress (``'reserved'``, its size the caller's hint). Sizes are
  in bytes, times in seconds since the epoch.
- ``pins(key, pid, pid_start, count)``: how many times each live process pinned each file.
- ``counters(name, value)``: machine-wide ``hits``, ``misses``, ``evictions``,
  ``bytes_fetched``, ``total_bytes`` (the sum of ``files.size``, kept for the budget) and
  ``max_size`` (the largest file the directory has held, reserved for downloads of unknown
  size).

Every read-then-write decision runs in a ``BEGIN IMMEDIATE`` transaction (:func:`write`), so
the processes sharing the directory take decisions one at a time. Connections are opened and
used only inside the sections of :mod:`sdsnodes.cache._fork`, so no fork happens while this
process is inside SQLite or has the ledger open. Files are unlinked inside the
transaction that deletes their row, so no process can see a row whose file is being replaced.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pathlib
import sqlite3
import threading
import time
from collections.abc import Iterator

from . import paths

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 30.0
COUNTERS = ("hits", "misses", "evictions", "bytes_fetched", "total_bytes", "max_size")
READY, RESERVED = "ready", "reserved"
UNPINNED = "key NOT IN (SELECT key FROM pins)"

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS files(
    key TEXT PRIMARY KEY, url TEXT, size INTEGER NOT NULL, rank REAL NOT NULL,
    created REAL NOT NULL, last_use REAL NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('{READY}', '{RESERVED}')));
CREATE INDEX IF NOT EXISTS files_rank ON files(rank);
CREATE INDEX IF NOT EXISTS files_last_use ON files(last_use);
CREATE INDEX IF NOT EXISTS files_created ON files(created);
CREATE TABLE IF NOT EXISTS pins(
    key TEXT NOT NULL, pid INTEGER NOT NULL, pid_start INTEGER NOT NULL,
    count INTEGER NOT NULL, PRIMARY KEY (key, pid, pid_start));
CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


WAL_LIMIT_BYTES = 4 * 2**20


class Connection(sqlite3.Connection):
    """A ledger connection; ``write_lock`` is shared by every connection of this process to
    the same database, so threads queue for :func:`write` on a lock (woken at once) rather
    than in SQLite's busy handler, which sleeps 1, 2, 5, 10… ms between tries."""

    write_lock: threading.Lock
    root: str  # the cache directory, for error messages


_WRITE_LOCKS: dict[str, threading.Lock] = {}
_WRITE_LOCKS_GUARD = threading.Lock()


def _fresh_write_locks() -> None:  # a forked child must not inherit a lock held by a thread
    global _WRITE_LOCKS_GUARD
    _WRITE_LOCKS.clear()
    _WRITE_LOCKS_GUARD = threading.Lock()


os.register_at_fork(after_in_child=_fresh_write_locks)


def _write_lock_for(path: pathlib.Path) -> threading.Lock:
    with _WRITE_LOCKS_GUARD:
        return _WRITE_LOCKS.setdefault(os.path.realpath(path), threading.Lock())


def connect(path: pathlib.Path) -> Connection:
    """Open the ledger at ``path`` in autocommit mode, WAL journal, busy timeout 30 s, the WAL
    file truncated to 4 MiB after checkpoints (it is not counted in ``max_bytes``; while readers
    keep a checkpoint from completing it can grow past that: 9 MB was seen with 4 processes).

    Raises:
        sqlite3.DatabaseError: the file is not a SQLite database.
    """
    conn = sqlite3.connect(
        path,
        timeout=BUSY_TIMEOUT_S,
        isolation_level=None,
        check_same_thread=False,
        factory=Connection,
    )
    conn.write_lock = _write_lock_for(path)
    conn.root = str(pathlib.Path(path).parent)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        conn.execute("PRAGMA journal_mode = WAL").fetchall()
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_LIMIT_BYTES}").fetchall()
    except BaseException:
        conn.close()
        raise
    return conn


def checkpoint(conn: sqlite3.Connection) -> None:
    """Fold the WAL into the database and truncate it (best effort: busy readers make it
    partial, which is fine)."""
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()


def open_ledger(root: pathlib.Path, check: bool) -> tuple[sqlite3.Connection, bool]:
    """Open (creating if needed) the ledger of the cache directory ``root``.

    A ledger that is not a database, or fails ``PRAGMA quick_check`` (when ``check``), is moved
    aside to ``ledger.sqlite.corrupt-<unix time>`` (with its -wal and -shm) and replaced by an
    empty one. The caller must hold the directory's open lock.

    Returns:
        tuple[sqlite3.Connection, bool]: the connection, and whether the ledger is new (the
        files on disk must be adopted).

    Raises:
        sqlite3.OperationalError: the ledger stayed locked longer than the busy timeout.
    """
    path = root / paths.LEDGER_NAME
    existed = path.exists()
    try:
        conn = connect(path)
        try:
            if check:
                result = conn.execute("PRAGMA quick_check").fetchone()[0]
                if result != "ok":
                    raise sqlite3.DatabaseError(f"quick_check: {result}")
            _create_schema(conn)
        except BaseException:
            conn.close()
            raise
        return conn, not existed
    except sqlite3.DatabaseError as e:
        if isinstance(e, sqlite3.OperationalError):
            raise
        aside = f"{path}.corrupt-{int(time.time())}"
        logger.warning("cache ledger %s is corrupt (%s): moved to %s, rebuilding", path, e, aside)
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{path}{suffix}", f"{aside}{suffix}")
    conn = connect(path)
    try:
        _create_schema(conn)
    except BaseException:
        conn.close()
        raise
    return conn, True


def _create_schema(conn: sqlite3.Connection) -> None:
    with write(conn):
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.executemany("INSERT OR IGNORE INTO counters VALUES (?, 0)", [(n,) for n in COUNTERS])


@contextlib.contextmanager
def write(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """A ``BEGIN IMMEDIATE`` transaction: committed at the end, rolled back on an exception.

    Threads of this process take the connection's ``write_lock`` first (see
    :class:`Connection`); other processes wait in SQLite's busy handler.
    """
    lock = getattr(conn, "write_lock", None)
    if lock is not None:
        lock.acquire()
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as error:
            if conn.in_transaction:  # SQLite may have rolled back already (disk full, I/O error)
                conn.execute("ROLLBACK")
            if isinstance(error, sqlite3.OperationalError) and "full" in str(error):
                raise disk_full_error(getattr(conn, "root", "?"), error) from error
            raise
    finally:
        if lock is not None:
            lock.release()


def disk_full_error(root: str, cause: BaseException) -> OSError:
    """The error of a full disk under the cache directory ``root``: ``OSError(ENOSPC)``."""
    return OSError(
        errno.ENOSPC,
        f"the cache directory {root!r} is full: free disk space, or set max_bytes below the "
        f"free space (nothing half-written was kept); cause: {cause}",
    )


def bump(conn: sqlite3.Connection, **deltas: int) -> None:
    """Add ``deltas`` to the machine-wide counters (inside a transaction)."""
    conn.executemany(
        "UPDATE counters SET value = value + ? WHERE name = ?",
        [(v, k) for k, v in deltas.items() if v],
    )


def counters(conn: sqlite3.Connection) -> dict[str, int]:
    """All machine-wide counters by name."""
    return dict(conn.execute("SELECT name, value FROM counters").fetchall())


def get_row(conn: sqlite3.Connection, key: str) -> tuple[str | None, int, str, float] | None:
    """(url, size in bytes, state, created) of ``key``, or None."""
    return conn.execute(
        "SELECT url, size, state, created FROM files WHERE key = ?", (key,)
    ).fetchone()


def is_pinned(conn: sqlite3.Connection, key: str) -> bool:
    """Whether any process pins ``key``."""
    return conn.execute("SELECT 1 FROM pins WHERE key = ? LIMIT 1", (key,)).fetchone() is not None


def insert(
    conn: sqlite3.Connection,
    key: str,
    url: str | None,
    size: int,
    state: str,
    rank: float,
    created: float,
    last_use: float,
) -> None:
    """Add a row for ``key`` (size in bytes, times in seconds) and count its bytes."""
    conn.execute(
        "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
        (key, url, size, rank, created, last_use, state),
    )
    bump(conn, total_bytes=size)


def set_ready(conn: sqlite3.Connection, key: str, size: int, now: float) -> None:
    """Turn the reservation of ``key`` into a ready file of ``size`` bytes created at ``now``."""
    (old,) = conn.execute("SELECT size FROM files WHERE key = ?", (key,)).fetchone()
    conn.execute(
        "UPDATE files SET state = ?, size = ?, created = ?, last_use = ? WHERE key = ?",
        (READY, size, now, now, key),
    )
    bump(conn, total_bytes=size - old, bytes_fetched=size)
    conn.execute("UPDATE counters SET value = MAX(value, ?) WHERE name = 'max_size'", (size,))


def touch(conn: sqlite3.Connection, key: str, url: str, now: float) -> None:
    """Record a use of ``key`` at ``now`` (seconds), and its URL if it was unknown (adopted)."""
    conn.execute(
        "UPDATE files SET last_use = ?, url = COALESCE(url, ?) WHERE key = ?", (now, url, key)
    )


def remove(
    conn: sqlite3.Connection,
    root: pathlib.Path,
    key: str,
    url: str | None,
    size: int,
    evicted: bool = False,
) -> None:
    """Delete the row of ``key`` and unlink its file (inside the same transaction)."""
    conn.execute("DELETE FROM files WHERE key = ?", (key,))
    bump(conn, total_bytes=-size, evictions=int(evicted))
    path = paths.path_for(root, url) if url is not None else paths.find_file(root, key)
    if path is not None:
        paths.unlink(path)


def pin(conn: sqlite3.Connection, key: str, pid: int, start: int) -> None:
    """Add one pin of ``key`` by process (``pid``, ``start``)."""
    conn.execute(
        "INSERT INTO pins VALUES (?, ?, ?, 1) "
        "ON CONFLICT (key, pid, pid_start) DO UPDATE SET count = count + 1",
        (key, pid, start),
    )


def unpin(conn: sqlite3.Connection, key: str, pid: int, start: int, n: int = 1) -> int:
    """Remove up to ``n`` pins of ``key`` by process (``pid``, ``start``); returns how many."""
    row = conn.execute(
        "SELECT count FROM pins WHERE key = ? AND pid = ? AND pid_start = ?", (key, pid, start)
    ).fetchone()
    if row is None:
        return 0
    if row[0] <= n:
        conn.execute(
            "DELETE FROM pins WHERE key = ? AND pid = ? AND pid_start = ?", (key, pid, start)
        )
        return row[0]
    conn.execute(
        "UPDATE pins SET count = count - ? WHERE key = ? AND pid = ? AND pid_start = ?",
        (n, key, pid, start),
    )
    return n


def recount(conn: sqlite3.Connection) -> None:
    """Set ``total_bytes`` to the sum of ``files.size``, and raise ``max_size`` to the
    largest file (inside a transaction)."""
    conn.execute(
        "UPDATE counters SET value = (SELECT COALESCE(SUM(size), 0) FROM files) "
        "WHERE name = 'total_bytes'"
    )
    conn.execute(
        "UPDATE counters SET value = MAX(value, (SELECT COALESCE(MAX(size), 0) FROM files)) "
        "WHERE name = 'max_size'"
    )


def summary(conn: sqlite3.Connection) -> dict[str, int]:
    """Ready files and bytes, those pinned, and the counters, read in one snapshot."""
    q = f"SELECT COUNT(*), COALESCE(SUM(size), 0) FROM files WHERE state = '{READY}'"
    conn.execute("BEGIN")
    try:
        files, size = conn.execute(q).fetchone()
        pinned = conn.execute(f"{q} AND NOT ({UNPINNED})").fetchone()
        out = {"files": files, "bytes": size, "pinned_files": pinned[0], "pinned_bytes": pinned[1]}
        out.update(counters(conn))
    finally:
        conn.execute("COMMIT")
    return out


def remove_unpinned(conn: sqlite3.Connection, root: pathlib.Path, limit: int) -> tuple[int, int]:
    """Remove up to ``limit`` unpinned ready files (inside a transaction).

    Returns:
        tuple[int, int]: files removed and bytes freed.
    """
    batch = conn.execute(
        f"SELECT key, url, size FROM files WHERE state = ? AND {UNPINNED} LIMIT ?",
        (READY, limit),
    ).fetchall()
    for key, url, size in batch:
        remove(conn, root, key, url, size)
    return len(batch), sum(size for _, _, size in batch)

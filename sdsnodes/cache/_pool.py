"""Ledger connections: one per (process, thread), opened lazily, never reused across fork."""

from __future__ import annotations

import os
import pathlib
import sqlite3
import threading
import weakref

from . import _recovery, ledger, paths

_FORKABLE: weakref.WeakSet = weakref.WeakSet()
_INHERITED: list[sqlite3.Connection] = []  # the parent's connections, kept so they never close


def forget_parent_after_fork(obj: object) -> None:
    """Call ``obj._forget_parent()`` in the child after every fork (``obj`` is held weakly)."""
    _FORKABLE.add(obj)


def _after_fork_in_child() -> None:
    for obj in list(_FORKABLE):
        obj._forget_parent()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Pool:
    """The ledger connections of one cache directory in this process.

    The first connection of a process opens the directory: under ``.locks/open.lock`` it takes
    a shared lock on ``.locks/users.lock`` for as long as the pool is open. A process that
    could take that lock alone is the only user of the directory (a cold start): it checks the
    ledger (rebuilding it if corrupt) and reconciles it with the files
    (:func:`~sdsnodes.cache._recovery.sweep`). Otherwise it only reclaims what dead processes
    left (:func:`~sdsnodes.cache._recovery.reclaim_dead`).

    In a forked child the parent's connections are dropped, never used nor closed (closing
    them could disturb the parent's locks), and new ones are opened.

    Args:
        root (pathlib.Path): the cache directory (absolute).
    """

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self.locks = root / paths.LOCKS_DIR
        self.reset()
        forget_parent_after_fork(self)

    def reset(self) -> None:
        """Forget every connection (without closing them): a fresh state for this process."""
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._users_fd: int | None = None

    def _forget_parent(self) -> None:
        """In a forked child: drop the parent's connections and its lock descriptor."""
        _INHERITED.extend(self._conns)
        if self._users_fd is not None:
            os.close(self._users_fd)  # the parent keeps its lock: its descriptor stays open
        self.reset()

    def get(self) -> sqlite3.Connection:
        """The connection of this thread, opened (and the directory checked) if needed.

        Raises:
            sqlite3.OperationalError: the ledger stayed locked longer than the busy timeout.
            OSError: the directory cannot be created or locked.
        """
        if self.pid != os.getpid():
            self._forget_parent()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            with self.lock:
                if self._users_fd is None:
                    conn = self._open()
                else:
                    conn = ledger.connect(self.root / paths.LEDGER_NAME)
                self._conns.append(conn)
            self._local.conn = conn
        return conn

    def _open(self) -> sqlite3.Connection:
        self.locks.mkdir(parents=True, exist_ok=True)
        with paths.flocked(self.locks / "open.lock"):
            fd, alone = paths.try_lock_shared(self.locks / "users.lock")
            try:
                conn, new = ledger.open_ledger(self.root, check=alone)
                try:
                    if alone or new:
                        _recovery.sweep(conn, self.root)
                    else:
                        with ledger.write(conn):
                            _recovery.reclaim_dead(conn, self.root)
                except BaseException:
                    conn.close()
                    raise
            except BaseException:
                os.close(fd)
                raise
        self._users_fd = fd
        return conn

    def close(self) -> None:
        """Close every connection of this process and release the directory's users lock."""
        if self.pid != os.getpid():
            self._forget_parent()
            return
        with self.lock:
            conns, self._conns = self._conns, []
            fd, self._users_fd = self._users_fd, None
            self._local = threading.local()
        for conn in conns:
            conn.close()
        if fd is not None:
            os.close(fd)

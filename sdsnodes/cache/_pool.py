"""Ledger connections: one per (process, thread), opened lazily, closed before every fork."""

from __future__ import annotations

import contextlib
import logging
import os
import pathlib
import sqlite3
import threading
import weakref
from collections.abc import Callable, Iterator

from . import _fork, _recovery, ledger, paths

logger = logging.getLogger(__name__)

_FORKABLE: set[weakref.WeakMethod] = set()
_INHERITED: list[sqlite3.Connection] = []  # the parent's connections, kept so they never close


def forget_parent_after_fork(method: Callable[[], None]) -> None:
    """Call the bound ``method`` in the child after every fork; its object is held weakly (the
    hook goes with it)."""
    _FORKABLE.add(weakref.WeakMethod(method, _FORKABLE.discard))


def _after_fork_in_child() -> None:
    for ref in list(_FORKABLE):
        method = ref()
        if method is not None:
            method()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Pool:
    """The ledger connections of one cache directory in this process.

    The first connection of a process opens the directory: under ``.locks/open.lock`` it takes
    a shared lock on ``.locks/users.lock`` for as long as the pool is open. A process that
    could take that lock alone is the only user of the directory (a cold start): it checks the
    ledger (rebuilding it if corrupt) and reconciles it with the files
    (:func:`~sdsnodes.cache._recovery.sweep`). Otherwise it only reclaims what dead processes
    left (:func:`~sdsnodes.cache._recovery.reclaim_dead`).

    Connections are used only inside :meth:`section`, and closed before every fork of the
    process (see :mod:`sdsnodes.cache._fork`): a child inherits none and opens its own, the
    parent reopens its own lazily. A child forked without ``os.fork``'s hooks drops whatever it
    inherited, never using nor closing it (closing could disturb the parent's locks).

    When the ledger file is deleted or replaced under the process (``rm -rf cache_dir`` in a
    notebook while a Cache is alive), the next section notices (its inode changed), logs a
    warning, and opens the directory afresh (recreated, a new ledger); ``generation`` counts
    these reopenings so the Cache can forget what it held in the old one.

    Args:
        root (pathlib.Path): the cache directory (absolute).
    """

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root
        self.locks = root / paths.LOCKS_DIR
        self.generation = 0
        self.reset()
        forget_parent_after_fork(self.forget_parent)
        _fork.on_fork(self.close_for_fork)

    def reset(self) -> None:
        """Forget every connection (without closing them): a fresh state for this process."""
        self.pid = os.getpid()
        self.lock = threading.Lock()
        self._local = threading.local()
        self._conns: list[tuple[threading.Thread, sqlite3.Connection]] = []  # (owner, conn)
        self._users_fd: int | None = None
        self._ledger_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the ledger opened

    def forget_parent(self) -> None:
        """In a forked child: drop the parent's connections and its lock descriptor."""
        _INHERITED.extend(conn for _, conn in self._conns)
        if self._users_fd is not None:
            os.close(self._users_fd)  # the parent keeps its lock: its descriptor stays open
        self.reset()

    @contextlib.contextmanager
    def section(self) -> Iterator[sqlite3.Connection]:
        """This thread's connection, for the block: no fork happens until the block ends, and
        the connection must not be used after it (a fork closes it).

        Raises:
            sqlite3.OperationalError: the ledger stayed locked longer than the busy timeout.
            OSError: the directory cannot be created or locked.
        """
        with _fork.held():
            yield self._get()

    def _get(self) -> sqlite3.Connection:
        if self.pid != os.getpid():
            self.forget_parent()
        if self._ledger_id is not None and self._ledger_id != _file_id(self.root):
            self._reopen()
        conn = getattr(self._local, "conn", None)
        if conn is None:
            with self.lock:
                self._close_ended_threads()
                if self._users_fd is None:
                    conn = self._open()
                else:
                    conn = ledger.connect(self.root / paths.LEDGER_NAME)
                self._conns.append((threading.current_thread(), conn))
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
        self._ledger_id = _file_id(self.root)
        return conn

    def _close_ended_threads(self) -> None:
        """Close the connections of threads that ended (a graph's thread pools are new each
        epoch: keeping them would leak two descriptors per thread and epoch)."""
        ended = [conn for thread, conn in self._conns if not thread.is_alive()]
        if ended:
            self._conns = [(t, c) for t, c in self._conns if t.is_alive()]
            for conn in ended:
                conn.close()

    def _reopen(self) -> None:
        """The ledger was deleted or replaced: open the directory afresh at the next use. The
        old connections stay open (another thread may be inside one) until close or fork."""
        with self.lock:
            if self._ledger_id is None or self._ledger_id == _file_id(self.root):
                return  # another thread did it
            logger.warning(
                "cache %s: the ledger was deleted or replaced under this process "
                "(was the directory removed?): recreating it; files cached before are gone",
                self.root,
            )
            if self._users_fd is not None:
                os.close(self._users_fd)
            self._users_fd, self._ledger_id = None, None
            self._local = threading.local()
            self.generation += 1

    def close_for_fork(self) -> None:
        """Before a fork (no section running): close every connection."""
        if self.pid != os.getpid():
            return
        with self.lock:
            conns, self._conns = self._conns, []
            self._local = threading.local()
        for _, conn in conns:
            conn.close()

    def close(self) -> None:
        """Close every connection of this process and release the directory's users lock."""
        if self.pid != os.getpid():
            self.forget_parent()
            return
        with self.lock:
            conns, self._conns = self._conns, []
            fd, self._users_fd = self._users_fd, None
            self._local = threading.local()
        for _, conn in conns:
            conn.close()
        if fd is not None:
            os.close(fd)
        self._ledger_id = None


def _file_id(root: pathlib.Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the ledger of ``root``, None if it is missing."""
    try:
        st = os.stat(root / paths.LEDGER_NAME)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino

"""No SQLite call of this process is in flight across a fork, and no ledger connection is open.

SQLite keeps, per process, what it believes this process holds on each database file (its
POSIX locks and those of the WAL index, counted per inode and shared by every connection of
the process). A forked child inherits that belief but not the locks (``fcntl`` locks belong to
a process and are not inherited). Two failures follow, both seen:

- the parent forks while one of its threads is inside a write transaction: every connection
  the child opens to the ledger believes the process already holds the write lock and waits for
  it in vain (``database is locked`` after the busy timeout; a thread inside SQLite's own
  mutexes at the fork hangs the child instead);
- the parent forks with connections merely open: the child's connections believe they hold the
  database's shared lock through the parent's, so when the parent closes its last connection
  it checkpoints and deletes the WAL under the child, and the child's later commits are lost
  (a fresh process sees none of them).

So every use of a ledger connection runs inside :func:`held` (a section, reentrant per
thread), and ``os.register_at_fork`` makes a fork wait until no section is running, keeps new
sections out, and closes every ledger connection of the process (:func:`on_fork` registers the
closers) before the fork proceeds. The child then inherits no SQLite state for the ledger and
opens its own connections; the parent reopens its own lazily, after the fork.

SQLite documents the rule this enforces: "Do not open an SQLite database connection, then
fork(), then try to use that database connection in the child process" (sqlite.org, "How To
Corrupt An SQLite Database File", section 2.6); with per-process lock tables, that holds for any
connection to the same file, not only the one carried across.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterator

logger = logging.getLogger(__name__)


class _Gate:
    """Sections (any number, any threads) or one fork, never both at once."""

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.active = 0  # sections running, all threads together
        self.forking = False
        self.depth = threading.local()  # sections the current thread is inside


_gate = _Gate()
_closers: set[weakref.WeakMethod] = set()


def on_fork(method: Callable[[], None]) -> None:
    """Call the bound ``method`` before each fork of this process (its object held weakly),
    after every section has ended and while none can start."""
    _closers.add(weakref.WeakMethod(method, _closers.discard))


@contextlib.contextmanager
def held() -> Iterator[None]:
    """A section in which this thread may use ledger connections; a fork waits for its end.

    Reentrant: a section inside a section of the same thread never waits.
    """
    gate = _gate
    depth = getattr(gate.depth, "n", 0)
    if depth == 0:
        with gate.cond:
            while gate.forking:
                gate.cond.wait()
            gate.active += 1
    gate.depth.n = depth + 1
    try:
        yield
    finally:
        gate.depth.n = depth
        if depth == 0:
            with gate.cond:
                gate.active -= 1
                if gate.active == 0:
                    gate.cond.notify_all()


def _before_fork() -> None:
    gate = _gate
    own = getattr(gate.depth, "n", 0)
    with gate.cond:
        gate.forking = True
        while gate.active > (1 if own else 0):
            gate.cond.wait()
    if own:  # forking from inside a section: its connection is in use, it cannot be closed
        logger.warning("fork() inside a ledger section: the child must not use the cache")
        return
    for ref in list(_closers):
        close = ref()
        if close is None:
            continue
        try:
            close()
        except Exception as error:  # never fail the user's fork
            logger.warning("could not close a ledger connection before fork: %r", error)


def _after_in_parent() -> None:
    gate = _gate
    with gate.cond:
        gate.forking = False
        gate.cond.notify_all()


def _after_in_child() -> None:
    global _gate
    _gate = _Gate()  # the parent's other threads do not exist here


os.register_at_fork(
    before=_before_fork, after_in_parent=_after_in_parent, after_in_child=_after_in_child
)

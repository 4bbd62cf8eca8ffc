"""What one :class:`~sdsnodes.cache.Cache` object holds in this process, and its ledger
sections: the state ``Cache.get`` and the batch path (:mod:`sdsnodes.cache._batch`) share."""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import pathlib
import sqlite3
import threading
from collections.abc import Iterator

from . import _procs
from ._pool import Pool, forget_parent_after_fork

logger = logging.getLogger(__name__)


class Holdings:
    """The bookkeeping of one Cache object in this process: the pins it took (per key), its
    counters, the subdirectories it knows exist, and the pins released behind its back (by
    :meth:`forget`, or a ledger recreated under the process) whose ``unpin`` is then a no-op.

    Thread-safe. A forked child starts afresh (:meth:`reset`, run by the fork hook, or at the
    next :meth:`section` when the fork bypassed ``os.fork``'s hooks): it holds nothing of its
    parent's.

    Args:
        pool (Pool): the ledger connections of the cache directory.

    Attributes:
        owner (tuple[int, int]): (pid, start time) of this process: the identity the ledger
            records its pins and reservations under.
        pool (Pool): as given.
    """

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.warned = False  # one overshoot warning per Cache object, forks included
        self.reset()
        forget_parent_after_fork(self.reset)

    def reset(self) -> None:
        """Start this process's bookkeeping afresh (called in the child after a fork)."""
        self.owner = (os.getpid(), _procs.own_start())
        self._lock = threading.Lock()
        self._held: collections.Counter[str] = collections.Counter()  # pins taken through us
        self._forgotten: collections.Counter[str] = collections.Counter()  # see was_forgotten()
        self._counters = {"hits": 0, "misses": 0, "bytes_fetched": 0}
        self._subdirs: set[pathlib.Path] = set()
        self._generation = self.pool.generation

    def is_current(self) -> bool:
        """Whether this bookkeeping belongs to the running process (not a parent's)."""
        return self.owner[0] == os.getpid()

    @contextlib.contextmanager
    def section(self) -> Iterator[sqlite3.Connection]:
        """A ledger section (see :meth:`Pool.section`): use the connection inside it only.
        When the ledger was recreated since the last one, what was held in the old one is
        forgotten first."""
        if not self.is_current():  # forked without os.fork's hooks
            self.reset()
        with self.pool.section() as conn:
            if self._generation != self.pool.generation:  # the ledger was recreated
                with self._lock:
                    self._generation = self.pool.generation
                    self._forgotten.update(self._held)
                    self._held.clear()
                    self._subdirs.clear()
            yield conn

    def count(self, key: str, pins: int = 1, **deltas: int) -> None:
        """Record ``pins`` more pins of ``key`` and add ``deltas`` to the counters
        (``hits``, ``misses``, ``bytes_fetched``)."""
        with self._lock:
            if pins:
                self._held[key] += pins
            for name, value in deltas.items():
                self._counters[name] += value

    def drop(self, key: str) -> None:
        """Record one pin of ``key`` fewer."""
        with self._lock:
            self._held[key] -= 1
            if self._held[key] <= 0:
                del self._held[key]

    def pins(self, key: str) -> int:
        """How many pins of ``key`` are held through this object."""
        with self._lock:
            return self._held.get(key, 0)

    def counters(self) -> dict[str, int]:
        """A copy of this process's ``hits``, ``misses`` and ``bytes_fetched``."""
        with self._lock:
            return dict(self._counters)

    def forget(self) -> collections.Counter[str]:
        """Forget every pin held (the caller releases them in the ledger): the pins per key."""
        with self._lock:
            held, self._held = self._held, collections.Counter()
            self._forgotten.update(held)
        return held

    def was_forgotten(self, key: str) -> bool:
        """Whether a pin of ``key`` was released behind the caller's back (then counted as
        unpinned now)."""
        with self._lock:
            if self._forgotten[key] > 0:
                self._forgotten -= collections.Counter([key])
                return True
            return False

    def make_dir(self, directory: pathlib.Path) -> None:
        """Create ``directory`` (a subdirectory of the cache) unless known to exist."""
        if directory not in self._subdirs:
            directory.mkdir(exist_ok=True)
            self._subdirs.add(directory)

    def warn_overshoot(self, max_bytes: int | None) -> None:
        """Warn, once per Cache object, that the files in flight do not fit ``max_bytes``."""
        if not self.warned:
            self.warned = True
            logger.warning(
                "cache %s: budget too small for the files in flight: raise max_bytes or "
                "lower the lookahead (files pinned or downloading fill max_bytes=%d)",
                self.pool.root,
                max_bytes,
            )

"""The :class:`Cache`: a disk cache shared by every process on a machine, within a byte budget."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import pathlib
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence

from . import _batch, _recovery, _transactions, ledger, paths
from ._batch import BUSY, NO_ROOM, Claim  # noqa: F401 - re-exported: the answers of claim()
from ._holdings import Holdings
from ._pool import Pool
from .policy import Budget, EvictionPolicy

logger = logging.getLogger(__name__)

Fetch = Callable[[pathlib.Path], None]


class Cache:
    """A directory of downloaded files shared by every thread and process on the machine.

    ``get(url, fetch)`` returns the local path of ``url``, calling ``fetch(tmp_path)`` to
    download it on a miss, exactly once however many threads and processes ask at the same
    time. The returned file is pinned by this process until :meth:`unpin`: pinned files are
    never evicted, and pins of dead processes are reclaimed. A SQLite ledger in the directory
    (see :mod:`sdsnodes.cache.ledger`) keeps the sizes, pins and counters; files are written
    to a temporary name and renamed into place, so a crash never leaves a half file that looks
    whole.

    The budget bounds the bytes of the whole directory, all processes together: before a
    download its size (``size_hint``) is reserved by evicting unpinned files in ``policy``
    order. When the files pinned or in flight leave no room, :meth:`get` downloads anyway (with
    one warning per Cache), while :meth:`claim` answers :data:`NO_ROOM` (except for the
    ``overshoot`` items its caller says it cannot wait for), so a caller that downloads ahead
    (``CachingDownloader``) waits for room instead. Downloads without a ``size_hint`` reserve
    the largest file the directory has held; before any, :meth:`claim` lets only the first
    item (its ``overshoot``) download, to learn a size.

    The object is picklable (only its arguments travel) and fork-safe: ledger connections are
    opened per process and thread, and a fork waits for the ledger calls in flight, then closes
    every connection first (:mod:`sdsnodes.cache._fork`), so a child never inherits SQLite's
    lock state. A ledger deleted under a live process (``rm -rf cache_dir``) is recreated at
    the next call, with a warning. Processes sharing a directory must share a pid namespace
    (dead processes are recognized by pid and start time).

    Args:
        cache_dir (str | os.PathLike): the cache directory, created if missing.
        max_bytes (int | None): budget of the directory in bytes; None for no limit.
        ttl (float | None): files created more than ``ttl`` seconds ago are evicted (and
            fetched again on the next ``get``) unless pinned; None keeps them forever.
        policy (EvictionPolicy | str): eviction order, ``"keepset"`` (default) or ``"lru"``.

    Raises:
        ValueError: ``max_bytes < 0``, ``ttl <= 0`` or an unknown ``policy``.
        OSError: ``cache_dir`` cannot be created or written.
        sqlite3.OperationalError: the ledger stayed locked for more than 30 s.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        max_bytes: int | None = None,
        ttl: float | None = None,
        policy: EvictionPolicy | str = EvictionPolicy.KEEPSET,
    ) -> None:
        if max_bytes is not None and (isinstance(max_bytes, bool) or max_bytes < 0):
            raise ValueError(f"{max_bytes=} must be None or an int >= 0 (bytes)")
        if ttl is not None and not ttl > 0:
            raise ValueError(f"{ttl=} must be None or > 0 (seconds)")
        try:
            self.policy = EvictionPolicy(policy)
        except ValueError:
            names = [p.value for p in EvictionPolicy]
            raise ValueError(f"{policy=} must be one of {names}") from None
        self.cache_dir = pathlib.Path(os.path.abspath(cache_dir))
        self.max_bytes = None if max_bytes is None else int(max_bytes)
        self.ttl = None if ttl is None else float(ttl)
        self._budget = Budget(self.max_bytes, self.ttl, self.policy)
        self._pool = Pool(self.cache_dir)
        self._holdings = Holdings(self._pool)  # this process's pins and counters
        with self._ledger():  # open now: errors surface here, and what crashes left is repaired
            pass

    def __reduce__(self):
        return (type(self), (str(self.cache_dir), self.max_bytes, self.ttl, self.policy.value))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({str(self.cache_dir)!r}, max_bytes={self.max_bytes}, "
            f"ttl={self.ttl}, policy={self.policy.value!r})"
        )

    def __enter__(self) -> Cache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            holdings = getattr(self, "_holdings", None)
            if holdings is not None and holdings.is_current():
                self.close()

    def _ledger(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
        """A ledger section (see :meth:`Holdings.section`): use the connection inside it only."""
        return self._holdings.section()

    # -- the public API ---------------------------------------------------------------------

    def path_for(self, url: str) -> pathlib.Path:
        """Where ``url`` lives in the cache: ``cache_dir/<h[:2]>/<h><ext>``, h = sha256(url)."""
        return paths.path_for(self.cache_dir, url)

    def get(self, url: str, fetch: Fetch, size_hint: int | None = None) -> pathlib.Path:
        """The local path of ``url``, downloaded by ``fetch`` on a miss, pinned by this process.

        Call :meth:`unpin` (or use :meth:`pinned`) when done with the file. ``fetch`` must not
        call ``get`` for the same URL (it would wait for itself).

        Args:
            url (str): the object's URL; its hash names the cached file.
            fetch (Callable[[pathlib.Path], None]): writes the whole object to the given
                temporary path (in the cache directory); called at most once per miss,
                machine-wide.
            size_hint (int | None): expected size in bytes, reserved before the download;
                None reserves the largest file the directory has held (0 before any).

        Returns:
            pathlib.Path: the cached file (equal to ``path_for(url)``).

        Raises:
            ValueError: ``size_hint < 0``.
            FileNotFoundError: ``fetch`` returned without writing its path.
            Exception: whatever ``fetch`` raised, unchanged (the temporary file is removed and
                the reservation released).
        """
        if size_hint is not None and size_hint < 0:
            raise ValueError(f"{size_hint=} must be None or >= 0 (bytes)")
        key = paths.key_for(url)
        path = paths.path_for(self.cache_dir, url)
        owner = self._holdings.owner
        with self._ledger() as conn:
            row = ledger.get_row(conn, key)
            if (
                row is not None
                and row[2] == ledger.READY
                and self._hit(conn, key, url, path, False)
            ):
                return path
        with paths.locked_key(self._pool.locks, key):
            with self._ledger() as conn:
                if self._hit(conn, key, url, path, True):
                    return path
                need = self._budget.need(conn, size_hint) or 0
                fits = _transactions.reserve(
                    conn, self.cache_dir, key, url, need, self._budget, owner
                )
            self._holdings.count(key, misses=1)
            if not fits:
                self._holdings.warn_overshoot(self.max_bytes)
            tmp = paths.tmp_path_for(path, *owner)
            try:
                path.parent.mkdir(exist_ok=True)
                fetch(tmp)
                if not tmp.is_file():
                    raise FileNotFoundError(errno.ENOENT, f"fetch({url!r}) did not write", tmp)
                size = tmp.stat().st_size
                os.replace(tmp, path)
                with self._ledger() as conn:
                    _transactions.commit(conn, self.cache_dir, key, size, self._budget)
            except BaseException:
                paths.unlink(tmp)
                try:
                    with self._ledger() as conn:
                        _transactions.release(conn, self.cache_dir, key, url, owner)
                except (OSError, sqlite3.Error) as e:
                    logger.warning("cache %s: cannot release %r: %s", self.cache_dir, url, e)
                self._holdings.drop(key)
                raise
        self._holdings.count(key, bytes_fetched=size, pins=0)
        return path

    def claim(
        self, items: Sequence[tuple[str, int | None]], overshoot: int = 0
    ) -> list[pathlib.Path | Claim | str]:
        """Pin the cached files of several URLs, or claim their downloads, in one transaction.

        The batch form of :meth:`get`, for callers that download themselves (concurrently):
        each answer is the cached file's path (a hit, pinned), a :class:`Claim` (a miss: the
        caller downloads into ``claim.tmp`` and calls :meth:`finish`), :data:`BUSY` (another
        thread or process is downloading it: wait with :meth:`get`), or :data:`NO_ROOM`. Items
        are taken in order; once one finds no room within ``max_bytes`` (pinned files and
        reservations fill it), every later miss is :data:`NO_ROOM` too, so the earliest items
        get the room first. The first ``overshoot`` items are claimed even without room: the
        directory may then exceed ``max_bytes`` by their size (give it to the item the
        consumer waits for, never to all).

        Args:
            items (Sequence[tuple[str, int | None]]): (URL, size in bytes to reserve; None
                reserves the largest file held so far, or, before any, is NO_ROOM unless
                it is among the ``overshoot`` items).
            overshoot (int): leading items that may exceed the budget.

        Returns:
            list[pathlib.Path | Claim | str]: one answer per item, in order.

        Raises:
            ValueError: a size is < 0.
            OSError: a lock file or a subdirectory cannot be created.
        """
        return _batch.claim(self._holdings, self._budget, items, overshoot)

    def finish(self, done: Sequence[tuple[Claim, BaseException | None]]) -> list[int | None]:
        """Hand back claims of :meth:`claim`: each downloaded file (error None) is renamed into
        place and recorded, still pinned; each failed one (its error given) is forgotten, its
        temporary file removed. One transaction for all, then the key locks are released.

        Args:
            done (Sequence[tuple[Claim, BaseException | None]]): claims and how they ended.

        Returns:
            list[int | None]: the size in bytes of each file now in place, None for the
            failures (including a download that wrote nothing: ``FileNotFoundError``).
        """
        return _batch.finish(self._holdings, self._budget, done)

    def pins_held(self, url: str) -> int:
        """How many pins of ``url`` this process holds through this Cache object."""
        return self._holdings.pins(paths.key_for(url))

    def unpin(self, url: str) -> None:
        """Drop one pin of ``url`` by this process (taken by :meth:`get`).

        Raises:
            ValueError: this process does not pin ``url``.
        """
        key = paths.key_for(url)
        with self._ledger() as conn, ledger.write(conn):
            released = ledger.unpin(conn, key, *self._holdings.owner)
        if not released:
            if self._holdings.was_forgotten(key):  # released already (close, deleted ledger)
                return
            raise ValueError(f"cannot unpin {url!r}: this process does not pin it")
        self._holdings.drop(key)

    def discard(self, *urls: str) -> int:
        """Remove the cached files of ``urls`` now, in one transaction: drop this object's pin
        of each (one, where it holds any), then remove it unless a live process still pins it
        (for entries the caller found unusable, or will never read again); how many went."""
        owner, released, removed = self._holdings.owner, [], 0
        with self._ledger() as conn, ledger.write(conn):
            for url in urls:
                key = paths.key_for(url)
                if self._holdings.pins(key) and ledger.unpin(conn, key, *owner):
                    released.append(key)
                row = ledger.get_row(conn, key)
                if row is None or row[2] != ledger.READY or ledger.is_pinned(conn, key):
                    continue
                ledger.remove(conn, self.cache_dir, key, row[0], row[1])
                removed += 1
        for key in released:
            self._holdings.drop(key)
        return removed

    @contextlib.contextmanager
    def pinned(
        self, url: str, fetch: Fetch, size_hint: int | None = None
    ) -> Iterator[pathlib.Path]:
        """:meth:`get` the file of ``url`` for the block, then :meth:`unpin` it."""
        path = self.get(url, fetch, size_hint)
        try:
            yield path
        finally:
            self.unpin(url)

    def trim(self) -> int:
        """Evict unpinned files older than ``ttl``, then until the directory fits ``max_bytes``;
        the bytes freed."""
        with self._ledger() as conn:
            with ledger.write(conn):
                ledger.recount(conn)
                freed, fits = self._budget.make_room(conn, self.cache_dir, 0, time.time())
                if not fits and _recovery.reclaim_dead(conn, self.cache_dir):
                    freed += self._budget.make_room(conn, self.cache_dir, 0, time.time())[0]
            ledger.checkpoint(conn)  # keep the WAL file small
        return freed

    def clean(self) -> int:
        """Remove every cached file that no live process pins; the bytes freed."""
        with self._ledger() as conn, ledger.write(conn):
            _recovery.reclaim_dead(conn, self.cache_dir)
        freed, n = 0, 1
        while n:  # in batches, not to hold the ledger for long
            with self._ledger() as conn, ledger.write(conn):
                n, size = ledger.remove_unpinned(conn, self.cache_dir, 1000)
            freed += size
        return freed

    def stats(self) -> dict:
        """Counts of the whole directory (all processes) and of this process.

        Returns:
            dict: ``files``, ``bytes`` (ready files), ``pinned_files``, ``pinned_bytes``
            (ready files pinned by any live process), ``max_bytes``; machine-wide counters
            ``hits``, ``misses``, ``evictions``, ``bytes_fetched``; and ``process``: this
            process's ``hits``, ``misses``, ``bytes_fetched`` (through this Cache object).
            Sizes in bytes.
        """
        with self._ledger() as conn:
            summary = ledger.summary(conn)
        out = {k: summary[k] for k in ("files", "bytes", "pinned_files", "pinned_bytes")}
        out["max_bytes"] = self.max_bytes
        out.update({k: summary[k] for k in ("hits", "misses", "evictions", "bytes_fetched")})
        out["process"] = self._holdings.counters()
        return out

    def process_counters(self) -> dict[str, int]:
        """This process's ``hits``, ``misses`` and ``bytes_fetched`` through this object, read
        without the ledger (cheap enough to call per batch); as ``stats()["process"]``."""
        return self._holdings.counters()

    def close(self) -> None:
        """Release the pins this object still holds and close its ledger connections.

        The Cache can be used again afterwards (it reopens); unpinning a file pinned before the
        close is then a no-op.
        """
        if not self._holdings.is_current():
            self._holdings.reset()
        held = self._holdings.forget()
        if held:
            try:
                with self._ledger() as conn, ledger.write(conn):
                    for key, n in held.items():
                        ledger.unpin(conn, key, *self._holdings.owner, n)
            except (OSError, sqlite3.Error) as e:
                logger.warning("cache %s: could not release %d pins: %s", self, len(held), e)
        self._pool.close()

    # -- bookkeeping of this process ---------------------------------------------------------

    def _hit(
        self, conn: sqlite3.Connection, key: str, url: str, path: pathlib.Path, clear: bool
    ) -> bool:
        owner, root = self._holdings.owner, self.cache_dir
        hit = _transactions.take_hit(conn, root, key, url, path, self._budget, owner, clear)
        if hit:
            self._holdings.count(key, hits=1)
        return hit

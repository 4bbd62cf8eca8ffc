"""Which unpinned files the cache evicts, and in which order."""

from __future__ import annotations

import dataclasses
import enum
import pathlib
import sqlite3

from . import ledger


class EvictionPolicy(str, enum.Enum):
    """The order in which unpinned cached files are evicted when the budget is exceeded.

    Only files that no live process pins are ever candidates; expired files (``ttl``) go first
    whatever the policy. Each :class:`~sdsnodes.cache.Cache` evicts by its own policy, so the
    processes sharing a directory should agree on one.
    """

    KEEPSET = "keepset"
    """Evict the file of highest ``rank`` first, where ``rank`` is a uniform number in [0, 1)
    derived from the hash of the URL (see :func:`rank_for`). The cache converges to a stable
    keep-set, the lowest-ranked files that fit, whatever order they are read in: with shuffled
    epochs and a budget of a fraction f of the dataset, about f of the bytes hit every epoch
    (the optimum), where LRU re-downloads nearly everything. The default."""

    LRU = "lru"
    """Evict the least recently used file first (oldest ``last_use``). Good when the same
    files are re-read soon after (repeated passes over a small working set); poor for
    shuffled epochs over a dataset larger than the budget."""


def rank_for(key: str) -> float:
    """The keep-set rank of a cache key (hex sha256): ``int(key[:16], 16) / 2**64`` in [0, 1)."""
    return int(key[:16], 16) / 2.0**64


def order_by(policy: EvictionPolicy) -> str:
    """The SQL ``ORDER BY`` clause (over the ledger's ``files`` table) listing eviction
    candidates first-evicted first."""
    if policy is EvictionPolicy.KEEPSET:
        return "rank DESC"
    return "last_use ASC"


@dataclasses.dataclass(frozen=True)
class Budget:
    """What a cache may keep: ``max_bytes`` in all (None: no limit), files for ``ttl`` seconds
    after their download (None: forever), evicting by ``policy``."""

    max_bytes: int | None
    ttl: float | None
    policy: EvictionPolicy

    def expired(self, created: float, now: float) -> bool:
        """Whether a file created at ``created`` is past its ``ttl`` at ``now`` (seconds)."""
        return self.ttl is not None and created < now - self.ttl

    def need(self, conn: sqlite3.Connection, size: int | None) -> int | None:
        """Bytes to reserve for a download of ``size`` bytes (None: unknown, no size column).

        An unknown size reserves the largest file the directory has held (the ledger counter
        ``max_size``), so a window of downloads without sizes still keeps the budget.

        Returns:
            int | None: the bytes to reserve; None when the size is unknown and no file was
            ever held (the caller lets one such download run alone to learn a size).
        """
        if size is not None:
            return size
        if self.max_bytes is None:
            return 0
        return ledger.counters(conn).get("max_size") or None

    def make_room(
        self, conn: sqlite3.Connection, root: pathlib.Path, need: int, now: float
    ) -> tuple[int, bool]:
        """Evict unpinned ready files (inside a transaction): those past ``ttl``, then in
        ``policy`` order until the sizes of all rows (reservations included) plus ``need``
        bytes fit in ``max_bytes``.

        Returns:
            tuple[int, bool]: bytes freed, and whether the total now fits.
        """
        freed = 0
        if self.ttl is not None:
            for key, url, size in conn.execute(
                "SELECT key, url, size FROM files "
                f"WHERE state = ? AND created < ? AND {ledger.UNPINNED}",
                (ledger.READY, now - self.ttl),
            ).fetchall():
                ledger.remove(conn, root, key, url, size, evicted=True)
                freed += size
        if self.max_bytes is None:
            return freed, True
        total = ledger.counters(conn)["total_bytes"]
        while total + need > self.max_bytes:
            batch = conn.execute(
                f"SELECT key, url, size FROM files WHERE state = ? AND {ledger.UNPINNED} "
                f"ORDER BY {order_by(self.policy)} LIMIT 64",
                (ledger.READY,),
            ).fetchall()
            if not batch:
                return freed, False
            for key, url, size in batch:
                if total + need <= self.max_bytes:
                    break
                ledger.remove(conn, root, key, url, size, evicted=True)
                total -= size
                freed += size
        return freed, True

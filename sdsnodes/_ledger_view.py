"""A read-only look at a cache directory's ledger, for :func:`sdsnodes.stats` and ``sds top``.

The ledger is opened read-only (``mode=ro``), never written, never created, and read in one
short read transaction: in WAL mode readers do not block the writers (the jobs), see
https://www.sqlite.org/wal.html. A directory without a ledger reads as empty.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from typing import Any

from sdsnodes.cache import _procs, paths

EMPTY = {
    "files": 0, "bytes": 0, "pinned_files": 0, "pinned_bytes": 0, "processes": 0,
    "hits": 0, "misses": 0, "evictions": 0, "bytes_fetched": 0, "reserved_files": 0,
}  # fmt: skip


def read_ledger(
    cache_dir: str | os.PathLike, busy_timeout_s: float = 1.0, *, files: bool = True
) -> dict[str, Any]:
    """The cache directory's figures now, machine-wide.

    Args:
        cache_dir: the cache directory.
        busy_timeout_s (float): seconds to wait for the ledger while another process recovers
            it (reads never wait for writers in WAL mode).
        files (bool): False reads the counters only (the file and pin counts stay 0): no scan
            of the files table.

    Returns:
        dict: ``files``, ``bytes`` (ready files), ``pinned_files``, ``pinned_bytes`` (pinned
        by any process), ``reserved_files`` (downloads in progress), ``processes`` (live
        processes holding pins), the counters ``hits``, ``misses``, ``evictions``,
        ``bytes_fetched`` since the directory was made. Sizes in bytes.

    Raises:
        sqlite3.DatabaseError: the ledger is not a SQLite database.
    """
    path = os.path.join(os.fspath(cache_dir), paths.LEDGER_NAME)
    if not os.path.exists(path):
        return dict(EMPTY)
    uri = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro"
    conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout_s, isolation_level=None)
    try:
        conn.execute("BEGIN")  # one snapshot for every query
        out = dict(EMPTY)
        out.update(dict(conn.execute("SELECT name, value FROM counters").fetchall()))
        if not files:
            conn.execute("COMMIT")
            return {k: int(v) for k, v in out.items() if k in EMPTY}
        out["files"], out["bytes"] = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM files WHERE state = 'ready'"
        ).fetchone()
        out["pinned_files"], out["pinned_bytes"] = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM files "
            "WHERE state = 'ready' AND key IN (SELECT key FROM pins)"
        ).fetchone()
        out["reserved_files"] = conn.execute(
            "SELECT COUNT(*) FROM files WHERE state = 'reserved'"
        ).fetchone()[0]
        owners = conn.execute("SELECT DISTINCT pid, pid_start FROM pins").fetchall()
        conn.execute("COMMIT")
    finally:
        conn.close()
    out["processes"] = sum(1 for pid, start in owners if _procs.is_alive(pid, start))
    return {k: int(v) for k, v in out.items() if k in EMPTY}

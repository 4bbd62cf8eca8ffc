"""Cold-start reconciliation of the ledger with the files on disk."""

from __future__ import annotations

import logging
import pathlib
import sqlite3

from . import ledger, paths
from ._procs import is_alive
from .policy import rank_for

logger = logging.getLogger(__name__)


def sweep(conn: sqlite3.Connection, root: pathlib.Path) -> None:
    """Make the ledger match the directory ``root``: run when no other process has it open,
    or when the ledger was just (re)created.

    - ``*.tmp`` files whose owner process is dead (half-written downloads) are removed;
    - the pins of dead processes and their abandoned reservations are deleted;
    - cached files without a row are adopted as ready (URL unknown: NULL; created and last
      use: the file's mtime); a second file of the same key is removed;
    - ready rows without their file are deleted; those whose file has another size are
      deleted with the file;
    - ``total_bytes`` is recounted.
    """
    disk: dict[str, tuple[pathlib.Path, int, float]] = {}
    half_written = duplicates = 0
    for entry in paths.iter_entries(root):
        tmp = paths.parse_tmp(entry.name)
        if tmp is not None:
            if not is_alive(tmp[1], tmp[2]):
                half_written += paths.unlink(pathlib.Path(entry.path))
            continue
        key = paths.parse_file(entry.name)
        if key is None or pathlib.Path(entry.path).parent.name != key[:2]:
            continue  # not a file the cache wrote: leave it alone
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if key in disk:
            duplicates += paths.unlink(pathlib.Path(entry.path))
            continue
        disk[key] = (pathlib.Path(entry.path), st.st_size, st.st_mtime)

    with ledger.write(conn):
        reclaim_dead(conn, root)
        rows = conn.execute("SELECT key, size, state FROM files").fetchall()
        lost = resized = 0
        for key, size, state in rows:
            found = disk.pop(key, None)
            if state != ledger.READY:
                continue
            if found is None:
                conn.execute("DELETE FROM files WHERE key = ?", (key,))
                lost += 1
            elif found[1] != size:
                conn.execute("DELETE FROM files WHERE key = ?", (key,))
                paths.unlink(found[0])
                resized += 1
        # reclaim_dead removed the files of dead processes' reservations (whole or not): the
        # scan above saw them, so adopt only what is still there
        disk = {key: found for key, found in disk.items() if found[0].exists()}
        for key, (_, size, mtime) in disk.items():
            conn.execute(
                "INSERT INTO files VALUES (?, NULL, ?, ?, ?, ?, ?)",
                (key, size, rank_for(key), mtime, mtime, ledger.READY),
            )
        ledger.recount(conn)
    if half_written or duplicates or lost or resized or disk:
        logger.info(
            "cache %s: removed %d half-written and %d duplicate files, dropped %d rows without "
            "a file and %d of the wrong size, adopted %d files without a row",
            root,
            half_written,
            duplicates,
            lost,
            resized,
            len(disk),
        )


def reclaim_dead(conn: sqlite3.Connection, root: pathlib.Path) -> int:
    """Delete the pins of dead processes, then the reservations nobody pins any more (their
    owner died mid-download) and those owners' temporary files (inside a transaction).

    Returns:
        int: dead processes plus abandoned reservations found (0: nothing was freed).
    """
    dead = [
        (pid, start)
        for pid, start in conn.execute("SELECT DISTINCT pid, pid_start FROM pins").fetchall()
        if not is_alive(pid, start)
    ]
    conn.executemany("DELETE FROM pins WHERE pid = ? AND pid_start = ?", dead)
    orphans = conn.execute(
        f"SELECT key, url, size FROM files WHERE state = ? AND {ledger.UNPINNED}",
        (ledger.RESERVED,),
    ).fetchall()
    for key, url, size in orphans:
        ledger.remove(conn, root, key, url, size)  # the file too, if it was renamed into place
        remove_dead_tmp(root, key)
    if dead or orphans:
        logger.info(
            "cache %s: reclaimed the pins of %d dead processes and %d abandoned downloads",
            root,
            len(dead),
            len(orphans),
        )
    return len(dead) + len(orphans)


def remove_dead_tmp(root: pathlib.Path, key: str) -> int:
    """Unlink the temporary files of ``key`` whose owner process is dead; returns how many."""
    n = 0
    for tmp in paths.tmp_files(root, key):
        _, pid, start = paths.parse_tmp(tmp.name)
        if not is_alive(pid, start):
            n += paths.unlink(tmp)
    return n

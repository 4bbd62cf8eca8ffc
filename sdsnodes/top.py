"""``sds top CACHE_DIR``: a live view of a cache directory shared by running jobs.

Reads the directory's SQLite ledger read-only, never blocking a job (see
:func:`sdsnodes._ledger_view.read_ledger`): bytes used (against ``--max-bytes``: the budget is
each reader's setting, the ledger does not hold it), files ready and downloading, the files and
bytes pinned, the processes attached (live processes holding pins), the hit rate and evictions
since the directory was made, and downloads per second over the last interval.

Example:
    $ sds top ~/.cache/sdsnodes/my-cache --max-bytes 50GB
    $ sds top ~/.cache/sdsnodes/my-cache --once   # one frame, for scripts
"""

from __future__ import annotations

import argparse
import datetime
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from sdsnodes._ledger_view import read_ledger

CLEAR = "\x1b[H\x1b[2J"
"""ANSI: cursor home, clear screen (before each frame of the live view on a terminal)."""

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}  # fmt: skip


def parse_bytes(text: str) -> int:
    """``"50GB"``, ``"512MiB"``, ``"1e9"`` → bytes.

    Raises:
        ValueError: not a size.
    """
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _UNITS:
        raise ValueError(f"{text!r} is not a size: write e.g. 50GB, 512MiB or 1000000")
    return int(float(match.group(1)) * _UNITS[unit])


def human(n: float) -> str:
    """Bytes in decimal units: ``1.5 MB``."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return str(n)  # pragma: no cover


def frame(
    cache_dir: str,
    now: dict[str, Any],
    before: dict[str, Any] | None,
    interval_s: float,
    max_bytes: int | None,
) -> str:
    """One view of the directory: ``now`` and ``before`` are :func:`read_ledger` results
    ``interval_s`` seconds apart (``before`` None: no rates)."""
    when = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    lines = [f"sds top {cache_dir}    {when}"]
    used = f"{human(now['bytes'])}"
    if max_bytes:
        share = now["bytes"] / max_bytes
        filled = min(20, round(20 * share))
        used += (
            f" of {human(max_bytes)} budget ({share:.0%})  [{'#' * filled}{'.' * (20 - filled)}]"
        )
    else:
        used += " (budget: pass --max-bytes)"
    looked = now["hits"] + now["misses"]
    rate = f"{now['hits'] / looked:.1%}" if looked else "n/a"
    lines += [
        f"  used        {used}",
        f"  files       {now['files']} ready, {now['reserved_files']} downloading",
        f"  pinned      {now['pinned_files']} files, {human(now['pinned_bytes'])}",
        f"  processes   {now['processes']} attached (live, holding pins)",
        f"  hit rate    {rate} ({now['hits']} hits, {now['misses']} misses, since the directory was made)",
        f"  evictions   {now['evictions']}",
    ]
    if before is not None and interval_s > 0:
        files = (now["misses"] - before["misses"]) / interval_s
        speed = (now["bytes_fetched"] - before["bytes_fetched"]) / interval_s
        hits = (now["hits"] - before["hits"]) / interval_s
        lines.append(
            f"  downloads   {files:.1f} files/s, {human(speed)}/s; hits {hits:.1f}/s "
            f"(last {interval_s:.1f} s)"
        )
    return "\n".join(lines) + "\n"


def run(
    cache_dir: str,
    *,
    interval_s: float = 1.0,
    count: int | None = None,
    max_bytes: int | None = None,
    out: TextIO | None = None,
    sleep: Callable[[float], Any] = time.sleep,
) -> int:
    """Print ``count`` frames (None: until Ctrl-C), ``interval_s`` seconds apart; on a
    terminal each frame replaces the last. The first frame comes after one interval, so it
    has rates. ``out``: where (None: ``sys.stdout``).

    Returns:
        int: 0.

    Raises:
        ValueError: ``cache_dir`` is not a directory, or ``interval_s`` <= 0.
    """
    if not Path(cache_dir).is_dir():
        raise ValueError(f"{cache_dir} is not a cache directory")
    if not interval_s > 0:
        raise ValueError(f"{interval_s=} must be > 0 (seconds)")
    out = out if out is not None else sys.stdout
    before = read_ledger(cache_dir)
    shown = 0
    try:
        while count is None or shown < count:
            start = time.monotonic()
            sleep(interval_s)
            now = read_ledger(cache_dir)
            text = frame(cache_dir, now, before, time.monotonic() - start, max_bytes)
            out.write((CLEAR if out.isatty() and count != 1 else "") + text)
            out.flush()
            before = now
            shown += 1
    except KeyboardInterrupt:
        pass
    return 0


def add_top_command(sub: Any) -> None:
    """Add ``top`` to the ``sds`` subcommands."""
    top = sub.add_parser("top", help="a live view of a cache directory used by running jobs")
    top.add_argument("dir", help="the cache directory")
    top.add_argument("--once", action="store_true", help="print one frame and exit")
    top.add_argument("--count", type=int, default=None, help="frames to print, then exit")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between frames")
    top.add_argument("--max-bytes", type=parse_bytes, default=None, help="the budget, e.g. 50GB")
    top.set_defaults(func=_main)


def _main(args: argparse.Namespace) -> int:
    count = 1 if args.once else args.count
    return run(args.dir, interval_s=args.interval, count=count, max_bytes=args.max_bytes)

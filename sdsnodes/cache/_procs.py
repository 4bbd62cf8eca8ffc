"""Is a process (pid + start time) still alive? Used to reclaim what dead processes left.

The start time tells a live process from a later one that reuses its pid. It is read from
``/proc/<pid>/stat`` (Linux; clock ticks after boot) or, where there is no ``/proc`` (macOS,
Windows), from ``psutil.Process(pid).create_time()`` (in hundredths of a second since the
epoch). All processes of one machine read it the same way, so the values compare.
"""

from __future__ import annotations

import functools
import os

import psutil

HAS_PROC = os.path.exists("/proc/self/stat")


def _proc_start(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # Field 2 (comm) is in parentheses and may contain spaces; fields 3.. follow the last ')'.
    fields = data[data.rfind(b")") + 2 :].split()
    if len(fields) < 20 or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def _psutil_start(pid: int) -> int | None:
    try:
        process = psutil.Process(pid)
        if process.status() in (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD):
            return None
        return round(process.create_time() * 100)
    except psutil.NoSuchProcess:
        return None
    except psutil.Error:  # access denied: alive, start unknown
        return 0


def pid_start(pid: int) -> int | None:
    """The start time of ``pid``: field 22 of ``/proc/<pid>/stat`` (clock ticks after boot), or
    where there is no ``/proc``, psutil's create time in hundredths of a second.

    Returns:
        int | None: the start time (0: alive, start unknown); None if the process does not
        exist or is a zombie.
    """
    return _proc_start(pid) if HAS_PROC else _psutil_start(pid)


@functools.lru_cache(maxsize=1)
def _own(pid: int) -> int:
    return pid_start(pid) or 0


def own_start() -> int:
    """This process's start time (as :func:`pid_start`; 0 where unknown)."""
    return _own(os.getpid())


def is_alive(pid: int, start: int) -> bool:
    """Whether process ``pid`` that started at ``start`` (as :func:`pid_start`) still runs.

    A pid that exists but started at another time was reused: the recorded process is dead.
    Zombies count as dead. A pid of another user counts as alive. ``start == 0`` (unknown)
    trusts the pid alone.
    """
    if pid <= 0:
        return False
    if not psutil.pid_exists(pid):
        return False
    now = pid_start(pid)
    if now is None:
        return False
    return start == 0 or now == 0 or now == start

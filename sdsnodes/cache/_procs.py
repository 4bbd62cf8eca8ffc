"""Is a process (pid + start time) still alive? Used to reclaim what dead processes left."""

from __future__ import annotations

import functools
import os


def pid_start(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks after boot (field 22 of ``/proc/<pid>/stat``).

    Returns:
        int | None: the start time; None if the process does not exist, is a zombie, or
        ``/proc`` is unreadable.
    """
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


@functools.lru_cache(maxsize=1)
def _own(pid: int) -> int:
    return pid_start(pid) or 0


def own_start() -> int:
    """This process's start time (clock ticks; 0 where ``/proc`` is unavailable)."""
    return _own(os.getpid())


def is_alive(pid: int, start: int) -> bool:
    """Whether process ``pid`` that started at ``start`` (clock ticks) still runs.

    A pid that exists but started at another time was reused: the recorded process is dead.
    Zombies count as dead. A pid of another user counts as alive. ``start == 0`` (unknown)
    trusts the pid alone.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    now = pid_start(pid)
    if now is None:
        return not os.path.exists("/proc/self/stat")  # no /proc: trust kill(0)
    return start == 0 or now == start

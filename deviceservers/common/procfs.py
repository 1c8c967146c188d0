"""Is a process still alive? From ``/proc`` (Linux), without psutil.

A pid alone does not identify a process: pids are recycled, and a container restarts its
processes with the same small pids. A pid together with its *start time* (field 22 of
``/proc/<pid>/stat``, clock ticks since boot) does. A *zombie* (killed, not yet reaped by its
parent) still has its ``/proc`` entry and start time but runs no code and holds no file: it is
dead. Whoever asks "is the writer of this file / the owner of this lock still there" (the
DataWriter's crash recovery, the lab supervisor's state file) asks :func:`alive`.
"""

from __future__ import annotations

import os


def start_time(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot; None when it does not exist, cannot be
    read, or is a zombie (it has exited and only waits to be reaped)."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read().decode("ascii", "replace")
        # the command name (field 2, in parentheses) may contain spaces and ")": split after the last ")"
        fields = stat.rpartition(")")[2].split()
        if fields[0] == "Z":
            return None
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def own_start_time() -> int | None:
    """This process's start time (what to store next to ``os.getpid()``)."""
    return start_time(os.getpid())


def alive(pid: int | None, started: int | str | None = None) -> bool:
    """``pid`` is a running process (not a zombie) and, if ``started`` is given, the very one
    that started then, not a later process that got the same pid. ``started`` may be the
    decimal text an older record stored; text that is no number never matches."""
    if not pid:
        return False
    st = start_time(int(pid))
    if st is None:
        return False
    if started is None:
        return True
    try:
        return st == int(started)
    except (TypeError, ValueError):
        return False

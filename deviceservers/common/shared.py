"""One object per key in a process, shared by reference count: one serial port, one bus, one
controller, however many devices of the server use it.

A serial port opens once, so the devices of a server that share an RS-232 controller (the
ESP300's axes) or a bus (ELL14 mounts on one ELLB) share one link, one bus scheduler and one
controller state. :class:`Shared` holds them: the first ``acquire`` of a key creates the object,
each later one joins it (``join`` checks that the newcomer is compatible and registers what it
brings, under the registry's lock so that nobody sees the object half joined), and the last
``release`` tells the caller to close it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Shared(Generic[T]):
    """Reference-counted ``key -> object`` registry of one process."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[T, int]] = {}
        self._lock = threading.Lock()

    def acquire(self, key: str, create: Callable[[], T], join: Callable[[T], None] | None = None) -> tuple[T, bool]:
        """The object of ``key`` and whether this call created it.

        ``join(obj)`` runs for the creator and for every later user before the count is taken;
        an exception from it refuses this user and leaves the object as it was."""
        with self._lock:
            entry = self._entries.get(key)
            obj, count = entry if entry is not None else (create(), 0)
            if join is not None:
                join(obj)
            self._entries[key] = (obj, count + 1)
            return obj, entry is None

    def release(self, key: str, obj: T) -> bool:
        """One user fewer; True when that was the last one (or ``obj`` is not the one registered
        under ``key``): the caller then closes ``obj``."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] is not obj:
                return True
            if entry[1] > 1:
                self._entries[key] = (obj, entry[1] - 1)
                return False
            del self._entries[key]
            return True

    def users(self, key: str) -> int:
        """How many users hold ``key`` now (0 when nobody does)."""
        with self._lock:
            entry = self._entries.get(key)
            return entry[1] if entry is not None else 0

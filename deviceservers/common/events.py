"""Pushing Tango events without ever blocking the thread that produced the value.

cppTango takes the device's lock to push an event from a user thread. If the link or poll
thread pushed directly, a command that holds the device lock while it waits for the link
(``Init``, ``Off`` confirming the shutter) and the link thread waiting to push would stall
each other until the client time-out. So components only *queue* events here, and one thread
per device pushes them, in order. If a client holds the device for long, events wait; if the
queue overflows (a pathological client), the oldest are dropped and counted, never silently.

The same thread runs the device's *watches* (:meth:`EventPusher.watch`): cheap checks of values
held in memory (the component's health counters) that have no change hook of their own; a watch
pushes an event only when the value changed, so clients subscribe instead of polling the device.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import tango

MAX_PENDING = 10000

Push = Callable[[], None]


class EventPusher:
    """A FIFO of push operations run by one daemon thread."""

    def __init__(self, name: str, log: logging.Logger) -> None:
        self._log = log
        self._queue: deque[Push] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.dropped = 0
        self._watches: list[Push] = []
        self._watch_period_s: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"events {name}", daemon=True)
        self._thread.start()

    def submit(self, push: Push) -> None:
        with self._cond:
            if self._closed:
                return
            if len(self._queue) >= MAX_PENDING:
                self._queue.popleft()
                self.dropped += 1
                if self.dropped in (1, 10, 100) or self.dropped % 1000 == 0:
                    self._log.warning("%d events dropped: a client holds the device too long", self.dropped)
            self._queue.append(push)
            self._cond.notify()

    def watch(self, check: Push, period_s: float) -> None:
        """Run ``check`` in this thread every ``period_s`` (the shortest period asked wins);
        ``check`` pushes events itself when what it watches changed."""
        with self._cond:
            self._watches.append(check)
            if self._watch_period_s is None or period_s < self._watch_period_s:
                self._watch_period_s = period_s
            self._cond.notify()

    def close(self) -> None:
        """Stop after the push in progress; pending pushes are discarded (the device is going)."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify()

    def flush(self, timeout: float = 2.0) -> bool:
        """Wait until everything queued so far was pushed (tests, shutdown)."""
        done = threading.Event()
        self.submit(done.set)
        return done.wait(timeout)

    def _run(self) -> None:
        # cppTango needs an omniORB identity for a thread that pushes events; a plain Python
        # thread otherwise gets a dummy one per call (pytango's EnsureOmniThread documentation)
        with tango.EnsureOmniThread():
            self._push_loop()

    def _push_loop(self) -> None:
        next_watch = time.monotonic()
        while True:
            with self._cond:
                if not self._queue and not self._closed:
                    period = self._watch_period_s
                    self._cond.wait(None if period is None else max(0.0, next_watch - time.monotonic()))
                if self._closed:
                    return
                push = self._queue.popleft() if self._queue else None
                watches: list[Push] = []
                if self._watches and time.monotonic() >= next_watch:
                    watches = list(self._watches)
                    next_watch = time.monotonic() + (self._watch_period_s or 0.0)
            for step in ([push] if push is not None else []) + watches:
                try:
                    step()
                except Exception as exc:  # noqa: BLE001 - an event that cannot be pushed is logged, not fatal
                    self._log.debug("event not pushed: %s", exc)

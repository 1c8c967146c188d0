"""Waiting for conditions in tests, never for fixed times.

``wait_until`` re-checks a condition until it holds or a deadline passes, and fails with the
last value seen, so a failure says what the system was doing instead of "timed out" (the
product's one helper, :func:`tango_db.waiting.wait_until`, as a test assertion).
``EventCollector`` subscribes to Tango events and lets a test wait for one that matches.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import tango

from tango_db.waiting import WaitTimeout
from tango_db.waiting import wait_until as _wait_until


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "") -> Any:
    """Return the first truthy value of ``condition()``; raise AssertionError after ``timeout``.
    The product's :func:`tango_db.waiting.wait_until`, with every exception of ``condition``
    counted as "not yet" (a server still starting) and a time-out as a test failure."""
    try:
        return _wait_until(condition, timeout, interval, what, retry_on=(Exception,))
    except WaitTimeout as exc:
        raise AssertionError(str(exc)) from exc.error


def wait_state(proxy: tango.DeviceProxy, state: tango.DevState, timeout: float = 10.0) -> None:
    wait_until(lambda: proxy.State() == state, timeout, what=f"{proxy.dev_name()} to be {state} "
               f"(is {_safe(proxy.State)}: {_safe(proxy.Status)})")


def _safe(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001
        return exc


class EventCollector:
    """Collects change events of one attribute; use as a context manager."""

    def __init__(self, proxy: tango.DeviceProxy, attribute: str, event_type: tango.EventType = tango.EventType.CHANGE_EVENT):
        self.proxy = proxy
        self.attribute = attribute
        self.event_type = event_type
        self.events: list[tango.EventData] = []
        self._cond = threading.Condition()
        self._id: int | None = None

    def __enter__(self) -> EventCollector:
        self._id = self.proxy.subscribe_event(self.attribute, self.event_type, self._push)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._id is not None:
            try:
                self.proxy.unsubscribe_event(self._id)
            except tango.DevFailed:
                pass

    def _push(self, event: tango.EventData) -> None:
        with self._cond:
            self.events.append(event)
            self._cond.notify_all()

    @property
    def values(self) -> list[Any]:
        with self._cond:
            return [e.attr_value.value for e in self.events if not e.err and e.attr_value is not None]

    @property
    def qualities(self) -> list[tango.AttrQuality]:
        with self._cond:
            return [e.attr_value.quality for e in self.events if not e.err and e.attr_value is not None]

    def wait_for(self, predicate: Callable[[Any], bool], timeout: float = 10.0) -> Any:
        """Wait for an event whose value satisfies ``predicate``; return that value."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for e in self.events[seen:]:
                    if not e.err and e.attr_value is not None and predicate(e.attr_value.value):
                        return e.attr_value.value
                seen = len(self.events)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {self.attribute} event matched within {timeout} s; got {self.values!r}")
                self._cond.wait(remaining)

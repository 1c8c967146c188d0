"""Waiting for a condition that has no event to wait on: one helper for the product and the tests.

The launcher's demo and the experiment wait for device states that Tango clients can only poll
(a proxy's State, a flag): :func:`wait_until` re-checks the condition at a fixed interval until it
holds or a deadline passes, and its :class:`WaitTimeout` says what was awaited and the last value
and error seen, so a failure tells what the system was doing instead of "timed out".
``tests/waiting.py`` re-exports it for the tests (raising AssertionError there).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


class WaitTimeout(TimeoutError):
    """The condition did not hold in time; ``last`` and ``error`` are what it gave last."""

    def __init__(self, message: str, last: Any = None, error: BaseException | None = None) -> None:
        super().__init__(message)
        self.last = last
        self.error = error


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02, what: str = "",
               retry_on: tuple[type[BaseException], ...] = ()) -> Any:
    """Return the first truthy value of ``condition()``; raise :class:`WaitTimeout` after ``timeout`` s.

    An exception of a type in ``retry_on`` (a device restarting, DevFailed) counts as "not yet";
    any other exception ends the wait at once (a device in FAULT must not be waited out).
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    error: BaseException | None = None
    while True:
        try:
            last = condition()
            error = None
            if last:
                return last
        except retry_on as exc:
            error = exc
        if time.monotonic() >= deadline:
            raise WaitTimeout(f"waited {timeout:g} s for {what or condition}: last value {last!r}, "
                              f"last error {error!r}", last, error)
        time.sleep(interval)

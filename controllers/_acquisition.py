"""What the lab's acquisition controllers share: a Tango error in one line, and one window of one
axis acquired in its own thread.

The Pool skips this file when it looks for controllers (its name does not start with a letter);
the controllers import it as ``tangodaq_controllers._acquisition``.
"""

from __future__ import annotations

import threading
import time
import weakref
from abc import ABC, abstractmethod

import tango


def describe(exc: tango.DevFailed) -> str:
    """The first line of a DevFailed's description: what a person reads in spock and the GUI."""
    return exc.args[0].desc.strip().splitlines()[0] if exc.args else str(exc)


class WindowThread(ABC):
    """One acquisition window of one axis, run in its own thread: ``StartOne`` returns at once, and
    ``StateOne``/``ReadOne`` look at ``running()``, ``finished`` and ``error``. A failure is kept in
    ``error`` (with the device's name) instead of escaping the thread."""

    def __init__(self, device: str, integ_time: float, *, what: str, context: str = "") -> None:
        self.device = device
        self.integ_time = integ_time
        self.error = ""
        self.t0 = time.time()
        self.finished: float | None = None
        self._context = context  # put before a Tango error's description, e.g. "cannot read Position: "
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"{what} {device}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()

    @abstractmethod
    def acquire(self) -> None:
        """The window's work, in the thread (``self._stop`` is set when the Pool stops it)."""

    def _run(self) -> None:
        with tango.EnsureOmniThread():
            try:
                self.acquire()
            except tango.DevFailed as exc:  # reported through StateOne/ReadOne
                self.error = f"{self.device}: {self._context}{describe(exc)}"
            except Exception as exc:  # noqa: BLE001 - reported through StateOne/ReadOne
                self.error = f"{self.device}: {exc}"
            finally:
                self.finished = time.time()


class LatencyTracker:
    """A channel's ``latency_time``: how long after its window the last windows' values reached
    the Pool (read once each ended: the window's own tail and the Pool's state loop together), the
    longest of the last ``kept``, plus ``margin_s``; ``default_s`` before any was measured.
    Continuous scans space their triggers by at least this (MeasurementGroup LatencyTime), so a
    trigger never comes while the previous window is still being read."""

    def __init__(self, default_s: float, margin_s: float = 0.03, kept: int = 20) -> None:
        self.default_s, self.margin_s, self.kept = default_s, margin_s, kept
        self._tails: list[float] = []
        self._seen: weakref.WeakSet[WindowThread] = weakref.WeakSet()

    def note(self, window: WindowThread | None) -> None:
        """Count ``window``'s tail once, when it has ended."""
        if window is None or window.finished is None or window in self._seen:
            return
        self._seen.add(window)
        self.note_tail(time.time() - (window.t0 + window.integ_time))

    def note_tail(self, tail_s: float) -> None:
        """Count one window whose value reached the Pool ``tail_s`` after the window's end."""
        self._tails.append(max(0.0, tail_s))
        del self._tails[:-self.kept]

    @property
    def measured(self) -> bool:
        return bool(self._tails)

    def latency_s(self) -> float:
        return (max(self._tails) if self._tails else self.default_s) + self.margin_s

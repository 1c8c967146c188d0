"""The acquisition window and latency bookkeeping shared by the lab's Sardana channels."""

from __future__ import annotations

import tango

from tangodaq_controllers._acquisition import LatencyTracker, WindowThread
from tests.waiting import wait_until


class Fails(WindowThread):
    def __init__(self, exc: Exception) -> None:
        super().__init__("lab/thing/1", 0.01, what="test", context="cannot read Position: ")
        self.exc = exc

    def acquire(self) -> None:
        raise self.exc


class Waits(WindowThread):
    def acquire(self) -> None:
        self._stop.wait(10)


def test_a_failing_window_keeps_its_error_with_the_device_and_ends():
    window = Fails(tango.DevFailed(tango.DevError()))
    window.exc.args[0].desc = "timeout\nsecond line"
    window.start()
    wait_until(lambda: window.finished is not None, 5)
    assert window.error == "lab/thing/1: cannot read Position: timeout"
    other = Fails(RuntimeError("no valid value"))
    other.start()
    wait_until(lambda: other.finished is not None and not other.running(), 5)  # finished is set just before the end
    assert other.error == "lab/thing/1: no valid value"


def test_a_stopped_window_ends_and_its_tail_is_counted_once():
    tracker = LatencyTracker(default_s=0.05, margin_s=0.03, kept=2)
    assert tracker.latency_s() == 0.08  # nothing measured yet
    window = Waits("lab/thing/1", 0.0, what="test")
    tracker.note(window)  # still running: not counted
    window.start()
    assert window.running()
    window.stop()
    wait_until(lambda: window.finished is not None, 5)
    tracker.note(window)
    first = tracker.latency_s()
    assert first >= 0.03
    tracker.note(window)  # the same window again: no second sample
    assert len(tracker._tails) == 1

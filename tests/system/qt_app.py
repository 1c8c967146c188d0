"""The one Qt application of a test process (offscreen), and waiting with its event loop turning.

A TaurusApplication, not a plain one: the application is one per process, and the GUI tests
that run after another GUI module in the same process need Taurus' (its Sardana extensions are
registered as it starts; a plain QApplication left the MacroServer without them).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

from taurus.external.qt import Qt  # noqa: E402 - needs QT_QPA_PLATFORM set first

from tests.waiting import wait_until  # noqa: E402

_APP: list[Qt.QApplication] = []  # a reference, or Python collects the application at once


def app_instance() -> Qt.QApplication:
    from taurus.qt.qtgui.application import TaurusApplication

    app = Qt.QApplication.instance()
    if app is None:
        app = TaurusApplication(["tangodaq-tests"], cmd_line_parser=None, app_name="tangodaq-gui-test")
        _APP.append(app)
    return app


def wait_gui(condition: Callable[[], Any], timeout: float = 10.0, what: str = "",
             last: Callable[[], Any] | None = None, interval: float = 0.02) -> Any:
    """``wait_until`` that keeps the Qt event loop turning (events, timers, repaints);
    ``last()``, if given, says what was seen when it times out."""
    app = app_instance()

    def check():
        app.processEvents()
        return condition()

    try:
        return wait_until(check, timeout=timeout, interval=interval, what=what)
    except AssertionError as exc:
        if last is None:
            raise
        raise AssertionError(f"{exc}; last seen {last()!r}") from None

"""The lab window (tabs: Lab, Laser, Motion, Power meter, Camera) and the ``main`` entry point.

The devices come from the lab's roles (``taurus_gui.layout``), read from the database the window
attaches to; a tab whose role the lab does not have is left out.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from taurus.external.qt import Qt

from taurus_gui.layout import LabLayout, layout_from_roles, read_roles, split_tango_host
from taurus_gui.panels import (
    CameraPanel,
    LabPanel,
    LaserPanel,
    MotionPanel,
    PowerMeterPanel,
)
from taurus_gui.widgets import Messages, tango_host_from_env

log = logging.getLogger(__name__)


def lab_devices(layout: LabLayout) -> dict[str, str]:
    """Every device the overview lists (device -> description), from the lab's roles."""
    return dict(layout.overview)


class LabWindow(Qt.QMainWindow):
    """The lab's main window, attached to the lab whose database is ``tango_host``."""

    def __init__(self, tango_host: str | None = None, roles: dict[str, str] | None = None,
                 classes: dict[str, str] | None = None) -> None:
        """``roles`` (role -> device) and ``classes`` (device -> Tango class) default to what the
        database at ``tango_host`` holds (the ``tangodaq``/``Roles`` property)."""
        super().__init__()
        self.tango_host = tango_host or tango_host_from_env()
        if roles is None:
            roles, found = read_roles(self.tango_host)
            classes = found if classes is None else classes
        self.layout_info = layout_from_roles(roles, classes)
        lay = self.layout_info
        self.setWindowTitle(f"tangodaq lab - {self.tango_host}")
        self.messages = Messages()
        self.history: list[tuple[float, str, bool]] = []

        self.lab = LabPanel(self.tango_host, lab_devices(lay))
        self.laser = LaserPanel(self.tango_host, self.messages, device=lay.laser) if lay.laser else None
        self.motion = (MotionPanel(self.tango_host, self.messages, axes=lay.axes, mounts=lay.mounts)
                       if lay.axes or lay.mounts else None)
        self.power_meter = (PowerMeterPanel(self.tango_host, self.messages, device=lay.meter)
                            if lay.meter else None)
        self.camera = CameraPanel(self.tango_host, self.messages, device=lay.camera) if lay.camera else None
        candidates = {"Lab": self.lab, "Laser": self.laser, "Motion": self.motion,
                      "Power meter": self.power_meter, "Camera": self.camera}
        self.panels = {title: panel for title, panel in candidates.items() if panel is not None}
        missing = [title for title, panel in candidates.items() if panel is None]
        if missing:
            log.warning("the lab at %s has no role for the %s tab(s): left out (roles: %s)",
                        self.tango_host, ", ".join(missing), ", ".join(sorted(roles)))

        self.tabs = Qt.QTabWidget()
        for title, panel in self.panels.items():
            self.tabs.addTab(panel, title)
        self.setCentralWidget(self.tabs)

        self.message_line = Qt.QLabel()
        self.statusBar().addWidget(self.message_line, 1)
        self.statusBar().addPermanentWidget(Qt.QLabel(f"TANGO_HOST {self.tango_host}"))
        self.messages.message.connect(self.show_message)
        self.resize(1100, 760)

    def show_message(self, text: str, is_error: bool) -> None:
        """Show the latest command outcome (errors in red) and keep a history for tooltips."""
        self.history.append((time.time(), text, is_error))
        del self.history[:-50]
        self.message_line.setStyleSheet("color: #b00000; font-weight: bold" if is_error else "")
        self.message_line.setText(time.strftime("%H:%M:%S ") + text)
        self.message_line.setToolTip("\n".join(
            time.strftime("%H:%M:%S ", time.localtime(t)) + m for t, m, _ in self.history[-15:]))

    def shutdown(self) -> None:
        """Detach every Taurus widget from its model, so no listener or poller is left."""
        if self.camera is not None:
            self.camera.close_feed()
        for widget in self.findChildren(Qt.QWidget):
            set_model = getattr(widget, "setModel", None)
            if set_model is not None and hasattr(widget, "getModelName"):
                try:
                    set_model(None)
                except Exception:  # noqa: BLE001 - best effort while closing
                    pass
        if self.power_meter is not None:
            for trend_set in self.power_meter.trend.getTrendSets():
                trend_set.setModel(None)
        release_idle_pollers()

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        self.shutdown()
        super().closeEvent(event)


def release_idle_pollers() -> None:
    """Finish Taurus' client-side polling threads that no longer poll anything.

    Taurus keeps one polling thread per period for the life of the process, even when every
    widget using it is gone; a closed window should not leave them behind (a new one is made
    on demand if another window needs polling later)."""
    import taurus

    factory = taurus.Factory("tango")
    for period, timer in list(factory.polling_timers.items()):
        if timer.getAttributeCount() == 0:
            timer.finish()
            factory.polling_timers.pop(period, None)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The GUI's options: ``[--tango-host HOST:PORT] [--tab TAB]`` (a leading ``--``, as
    ``tangodaq gui -- ...`` passes it, is ignored). A bad HOST:PORT exits with a usage error."""
    parser = argparse.ArgumentParser(
        prog="tangodaq gui",
        description="The lab's Taurus GUI: Lab overview, Laser, Motion, Power meter and Camera "
                    "panels for the devices the lab's roles name, attached to the running lab "
                    "through its Tango database.")
    parser.add_argument("--tango-host", default=None, metavar="HOST:PORT",
                        help="the lab's database (default: $TANGO_HOST, else 127.0.0.1:10000)")
    parser.add_argument("--tab", default="Lab", help="tab to show first: Lab, Laser, Motion, "
                        "'Power meter' or Camera")
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    parsed = parser.parse_args(args)
    if parsed.tango_host is not None:
        try:
            host, port = split_tango_host(parsed.tango_host)
        except ValueError as exc:
            parser.error(f"--tango-host: {exc}")
        parsed.tango_host = f"{host}:{port}"
    return parsed


def main(argv: list[str] | None = None) -> int:
    """Open the lab window (``python -m taurus_gui [--tango-host HOST:PORT] [--tab TAB]``)."""
    args = parse_args(argv)

    from taurus.qt.qtgui.application import TaurusApplication

    app = TaurusApplication.instance() or TaurusApplication(
        [sys.argv[0]], cmd_line_parser=None, app_name="tangodaq-gui", org_name="tangodaq")
    window = LabWindow(args.tango_host)
    if args.tab in window.panels:
        window.tabs.setCurrentWidget(window.panels[args.tab])
    window.show()
    return app.exec_()

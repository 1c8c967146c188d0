"""The lab window (tabs: Lab, Laser, Motion, Power meter, Camera) and the ``main`` entry point."""

from __future__ import annotations

import argparse
import sys
import time

from taurus.external.qt import Qt

from taurus_gui.panels import (
    CAMERA,
    DATA_WRITER,
    LASER,
    POWER_METER,
    CameraPanel,
    LabPanel,
    LaserPanel,
    MotionPanel,
    PowerMeterPanel,
)
from taurus_gui.widgets import Messages, tango_host_from_env

LAB_DEVICES = {
    LASER: "Mai Tai laser",
    "lab/esp300/x": "ESP300 stage, axis X",
    "lab/esp300/y": "ESP300 stage, axis Y",
    "lab/esp300/z": "ESP300 stage, axis Z",
    "lab/ell14/hwp": "ELL14 half-wave plate",
    "lab/ell14/pol": "ELL14 polariser",
    "lab/ell14/qwp": "ELL14 quarter-wave plate",
    POWER_METER: "Newport 1830-C power meter",
    CAMERA: "Prime BSI camera",
    DATA_WRITER: "DataWriter (HDF5 recording)",
    "pool/lab/1": "Sardana Pool",
    "macroserver/lab/1": "Sardana MacroServer",
}


class LabWindow(Qt.QMainWindow):
    """The lab's main window, attached to the lab whose database is ``tango_host``."""

    def __init__(self, tango_host: str | None = None) -> None:
        super().__init__()
        self.tango_host = tango_host or tango_host_from_env()
        self.setWindowTitle(f"tangodaq lab - {self.tango_host}")
        self.messages = Messages()
        self.history: list[tuple[float, str, bool]] = []

        self.lab = LabPanel(self.tango_host, LAB_DEVICES)
        self.laser = LaserPanel(self.tango_host, self.messages)
        self.motion = MotionPanel(self.tango_host, self.messages)
        self.power_meter = PowerMeterPanel(self.tango_host, self.messages)
        self.camera = CameraPanel(self.tango_host, self.messages)
        self.panels = {"Lab": self.lab, "Laser": self.laser, "Motion": self.motion,
                       "Power meter": self.power_meter, "Camera": self.camera}

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
        self.camera.close_feed()
        for widget in self.findChildren(Qt.QWidget):
            set_model = getattr(widget, "setModel", None)
            if set_model is not None and hasattr(widget, "getModelName"):
                try:
                    set_model(None)
                except Exception:  # noqa: BLE001 - best effort while closing
                    pass
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


def main(argv: list[str] | None = None) -> int:
    """Open the lab window (``python -m taurus_gui [--tango-host HOST:PORT]``)."""
    parser = argparse.ArgumentParser(
        prog="tangodaq gui",
        description="The lab's Taurus GUI: Lab overview, Laser, Motion, Power meter and Camera "
                    "panels, attached to the running lab through its Tango database.")
    parser.add_argument("--tango-host", default=None,
                        help="the lab's database (default: $TANGO_HOST, else 127.0.0.1:10000)")
    parser.add_argument("--tab", default="Lab", help="tab to show first: Lab, Laser, Motion, "
                        "'Power meter' or Camera")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)

    from taurus.qt.qtgui.application import TaurusApplication

    app = TaurusApplication.instance() or TaurusApplication(
        [sys.argv[0]], cmd_line_parser=None, app_name="tangodaq-gui", org_name="tangodaq")
    window = LabWindow(args.tango_host)
    if args.tab in window.panels:
        window.tabs.setCurrentWidget(window.panels[args.tab])
    window.show()
    return app.exec_()

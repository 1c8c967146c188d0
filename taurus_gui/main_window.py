"""``LabGui`` (the lab's taurusgui) and the ``main`` entry point behind ``tangodaq gui``.

:class:`LabGui` is a ``TaurusGui`` loaded with this package's configuration (``taurus_gui``:
panels generated from the lab's roles, Sardana's macro panels and live scan plot) for the lab
at ``tango_host``. It adds what a control room needs around Taurus' own window: the lab's
database in the title, the user's layout saved at close without a modal question, and the
command outcomes of every panel on the status bar.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from taurus.external.qt import Qt
from taurus.qt.qtgui.taurusgui import TaurusGui

from taurus_gui.layout import split_tango_host
from taurus_gui.widgets import message_hub, tango_host_from_env

log = logging.getLogger(__name__)

PACKAGE_DIR = str(Path(__file__).resolve().parent)


def use_tango_host(tango_host: str) -> str:
    """Make ``tango_host`` the default database of this process (Tango clients, Taurus and the
    configuration), so names without a host, as Sardana's widgets use them, resolve there."""
    host, port = split_tango_host(tango_host)
    tango_host = f"{host}:{port}"
    os.environ["TANGO_HOST"] = tango_host
    import taurus

    taurus.Factory("tango").set_default_tango_host(tango_host)
    return tango_host


def enable_json_recorder(door_name: str) -> None:
    """Sardana's live scan plot is fed by the Door's JSON recorder: turn it on (as Sardana's own
    plot manager offers to, with a modal question this GUI must not open) where it is not set."""
    import taurus

    try:
        door = taurus.Device(door_name)
        if "JsonRecorder" not in door.getEnvironment():
            door.putEnvironment("JsonRecorder", True)
            log.info("JsonRecorder enabled on %s for the live scan plot", door_name)
    except Exception as exc:  # noqa: BLE001 - Sardana down: the plot says so when a scan starts
        log.warning("could not check JsonRecorder on %s: %s", door_name, exc)


class LabGui(TaurusGui):
    """The lab's taurusgui for the database at ``tango_host`` (default: ``TANGO_HOST``).

    ``settings``: the .ini file keeping the user's perspectives and layout (default: Taurus'
    per-user file for the application)."""

    SAVE_SETTINGS_ON_CLOSE = True  # keep the operator's layout; never a modal question at close

    def __init__(self, tango_host: str | None = None, settings: str | None = None,
                 parent: Qt.QWidget | None = None) -> None:
        started = time.monotonic()
        self.tango_host = use_tango_host(tango_host or tango_host_from_env())
        import taurus_gui

        taurus_gui.reset_configuration()
        conf = taurus_gui.configuration()
        if conf.get("DOOR_NAME"):
            enable_json_recorder(conf["DOOR_NAME"])
        super().__init__(parent, confname=PACKAGE_DIR, settingsname=settings)
        self.layout_info = conf["TANGODAQ_LAYOUT"]
        self.setWindowTitle(f"tangodaq lab - {self.tango_host}")
        if not self.getQSettings().value("MainWindow/State"):
            self.arrange_default()
        self.history: list[tuple[float, str, bool]] = []
        message_hub().message.connect(self._on_message)
        #: the status bar's recent messages (scan number, point and file of the running scan...)
        self.short_messages: list[str] = []
        Qt.QApplication.instance().SDM.connectReader("shortMessage", self._on_short_message)
        self.startup_s = time.monotonic() - started
        log.info("GUI for %s built in %.2f s (%d panels)", self.tango_host, self.startup_s,
                 len(self.getPanelNames()))

    #: the first layout (before the user saves one): the instruments in tabs on the left, the
    #: overview on top; Sardana's macro panels on the right, the scan plot below them
    LEFT = ("Lab overview", "Laser", "Motion", "Power meter", "Camera")
    RIGHT = ("Macros", "Sequences", "Experiment Config", "MacroDescription")
    BOTTOM_RIGHT = ("Scan plot", "DoorOutput", "DoorResult", "Manual")

    def arrange_default(self) -> None:
        """Lay the panels out for a first start: instruments left (overview in front), Sardana's
        macro executor right (Macros in front) with the live scan plot and door output below."""
        names = set(self.getPanelNames())
        groups = [([n for n in self.LEFT if n in names] + sorted(names - set(self.LEFT) - set(self.RIGHT)
                                                               - set(self.BOTTOM_RIGHT)),
                   Qt.Qt.LeftDockWidgetArea),
                  ([n for n in self.RIGHT if n in names], Qt.Qt.RightDockWidgetArea),
                  ([n for n in self.BOTTOM_RIGHT if n in names], Qt.Qt.RightDockWidgetArea)]
        groups = [(members, area) for members, area in groups if members]
        firsts = [self.getPanel(members[0]) for members, _ in groups]
        for first, (_, area) in zip(firsts, groups, strict=True):
            first.setFloating(False)
            self.addDockWidget(area, first)
        if len(firsts) == 3:
            self.splitDockWidget(firsts[1], firsts[2], Qt.Qt.Vertical)
        for first, (members, _) in zip(firsts, groups, strict=True):
            for name in members[1:]:
                self.tabifyDockWidget(first, self.getPanel(name))
        for first in firsts:
            first.show()
            first.raise_()

    def panel_widget(self, name: str) -> Qt.QWidget:
        """The widget of panel ``name`` (KeyError with the panel names if there is none)."""
        panel = self.getPanel(name)
        if panel is None:
            raise KeyError(f"no panel {name!r} (panels: {', '.join(sorted(self.getPanelNames()))})")
        return panel.widget()

    def show_panel(self, name: str) -> Qt.QWidget:
        """Bring panel ``name`` to the front (as clicking its tab or its Panels menu entry)."""
        panel = self.getPanel(name)
        if panel is None:
            raise KeyError(f"no panel {name!r} (panels: {', '.join(sorted(self.getPanelNames()))})")
        panel.show()
        panel.raise_()
        return panel.widget()

    def _on_message(self, text: str, is_error: bool) -> None:
        """Keep a history of the command outcomes (the overview forwards them to the status bar)."""
        self.history.append((time.time(), text, is_error))
        del self.history[:-50]

    def _on_short_message(self, text: str) -> None:
        self.short_messages.append(str(text))
        del self.short_messages[:-100]

    def closeEvent(self, event) -> None:  # noqa: N802 - Qt's name
        super().closeEvent(event)
        if event.isAccepted():
            release_idle_pollers()


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
    """The GUI's options: ``[--tango-host HOST:PORT] [--panel NAME] [--settings FILE]`` (a
    leading ``--``, as ``tangodaq gui -- ...`` passes it, is ignored). A bad HOST:PORT exits
    with a usage error."""
    parser = argparse.ArgumentParser(
        prog="tangodaq gui",
        description="The lab's taurusgui: Lab overview, Laser, Motion, Power meter and Camera "
                    "panels for the devices the lab's roles name, and Sardana's macro executor, "
                    "sequencer, experiment configuration and live scan plot, attached to the "
                    "running lab through its Tango database.")
    parser.add_argument("--tango-host", default=None, metavar="HOST:PORT",
                        help="the lab's database (default: $TANGO_HOST, else 127.0.0.1:10000)")
    parser.add_argument("--panel", "--tab", dest="panel", default=None,
                        help="panel to show first, e.g. 'Lab overview', Laser, Motion, "
                        "'Power meter', Camera, Macros")
    parser.add_argument("--settings", default=None, metavar="FILE.ini",
                        help="file keeping the layout and perspectives (default: Taurus' per-user file)")
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
    """Open the lab's GUI (``python -m taurus_gui [--tango-host HOST:PORT] [--panel NAME]``)."""
    args = parse_args(argv)
    if args.tango_host:
        os.environ["TANGO_HOST"] = args.tango_host  # before Taurus makes its Tango factory

    from taurus.qt.qtgui.application import TaurusApplication

    app = TaurusApplication.instance() or TaurusApplication(
        [sys.argv[0]], cmd_line_parser=None, app_name="tangodaq-gui", org_name="tangodaq")
    gui = LabGui(args.tango_host, settings=args.settings)
    if args.panel:
        try:
            gui.show_panel(args.panel)
        except KeyError as exc:
            log.warning("%s", exc.args[0])
    gui.show()
    return app.exec_()

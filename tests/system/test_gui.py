"""The lab's taurusgui against the running lab, rendered offscreen, driven as a user drives it.

One ``LabGui`` for the module (the taurusgui generated from the lab's roles, with Sardana's macro
panels), attached to the session ``lab`` by its TANGO_HOST. Tests click the panels' buttons,
type into their fields and into Sardana's macro executor, then check what the devices hold and
what the widgets show, and save a screenshot of every panel into the module's tmp folder; each
screenshot is checked (not blank; the camera view shows the beam spot; the trends have curves).
Taurus' log is captured from the start: no attribute may fall back to client-side polling.
"""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import tango

from tests.system.qt_app import app_instance, wait_gui
from tests.system.scan_files import last_entry, scan_file
from tests.waiting import wait_until

pytestmark = pytest.mark.system

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

from taurus.external.qt import Qt  # noqa: E402 - needs QT_QPA_PLATFORM set first

# ---------------------------------------------------------------- helpers


def pixels(widget) -> np.ndarray:
    """The widget as rendered now: an (h, w, 3) uint8 RGB array."""
    image = widget.grab().toImage().convertToFormat(Qt.QImage.Format_RGB32)
    width, height = image.width(), image.height()
    buffer = image.constBits()
    buffer.setsize(image.bytesPerLine() * height)
    bgra = np.frombuffer(buffer, np.uint8).reshape(height, image.bytesPerLine() // 4, 4)
    return bgra[:, :width, 2::-1].copy()


def screenshot(widget, folder: Path, name: str) -> np.ndarray:
    """Save ``widget`` as ``folder/name.png``, check it is not blank, return its pixels."""
    path = folder / f"{name}.png"
    assert widget.grab().save(str(path)), f"could not save {path}"
    rgb = pixels(widget)
    assert rgb.shape[0] > 100 and rgb.shape[1] > 100, f"{name}: tiny screenshot {rgb.shape}"
    grey = rgb.mean(axis=2)
    assert grey.std() > 10, f"{name}: screenshot is (nearly) blank, pixel std {grey.std():.1f}"
    return rgb


def shown_number(label) -> float:
    """The number a TaurusLabel displays (its text is 'value unit')."""
    return float(label.text().split()[0])


def shown_quantity(label, unit: str) -> float:
    """The quantity a TaurusLabel displays ('601.2 µW'), in ``unit``."""
    from taurus.core.units import Quantity

    return Quantity(label.text()).to(unit).magnitude


def type_text(widget, text: str) -> None:
    """Type ``text`` into ``widget`` key by key, as a user does (each key pressed and released)."""
    for char in text:
        key = Qt.Qt.Key_Space if char == " " else ord(char.upper())
        for kind in (Qt.QEvent.KeyPress, Qt.QEvent.KeyRelease):
            Qt.QApplication.sendEvent(widget, Qt.QKeyEvent(kind, key, Qt.Qt.NoModifier, char))
        app_instance().processEvents()


def form_read_widget(form, attribute: str):
    for item in form:
        if item.getModelName().rsplit("/", 1)[-1].lower() == attribute.lower():
            return item.readWidget(followCompact=True)
    raise KeyError(attribute)


# ---------------------------------------------------------------- fixtures


class LogRecords(logging.Handler):
    """Every log record of the process (Taurus logs through Python's logging)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def polled(self) -> list[str]:
        """The attributes Taurus polls because subscribing to their events failed."""
        return [r.name for r in self.records if "Activating polling" in r.getMessage()]


@pytest.fixture(scope="module")
def screens(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gui-screenshots")
    print(f"\nGUI screenshots in {folder}")
    return folder


@pytest.fixture(scope="module")
def taurus_log():
    handler = LogRecords()
    logging.getLogger().addHandler(handler)
    yield handler
    logging.getLogger().removeHandler(handler)


@pytest.fixture(scope="module")
def gui(lab, taurus_log, tmp_path_factory):
    import taurus

    patch = pytest.MonkeyPatch()
    patch.setenv("TANGO_HOST", lab.tango_host)  # the lab's database is this process's default
    app_instance()
    taurus.Manager()  # Taurus' process-wide worker pool exists before any window
    threads_before = {t.ident for t in threading.enumerate()}
    from taurus_gui import LabGui

    win = LabGui(lab.tango_host, settings=str(tmp_path_factory.mktemp("gui-settings") / "gui.ini"))
    win.resize(1600, 1000)
    win.show()
    # What TaurusApplication.exec_() does before entering the loop (the tests turn the loop
    # themselves): mark the application started, which starts Taurus' client-side polling of
    # attributes without change events and its first-read worker.
    from taurus.taurusstatecontroller import application

    application.application_started()
    yield win
    # Leave the shared lab as we found it: shutter closed, no emission, camera idle.
    laser, camera = lab.proxy("lab/maitai/1"), lab.proxy("lab/camera/1")
    try:
        if laser.Shutter:
            laser.CloseShutter()
        if laser.Emission:
            laser.Off()
        if camera.State() == tango.DevState.RUNNING:
            camera.StopAcquisition()
    finally:
        win.close()
        win.deleteLater()
        app_instance().processEvents()
        patch.undo()
    assert not win.isVisible()

    def left_behind():
        # Sardana's client objects (the MacroServer's and Door's) live as long as the process
        return [t.name for t in threading.enumerate() if t.ident not in threads_before
                and "Dummy" not in t.name]

    wait_until(lambda: not left_behind(), timeout=8, what=f"the GUI's threads to end: {left_behind()}")


@pytest.fixture(scope="module")
def laser_emitting(gui, lab):
    """Warm the laser, start emission and open the shutter with the Laser panel's buttons."""
    panel = gui.show_panel("Laser")
    laser = lab.proxy("lab/maitai/1")
    panel.buttons["On"].click()  # first On: starts the warm-up
    wait_gui(lambda: laser.WarmupPercent >= 100, timeout=20, what="laser warm-up to reach 100 %")
    wait_gui(lambda: shown_number(panel.warmup) >= 100, what="warm-up label to show 100 %")
    panel.buttons["On"].click()  # On at 100 %: emission
    wait_gui(lambda: laser.Emission, timeout=10, what="laser emission")
    panel.buttons["OpenShutter"].click()
    wait_gui(lambda: laser.Shutter, timeout=10, what="laser shutter to open")
    wait_gui(lambda: panel.shutter.text() == "True", what="shutter label to show True")
    return laser


# ---------------------------------------------------------------- tests


def test_every_panel_is_built_from_the_roles_in_time(gui, lab, screens):
    from taurus_gui.config import INSTRUMENT_PANELS, SARDANA_PANELS

    names = set(gui.getPanelNames())
    assert set(INSTRUMENT_PANELS) | set(SARDANA_PANELS) <= names, names
    # the 5 s target is measured by benchmarks/bench_gui.py on a quiet machine; here only a hang fails
    assert gui.startup_s < 20.0, f"the GUI took {gui.startup_s:.1f} s to build its panels"
    assert gui.layout_info.door == "door/lab/1"
    screenshot(gui, screens, "window")
    for name in ("Macros", "Experiment Config", "Sequences"):
        screenshot(gui.show_panel(name), screens, name.replace(" ", "_").lower())


def test_overview_shows_states_in_colour_the_laser_and_the_datawriter(gui, lab, screens):
    from taurus.qt.qtgui.util import QT_DEVICE_STATE_PALETTE

    panel = gui.show_panel("Lab overview")
    proxies = {name: lab.proxy(name) for name in panel.states}
    assert set(proxies) == set(gui.layout_info.overview)

    def all_match():
        return all(panel.states[n].text() == str(p.State()) for n, p in proxies.items())

    wait_gui(all_match, timeout=15, what="every State label to show its device's state: "
             + ", ".join(f"{n}={panel.states[n].text()}" for n in panel.states))
    esp = proxies["lab/esp300/x"]
    wait_gui(lambda: panel.statuses["lab/esp300/x"].text() == esp.Status(),
             what="the ESP300 X status sentence")
    laser, writer = lab.proxy("lab/maitai/1"), lab.proxy("lab/datawriter/1")
    wait_gui(lambda: panel.shutter.value is bool(laser.Shutter) and panel.emission.value is bool(laser.Emission),
             what="the laser's shutter and emission flags")
    wait_gui(lambda: panel.recording.value is bool(writer.Recording), what="the DataWriter's Recording flag")
    wait_gui(lambda: shown_number(panel.backlog) == writer.Backlog, what="the DataWriter's backlog")
    wait_gui(lambda: shown_number(panel.losses) == writer.DroppedRecords, what="the DataWriter's losses")
    rgb = screenshot(panel, screens, "lab_overview")
    assert rgb.shape[0] > 300
    # Colour by state: the centre-left of each State label is painted in Taurus' state colour.
    for name, label in panel.states.items():
        state = proxies[name].State()
        expected = np.array(QT_DEVICE_STATE_PALETTE.rgb(state))
        got = pixels(label)[label.height() // 2, 4]
        assert np.abs(got.astype(int) - expected).max() <= 20, (
            f"{name} is {state}: label colour {got}, expected {expected}")
    closed = pixels(panel.shutter)[panel.shutter.height() // 2, 4]
    assert closed[1] > 150 and closed[0] < 150, f"a closed shutter is shown green, got {closed}"


def test_no_attribute_falls_back_to_polling(gui, taurus_log):
    """Every device pushes events for what the GUI shows (State, Status, CommunicationOk,
    LastError...): Taurus subscribes and never activates its client-side polling."""
    for name in ("Laser", "Motion", "Power meter", "Camera"):
        gui.show_panel(name)
    app_instance().processEvents()
    polled = taurus_log.polled()
    assert not polled, f"Taurus polls {polled}"
    laser_form = {item.getModelName().rsplit("/", 1)[-1] for item in gui.panel_widget("Laser").form}
    assert {"CommunicationOk", "LastError"} <= laser_form  # on screen, hence subscribed


def test_archive_events_follow_the_configured_change(lab, laser_emitting):
    """An HDB++-style subscriber: the meter's noisy Power pushes a change event at every new
    reading, archive events only on the configured relative change (5 %), which Jive shows."""
    meter = lab.proxy("lab/powermeter/1")
    archive = meter.get_attribute_config("Power").events.arch_event
    assert (archive.archive_rel_change, archive.archive_period) == ("5", "60000")
    counts = {"change": 0, "archive": 0}

    def counter(kind):
        def on_event(event):
            if not event.err:
                counts[kind] += 1
        return on_event

    ids = [meter.subscribe_event("Power", tango.EventType.CHANGE_EVENT, counter("change")),
           meter.subscribe_event("Power", tango.EventType.ARCHIVE_EVENT, counter("archive"))]
    try:
        wait_until(lambda: counts["change"] >= 12, timeout=20, what=f"12 change events of Power: {counts}")
    finally:
        for event_id in ids:
            meter.unsubscribe_event(event_id)
    assert 1 <= counts["archive"] <= counts["change"] // 3, counts


def test_laser_panel_warms_switches_on_and_opens_shutter(gui, laser_emitting, screens):
    panel = gui.panel_widget("Laser")
    laser = laser_emitting
    assert laser.State() in (tango.DevState.ON, tango.DevState.MOVING), laser.Status()
    wait_gui(lambda: panel.emission.text() == "True", what="emission label to show True")
    wait_gui(lambda: math.isclose(shown_number(form_read_widget(panel.form, "Wavelength")),
                                  laser.Wavelength, abs_tol=0.11),
             what="the form's Wavelength to show the laser's wavelength")
    wait_gui(lambda: shown_quantity(panel.power, "W") > 0, what="output power above 0 W")
    assert abs(shown_quantity(panel.power, "W") - laser.Power) < max(0.05, 0.05 * laser.Power)
    screenshot(panel, screens, "laser")
    overview = gui.show_panel("Lab overview")
    wait_gui(lambda: overview.shutter.value is True and overview.emission.value is True,
             what="the overview to show emission ON and the shutter OPEN")
    assert "OPEN" in overview.shutter.text()
    shown = pixels(overview.shutter)[overview.shutter.height() // 2, 4]
    assert shown[0] > 200 and shown[1] < 120, f"an open shutter is shown red, got {shown}"
    assert not [m for _, m, error in gui.history if error], gui.history


def test_motion_panel_moves_a_mount_typed_in_and_stops(gui, lab, screens):
    panel = gui.show_panel("Motion")
    hwp = lab.proxy("lab/ell14/hwp")
    start = hwp.Position
    target = 30.0 if abs(start - 30.0) > 1 else 60.0
    row = panel.rows["lab/ell14/hwp"]
    wait_gui(lambda: abs(shown_number(row["position"]) - start) < 0.01, what="hwp position shown")
    editor = row["target"]
    editor.setFocus()
    editor.selectAll()
    editor.setText(f"{target}")
    for kind in (Qt.QEvent.KeyPress, Qt.QEvent.KeyRelease):  # the user presses Enter
        Qt.QApplication.sendEvent(editor, Qt.QKeyEvent(kind, Qt.Qt.Key_Return, Qt.Qt.NoModifier))
    wait_gui(lambda: abs(hwp.Position - target) < 0.01 and hwp.State() == tango.DevState.ON,
             timeout=10, what=f"hwp to reach {target} deg")
    wait_gui(lambda: abs(shown_number(row["position"]) - target) < 0.01,
             what="the Position label to follow the mount")
    row["stop"].click()  # Stop on an idle axis: accepted, nothing moves
    wait_gui(lambda: gui.history and "Stop: done" in gui.history[-1][1],
             what="the Stop outcome on the message line")
    assert hwp.State() == tango.DevState.ON
    qwp = lab.proxy("lab/ell14/qwp")
    panel.rows["lab/ell14/qwp"]["home"].click()
    wait_gui(lambda: qwp.Homed and qwp.State() == tango.DevState.ON, timeout=10, what="qwp homed")
    assert "Home: done" in gui.history[-1][1], gui.history[-1]
    for name in ("lab/esp300/x", "lab/ell14/pol"):
        proxy = lab.proxy(name)
        wait_gui(lambda p=proxy, n=name: abs(shown_number(panel.rows[n]["position"]) - p.Position)
                 < 0.01, what=f"{name} position shown")
    screenshot(panel, screens, "motion")
    hwp.Position = start  # leave the shared lab's mount where it was
    wait_gui(lambda: hwp.State() == tango.DevState.ON, timeout=10, what="hwp back")


def test_power_meter_panel_trends_power(gui, lab, laser_emitting, screens):
    panel = gui.show_panel("Power meter")
    meter = lab.proxy("lab/powermeter/1")
    wait_gui(lambda: shown_number(form_read_widget(panel.form, "Wavelength")) == meter.Wavelength,
             what="meter wavelength shown")
    range_labels = meter.get_attribute_config("Range").enum_labels
    wait_gui(lambda: form_read_widget(panel.form, "Range").text() == range_labels[int(meter.Range)],
             what="meter range shown")

    def curve_points():
        curves = panel.curves()
        if not curves:
            return 0
        x, _ = curves[0].getData()
        return 0 if x is None else len(x)

    wait_gui(lambda: curve_points() >= 5, timeout=15, what="5 points on the power trend")
    _, y = panel.curves()[0].getData()
    assert np.all(np.isfinite(y))
    rgb = screenshot(panel, screens, "power_meter")
    plot = pixels(panel.trend)
    colour = np.array(pg_colour(panel.curves()[0].opts["pen"]))
    near = np.abs(plot.astype(int) - colour).max(axis=2) < 40
    assert near.sum() > 50, f"no curve drawn in the trend ({near.sum()} pixels of {colour})"
    assert rgb.std() > 10


def pg_colour(pen) -> tuple[int, int, int]:
    import pyqtgraph as pg

    colour = pg.mkPen(pen).color()
    return colour.red(), colour.green(), colour.blue()


def test_camera_view_shows_the_beam_spot(gui, lab, laser_emitting, screens):
    panel = gui.show_panel("Camera")
    camera = lab.proxy("lab/camera/1")
    panel.buttons["StartAcquisition"].click()
    wait_gui(lambda: camera.State() == tango.DevState.RUNNING, what="camera RUNNING")
    if panel.camera_view is not None:  # the live view with ROI and profiles (CameraView)
        view = panel.camera_view
        first = len(view.shown)
        wait_gui(lambda: len(view.shown) >= first + 3, timeout=10, what="3 new frames in the view")
        frame, rendered = view.image, pixels(view.plots)
    else:
        first = panel.frames_shown
        wait_gui(lambda: panel.frames_shown >= first + 3, timeout=10, what="3 new frames in the view")
        frame, rendered = panel.image, pixels(panel.view.getView().scene().views()[0])
    assert frame is not None and frame.ndim == 2
    # The spot: the brightest 32x32 block stands far above the frame's background.
    h, w = (frame.shape[0] // 32) * 32, (frame.shape[1] // 32) * 32
    blocks = frame[:h, :w].reshape(h // 32, 32, w // 32, 32).mean(axis=(1, 3))
    background = float(np.median(frame))
    assert blocks.max() > background + 200, (
        f"no spot: brightest block {blocks.max():.0f}, background {background:.0f}")
    # ... and on screen: the brightest part of the rendered view is far from its median.
    grey = rendered.mean(axis=2)
    assert grey.max() - np.median(grey) > 60, "the spot is not visible in the rendered view"
    screenshot(panel, screens, "camera")
    wait_gui(lambda: shown_number(form_read_widget(panel.form, "FrameRate")) > 0, what="frame rate shown")
    wait_gui(lambda: shown_number(form_read_widget(panel.form, "FramesLost")) == camera.FramesLost,
             what="frames lost shown")
    panel.buttons["StopAcquisition"].click()
    wait_gui(lambda: camera.State() == tango.DevState.ON, timeout=10, what="camera idle after Stop")


def test_an_unplugged_instrument_shows_its_fault_reason_and_recovery(gui, lab, screens):
    """The power meter's cable pulled (on the bench): the overview shows FAULT in red with the
    device's reason, logs it with the communication error, and logs the recovery."""
    from taurus.qt.qtgui.util import QT_DEVICE_STATE_PALETTE

    from deviceservers.bench.control import BenchClient

    bench = BenchClient(lab.port + 9)
    meter = lab.proxy("lab/powermeter/1")
    overview = gui.show_panel("Lab overview")
    state, status = overview.states["lab/powermeter/1"], overview.statuses["lab/powermeter/1"]
    bench.call("unplug", instrument="newport1830c")
    try:
        wait_gui(lambda: state.text() == "FAULT", timeout=15,
                 what=f"the overview to show FAULT (device {meter.State()})")
        wait_gui(lambda: status.text() == meter.Status(), what="the fault's reason")
        assert "Check the cable" in status.text(), status.text()
        fault_red = np.array(QT_DEVICE_STATE_PALETTE.rgb(tango.DevState.FAULT))
        assert np.abs(pixels(state)[state.height() // 2, 4].astype(int) - fault_red).max() <= 20
        wait_gui(lambda: any(f"lab/powermeter/1 FAULT: {meter.Status()}" in e for e in overview.log),
                 what=f"the fault and its reason in the log: {overview.log[:3]}")
        wait_gui(lambda: any("lab/powermeter/1 error: " in e for e in overview.log),
                 what="the meter's LastError in the log")
        screenshot(overview, screens, "lab_powermeter_unplugged")
    finally:
        bench.call("plug", instrument="newport1830c")
    wait_gui(lambda: state.text() == "ON", timeout=15, what="the overview to show ON again")
    wait_gui(lambda: "lab/powermeter/1 recovered: ON" in overview.log[0], what="the recovery logged")
    assert overview.log_view.count() == len(overview.log)


def test_a_device_that_is_down_does_not_break_the_gui(gui, lab, screens):
    """A panel pointed at a device that does not exist: shown as unreachable; a click reports
    the failure on the status bar and in the overview's log, nothing raises."""
    from taurus_gui.panels import LaserPanel

    panel = LaserPanel()
    panel.setModel(f"tango://{lab.tango_host}/lab/maitai/99")
    panel.resize(1000, 650)
    panel.show()
    try:
        wait_gui(lambda: panel.warmup.text() not in ("", "0.00 %"), what="the dead device's label")
        panel.buttons["On"].click()
        app_instance().processEvents()
        when, text, is_error = gui.history[-1]
        assert is_error and "lab/maitai/99 On" in text and "not reachable" in text, text
        wait_gui(lambda: "not reachable" in gui.statusBar().currentMessage(), what="the status bar")
        assert "command refused: lab/maitai/99 On" in gui.panel_widget("Lab overview").log[0]
        screenshot(panel, screens, "laser_device_down")
        assert panel.warmup.text().strip() in ("-----", "---", "None", "?"), panel.warmup.text()
    finally:
        panel.close()
        panel.deleteLater()


def plotted_points(plot_widget) -> int:
    """Points drawn so far on Sardana's live scan plot (its first curve)."""
    plots = getattr(plot_widget, "_plots", [])
    if not plots or not plots[0].curves:
        return 0
    _, y = plots[0].curves[0].getData()
    return 0 if y is None else int(np.count_nonzero(np.isfinite(y)))


@pytest.fixture
def power_plotted(lab):
    """The power channel plotted against the scanned motor, as a user sets it in Experiment
    Config's 'Plot type' column (the lab's measurement group leaves plotting off)."""
    group = lab.proxy("mg_power")
    original = group.read_attribute("Configuration").value
    conf = json.loads(original)
    for ctrl in conf["controllers"].values():
        for name, channel in ctrl["channels"].items():
            if name.rsplit("/", 1)[-1].lower() == "power" or channel.get("name") == "power":
                channel["plot_type"], channel["plot_axes"] = 1, ["<mov>"]
    group.write_attribute("Configuration", json.dumps(conf))
    yield
    group.write_attribute("Configuration", original)


def test_ascan_from_the_macro_executor_plots_live_and_stops(gui, lab, power_plotted, screens):
    door = lab.proxy("door/lab/1")
    executor = gui.show_panel("Macros")
    plot = gui.panel_widget("Scan plot")
    wait_gui(lambda: executor.doorName() and executor.playMacroAction.isEnabled() is not None,
             what="the macro executor on the lab's door")
    command = executor.spockCommand
    wait_gui(lambda: executor.macroComboBox.findText("ascan") >= 0, what="the MacroServer's macros listed")
    executor.macroComboBox.setCurrentIndex(executor.macroComboBox.findText("ascan"))  # picks ascan ...
    wait_gui(lambda: command.text().startswith("ascan"), what="the command line to show ascan",
             last=command.text)
    # ... clicks into the command line (offscreen, the window is never active: the focus event
    # a click gives is sent by hand) and types the command over its placeholders
    Qt.QApplication.sendEvent(command, Qt.QFocusEvent(Qt.QEvent.FocusIn, Qt.Qt.MouseFocusReason))
    command.selectAll()
    type_text(command, "ascan hwp 0 20 40 0.1")

    def taken():
        model = executor.paramEditorModel()
        return (command.text(), model.root().name() if model is not None else None, command.toolTip())

    wait_gui(lambda: taken()[1:] == ("ascan", ""), what="the executor to take the typed macro",
             last=taken)
    executor.playMacroAction.trigger()  # then presses Start
    wait_gui(lambda: door.State() == tango.DevState.RUNNING, timeout=10, what="the Door RUNNING")
    wait_gui(lambda: plotted_points(plot) >= 4, timeout=20, what="4 points on the live scan plot")
    gui.show_panel("Scan plot")
    screenshot(plot, screens, "scan_plot")
    # the scan's number, title, point and file on the status bar; the file in the door's output
    scan_line = next((m for m in reversed(gui.short_messages) if "| ascan hwp 0.0 20.0 40 0.1 |" in m), "")
    assert "Point #" in scan_line and "scans.h5" in scan_line, gui.short_messages[-5:]
    assert "scans.h5" in gui.panel_widget("DoorOutput").toPlainText()
    executor.stopMacroAction.trigger()  # the user stops it
    wait_gui(lambda: door.State() == tango.DevState.ON, timeout=15, what="the Door ON after Stop")
    # The scan file, closed before the Door goes ON, holds every point the scan recorded; the
    # plot draws them from the Door's record events, which may still be on their way to the GUI
    # when the Door's state is read here: it must come to show exactly those points, no more.
    scan = last_entry(scan_file(lab))
    recorded = len(scan["Pt_No"])
    assert scan["title"].startswith("ascan hwp 0.0 20.0 40 0.1") and scan["ended"], scan["title"]
    assert 4 <= recorded < 41, f"the scan was not stopped early: {recorded} points"
    wait_gui(lambda: plotted_points(plot) == recorded, what="the plot to show the points the scan recorded",
             last=lambda: plotted_points(plot))

"""The lab's Taurus GUI against the running lab, rendered offscreen, driven as a user drives it.

One window for the module (built once, ~3 s), attached to the session ``lab`` by its TANGO_HOST.
Tests click the panels' buttons and type into their fields, then check what the devices hold and
what the widgets show, and save a screenshot of every panel into the module's tmp folder; each
screenshot is checked (not blank; the camera view shows the beam spot; the trend has a curve).
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path

import numpy as np
import pytest
import tango

from tests.waiting import wait_until

pytestmark = pytest.mark.system

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported

from taurus.external.qt import Qt  # noqa: E402 - needs QT_QPA_PLATFORM set first

# ---------------------------------------------------------------- helpers


def app_instance():
    from taurus.qt.qtgui.application import TaurusApplication

    return TaurusApplication.instance() or TaurusApplication(
        ["test_gui"], cmd_line_parser=None, app_name="tangodaq-gui-test")


def wait_gui(condition, timeout: float = 10.0, what: str = ""):
    """``wait_until`` that keeps the Qt event loop turning (events, timers, repaints)."""
    app = app_instance()

    def check():
        app.processEvents()
        return condition()

    return wait_until(check, timeout=timeout, what=what)


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


def form_read_widget(form, attribute: str):
    for item in form:
        if item.getModelName().rsplit("/", 1)[-1].lower() == attribute.lower():
            return item.readWidget(followCompact=True)
    raise KeyError(attribute)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def screens(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gui-screenshots")
    print(f"\nGUI screenshots in {folder}")
    return folder


@pytest.fixture(scope="module")
def window(lab):
    import taurus

    app_instance()
    taurus.Manager()  # Taurus' process-wide worker pool exists before any window
    threads_before = {t.ident for t in threading.enumerate()}
    from taurus_gui import LabWindow

    win = LabWindow(lab.tango_host)
    win.resize(1200, 800)
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
            win.laser.buttons["CloseShutter"].click()
        if laser.Emission:
            win.laser.buttons["Off"].click()
        if camera.State() == tango.DevState.RUNNING:
            win.camera.buttons["StopAcquisition"].click()
    finally:
        win.close()
        win.deleteLater()
        app_instance().processEvents()
    assert not win.isVisible()

    def left_behind():
        return [t.name for t in threading.enumerate() if t.ident not in threads_before]

    wait_until(lambda: not left_behind(), timeout=8, what=f"the GUI's threads to end: {left_behind()}")


@pytest.fixture(scope="module")
def laser_emitting(window, lab):
    """Warm the laser, start emission and open the shutter with the Laser panel's buttons."""
    panel = window.laser
    laser = lab.proxy("lab/maitai/1")
    window.tabs.setCurrentWidget(panel)
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


def test_lab_table_shows_every_device_state_in_its_colour(window, lab, screens):
    from taurus.qt.qtgui.util import QT_DEVICE_STATE_PALETTE

    panel = window.lab
    window.tabs.setCurrentWidget(panel)
    proxies = {name: lab.proxy(name) for name in panel.states}

    def all_match():
        return all(panel.states[n].text() == str(p.State()) for n, p in proxies.items())

    wait_gui(all_match, timeout=15, what="every State label to show its device's state: "
             + ", ".join(f"{n}={panel.states[n].text()}" for n in panel.states))
    esp = proxies["lab/esp300/x"]
    wait_gui(lambda: panel.statuses["lab/esp300/x"].text() == esp.Status(),
             what="the ESP300 X status sentence")
    rgb = screenshot(panel, screens, "lab")
    assert rgb.shape[0] > 300
    # Colour by state: the centre-left of each State label is painted in Taurus' state colour.
    for name, label in panel.states.items():
        state = proxies[name].State()
        expected = np.array(QT_DEVICE_STATE_PALETTE.rgb(state))
        got = pixels(label)[label.height() // 2, 4]
        assert np.abs(got.astype(int) - expected).max() <= 20, (
            f"{name} is {state}: label colour {got}, expected {expected}")


def test_laser_panel_warms_switches_on_and_opens_shutter(window, laser_emitting, screens):
    panel = window.laser
    laser = laser_emitting
    assert laser.State() in (tango.DevState.ON, tango.DevState.MOVING), laser.Status()
    wait_gui(lambda: panel.emission.text() == "True", what="emission label to show True")
    wait_gui(lambda: math.isclose(shown_number(form_read_widget(panel.form, "Wavelength")),
                                  laser.Wavelength, abs_tol=0.11),
             what="the form's Wavelength to show the laser's wavelength")
    wait_gui(lambda: shown_quantity(panel.power, "W") > 0, what="output power above 0 W")
    assert abs(shown_quantity(panel.power, "W") - laser.Power) < max(0.05, 0.05 * laser.Power)
    screenshot(panel, screens, "laser")
    assert not [m for _, m, error in window.history if error], window.history


def test_motion_panel_moves_a_mount_typed_in_and_stops(window, lab, screens):
    panel = window.motion
    window.tabs.setCurrentWidget(panel)
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
    wait_gui(lambda: window.history and "Stop: done" in window.history[-1][1],
             what="the Stop outcome on the message line")
    assert hwp.State() == tango.DevState.ON
    qwp = lab.proxy("lab/ell14/qwp")
    panel.rows["lab/ell14/qwp"]["home"].click()
    wait_gui(lambda: qwp.Homed and qwp.State() == tango.DevState.ON, timeout=10, what="qwp homed")
    assert "Home: done" in window.history[-1][1], window.history[-1]
    for name in ("lab/esp300/x", "lab/ell14/pol"):
        proxy = lab.proxy(name)
        wait_gui(lambda p=proxy, n=name: abs(shown_number(panel.rows[n]["position"]) - p.Position)
                 < 0.01, what=f"{name} position shown")
    screenshot(panel, screens, "motion")
    hwp.Position = start  # leave the shared lab's mount where it was


def test_power_meter_panel_trends_power(window, lab, laser_emitting, screens):
    panel = window.power_meter
    window.tabs.setCurrentWidget(panel)
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
    pen = panel.curves()[0].opts["pen"]
    colour = np.array(pg_colour(pen))
    near = np.abs(plot.astype(int) - colour).max(axis=2) < 40
    assert near.sum() > 50, f"no curve drawn in the trend ({near.sum()} pixels of {colour})"
    assert rgb.std() > 10


def pg_colour(pen) -> tuple[int, int, int]:
    import pyqtgraph as pg

    colour = pg.mkPen(pen).color()
    return colour.red(), colour.green(), colour.blue()


def test_camera_view_shows_the_beam_spot(window, lab, laser_emitting, screens):
    panel = window.camera
    window.tabs.setCurrentWidget(panel)
    camera = lab.proxy("lab/camera/1")
    panel.buttons["StartAcquisition"].click()
    wait_gui(lambda: camera.State() == tango.DevState.RUNNING, what="camera RUNNING")
    first = panel.frames_shown
    wait_gui(lambda: panel.frames_shown >= first + 3, timeout=10, what="3 new frames in the view")
    frame = panel.image
    assert frame is not None and frame.ndim == 2
    # The spot: the brightest 32x32 block stands far above the frame's background.
    h, w = (frame.shape[0] // 32) * 32, (frame.shape[1] // 32) * 32
    blocks = frame[:h, :w].reshape(h // 32, 32, w // 32, 32).mean(axis=(1, 3))
    background = float(np.median(frame))
    assert blocks.max() > background + 200, f"no spot: brightest block {blocks.max():.0f}, " \
        f"background {background:.0f}"
    # ... and on screen: the brightest part of the rendered view is far from its median.
    view = pixels(panel.view.getView().scene().views()[0])
    grey = view.mean(axis=2)
    assert grey.max() - np.median(grey) > 60, "the spot is not visible in the rendered view"
    wait_gui(lambda: shown_number(form_read_widget(panel.form, "FrameRate")) > 0, what="frame rate shown")
    wait_gui(lambda: shown_number(form_read_widget(panel.form, "FramesLost")) == camera.FramesLost,
             what="frames lost shown")
    screenshot(panel, screens, "camera")
    panel.buttons["StopAcquisition"].click()
    wait_gui(lambda: camera.State() == tango.DevState.ON, timeout=10, what="camera idle after Stop")


def test_an_unplugged_instrument_shows_fault_and_recovery(window, lab, screens):
    """The power meter's cable pulled (on the bench): the GUI shows FAULT in red with the
    device's reason, keeps running, and shows the recovery when the cable is back."""
    from taurus.qt.qtgui.util import QT_DEVICE_STATE_PALETTE

    from deviceservers.bench.control import BenchClient

    bench = BenchClient(lab.port + 9)
    meter = lab.proxy("lab/powermeter/1")
    state, status = window.lab.states["lab/powermeter/1"], window.lab.statuses["lab/powermeter/1"]
    window.tabs.setCurrentWidget(window.lab)
    bench.call("unplug", instrument="newport1830c")
    try:
        wait_gui(lambda: state.text() == "FAULT", timeout=15,
                 what=f"the lab table to show FAULT (device {meter.State()})")
        wait_gui(lambda: status.text() == meter.Status(), what="the fault's reason")
        fault_red = np.array(QT_DEVICE_STATE_PALETTE.rgb(tango.DevState.FAULT))
        assert np.abs(pixels(state)[state.height() // 2, 4].astype(int) - fault_red).max() <= 20
        screenshot(window.lab, screens, "lab_powermeter_unplugged")
    finally:
        bench.call("plug", instrument="newport1830c")
    wait_gui(lambda: state.text() == "ON", timeout=15, what="the lab table to show ON again")


def test_a_device_that_is_down_does_not_break_the_gui(window, lab, screens):
    """A panel pointed at a device that does not exist: shown as unreachable; a click reports
    the failure on the message line, nothing raises, the rest keeps updating."""
    from taurus_gui.panels import LaserPanel

    panel = LaserPanel(lab.tango_host, window.messages, device="lab/maitai/99")
    panel.resize(1000, 650)
    panel.show()
    try:
        wait_gui(lambda: panel.warmup.text() not in ("", "0.00 %"), what="the dead device's label")
        panel.buttons["On"].click()
        app_instance().processEvents()
        when, text, is_error = window.history[-1]
        assert is_error and "lab/maitai/99 On" in text and "not reachable" in text, text
        assert "not reachable" in window.message_line.text()
        shown = screenshot(panel, screens, "laser_device_down")
        assert shown.std() > 10
        assert panel.warmup.text().strip() in ("-----", "---", "None", "?"), panel.warmup.text()
        # The live panels keep updating meanwhile.
        before = window.camera.feed.frames
        lab.proxy("lab/camera/1").Snap()
        wait_gui(lambda: window.camera.feed.frames > before, timeout=10, what="a frame after Snap")
    finally:
        panel.close()
        panel.deleteLater()

"""The live camera view (taurus_gui.camera_view.CameraView) on a simulated camera, offscreen.

One Pvcam device (sim backend, full 2048x2048 frames at ~36 fps, the preview at the device's
default rate) in a server of its own (tests/harness.py); the widget watches it as it would the lab's camera. Measured:
distinct frames drawn per second by the widget (printed); checked: frame numbers only grow (no
frame shown twice as new), each drawn image is the frame its number says (the sim burns the
number into pixel [0, 0]), losses reach the loss indicator, and the ROI numbers are numpy's on
the very frame the device holds.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import tango

from deviceservers.Pvcam.device import Pvcam
from tests.harness import served
from tests.system import qt_app
from tests.system.qt_app import app_instance
from tests.waiting import wait_state

pytestmark = pytest.mark.system

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # before Qt is imported


from taurus_gui.camera_view import CameraView, roi_statistics  # noqa: E402


def wait_gui(condition, timeout: float = 10.0, what: str = ""):
    """:func:`tests.system.qt_app.wait_gui`, turning the event loop every 5 ms: the view's drawing
    rate is what is measured here."""
    return qt_app.wait_gui(condition, timeout, what, interval=0.005)


@pytest.fixture(scope="module")
def camera(tmp_path_factory):
    old = os.environ.get("TANGODAQ_SHM_DIR")
    os.environ["TANGODAQ_SHM_DIR"] = str(tmp_path_factory.mktemp("shm"))
    props = {"Backend": "sim", "RingSizeMB": 128.0, "PollPeriodMs": 1000}  # PreviewMaxFps: the default
    try:
        with served({Pvcam: {f"test/cameraview/{os.getpid()}": props}}) as server:
            yield server.only
    finally:
        if old is None:
            os.environ.pop("TANGODAQ_SHM_DIR", None)
        else:
            os.environ["TANGODAQ_SHM_DIR"] = old


@pytest.fixture
def view(camera):
    app_instance()
    widget = CameraView(camera.dev_name())
    widget.resize(1000, 800)
    widget.show()
    yield widget
    widget.close()
    widget.deleteLater()
    app_instance().processEvents()


def test_live_view_keeps_up_with_a_fast_full_frame_camera(camera, view):
    camera.ExposureTime = 0.005  # 5 ms + 23 ms readout: ~36 full frames per second
    camera.NbFrames = 0
    camera.StartAcquisition()
    try:
        wait_gui(lambda: len(view.shown) >= 2, 10, what="the first previews")
        n0, t0 = len(view.shown), time.monotonic()
        wait_gui(lambda: time.monotonic() - t0 >= 3.0, 10)
        n1, t1 = len(view.shown), time.monotonic()
        fps = camera.FrameRate
    finally:
        camera.StopAcquisition()
    wait_state(camera, tango.DevState.ON, 5)
    rate = (n1 - n0) / (t1 - t0)
    print(f"\ncamera view: {rate:.1f} distinct full frames drawn per second (camera {fps:.1f} fps, "
          f"{view.received} previews received, {view.skipped} skipped by the view, "
          f"{view.repeats_dropped} repeats dropped, {view.unpaired} without a number)")
    shown = list(view.shown)
    assert shown == sorted(set(shown)), "a frame was shown twice, or an older one after a newer one"
    assert n1 - n0 >= 6, f"only {n1 - n0} new frames drawn in {t1 - t0:.1f} s"
    assert fps > 10  # the simulated camera runs ~36 fps; less when the machine is loaded
    assert view.unpaired == 0
    assert view.image.shape == (2048, 2048)
    assert int(view.image[0, 0]) == view.frame_number & 0xFFFF  # the image is the frame its number says
    assert abs(view.frame_time - time.time()) < 30
    assert f"frame {view.frame_number}" in view.frame_label.text()
    lost = camera.FramesLost
    wait_gui(lambda: view.lost == lost, 5, what="the view to follow FramesLost")


def test_roi_numbers_and_profiles_are_the_frames_own(camera, view):
    camera.ExposureTime = 0.001
    camera.Roi = [0, 0, 512, 256]
    try:
        camera.Snap()
        wait_state(camera, tango.DevState.ON, 10)
        number = camera.LastImageFrameNumber
        wait_gui(lambda: view.frame_number == number and view.image.shape == (256, 512), 10,
                 what=f"frame {number} in the view")
        frame = camera.LastImage
        assert camera.LastImageFrameNumber == number
        levels = (90.0, 400.0)
        view.set_levels(*levels)
        view.set_colour_map("inferno")
        view.set_roi(100, 40, 120, 80)
        app_instance().processEvents()
        expected = frame[40:120, 100:220].astype(np.float64)
        s = view.stats
        assert s["sum"] == expected.sum() and s["max"] == expected.max()
        assert s["mean"] == pytest.approx(expected.mean(), rel=1e-12)
        w = expected - expected.min()
        assert s["cx"] == pytest.approx((w.sum(axis=0) * np.arange(100, 220)).sum() / w.sum(), rel=1e-12)
        assert s["cy"] == pytest.approx((w.sum(axis=1) * np.arange(40, 120)).sum() / w.sum(), rel=1e-12)
        assert s == roi_statistics(frame, 100, 40, 120, 80)
        assert "sum" in view.roi_label.text() and "centroid" in view.roi_label.text()
        view.h_line.setValue(17)
        view.v_line.setValue(333)
        app_instance().processEvents()
        assert np.array_equal(view.h_profile.getData()[1], frame[17, :].astype(np.float64))
        assert np.array_equal(view.v_profile.getData()[0], frame[:, 333].astype(np.float64))
        # a new frame keeps the colour map and the levels chosen
        camera.Snap()
        wait_state(camera, tango.DevState.ON, 10)
        newer = camera.LastImageFrameNumber
        wait_gui(lambda: view.shown and view.shown[-1] == newer and view.frame_time is not None, 10)
        assert tuple(view.image_item.levels) == levels and view.colour_map.currentText() == "inferno"
    finally:
        camera.Roi = [0, 0, 2048, 2048]


def test_losses_are_visible(camera, view):
    """The loss indicator turns red with the count when FramesLost says frames were lost (the value
    is fed as its change event delivers it: the simulated camera does not lose frames on demand)."""
    app_instance().processEvents()
    assert view.lost_label.text() == "lost: 0"
    view._on_scalar("frameslost", 3)  # as the FramesLost change event delivers it
    assert "LOST: 3" in view.lost_label.text() and "c0392b" in view.lost_label.styleSheet()

"""The Pvcam component without Tango: lost-frame counting, stuck recovery, sink contents."""

from __future__ import annotations

import time

import numpy as np
import pytest

from deviceservers.common.component import DeviceState
from deviceservers.Pvcam.backend import EXT_TRIG_INTERNAL
from deviceservers.Pvcam.component import PvcamComponent
from deviceservers.Pvcam.sim import SimulatedPrimeBsi
from tests import pyvcam_double
from tests.waiting import wait_until


class ListSink:
    def __init__(self) -> None:
        self.frames: list[tuple[int, tuple[int, int], float, float, float]] = []

    def write_frame(self, frame: np.ndarray, frame_number: int, timestamp_bof: float, timestamp_eof: float,
                    exposure_s: float) -> None:
        self.frames.append((frame_number, frame.shape, timestamp_bof, timestamp_eof, exposure_s))


@pytest.fixture
def sink() -> ListSink:
    return ListSink()


def make(factory, sink: ListSink, **kw) -> PvcamComponent:
    comp = PvcamComponent(factory, lambda h, w: sink, poll_period_s=0.1, stall_timeout_s=0.3, reopen_period_s=0.2, **kw)
    comp.start()
    return comp


def test_link_gaps_counted_as_lost_frames(monkeypatch, sink):
    hw = pyvcam_double.install(monkeypatch)
    from deviceservers.Pvcam.pyvcam_backend import PyVcamBackend

    comp = make(lambda: PyVcamBackend("pvcamUSB_0"), sink)
    try:
        comp.exposure_time.set(0.001)
        comp.roi.set(np.array([0, 0, 64, 64], dtype=np.int32))
        hw["pvcamUSB_0"].drop_frames(3)
        comp.nb_frames.set(10)
        comp.start_acquisition()
        wait_until(lambda: not comp.acquiring, 10, what="the sequence to end")
        assert comp._frames == 7 and comp._lost == 3
        wait_until(lambda: comp.frames_lost.value == 3 and comp.frames_acquired.value == 7, 5)
        assert [f[0] for f in sink.frames] == [4, 5, 6, 7, 8, 9, 10]
        assert all(f[1] == (64, 64) and f[3] > f[2] > 1e9 for f in sink.frames)  # epoch timestamps
        # the camera clock counts from power-up (hours ago): frame times are still now, not hours off
        assert all(abs(f[3] - time.time()) < 30 for f in sink.frames), [f[3] - time.time() for f in sink.frames]
    finally:
        comp.stop()


def test_stuck_acquisition_recovered_and_numbering_continues(sink):
    cam = SimulatedPrimeBsi(seed=2)
    comp = make(lambda: cam, sink)
    try:
        comp.exposure_time.set(0.001)
        comp.roi.set(np.array([0, 0, 32, 32], dtype=np.int32))
        comp.start_acquisition()
        wait_until(lambda: len(sink.frames) >= 3, 5)
        cam.inject_stuck_acquisition()
        wait_until(lambda: comp._recoveries == 1, 10, what="abort + re-open")
        n = len(sink.frames)
        wait_until(lambda: len(sink.frames) > n + 3, 5, what="frames after recovery")
        comp.stop_acquisition()
        numbers = [f[0] for f in sink.frames]
        assert numbers == sorted(set(numbers))  # strictly increasing across the recovery
        assert "stuck" in comp.last_error
        assert comp.state == DeviceState.ON
    finally:
        comp.stop()


def test_unavailable_camera_faults_then_recovers(monkeypatch, sink):
    hw = pyvcam_double.install(monkeypatch, names=())
    from deviceservers.Pvcam.pyvcam_backend import PyVcamBackend

    comp = make(lambda: PyVcamBackend("pvcamUSB_0"), sink)
    try:
        assert comp.state == DeviceState.FAULT and "not found" in comp.status
        hw["pvcamUSB_0"] = pyvcam_double.FakeHardware("pvcamUSB_0")  # plugged in
        wait_until(lambda: comp.state == DeviceState.ON, 10, what="the camera to be opened")
        assert comp.backend is not None and comp.backend.get_trigger_mode() == EXT_TRIG_INTERNAL
    finally:
        comp.stop()


def pyvcam_component(monkeypatch, sink: ListSink, **options):
    hw = pyvcam_double.install(monkeypatch, **options)["pvcamUSB_0"]
    from deviceservers.Pvcam.pyvcam_backend import PyVcamBackend

    return make(lambda: PyVcamBackend("pvcamUSB_0"), sink), hw


def test_metadata_decode_failure_is_one_lost_frame_not_the_end(monkeypatch, sink):
    comp, hw = pyvcam_component(monkeypatch, sink)
    try:
        comp.exposure_time.set(0.005)
        comp.roi.set(np.array([0, 0, 32, 32], dtype=np.int32))
        hw.corrupt_metadata(1)
        comp.nb_frames.set(8)
        comp.start_acquisition()
        wait_until(lambda: not comp.acquiring, 10, what="the sequence to end")
        assert (comp._frames, comp._lost) == (7, 1)
        assert [f[0] for f in sink.frames] == [2, 3, 4, 5, 6, 7, 8]
        wait_until(lambda: comp.state == DeviceState.ON, 5, what="ON after the sequence")
    finally:
        comp.stop()


def test_without_metadata_status_says_driver_losses_are_not_counted(monkeypatch, sink):
    """PyVCAM's frame_count has no gap for frames lost in the driver: without metadata the device
    cannot count them, and must say so."""
    comp, hw = pyvcam_component(monkeypatch, sink, has_metadata=False)
    try:
        comp.exposure_time.set(0.005)
        comp.roi.set(np.array([0, 0, 32, 32], dtype=np.int32))
        hw.drop_frames(2)
        comp.nb_frames.set(6)
        comp.start_acquisition()
        wait_until(lambda: not comp.acquiring, 10, what="the sequence to end")
        wait_until(lambda: comp.state == DeviceState.ON, 5)
        assert "cannot be counted" in comp.status and "metadata" in comp.status
    finally:
        comp.stop()


def test_camera_without_fan_control_opens_and_refuses_fan_writes(monkeypatch, sink):
    comp, _hw = pyvcam_component(monkeypatch, sink, has_fan=False)
    try:
        assert comp.state == DeviceState.ON, comp.status
        assert comp.fan_speed.choices == ("Not-available",)
        with pytest.raises(Exception, match="no fan"):
            comp.fan_speed.set(0)
    finally:
        comp.stop()


def test_any_exception_opening_the_camera_is_its_fault_and_it_recovers(monkeypatch, sink):
    hw = pyvcam_double.install(monkeypatch)["pvcamUSB_0"]
    hw.fail_open = MemoryError("Unable to allocate new Camera instance (std::bad_alloc).")
    from deviceservers.Pvcam.pyvcam_backend import PyVcamBackend

    comp = make(lambda: PyVcamBackend("pvcamUSB_0"), sink)
    try:
        assert comp.state == DeviceState.FAULT and "MemoryError" in comp.status
        hw.fail_open = None
        wait_until(lambda: comp.state == DeviceState.ON, 10, what="the camera to be opened")
    finally:
        comp.stop()


@pytest.mark.parametrize("error", ["Frame readout failed.", "Failed to get latest frame from PVCAM."])
def test_pulled_cable_faults_then_the_camera_comes_back(monkeypatch, sink, error):
    comp, hw = pyvcam_component(monkeypatch, sink)
    try:
        comp.exposure_time.set(0.005)
        comp.roi.set(np.array([0, 0, 32, 32], dtype=np.int32))
        comp.start_acquisition()
        wait_until(lambda: len(sink.frames) >= 2, 5)
        hw.pull_cable(error)
        wait_until(lambda: comp.state == DeviceState.FAULT, 5, what="FAULT after the cable is pulled")
        assert "connection was lost" in comp.status and error in comp.status and "cable" in comp.status
        hw.plug_cable()
        wait_until(lambda: comp.state == DeviceState.ON, 10, what="the camera re-opened")
        assert "connection was lost" in comp.status and "start it again" in comp.status
        comp.start_acquisition()  # and it acquires again
        n = len(sink.frames)
        wait_until(lambda: len(sink.frames) > n + 2, 5, what="frames after re-opening")
        comp.stop_acquisition()
    finally:
        comp.stop()


def test_long_sequence_and_readout_time_while_acquiring(monkeypatch, sink):
    """600 full frames exceed start_seq's 4 GiB buffer; the readout time (not live) is never read
    while imaging, and the temperature (not live) neither."""
    comp, hw = pyvcam_component(monkeypatch, sink)
    try:
        comp.exposure_time.set(0.001)
        comp.nb_frames.set(600)
        comp.start_acquisition()
        wait_until(lambda: len(sink.frames) >= 3, 5, what="the first full frames")
        assert comp.state == DeviceState.RUNNING, comp.status
        comp.stop_acquisition()
        assert [f[0] for f in sink.frames[:3]] == [1, 2, 3]
        assert hw.not_live_reads == []
    finally:
        comp.stop()

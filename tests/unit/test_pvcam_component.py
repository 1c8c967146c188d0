"""The Pvcam component without Tango: lost-frame counting, stuck recovery, sink contents."""

from __future__ import annotations

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
    comp = PvcamComponent(factory, lambda h, w: sink, poll_period_s=0.1, stall_timeout_s=0.3, **kw)
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

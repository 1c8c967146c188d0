"""Backend contract: the sim backend and the pyvcam backend (on the PyVCAM test double) behave alike."""

from __future__ import annotations

import time

import numpy as np
import pytest

from deviceservers.Pvcam.backend import (
    EXT_TRIG_EDGE_RISING,
    EXT_TRIG_INTERNAL,
    EXT_TRIG_SOFTWARE_EDGE,
    AcquisitionNotActive,
    AcquisitionRunning,
    CameraBackend,
    CameraConnectionLost,
    CameraError,
    Frame,
    FrameLost,
    FrameTimeout,
    Roi,
)
from deviceservers.Pvcam.sim import SimulatedPrimeBsi
from tests import pyvcam_double


def poll_good(cam: CameraBackend, timeout: float = 2.0) -> Frame:
    """The next frame delivered, passing over frames the backend reports lost (FrameLost)."""
    for _ in range(100):
        try:
            return cam.poll_frame(timeout)
        except FrameLost:
            continue
    raise AssertionError("100 frames lost in a row")


@pytest.fixture(params=["sim", "pyvcam"])
def cam(request, monkeypatch) -> CameraBackend:
    if request.param == "sim":
        backend: CameraBackend = SimulatedPrimeBsi(cooling_time_constant_s=0.05, seed=1)
    else:
        pyvcam_double.install(monkeypatch)
        from deviceservers.Pvcam.pyvcam_backend import PyVcamBackend

        backend = PyVcamBackend("pvcamUSB_0")
    backend.open()
    backend.set_exposure(0.001)
    yield backend
    backend.close()


def test_geometry_and_capabilities(cam):
    assert cam.sensor_size == (2048, 2048)
    assert (1, 1) in cam.binnings and (2, 2) in cam.binnings
    assert cam.frame_shape() == (2048, 2048)
    modes = cam.trigger_modes
    assert EXT_TRIG_INTERNAL in modes.values() and EXT_TRIG_SOFTWARE_EDGE in modes.values()
    port0 = cam.speed_table[0]
    assert port0.speeds and all(g.bit_depth > 0 for s in port0.speeds for g in s.gains)


def test_sequence_frames_in_order_with_metadata(cam):
    cam.set_roi(Roi(0, 0, 256, 128))
    cam.start_sequence(5)
    frames = [cam.poll_frame(2.0) for _ in range(5)]
    assert [f.frame_number for f in frames] == [1, 2, 3, 4, 5]
    assert all(f.pixels.shape == (128, 256) and f.pixels.dtype == np.uint16 for f in frames)
    assert all(f.timestamp_eof_s > f.timestamp_bof_s >= 0 for f in frames)
    assert all(a.timestamp_bof_s < b.timestamp_bof_s for a, b in zip(frames, frames[1:], strict=False))
    assert frames[0].exposure_s == pytest.approx(0.001, rel=1e-3)
    assert [int(f.pixels[0, 0]) for f in frames] == [1, 2, 3, 4, 5]  # counter burnt into the frame
    with pytest.raises(FrameTimeout):  # sequence complete: nothing more comes
        cam.poll_frame(0.05)
    cam.stop()
    with pytest.raises(AcquisitionNotActive):
        cam.poll_frame(0.05)


def test_live_slow_consumer_sees_gaps_oldest_first(cam):
    cam.set_roi(Roi(0, 0, 64, 64))
    # 50 ms frames: the two polls after the gap are not themselves overtaken by the 4-frame
    # buffer on a busy machine (at 1 ms a frame it wraps between two polls ~2 ms apart)
    cam.set_exposure(0.05)
    cam.start_live(4)
    first = cam.poll_frame(2.0)
    # let far more than 4 frames pass: the circular buffer keeps the newest 4
    period = cam.get_exposure() + cam.readout_time_s()
    time.sleep(20 * period + 0.05)
    nxt = poll_good(cam)
    after = poll_good(cam)
    cam.stop()
    assert nxt.frame_number - first.frame_number > 1  # a gap: lost frames
    assert after.frame_number == nxt.frame_number + 1  # then oldest-first, in order


def test_frames_are_uint16_at_8_bit_speeds(cam):
    """PyVCAM hands uint8 arrays at 8-bit speeds; the contract (and the uint16 ring) wants uint16."""
    cam.set_readout(1, 0, 1)
    assert cam.bit_depth() == 8
    cam.set_roi(Roi(0, 0, 32, 32))
    cam.start_sequence(2)
    frames = [cam.poll_frame(2.0) for _ in range(2)]
    cam.stop()
    assert all(f.pixels.dtype == np.uint16 and f.pixels.shape == (32, 32) for f in frames)
    assert [f.frame_number for f in frames] == [1, 2]


def test_external_trigger_times_out(cam):
    cam.set_trigger_mode(EXT_TRIG_EDGE_RISING)
    cam.start_sequence(1)
    t = time.monotonic()
    with pytest.raises(FrameTimeout):
        cam.poll_frame(0.2)
    assert 0.15 < time.monotonic() - t < 1.5
    cam.stop()


def test_software_edge_one_frame_per_trigger(cam):
    cam.set_trigger_mode(EXT_TRIG_SOFTWARE_EDGE)
    cam.set_roi(Roi(0, 0, 32, 32))
    cam.start_live(8)
    with pytest.raises(FrameTimeout):
        cam.poll_frame(0.1)
    cam.software_trigger()
    assert cam.poll_frame(2.0).frame_number == 1
    with pytest.raises(FrameTimeout):
        cam.poll_frame(0.1)
    cam.software_trigger()
    assert cam.poll_frame(2.0).frame_number == 2
    cam.stop()


def test_invalid_roi_and_binning_refused_and_nothing_changed(cam):
    cam.set_roi(Roi(100, 200, 512, 512))
    for bad in (Roi(2000, 0, 100, 100), Roi(0, 0, 0, 10), Roi(-1, 0, 10, 10), Roi(0, 0, 2049, 10)):
        with pytest.raises(ValueError):
            cam.set_roi(bad)
    with pytest.raises(ValueError, match="not offered"):
        cam.set_binning(3)
    cam.set_binning(2)
    with pytest.raises(ValueError, match="multiple of the binning"):
        cam.set_roi(Roi(0, 0, 101, 100))
    assert cam.get_roi() == Roi(100, 200, 512, 512) and cam.get_binning() == 2
    assert cam.frame_shape() == (256, 256)


def test_settings_refused_while_acquiring(cam):
    cam.start_live(4)
    with pytest.raises(AcquisitionRunning):
        cam.set_roi(Roi(0, 0, 64, 64))
    with pytest.raises(AcquisitionRunning):
        cam.set_exposure(0.002)
    with pytest.raises(AcquisitionRunning):
        cam.set_readout(0, 1, 1)
    assert cam.get_roi() == Roi(0, 0, 2048, 2048)
    cam.temperature()  # readable while acquiring
    cam.stop()


def test_readout_cascade_port_speed_gain(cam):
    cam.set_readout(0, 1, 2)
    assert cam.get_readout() == (0, 1, 2)
    assert cam.bit_depth() == 12
    cam.set_readout(1, 0, 2)
    assert cam.get_readout() == (1, 0, 2) and cam.bit_depth() == 8
    with pytest.raises(ValueError):
        cam.set_readout(1, 1, 1)  # port 1 has one speed
    with pytest.raises(ValueError):
        cam.set_readout(0, 0, 9)
    assert cam.get_readout() == (1, 0, 2)


def test_temperature_setpoint_and_range(cam):
    cam.set_temperature_setpoint(-10.0)
    assert cam.get_temperature_setpoint() == -10.0
    with pytest.raises(ValueError):
        cam.set_temperature_setpoint(-80.0)
    with pytest.raises(ValueError):
        cam.set_temperature_setpoint(float("nan"))
    assert cam.get_temperature_setpoint() == -10.0
    assert -30 < cam.temperature() < 30


def test_stuck_acquisition_recovered_by_abort_and_reopen(cam, monkeypatch):
    cam.start_live(4)
    cam.poll_frame(2.0)
    if isinstance(cam, SimulatedPrimeBsi):
        cam.inject_stuck_acquisition()
    else:
        pyvcam_double.HARDWARE["pvcamUSB_0"].stick()
    with pytest.raises(FrameTimeout):
        cam.poll_frame(0.1)
    cam.recover()
    assert not cam.acquiring
    cam.start_sequence(2)
    assert [cam.poll_frame(2.0).frame_number for _ in range(2)] == [1, 2]
    cam.stop()


def test_pyvcam_link_gaps_are_frame_number_gaps(monkeypatch):
    hw = pyvcam_double.install(monkeypatch)
    from deviceservers.Pvcam.pyvcam_backend import PyVcamBackend

    cam = PyVcamBackend("pvcamUSB_0")
    cam.open()
    try:
        cam.set_exposure(0.02)  # the drop lands long before frame 2 is read out
        cam.set_roi(Roi(0, 0, 16, 16))
        cam.start_sequence(6)
        assert cam.poll_frame(2.0).frame_number == 1
        hw["pvcamUSB_0"].drop_frames(2)
        assert [cam.poll_frame(2.0).frame_number for _ in range(3)] == [4, 5, 6]
        cam.stop()
    finally:
        cam.close()


def test_pyvcam_unknown_camera_and_missing_sdk(monkeypatch):
    pyvcam_double.install(monkeypatch)
    from deviceservers.Pvcam.pyvcam_backend import PyVcamBackend

    with pytest.raises(CameraError, match="not found.*pvcamUSB_0"):
        PyVcamBackend("pvcamUSB_7").open()
    monkeypatch.setitem(__import__("sys").modules, "pyvcam.pvc", None)
    with pytest.raises(CameraError, match="pip install tangodaq\\[pvcam\\]"):
        PyVcamBackend("pvcamUSB_0")


def test_sim_spot_from_scene_and_fast_mode():
    cam = SimulatedPrimeBsi(scene=lambda t: (1024.0, 1000.0, 5.0, 2000.0), free_run=True, seed=3)
    cam.open()
    cam.set_exposure(1e-6)
    cam.start_live(4)
    f = cam.poll_frame(1.0).pixels
    assert abs(float(np.median(f)) - 100) < 3  # offset ~100 ADU
    y, x = np.unravel_index(np.argmax(f[2:, :]), f[2:, :].shape)
    assert abs(x - 1024) <= 3 and abs(y + 2 - 1000) <= 3
    t = time.perf_counter()
    n = 30
    for _ in range(n):
        cam.poll_frame(1.0)
    fps = n / (time.perf_counter() - t)
    cam.stop()
    assert fps > 100, f"full-frame sim generation at {fps:.0f} fps"


def test_sim_frame_is_ready_at_the_end_of_its_readout_and_made_once(monkeypatch):
    """A real camera's frame is in the host's buffer when its readout ends: the simulator makes the
    pixels while the frame exposes, once, however many polls time out meanwhile, so that a poll
    returns the frame at its end, not a render later."""
    cam = SimulatedPrimeBsi(seed=4)
    cam.open()
    cam.set_exposure(0.3)
    renders: list[tuple[int, float]] = []
    render = cam._render

    def counted(k, *args):  # noqa: ANN001, ANN202
        renders.append((k, time.monotonic()))
        return render(k, *args)

    monkeypatch.setattr(cam, "_render", counted)
    cam.start_sequence(1)
    polls = 0
    while True:
        polls += 1
        try:
            frame = cam.poll_frame(0.05)  # the component's polls time out several times per exposure
            break
        except FrameTimeout:
            continue
    end_of_readout = cam._t0 + frame.timestamp_eof_s
    cam.stop()
    assert [k for k, _ in renders] == [1], renders
    assert renders[0][1] < end_of_readout, "the pixels were made after the readout ended"
    assert polls > 3 and frame.frame_number == 1 and frame.pixels.shape == (2048, 2048)


# ---------------------------------------------------------------- PyVCAM 2.3.2 as it really behaves
def open_pyvcam(monkeypatch, **options):
    hw = pyvcam_double.install(monkeypatch, **options)["pvcamUSB_0"]
    from deviceservers.Pvcam.pyvcam_backend import PyVcamBackend

    cam = PyVcamBackend("pvcamUSB_0")
    cam.open()
    return cam, hw


@pytest.fixture
def closing():
    cams: list[CameraBackend] = []
    yield cams.append
    for c in cams:
        c.close()


@pytest.mark.parametrize("has_reset", [True, False], ids=["reset-timestamp", "no-reset"])
def test_pyvcam_timestamps_count_from_the_acquisition_not_power_up(monkeypatch, closing, has_reset):
    """Metadata timestamps count from the camera's power-up (hours ago): frame times must still be
    seconds since the acquisition started, whether or not the camera can reset its clock."""
    cam, hw = open_pyvcam(monkeypatch, has_reset_timestamp=has_reset)
    closing(cam)
    cam.set_exposure(0.005)
    cam.set_roi(Roi(0, 0, 32, 32))
    t0 = time.monotonic()
    cam.start_sequence(3)
    frames = [cam.poll_frame(2.0) for _ in range(3)]
    elapsed = time.monotonic() - t0
    cam.stop()
    for f in frames:
        assert 0 <= f.timestamp_bof_s < f.timestamp_eof_s <= elapsed + 0.05, (f.timestamp_bof_s, f.timestamp_eof_s)
    period = frames[1].timestamp_eof_s - frames[0].timestamp_eof_s
    assert period == pytest.approx(0.005 + 32 * 10e-6, rel=0.01)  # the camera clock's spacing is kept


def test_pyvcam_camera_without_fan_control_opens(monkeypatch, closing):
    """PyVCAM's fan_speed setter raises ValueError (empty enum) on cameras without fan control:
    the optional settings are applied only where check_param says the camera has them."""
    cam, _hw = open_pyvcam(monkeypatch, has_fan=False)
    closing(cam)
    assert cam.fan_speeds == ()
    with pytest.raises(CameraError, match="no fan"):
        cam.set_fan_speed(0)
    cam.set_temperature_setpoint(-5.0)  # the other settings still work
    assert cam.get_temperature_setpoint() == -5.0


def test_pyvcam_software_trigger_refusal_is_a_camera_error(monkeypatch, closing):
    """pvc.sw_trigger raises ValueError, not RuntimeError: it must still come out as CameraError."""
    cam, _hw = open_pyvcam(monkeypatch)
    closing(cam)
    cam.set_roi(Roi(0, 0, 16, 16))
    cam.start_live(4)  # internal trigger: the camera refuses a software trigger
    with pytest.raises(CameraError, match="software trigger"):
        cam.software_trigger()
    cam.stop()


@pytest.mark.parametrize("metadata", [True, False], ids=["metadata", "no-metadata"])
def test_pyvcam_slow_poller_never_gets_an_overwritten_frame(monkeypatch, closing, metadata):
    """The live buffer is circular: the oldest queued frame's slot is being overwritten by the next
    frame, so its pixels (and header) belong to a newer frame. Such a frame is reported lost."""
    cam, _hw = open_pyvcam(monkeypatch, has_metadata=metadata)
    closing(cam)
    cam.set_exposure(0.001)
    cam.set_roi(Roi(0, 0, 64, 64))
    cam.start_live(4)
    cam.poll_frame(2.0)
    time.sleep(0.1)  # ~60 frame periods: the 4-slot buffer wraps many times
    got, lost = [], 0
    while len(got) < 12:
        try:
            got.append(cam.poll_frame(2.0))
        except FrameLost as exc:
            lost += exc.count
    cam.stop()
    numbers = [f.frame_number for f in got]
    assert numbers == sorted(set(numbers)), numbers
    for f in got:  # every row carries the number of the frame it was read from
        assert set(np.unique(f.pixels[:, 0]).tolist()) == {f.frame_number & 0xFFFF}, f.frame_number
    assert lost >= 1


def test_pyvcam_metadata_decode_failure_is_one_lost_frame(monkeypatch, closing):
    cam, hw = open_pyvcam(monkeypatch)
    closing(cam)
    cam.set_exposure(0.01)
    cam.set_roi(Roi(0, 0, 16, 16))
    cam.start_sequence(5)
    assert cam.poll_frame(2.0).frame_number == 1
    hw.corrupt_metadata(1)
    with pytest.raises(FrameLost) as lost:
        cam.poll_frame(2.0)
    assert lost.value.count == 1
    assert [cam.poll_frame(2.0).frame_number for _ in range(3)] == [3, 4, 5]
    cam.stop()


def test_pyvcam_readout_time_is_never_read_while_imaging_and_follows_the_settings(monkeypatch, closing):
    """PARAM_READOUT_TIME changes only at the next acquisition set-up (and PyVCAM's exp_mode setter
    sets up a 2x2 region) and must not be read while imaging."""
    cam, hw = open_pyvcam(monkeypatch)
    closing(cam)
    cam.set_roi(Roi(0, 0, 2048, 256))
    cam.set_trigger_mode(EXT_TRIG_INTERNAL)
    assert cam.readout_time_s() == pytest.approx(256 * 10e-6, rel=0.02)
    cam.set_readout(0, 1, 1)  # 10 ns/pixel: twice the line time
    assert cam.readout_time_s() == pytest.approx(256 * 20e-6, rel=0.02)
    cam.start_live(4)
    assert cam.readout_time_s() == pytest.approx(256 * 20e-6, rel=0.02)
    cam.poll_frame(2.0)
    cam.stop()
    assert cam.readout_time_s() == pytest.approx(256 * 20e-6, rel=0.001)  # the camera's own value now
    assert hw.not_live_reads == []


@pytest.mark.parametrize("live", [False, True], ids=["not-live", "live"])
def test_pyvcam_temperature_not_read_while_imaging_unless_live(monkeypatch, closing, live):
    cam, hw = open_pyvcam(monkeypatch, temp_live=live)
    closing(cam)
    assert cam.temperature() == 25.0
    hw.temp_c = 10.0
    cam.set_roi(Roi(0, 0, 16, 16))
    cam.start_live(4)
    assert cam.temperature() == (10.0 if live else 25.0)  # the last value read before imaging
    with pytest.raises(AcquisitionRunning):
        cam.set_temperature_setpoint(-10.0)  # PARAM_TEMP_SETPOINT is not live
    cam.stop()
    assert cam.temperature() == 10.0
    assert hw.not_live_reads == []


def test_pyvcam_closed_handle_keyerror_ends_the_poll(monkeypatch, closing):
    """pvc.get_frame raises KeyError for a closed handle (a close from another thread lands just
    before the poll reaches the C module): the acquisition is simply not active any more."""
    cam, hw = open_pyvcam(monkeypatch)
    closing(cam)
    cam.set_roi(Roi(0, 0, 16, 16))
    cam.start_live(4)
    hw.before_get_frame = hw.camera.close
    with pytest.raises(AcquisitionNotActive):
        cam.poll_frame(0.5)


def test_pyvcam_sequence_beyond_the_4_gib_buffer(monkeypatch, closing):
    """start_seq holds the whole sequence in one buffer capped at 4 GiB: 600 full frames of 8 MiB
    cannot start in sequence mode; they run in live mode with a frame count."""
    cam, _hw = open_pyvcam(monkeypatch)
    closing(cam)
    cam.start_sequence(600)
    assert [cam.poll_frame(2.0).frame_number for _ in range(2)] == [1, 2]
    cam.stop()


def test_pyvcam_live_backed_sequence_ends_like_a_sequence(monkeypatch, closing):
    from deviceservers.Pvcam.pyvcam_backend import PyVcamBackend

    monkeypatch.setattr(PyVcamBackend, "SEQUENCE_BUFFER_BYTES", 64 * 1024)
    cam, _hw = open_pyvcam(monkeypatch)
    closing(cam)
    cam.set_exposure(0.001)
    cam.set_roi(Roi(0, 0, 64, 64))  # 8 KiB frames: 20 need 160 KiB, more than the budget
    cam.start_sequence(20)
    assert [poll_good(cam).frame_number for _ in range(20)] == list(range(1, 21))
    with pytest.raises(FrameTimeout):
        cam.poll_frame(0.05)
    cam.stop()
    with pytest.raises(AcquisitionNotActive):
        cam.poll_frame(0.05)


@pytest.mark.parametrize("error", ["Frame readout failed.", "Failed to get latest frame from PVCAM."])
def test_pyvcam_pulled_cable_is_a_connection_loss(monkeypatch, closing, error):
    cam, hw = open_pyvcam(monkeypatch)
    closing(cam)
    cam.set_roi(Roi(0, 0, 16, 16))
    cam.start_live(4)
    cam.poll_frame(2.0)
    hw.pull_cable(error)
    with pytest.raises(CameraConnectionLost, match="cable"):
        cam.poll_frame(0.5)


def test_pyvcam_older_than_2_3_2_is_refused_with_the_fix(monkeypatch):
    """Before 2.3.2 gains have no bit_depth and metadata keys and setters differ: say so at open."""
    pyvcam_double.install(monkeypatch)
    monkeypatch.setattr(pyvcam_double.package, "__version__", "2.2.4")
    from deviceservers.Pvcam.pyvcam_backend import PyVcamBackend

    with pytest.raises(CameraError, match=r"PyVCAM 2\.2\.4 is installed.*>= 2\.3\.2"):
        PyVcamBackend("pvcamUSB_0")

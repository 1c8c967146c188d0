"""The Pvcam device (sim backend) in a server of its own: commands, ring, preview, errors."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
import tango

from datawriter import ring
from deviceservers.Pvcam.device import Pvcam
from tests.harness import served
from tests.waiting import EventCollector, wait_state, wait_until

DEVICE = f"test/pvcam/{os.getpid()}"
STREAM = ring.stream_name(DEVICE, "frames")


@pytest.fixture(scope="module")
def shm_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("shm"))
    old = os.environ.get("TANGODAQ_SHM_DIR")
    os.environ["TANGODAQ_SHM_DIR"] = path  # inherited by the device process
    yield path
    if old is None:
        os.environ.pop("TANGODAQ_SHM_DIR", None)
    else:
        os.environ["TANGODAQ_SHM_DIR"] = old


@pytest.fixture(scope="module")
def context(shm_dir):
    props = {"Backend": "sim", "PreviewMaxFps": 5.0, "TriggerTimeoutS": 0.5, "SimCoolingTimeS": 0.5,
             "PollPeriodMs": 100, "RingSizeMB": 64.0}
    with served({Pvcam: {DEVICE: props}}) as server:
        yield server.only


@pytest.fixture
def cam(context):
    """The shared device, idle, internal trigger, full frame, short exposure."""
    proxy = context
    if proxy.State() == tango.DevState.RUNNING:
        proxy.StopAcquisition()
    proxy.TriggerMode = "Internal"
    proxy.Binning = 1
    proxy.Roi = [0, 0, 2048, 2048]
    proxy.ExposureTime = 0.001
    proxy.NbFrames = 0
    return proxy


def snap(proxy: tango.DeviceProxy) -> None:
    proxy.Snap()
    wait_until(lambda: proxy.State() != tango.DevState.RUNNING and proxy.FramesAcquired == 1, 10,
               what="the snap to complete")


def ring_records(reader: ring.RingReader, count: int, timeout: float = 10.0) -> list:
    out: list = []
    deadline = time.monotonic() + timeout
    while len(out) < count and time.monotonic() < deadline:
        rec = reader.read_next()
        if rec is None:
            time.sleep(0.01)
            continue
        out.append(rec)
    return out


def test_interface(cam):
    assert cam.SensorWidth == 2048 and cam.SensorHeight == 2048
    assert cam.State() == tango.DevState.ON
    labels = cam.get_attribute_config("TriggerMode").enum_labels
    assert list(labels)[:1] == ["Internal"] and "Software-edge" in labels and "Edge-rising" in labels
    assert list(cam.get_attribute_config("FanSpeed").enum_labels) == ["High", "Medium", "Low", "Off"]
    assert cam.get_attribute_config("ExposureTime").unit == "s"
    assert cam.BitDepth == 11 and cam.ReadoutPortName == "Sensitivity"


def test_snap_full_frame(cam):
    snap(cam)
    img = cam.LastImage
    assert img.shape == (2048, 2048) and img.dtype == np.uint16
    assert 90 < float(np.median(img)) < 110  # the offset
    with ring.open_reader(STREAM, start="oldest") as r:
        rec = r.latest()
        assert rec is not None
        assert rec.batch.column("frame").to_numpy_ndarray()[0].shape == (2048, 2048)


def test_sequence_all_frames_in_ring_contiguous(cam):
    cam.Roi = [0, 0, 256, 128]
    snap(cam)  # the ring for this shape exists from now on
    n = 40
    with ring.open_reader(STREAM, start="latest") as r:
        cam.NbFrames = n
        cam.StartAcquisition()
        wait_state(cam, tango.DevState.ON, 10)
        recs = ring_records(r, n)
    numbers = [int(x) for rec in recs for x in rec.batch.column("frame_number").to_pylist()]
    assert numbers == list(range(1, n + 1))
    assert cam.FramesAcquired == n and cam.FramesLost == 0
    frames = np.stack([rec.batch.column("frame").to_numpy_ndarray()[0] for rec in recs])
    assert frames.shape == (n, 128, 256)
    assert [int(f[0, 0]) for f in frames] == numbers  # the right pixels with the right number
    exposures = [rec.batch.column("exposure_time")[0].as_py() for rec in recs]
    assert exposures == pytest.approx([0.001] * n)


def test_live_started_and_stopped_repeatedly(cam):
    cam.Roi = [0, 0, 512, 512]
    for _ in range(3):
        cam.StartAcquisition()
        assert cam.State() == tango.DevState.RUNNING
        wait_until(lambda: cam.FramesAcquired >= 5, 10, what="live frames")
        cam.StopAcquisition()
        wait_state(cam, tango.DevState.ON, 5)
        assert cam.FrameRate > 50  # 1 ms + 512 rows x 11 us: ~150 fps


def test_settings_refused_while_acquiring(cam):
    cam.StartAcquisition()
    try:
        with pytest.raises(tango.DevFailed, match="while acquiring"):
            cam.Roi = [0, 0, 64, 64]
        with pytest.raises(tango.DevFailed, match="already running"):
            cam.StartAcquisition()
    finally:
        cam.StopAcquisition()
    assert list(cam.Roi) == [0, 0, 2048, 2048]


def test_software_trigger(cam):
    cam.Roi = [0, 0, 64, 64]
    with pytest.raises(tango.DevFailed, match="no acquisition"):
        cam.SoftwareTrigger()
    cam.TriggerMode = "Software-edge"
    cam.NbFrames = 2
    cam.StartAcquisition()
    time.sleep(0.3)  # no trigger: no frame, however long we wait
    assert cam.FramesAcquired == 0 and cam.State() == tango.DevState.RUNNING
    cam.SoftwareTrigger()
    wait_until(lambda: cam.FramesAcquired == 1, 5, what="one frame after one trigger")
    cam.SoftwareTrigger()
    wait_state(cam, tango.DevState.ON, 5)
    assert cam.FramesAcquired == 2


def test_external_trigger_timeout_reported(cam):
    cam.TriggerMode = "Edge-rising"
    cam.Snap()
    wait_state(cam, tango.DevState.ALARM, 10)
    assert "External trigger time-out" in cam.Status() and "Edge-rising" in cam.Status()
    assert "External trigger time-out" in cam.LastError
    cam.PrepareAcquisition()  # a scan's preparation (its ring is fine) does not hide the failure
    assert cam.State() == tango.DevState.ALARM and "External trigger time-out" in cam.Status()
    cam.TriggerMode = "Internal"
    snap(cam)
    assert cam.State() == tango.DevState.ON  # a good acquisition clears the alarm


def test_roi_and_binning_change_frame_shape(cam):
    cam.Roi = [100, 200, 512, 256]
    cam.Binning = 2
    snap(cam)
    assert cam.LastImage.shape == (128, 256)
    with ring.open_reader(STREAM, start="oldest") as r:
        assert r.description["frame_shape"] == [128, 256]
        assert r.latest().batch.column("frame").to_numpy_ndarray()[0].shape == (128, 256)


def test_invalid_roi_and_binning_refused(cam):
    cam.Roi = [0, 0, 512, 512]
    for bad in ([2000, 0, 100, 100], [0, 0, 0, 10], [0, 0, 512]):
        with pytest.raises(tango.DevFailed) as err:
            cam.Roi = bad
        assert err.value.args[0].reason == "ValueRefused"
    with pytest.raises(tango.DevFailed, match="not offered"):
        cam.Binning = 3
    with pytest.raises(tango.DevFailed):
        cam.ExposureTime = float("nan")
    assert list(cam.Roi) == [0, 0, 512, 512] and cam.Binning == 1


def test_readout_cascade(cam):
    cam.ReadoutSpeed = 1
    cam.Gain = 2
    assert (cam.ReadoutPortName, cam.ReadoutSpeedName, cam.GainName, cam.BitDepth) == (
        "Sensitivity", "10 ns/pixel", "Full well", 12)
    cam.ReadoutPort = 1  # speed 1 does not exist there: speed 0, gain kept (2 exists)
    assert (cam.ReadoutSpeed, cam.Gain, cam.BitDepth) == (0, 2, 8)
    with pytest.raises(tango.DevFailed):
        cam.Gain = 7
    cam.ReadoutPort = 0
    cam.Gain = 1
    assert cam.BitDepth == 11


def test_preview_rate_limited(cam):
    cam.Roi = [0, 0, 256, 256]
    with EventCollector(cam, "LastImage") as events:
        first = len(events.events)
        cam.StartAcquisition()
        t0 = time.monotonic()
        wait_until(lambda: cam.FramesAcquired >= 150, 10, what="150 live frames")
        cam.StopAcquisition()
        elapsed = time.monotonic() - t0
        wait_state(cam, tango.DevState.ON, 5)
        previews = len(events.events) - first
    frames = cam.FramesAcquired
    assert frames >= 150
    assert 1 <= previews <= 5 * elapsed + 2, f"{previews} previews in {elapsed:.2f} s for {frames} frames"


def test_temperature_converges_idle_and_acquiring(cam):
    cam.TemperatureSetpoint = -10.0
    wait_until(lambda: abs(cam.Temperature + 10.0) < 0.1, 10, what="temperature at -10 degC")
    cam.StartAcquisition()
    cam.TemperatureSetpoint = -20.0
    wait_until(lambda: abs(cam.Temperature + 20.0) < 0.1, 10, what="temperature at -20 degC while acquiring")
    cam.StopAcquisition()
    with pytest.raises(tango.DevFailed):
        cam.TemperatureSetpoint = -60.0
    assert cam.TemperatureSetpoint == -20.0


def test_bad_backend_property_faults():
    with served({Pvcam: {"test/nodb/pvcam": {"Backend": "nikon"}}}, ready=None) as server:
        proxy = server.only
        assert proxy.State() == tango.DevState.FAULT
        assert "Backend 'nikon' is not one of sim, pyvcam" in proxy.Status()


def test_live_acquisition_resumes_after_a_server_restart(shm_dir, tmp_path):
    """Issue 17: after its server restarted the camera did not acquire again and nothing said so."""
    db = str(tmp_path / "tango.db")
    props = {"Backend": "sim", "RingSizeMB": 16.0, "PollPeriodMs": 100}
    name = f"test/pvcamrestart/{os.getpid()}"
    with served({Pvcam: {name: props}}, db=db, ready=None) as server:
        cam = server.only
        cam.ExposureTime = 0.01
        cam.NbFrames = 0
        cam.StartAcquisition()
        wait_state(cam, tango.DevState.RUNNING)
        assert cam.Live is True
    with served({Pvcam: {name: props}}, db=db, ready=None) as server:
        cam = server.only
        wait_state(cam, tango.DevState.RUNNING, 15)
        assert cam.Live is True
        wait_until(lambda: cam.FramesAcquired > 2, 10, what="frames after the restart")
        cam.StopAcquisition()
        wait_state(cam, tango.DevState.ON)
        assert cam.Live is False
    with served({Pvcam: {name: props}}, db=db, ready=None) as server:
        cam = server.only
        wait_until(lambda: cam.State() == tango.DevState.ON, 10, what="idle after a restart: it was stopped")
        assert cam.Live is False


def test_preview_carries_its_frame_number_and_binning(cam):
    """LastImageFrameNumber and LastImageTime are pushed just before each LastImage: a client pairs
    every image with its number (the sim burns the number into pixel [0, 0]) and never sees one
    frame twice as new. PreviewBinning shrinks the preview, not the frames."""
    cam.Roi = [0, 0, 256, 256]
    order: list[tuple[str, object]] = []
    lock = threading.Lock()

    def collect(ev: tango.EventData) -> None:
        if not ev.err and ev.attr_value is not None:
            with lock:
                order.append((ev.attr_value.name.lower(), ev.attr_value.value))

    ids = [cam.subscribe_event(a, tango.EventType.CHANGE_EVENT, collect)
           for a in ("LastImageFrameNumber", "LastImageTime", "LastImage")]
    try:
        with lock:
            order.clear()  # the values sent at subscription
        cam.StartAcquisition()
        wait_until(lambda: sum(1 for n, _ in order if n == "lastimage") >= 4, 10, what="4 previews")
        cam.StopAcquisition()
        wait_state(cam, tango.DevState.ON, 5)
        wait_until(lambda: cam.LastImageFrameNumber == int(cam.LastImage[0, 0]), 5, what="the final preview")
    finally:
        for i in ids:
            cam.unsubscribe_event(i)
    pairs, number, when = [], None, None
    with lock:
        events = list(order)
    for name, value in events:
        if name == "lastimageframenumber":
            number = value
        elif name == "lastimagetime":
            when = value
        elif number is not None:
            pairs.append((number, when, int(value[0, 0])))
            number = None
    assert len(pairs) >= 4
    assert all(n == pixel for n, _, pixel in pairs), pairs  # each image with its own number
    numbers = [n for n, _, _ in pairs]
    assert numbers == sorted(set(numbers)), numbers  # never the same frame twice
    assert all(abs(t - time.time()) < 30 for _, t, _ in pairs)
    cam.PreviewBinning = 2
    snap(cam)
    wait_until(lambda: cam.LastImage.shape == (128, 128), 5, what="a 2x2-binned preview")
    with pytest.raises(tango.DevFailed, match="PreviewBinning"):
        cam.PreviewBinning = 3
    assert cam.PreviewBinning == 2
    assert cam.get_attribute_config("PreviewBinning").unit == "px"
    cam.PreviewBinning = 1


def test_a_frame_ring_that_does_not_fit_is_an_alarm_not_a_crash(tiny_fs, monkeypatch):
    """The camera's ring on a shared-memory file system without room for it (a container's small
    /dev/shm, stale rings): the server was killed by SIGBUS a few frames into the acquisition.
    Now the acquisition is refused with what to change, the device says so in ALARM, and the next
    acquisition after room was made works and clears the alarm."""
    filler = os.path.join(tiny_fs, "stale-ring")
    with open(filler, "wb") as f:  # 2.5 of the 3 MB taken
        f.write(b"\0" * (5 << 19))
    monkeypatch.setenv("TANGODAQ_SHM_DIR", os.path.join(tiny_fs, "rings"))  # inherited by the server
    name = f"test/pvcamfull/{os.getpid()}"
    with served({Pvcam: {name: {"Backend": "sim", "RingSizeMB": 1.0, "PollPeriodMs": 100}}}) as server:
        cam = server.only
        cam.Roi = [0, 0, 256, 256]  # 128 KiB frames: 7 slots in the 1 MiB ring
        cam.ExposureTime = 0.001
        with pytest.raises(tango.DevFailed) as refused:
            cam.Snap()
        why = refused.value.args[0].desc
        assert "Frames cannot be stored" in why and "do not fit in" in why and "RingSizeMB" in why, why
        assert cam.State() == tango.DevState.ALARM and "do not fit in" in cam.Status()
        os.unlink(filler)  # the cause goes away
        snap(cam)
        assert cam.State() == tango.DevState.ON, cam.Status()
        assert cam.LastImage.shape == (256, 256)


def test_prepare_acquisition_reserves_the_ring_before_the_first_frame(tiny_fs, monkeypatch):
    """PrepareAcquisition (what Sardana's camera channel calls when a scan is prepared) makes the
    ring of the current frame shape, so that the first Snap does not wait for it and uses it as
    it is; a new ROI gets a new ring at the next preparation; a ring that does not fit refuses the
    preparation with the same advice and ALARM as an acquisition, cleared once there is room."""
    folder = os.path.join(tiny_fs, "rings")
    monkeypatch.setenv("TANGODAQ_SHM_DIR", folder)  # inherited by the server
    name = f"test/pvcamprep/{os.getpid()}"
    stream = ring.stream_name(name, "frames")
    path = os.path.join(folder, "tangodaq." + stream)
    filler = os.path.join(tiny_fs, "stale-ring")
    with open(filler, "wb") as f:  # 2.5 of the 3 MB taken
        f.write(b"\0" * (5 << 19))
    with served({Pvcam: {name: {"Backend": "sim", "RingSizeMB": 1.0, "PollPeriodMs": 100}}}) as server:
        cam = server.only
        cam.Roi = [0, 0, 256, 256]
        cam.ExposureTime = 0.001
        with pytest.raises(tango.DevFailed) as refused:
            cam.PrepareAcquisition()
        why = refused.value.args[0].desc
        assert "Frames cannot be stored" in why and "RingSizeMB" in why, why
        assert cam.State() == tango.DevState.ALARM and not os.path.exists(path)
        os.unlink(filler)  # the cause goes away
        cam.PrepareAcquisition()
        assert cam.State() == tango.DevState.ON, cam.Status()
        prepared = os.stat(path)
        assert ring.stream_info(stream)["description"]["frame_shape"] == [256, 256]
        snap(cam)
        assert os.stat(path).st_ino == prepared.st_ino  # the prepared ring, not a new one
        cam.Roi = [0, 0, 128, 128]
        cam.PrepareAcquisition()
        assert os.stat(path).st_ino != prepared.st_ino
        assert ring.stream_info(stream)["description"]["frame_shape"] == [128, 128]

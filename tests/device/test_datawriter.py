"""The DataWriter device in its own process, fed by a producer in the test process."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator

import h5py
import numpy as np
import pytest
import tango
from tango import DevState
from tango.server import Device, attribute

import datawriter
from datawriter.device import DataWriter
from datawriter.ring import FrameStreamWriter, ScalarStreamWriter, create_frame_stream, create_scalar_stream
from tests.harness import served
from tests.unit.test_recovery import kill, run_writer
from tests.waiting import EventCollector
from tests.waiting import wait_until as _wait_until

DW = "test/nodb/datawriter"


def wait_until(condition, timeout: float = 15.0, **kwargs):
    """15 s by default here: recoveries and continuations restart a server first."""
    return _wait_until(condition, timeout, **kwargs)


class Motor(Device):
    """A manifest subject: attributes with units, and one that fails to read."""

    @attribute(dtype=float, unit="mm")
    def Position(self) -> float:
        return 12.5

    @attribute(dtype=str)
    def Model(self) -> str:
        return "ESP300"

    @attribute(dtype=float)
    def Broken(self) -> float:
        raise RuntimeError("sensor unplugged")


class SlowMotor(Device):
    """A manifest subject whose reading takes ``Delay`` seconds: makes a recording's end slow."""

    def init_device(self) -> None:
        super().init_device()
        self._delay = 0.0

    @attribute(dtype=float, unit="s")
    def Delay(self) -> float:
        return self._delay

    @Delay.write
    def Delay(self, value: float) -> None:
        self._delay = value

    @attribute(dtype=float, unit="mm")
    def Position(self) -> float:
        time.sleep(self._delay)
        return 1.0


@pytest.fixture
def streams() -> Iterator[tuple[FrameStreamWriter, ScalarStreamWriter]]:
    dev = f"test/dw/{uuid.uuid4().hex[:10]}"
    cam = create_frame_stream(dev, height=64, width=96, slot_count=256)
    pm = create_scalar_stream(dev, "power", units="W", rows_per_record=100)
    yield cam, pm
    for w in (cam, pm):
        w.close(unlink=True)


class Producer:
    def __init__(self, cam: FrameStreamWriter, pm: ScalarStreamWriter) -> None:
        self.cam, self.pm, self.n = cam, pm, 0

    def frames(self, k: int) -> None:
        for _ in range(k):
            now = time.time()
            self.cam.write(np.full((64, 96), self.n, np.uint16), self.n, now, now + 1e-3, 1e-3)
            self.pm.write(now + np.arange(100) * 1e-5, np.full(100, float(self.n)))
            self.n += 1


def open_swmr(path: str) -> h5py.File:
    """Open a recording for SWMR reading; the writer switches to SWMR once the start manifest is
    written, a few ms after StartRecording, and HDF5's file lock refuses readers until then."""
    opened: list[h5py.File] = []

    def try_open() -> bool:
        try:
            opened.append(h5py.File(path, "r", swmr=True))
        except BlockingIOError:
            return False
        return True

    wait_until(try_open, what=f"{path} to accept SWMR readers")
    return opened[0]


def group(dev: str) -> str:
    return "entry/instrument/" + dev.replace("/", "_")


def test_recording_layout_manifest_swmr_and_events(tmp_path, streams) -> None:
    """A recording's file layout and manifests, read live over SWMR; its events (counters, and
    State/Status going Idle -> Recording -> Idle); StopRecording answering as soon as the file
    is closed (no event push from the recorder thread waits for the monitor StopRecording holds)."""
    cam, pm = streams
    prod = Producer(cam, pm)
    prod.frames(10)  # pre-trigger material, 10 frames in the past second
    # The motor in a server of its own, started first, so that the DataWriter's property can name
    # it. (Not one server on a port chosen in advance: a forked server ignores the port once this
    # process has a Tango client, and the test failed after any other device test.)
    with served({Motor: {"test/motor/1": {}}}) as motor_server, \
            served({DataWriter: {"test/datawriter/1": {
                "OutputDir": str(tmp_path), "Streams": [cam.name, pm.name],
                "ManifestDevices": [motor_server.access("test/motor/1"), "no/such/device"]}}}) as server:
        dw = server["test/datawriter/1"]
        assert dw.state() == DevState.ON and set(dw.StreamNames) == {cam.name, pm.name}
        events: list[int] = []
        eid = dw.subscribe_event("RecordsWritten", tango.EventType.CHANGE_EVENT,
                                 lambda e: events.append(e.attr_value.value) if not e.err else None)
        states = EventCollector(dw, "State").__enter__()
        statuses = EventCollector(dw, "Status").__enter__()
        path = dw.StartRecording(json.dumps({"name": "scan 1", "metadata": {"sample": "Si"}, "pre_trigger_s": 30}))
        assert dw.state() == DevState.RUNNING and dw.Recording and dw.FilePath == path
        prod.frames(20)
        data = f"{group(cam.ring.description['producer_device'])}/frames/data"
        with open_swmr(path) as f:  # read while it is being written
            ds = f[data]

            def grown() -> bool:
                ds.refresh()
                return ds.shape[0] == 30

            wait_until(grown, what="SWMR reader to see 30 frames")
            assert int(ds[29, 0, 0]) == 29
        wait_until(lambda: len(events) > 1, what="RecordsWritten events while recording")  # the recorder pushes
        t0 = time.monotonic()
        assert dw.StopRecording() == path
        stop_s = time.monotonic() - t0
        print(f"StopRecording returned in {stop_s * 1e3:.0f} ms")
        assert stop_s < 1.0, f"StopRecording took {stop_s:.2f} s (it waits at most 2 s for the file to close)"
        assert not dw.Recording, "StopRecording returned before the file was closed"
        wait_until(lambda: [str(v) for v in states.values] == ["ON", "RUNNING", "ON"],
                   what=f"State events ON, RUNNING, ON (got {states.values})")
        wait_until(lambda: len(statuses.values) >= 3, what="Status events")
        texts = statuses.values
        assert texts[0].startswith("Idle") and texts[1].startswith("Recording") and texts[-1].startswith(
            "Idle. Last recording: " + path), texts
        states.__exit__()
        statuses.__exit__()
        assert dw.state() == DevState.ON
        assert dw.RecordsWritten == 60 and dw.DroppedRecords == 0 and dw.Backlog == 0
        assert dw.BytesWritten >= 30 * 64 * 96 * 2
        wait_until(lambda: events and events[-1] == 60, what="RecordsWritten change event")
        dw.unsubscribe_event(eid)
    dev = group(cam.ring.description["producer_device"])
    with h5py.File(path, "r") as f:
        fr = f[f"{dev}/frames"]
        assert fr["data"].shape == (30, 64, 96) and fr["data"].dtype == np.uint16
        assert list(fr["frame_number"][:]) == list(range(30)), "frame numbers contiguous"
        assert fr["exposure_time"].attrs["units"] == "s"
        assert f[f"{dev}/power/value"].shape == (3000,) and f[f"{dev}/power/value"].attrs["units"] == "W"
        assert f["entry/title"][()] == b"scan 1" and f["entry/user_metadata/sample"][()] == b"Si"
        for kind in ("start", "end"):
            m = f[f"entry/instrument/manifest_{kind}"]
            mot = m[next(k for k in m if k.endswith("test_motor_1"))]
            assert mot["Position"][()] == 12.5 and mot["Position"].attrs["units"] == "mm"
            assert mot["Model"][()] == b"ESP300"
            assert "unplugged" in mot["Broken"].attrs["error"]
            assert "State" in mot
            assert m["no_such_device"].attrs["error"]
        assert f["entry/end_time"][()]


def test_disk_full_fault_and_recovery(tiny_fs: str, streams) -> None:
    cam, pm = streams
    prod = Producer(cam, pm)
    props = {"OutputDir": tiny_fs, "Streams": [cam.name]}
    with served({DataWriter: {DW: props}}, ready=None) as server:
        dw = server.only
        path = dw.StartRecording('{"name": "big"}')
        deadline = time.monotonic() + 20
        while dw.state() == DevState.RUNNING and time.monotonic() < deadline:
            prod.frames(20)  # 12 KiB each: about 8 rounds fill 2 MB
            # pace the producer by the writer so that some records are flushed before the disk fills
            written = dw.RecordsWritten
            wait_until(lambda w=written: dw.RecordsWritten > w or dw.state() != DevState.RUNNING, what="progress")
        assert dw.state() == DevState.FAULT
        assert "No space left" in dw.status() and "StartRecording again" in dw.status()
        assert not dw.Recording
        with datawriter.open_recording(path) as f:
            assert f[f"{group(cam.ring.description['producer_device'])}/frames/data"].shape[0] > 10
        os.unlink(path)  # free the space: the next StartRecording recovers
        path2 = dw.StartRecording('{"name": "again"}')
        assert dw.state() == DevState.RUNNING
        prod.frames(5)
        dw.StopRecording()
        wait_until(lambda: dw.state() == DevState.ON, what="ON after recovery")
    with h5py.File(path2, "r") as f:
        assert f[f"{group(cam.ring.description['producer_device'])}/frames/data"].shape[0] == 5


def test_unwritable_folder_bad_arguments_and_awaited_stream(tmp_path, streams) -> None:
    cam, _ = streams
    with served({DataWriter: {DW: {"OutputDir": "/proc/forbidden", "Streams": [cam.name]}}}, ready=None) as server:
        dw = server.only
        with pytest.raises(tango.DevFailed, match="bad StartRecording"):
            dw.StartRecording("{not json")
        with pytest.raises(tango.DevFailed, match="OutputDir"):
            dw.StartRecording("")
        assert dw.state() == DevState.FAULT and "change OutputDir" in dw.status()
    # a named stream that does not exist yet is awaited, not an error: producers create rings late
    awaited = f"test.dw.{uuid.uuid4().hex[:8]}.frames"
    with served({DataWriter: {DW: {"OutputDir": str(tmp_path), "Streams": [awaited]}}}, ready=None) as server:
        dw = server.only
        path = dw.StartRecording("")
        assert dw.state() == DevState.RUNNING and f"waiting for {awaited}" in dw.status()
        assert list(dw.StreamNames) == [awaited]
        dev = awaited.rsplit(".", 1)[0].replace(".", "/")
        late = create_frame_stream(dev, height=8, width=8, slot_count=64)
        try:
            for i in range(12):
                late.write(np.full((8, 8), i, np.uint16), i, time.time())
            wait_until(lambda: dw.RecordsWritten == 12, what="the awaited stream to be recorded")
            assert "waiting" not in dw.status()
            dw.StopRecording()
            wait_until(lambda: dw.state() == DevState.ON, what="ON")
        finally:
            late.close(unlink=True)
    with h5py.File(path, "r") as f:
        assert list(f[f"{group(dev)}/frames/frame_number"][:]) == list(range(12))


def test_records_streams_that_appear_and_are_recreated(tmp_path, monkeypatch) -> None:
    """Streams empty = record everything, also rings created after StartRecording (the camera at
    acquisition start) and rings re-created with another frame shape (ROI change)."""
    shm = tmp_path / "shm"
    shm.mkdir()
    monkeypatch.setenv("TANGODAQ_SHM_DIR", str(shm))  # this device sees only this test's rings
    dev = f"test/dwnew/{uuid.uuid4().hex[:8]}"
    pm = create_scalar_stream(dev, "power", units="W", rows_per_record=100)
    with served({DataWriter: {DW: {"OutputDir": str(tmp_path)}}}, ready=None) as server:
        dw = server.only
        path = dw.StartRecording('{"name": "follow"}')
        assert "streams that appear are added" in dw.status()
        pm.write(time.time() + np.arange(100) * 1e-4, np.ones(100))
        cam = create_frame_stream(dev, height=16, width=24, slot_count=64)  # acquisition starts
        for i in range(20):
            cam.write(np.full((16, 24), i, np.uint16), i, time.time())
        wait_until(lambda: dw.RecordsWritten == 21, what="the new ring's frames")
        assert set(dw.StreamNames) == {pm.name, cam.name}
        cam.close()
        cam = create_frame_stream(dev, height=8, width=12, slot_count=64)  # ROI changed: new ring
        for i in range(7):
            cam.write(np.full((8, 12), 100 + i, np.uint16), i, time.time())
        wait_until(lambda: dw.RecordsWritten == 28, what="the re-created ring's frames")
        dw.StopRecording()
        wait_until(lambda: dw.state() == DevState.ON, what="ON")
        assert dw.DroppedRecords == 0
    cam.close(unlink=True)
    pm.close(unlink=True)
    with h5py.File(path, "r") as f:
        g = f[group(dev)]
        assert g["frames/data"].shape == (20, 16, 24) and list(g["frames/frame_number"][:]) == list(range(20))
        assert g["frames_2/data"].shape == (7, 8, 12) and list(g["frames_2/frame_number"][:]) == list(range(7))
        assert int(g["frames_2/data"][6, 7, 11]) == 106
        assert "frame shape changed from [16, 24] to [8, 12]" in g["frames_2"].attrs["reason"]
        assert g["frames_2"].attrs["continues"] == g["frames"].name
        assert g["power/value"].shape == (100,)
        assert f["entry/data"].attrs["stream"] == cam.name


def test_killed_writer_is_recovered_and_continued(tmp_path, streams) -> None:
    """kill -9 during a recording: the file stays SWMR-readable; the restarted DataWriter makes it
    plainly readable, finishes it (end time, abnormal end, losses), says so, and continues the
    recording in a new file linked both ways, from the first record the old file lacks."""
    cam, pm = streams
    prod = Producer(cam, pm)
    props = {"OutputDir": str(tmp_path), "Streams": [cam.name, pm.name]}
    frames = f"{group(cam.ring.description['producer_device'])}/frames"
    power = f"{group(pm.ring.description['producer_device'])}/power"
    with served({DataWriter: {DW: props}}, ready=None) as server:
        dw = server.only
        try:
            path = dw.StartRecording('{"name": "killed", "metadata": {"sample": "Si"}}')
            prod.frames(40)
            with open_swmr(path) as f:  # wait until a flush made 40 frames durable
                ds = f[f"{frames}/data"]

                def flushed() -> bool:
                    ds.refresh()
                    return ds.shape[0] == 40

                wait_until(flushed, what="40 flushed frames")
            prod.frames(10)  # very likely not flushed before the kill: they must not be lost either
        finally:
            server.kill()  # kill -9 mid-recording
    with datawriter.open_recording(path) as f:  # SWMR readers can read it as it is
        assert f[f"{frames}/data"].shape[0] >= 40
        assert list(f[f"{frames}/frame_number"][:40]) == list(range(40))
    with pytest.raises(OSError, match="already open for write"):
        h5py.File(path, "r")
    prod.frames(5)  # while the DataWriter is down
    with served({DataWriter: {DW: props}}, ready=None) as server:
        dw = server.only
        assert dw.Recording, dw.status()
        new = dw.FilePath
        assert new != path and dw.state() == DevState.RUNNING
        assert path in dw.LastRecovery and new in dw.LastRecovery and "died during the recording" in dw.LastRecovery
        assert "Recovered after a crash" in dw.status() and path in dw.status()
        prod.frames(5)
        wait_until(lambda: dw.RecordsWritten > 0, what="the continuation to write")
        dw.StopRecording()
        wait_until(lambda: dw.state() == DevState.ON, what="ON")
        assert path in dw.LastRecovery
    with h5py.File(path, "r") as old, h5py.File(new, "r") as cont:  # plain h5py, no SWMR, no h5clear
        e_old, e_new = old["entry"], cont["entry"]
        assert e_old["end_time"][()] and e_old.attrs["ended_abnormally"]
        assert b"died during the recording" in e_old["ended_abnormally"][()]
        assert e_old.attrs["continued_in"] == new and e_old["continued_in"][()].decode() == new
        assert e_new.attrs["continues"] == path and e_new["continues"][()].decode() == path
        assert e_new["title"][()] == b"killed" and e_new["user_metadata/sample"][()] == b"Si"
        n_old = old[f"{frames}/data"].shape[0]
        assert n_old >= 40 and old[f"{frames}/frame_number"].shape[0] == n_old
        both = list(old[f"{frames}/frame_number"][:]) + list(cont[f"{frames}/frame_number"][:])
        assert both == list(range(60)), "every frame in exactly one of the two files"
        assert int(cont[f"{frames}/data"][-1, 1, 1]) == 59
        assert old[f"{power}/value"].shape[0] + cont[f"{power}/value"].shape[0] == 6000
        assert int(old[f"{frames}/lost_records"][()]) == 0 and int(cont[f"{frames}/lost_records"][()]) == 0
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")], "journal removed after the clean stop"


BAD_ARGUMENTS = [
    json.dumps({"name": "x" * 300}),  # sent the DataWriter to FAULT (file name too long)
    '{"pre_trigger_s": NaN}',
    '{"pre_trigger_s": Infinity}',
    '{"pre_trigger_s": 1e999}',
    '{"pre_trigger_s": ' + "9" * 400 + "}",  # OverflowError
    '{"pre_trigger_s": true}',
    '{"pre_trigger_s": -1}',
    '{"pre_trigger_s": 1, "pre_trigger": 2}',
    '{"nmae": "typo"}',  # would give recording_....h5
    json.dumps({"name": "a\x00b"}),  # embedded NUL: stray file
    json.dumps({"name": "line\nbreak"}),
    '{"name": "\\ud800"}',  # lone surrogate
    '{"name": 5}',
    "[" * 100000,  # RecursionError
    '{"metadata": [1, 2]}',
    '{"metadata": {"a b": 1, "a_b": 2}}',  # the same HDF5 name twice
    json.dumps({"metadata": {"k": {"k": {"k": {"k": {"k": {"k": {"k": {"k": {"k": {"k": {"k": {"k": {"k": {"k": {
        "k": {"k": {"k": 1}}}}}}}}}}}}}}}}}}),
    "null",
    '"text"',
]


def test_bad_start_arguments_refused_without_side_effect(tmp_path, streams) -> None:
    cam, pm = streams
    prod = Producer(cam, pm)
    out = tmp_path / "out"
    with served({DataWriter: {DW: {"OutputDir": str(out), "Streams": [cam.name]}}}, ready=None) as server:
        dw = server.only
        status = dw.status()
        for arg in BAD_ARGUMENTS:
            with pytest.raises(tango.DevFailed) as info:
                dw.StartRecording(arg)
            err = info.value.args[0]
            assert err.reason == "DataWriter_BadArgument", (arg[:80], err.reason, err.desc)
            assert "bad StartRecording argument" in err.desc
            assert dw.state() == DevState.ON and dw.status() == status, arg[:80]
            assert not out.exists() or not os.listdir(out), (arg[:80], os.listdir(out))
        with pytest.raises(tango.DevFailed, match="unknown key.*'nmae'"):
            dw.StartRecording('{"nmae": "typo"}')
        # the same device still records a good request, with every documented key
        path = dw.StartRecording(json.dumps({"name": "ok/é", "metadata": {"n": 1}, "pre_trigger_s": 0.5}))
        prod.frames(3)
        wait_until(lambda: dw.RecordsWritten == 3, what="3 frames")
        dw.StopRecording()
        wait_until(lambda: dw.state() == DevState.ON, what="ON")
    assert os.path.basename(path).startswith("ok_")


def test_restart_and_init_never_recover_a_recording_that_is_not_crashed(tmp_path, streams, ring_device) -> None:
    """Two journals that are no crash. (1) The writer was killed after it closed its file and
    before it removed the journal: the restarted DataWriter drops the journal, leaves the file
    as it is and starts nothing. (2) Init while a stop drains (here a slow end manifest): Init
    answers within the client time-out, the recording finishes in the background into its own
    file, properly closed; the journal of this process is not taken for a crash (no repair, no
    second recorder, no second file)."""
    cam, pm = streams
    prod = Producer(cam, pm)
    name = "test/datawriter/1"
    closed = str(tmp_path / "closed.h5")
    other = create_scalar_stream(ring_device, "power", units="W", rows_per_record=10)
    try:
        kill(run_writer(closed, other, tmp_path, "closed", device=name))
    finally:
        other.close(unlink=True)
    before = open(closed, "rb").read()
    # the slow manifest device in a server of its own, next to the DataWriter's
    with served({SlowMotor: {"test/slow/1": {}}}) as slow:
        slow_motor = slow.only
        props = {"OutputDir": str(tmp_path), "Streams": [cam.name, pm.name],
                 "ManifestDevices": [slow.access("test/slow/1")] * 2}  # each manifest reads it twice
        with served({DataWriter: {name: props}}, ready=None) as server:
            dw = server.only
            assert dw.state() == DevState.ON and not dw.Recording, dw.status()
            assert "closed properly" in dw.status() and "nothing to recover" in dw.status(), dw.status()
            assert dw.LastRecovery == ""
            assert open(closed, "rb").read() == before, "the finished file is not touched"
            assert sorted(os.listdir(tmp_path)) == ["closed.h5"], "journal dropped, no continuation file"

            path = dw.StartRecording('{"name": "long stop"}')
            prod.frames(20)
            wait_until(lambda: dw.RecordsWritten == 40, what="20 frames and 20 power records written")
            slow_motor.Delay = 1.9  # the end manifest now takes about 4 s, more than a client waits
            dw.Init()  # with the client's default 3 s time-out: Init must answer before
            assert dw.state() == DevState.RUNNING and dw.Recording and dw.FilePath == path, dw.status()
            assert "Finishing" in dw.status() and "Init" in dw.status(), dw.status()
            assert dw.LastRecovery == "", "its own recording is not a crash"
            journals = [n for n in os.listdir(tmp_path) if n.startswith(".tangodaq-journal.")]
            assert len(journals) == 1 and json.loads((tmp_path / journals[0]).read_text())["state"] == "stopping"
            wait_until(lambda: dw.state() == DevState.ON, 15, what="the background stop to finish")
            assert "Last recording: " + path in dw.status(), dw.status()
            assert sorted(os.listdir(tmp_path)) == sorted(["closed.h5", os.path.basename(path)])
    with h5py.File(path, "r") as f:  # plain h5py: closed properly, by the one recorder
        entry = f["entry"]
        assert entry["end_time"][()] and "ended_abnormally" not in entry and "continued_in" not in entry.attrs
        frames = f"{group(cam.ring.description['producer_device'])}/frames"
        assert list(f[f"{frames}/frame_number"][:]) == list(range(20))
        assert int(f[f"{frames}/lost_records"][()]) == 0 and "manifest_end" in entry["instrument"]


def test_a_bad_compression_is_fault_at_init_and_refuses_to_record(tmp_path) -> None:
    props = {"OutputDir": str(tmp_path), "Compression": "blosc2-gzip"}
    with served({DataWriter: {DW: props}}, ready=None) as server:
        dw = server.only
        assert dw.state() == DevState.FAULT
        status = dw.status()
        assert "'blosc2-gzip'" in status and "blosc2-lz4, blosc2-zstd" in status and "Init" in status
        with pytest.raises(tango.DevFailed) as err:
            dw.StartRecording("{}")
        assert err.value.args[0].reason == "DataWriter_BadConfiguration"
        assert "blosc2-lz4" in err.value.args[0].desc
        assert os.listdir(tmp_path) == []

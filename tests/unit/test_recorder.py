"""Recorder with real producers in other processes: streams that appear or are re-created during a
recording, and frames overwritten while they are written to disk (torn) counted, never stored."""

from __future__ import annotations

import multiprocessing as mp
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

import datawriter
from datawriter.hdf5_sink import Hdf5Sink, StreamSpec, open_recording
from datawriter.recorder import Recorder
from datawriter.ring import RingReader, create_frame_stream, create_scalar_stream
from tests.waiting import wait_until

CTX = mp.get_context("fork")


@pytest.fixture
def device(ring_device: str) -> str:
    return ring_device


def _camera(dev: str, steps, done) -> None:  # noqa: ANN001
    """A camera server's life: acquisition (ring created), same-shape restart (ring re-created),
    ROI change (ring re-created with another shape); each step waits for the test's go."""
    shapes = [(16, 24, 0, 30), (16, 24, 30, 10), (8, 12, 0, 15)]  # (h, w, first frame number, frames)
    for step, (h, w, first, count) in enumerate(shapes):
        assert steps[step].wait(20)
        cam = create_frame_stream(dev, height=h, width=w, slot_count=64)
        for fn in range(first, first + count):
            cam.write(np.full((h, w), fn + 1000 * step, np.uint16), fn, time.time())
        cam.close()
    pm = create_scalar_stream(dev, "power", units="W", rows_per_record=50)
    pm.write(time.time() + np.arange(200) * 1e-4, np.arange(200, dtype=float))
    pm.close()
    done.set()


# Another process reading the file while it is written (SWMR), as a live GUI would. A fresh
# interpreter, not a fork: a forked child would share this process's HDF5 state.
_VIEWER = """
import sys, h5py
import time
# A live plot opens the file, waits until the stream's group is there (the writer adds it and
# flushes), then holds its dataset and refreshes it. Looking a path up again after the writer
# changed the file's structure is not something SWMR supports (reopen the file for that).
deadline = time.monotonic() + 20
while True:
    f = h5py.File(sys.argv[1], "r", libver="latest", swmr=True)
    try:
        ds = f[sys.argv[2]]
        break
    except (KeyError, StopIteration):
        f.close()
        if time.monotonic() > deadline:
            raise
        time.sleep(0.05)
with f:
    print("open", flush=True)
    sys.stdin.readline()
    ds.refresh()
    print(ds.shape[0], flush=True)
"""


def test_follows_rings_created_and_recreated_during_the_recording(tmp_path, device: str) -> None:
    name = datawriter.stream_name(device, "frames")
    steps = [CTX.Event() for _ in range(3)]
    done = CTX.Event()
    path = str(tmp_path / "follow.h5")
    rec = Recorder(Hdf5Sink(path, []), {}, record_new_streams=True, flush_interval=0.05)
    rec.start()
    p = CTX.Process(target=_camera, args=(device, steps, done))
    p.start()
    try:
        frames = lambda: rec.stats().per_stream.get(name, {}).get("records", 0)  # noqa: E731
        steps[0].set()
        wait_until(lambda: frames() == 30, what="the ring created after the start")
        with open_recording(path) as f:  # SWMR readers work after the file was reopened for the stream
            assert f[f"entry/instrument/{device.replace('/', '_')}/frames/data"].shape[0] == 30
        steps[1].set()
        wait_until(lambda: frames() == 40, what="the same-shape re-created ring")
        frames_path = f"entry/instrument/{device.replace('/', '_')}/frames/data"
        viewer = subprocess.Popen([sys.executable, "-c", _VIEWER, path, frames_path], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert viewer.stdout.readline().strip() == "open"
        steps[2].set()  # a new group while another process holds the file open for SWMR reading
        wait_until(lambda: frames() == 55, what="the ring re-created with another shape")
        out, _ = viewer.communicate("go\n", timeout=20)
        assert viewer.returncode == 0 and out.strip() == "40", "the live reader keeps reading"
        assert done.wait(20)
        wait_until(lambda: rec.stats().per_stream.get(datawriter.stream_name(device, "power"), {}).get("records") == 4,
                   what="the scalar ring")
    finally:
        p.join(20)
        rec.stop(20)
    assert rec.error is None and p.exitcode == 0
    assert rec.stats().dropped_records == 0
    with h5py.File(path, "r") as f:
        g = f[f"entry/instrument/{device.replace('/', '_')}"]
        assert g.attrs["NX_class"] == "NXdetector"
        a, b = g["frames"], g["frames_2"]
        assert a["data"].shape == (40, 16, 24) and list(a["frame_number"][:]) == list(range(40))
        assert [int(a["data"][i, 3, 3]) for i in (0, 29, 30, 39)] == [0, 29, 1030, 1039]
        assert b["data"].shape == (15, 8, 12) and list(b["frame_number"][:]) == list(range(15))
        assert int(b["data"][14, 7, 11]) == 2014
        assert b.attrs["reason"] == f"frame shape changed from [16, 24] to [8, 12] when the producer re-created ring {name}"
        assert b.attrs["continues"] == a.name and int(a["lost_records"][()]) == 0 == int(b["lost_records"][()])
        assert list(g["power/value"][:]) == list(range(200))
        assert f["entry/data"].attrs["stream"] == name


def test_awaited_named_stream_is_recorded_when_it_appears(tmp_path, device: str) -> None:
    pm = create_scalar_stream(device, "power", rows_per_record=10)
    other = create_scalar_stream(device, "other", rows_per_record=10)  # not named: not recorded
    late = datawriter.stream_name(device, "late")
    r = RingReader(pm.name)
    path = str(tmp_path / "awaited.h5")
    rec = Recorder(Hdf5Sink(path, [StreamSpec(pm.name, r.schema, r.description)]), {pm.name: r},
                   awaited_streams=[pm.name, late])
    assert rec.awaited_streams == [late]
    rec.start()
    w = create_scalar_stream(device, "late", rows_per_record=10)
    w.write(time.time() + np.arange(30) * 1e-3, np.arange(30.0))
    pm.write(time.time(), 1.0)
    other.write(time.time(), 2.0)
    wait_until(lambda: rec.stats().records_written == 4, what="awaited stream")
    rec.stop(10)
    assert rec.awaited_streams == [] and rec.stream_names == [pm.name, late]
    with h5py.File(path, "r") as f:
        g = f[f"entry/instrument/{device.replace('/', '_')}"]
        assert sorted(g) == ["late", "power"]
        assert list(g["late/value"][:]) == list(range(30))
    for x in (pm, other, w):
        x.close()


def _fast_camera(dev: str, seconds: float, ready, total) -> None:  # noqa: ANN001
    cam = create_frame_stream(dev, height=256, width=256, slot_count=4)
    img = np.empty((256, 256), np.uint16)
    assert ready.wait(20)
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        img.fill(n & 0xFFFF)
        cam.write(img, n, time.time())
        n += 1
    total.value = n
    cam.close()


def test_frames_overwritten_while_written_are_lost_not_stored(tmp_path, device: str) -> None:
    """A 4-slot ring lapped by a producer at full speed: every frame in the file must be intact
    and every produced frame is either in the file or counted as lost."""
    name = datawriter.stream_name(device, "frames")
    ready, total = CTX.Event(), CTX.Value("q", -1)
    p = CTX.Process(target=_fast_camera, args=(device, 1.5, ready, total))
    p.start()
    wait_until(lambda: name in datawriter.list_streams(), what="ring")
    r = RingReader(name, start="oldest")
    path = str(tmp_path / "torn.h5")
    rec = Recorder(Hdf5Sink(path, [StreamSpec(name, r.schema, r.description)]), {name: r})
    rec.start()
    ready.set()
    p.join(20)
    rec.stop(20)
    assert rec.error is None and total.value > 100
    st = rec.stats()
    assert st.records_written + st.dropped_records == total.value, "every frame is written or counted as lost"
    assert r.lost_torn > 0 or st.dropped_records > 0, "the producer must have lapped the writer for this test to mean anything"
    with h5py.File(path, "r") as f:
        fr = f[f"entry/instrument/{device.replace('/', '_')}/frames"]
        fn = fr["frame_number"][:]
        data = fr["data"][:]
        assert len(fn) == len(data) == st.records_written
        assert (np.diff(fn) > 0).all()
        assert (data == (fn & 0xFFFF)[:, None, None]).all(), "a torn frame was stored"
        assert int(fr["lost_records"][()]) == st.dropped_records

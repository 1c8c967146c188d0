"""HDF5/NeXus sink and recorder, without Tango: layout, compression, SWMR, rollback, disk full."""

from __future__ import annotations

import os
import time

import h5py
import numpy as np
import pytest

from datawriter.hdf5_sink import Hdf5Sink, StreamSpec, open_recording
from datawriter.recorder import Recorder
from datawriter.ring import RingReader, create_frame_stream, create_scalar_stream
from tests.waiting import wait_until


@pytest.fixture
def device(ring_device: str) -> str:
    return ring_device


def _specs(*readers: RingReader) -> list[StreamSpec]:
    return [StreamSpec(r.name, r.schema, r.description) for r in readers]


@pytest.mark.parametrize("compression", ["none", "bitshuffle-lz4", "blosc2-lz4", "blosc2-zstd"])
def test_layout_and_roundtrip(tmp_path, device: str, compression: str) -> None:
    cam = create_frame_stream(device, height=16, width=24, slot_count=16, units="counts")
    pm = create_scalar_stream(device, "power", units="W", rows_per_record=50)
    rc, rp = RingReader(cam.name, "oldest"), RingReader(pm.name, "oldest")
    for i in range(10):
        cam.write(np.full((16, 24), i * 3, np.uint16), 100 + i, 10.0 + i, 10.5 + i, 0.25)
    pm.write(20.0 + np.arange(120) * 0.01, np.linspace(0, 1, 120))
    path = str(tmp_path / "r.h5")
    sink = Hdf5Sink(path, _specs(rc, rp), title="run 1", metadata={"sample": "Si", "T": {"value": 4.2}},
                    compression=compression)
    sink.write_manifest("start", {"lab/x/1": {"Position": {"value": 1.5, "unit": "mm", "quality": "ATTR_VALID"},
                                              "Broken": {"value": None, "error": "boom"}},
                                  "lab/gone/1": {"error": "device not exported"}})
    sink.start_swmr()
    for r in (rc, rp):
        for rec in iter(r.read_next, None):
            sink.append(r.name, rec.batch)
    # a torn record is undone
    rows, nbytes = sink.append(cam.name, rec_frames := RingReader(cam.name, "oldest").read_next().batch)
    sink.truncate(cam.name, rows, nbytes)
    assert rec_frames.num_rows == 1
    sink.flush()
    with open_recording(path) as f:  # SWMR reader while the writer is open
        assert f[f"entry/instrument/{device.replace('/', '_')}/frames/data"].shape == (10, 16, 24)
    sink.set_lost(cam.name, 3)
    sink.close(manifest_end={"lab/x/1": {"Position": {"value": 2.5, "unit": "mm"}}})
    dev = device.replace("/", "_")
    with h5py.File(path, "r") as f:
        assert f.attrs["default"] == "entry" and f["entry"].attrs["NX_class"] == "NXentry"
        fr = f[f"entry/instrument/{dev}/frames"]
        assert f[f"entry/instrument/{dev}"].attrs["NX_class"] == "NXdetector"
        assert fr["data"].shape == (10, 16, 24) and fr["data"].dtype == np.uint16
        assert fr["data"].chunks == (1, 16, 24)
        assert [int(fr["data"][i, 0, 0]) for i in range(10)] == [i * 3 for i in range(10)]
        assert list(fr["frame_number"][:]) == list(range(100, 110))
        assert fr["timestamp_bof"].attrs["units"] == "ns" and fr["timestamp_bof"][0] == 10_000_000_000
        assert fr["exposure_time"].attrs["units"] == "s" and fr["data"].attrs["units"] == "counts"
        assert int(fr["lost_records"][()]) == 3
        pw = f[f"entry/instrument/{dev}/power"]
        assert pw["value"].shape == (120,) and pw["value"].attrs["units"] == "W"
        assert pw["timestamp"].dtype == np.int64
        assert f["entry/data"].attrs["signal"] == "data" and f["entry/data/data"].shape == (10, 16, 24)
        assert f["entry/title"][()] == b"run 1" and f["entry/user_metadata/T/value"][()] == 4.2
        assert f["entry/end_time"][()] and f["entry/start_time"][()]
        ms = f["entry/instrument/manifest_start"]
        assert ms["lab_x_1/Position"][()] == 1.5 and ms["lab_x_1/Position"].attrs["units"] == "mm"
        assert ms["lab_x_1/Broken"].attrs["error"] == "boom"
        assert "not exported" in ms["lab_gone_1"].attrs["error"]
        assert f["entry/instrument/manifest_end/lab_x_1/Position"][()] == 2.5
        if compression != "none":
            assert fr["data"].id.get_storage_size() < 10 * 16 * 24 * 2


def test_unsupported_layout_and_unwritable_folder(tmp_path, device: str) -> None:
    pm = create_scalar_stream(device, "power")
    r = RingReader(pm.name)
    with pytest.raises(ValueError, match="compression"):
        Hdf5Sink(str(tmp_path / "x.h5"), _specs(r), compression="magic")
    with pytest.raises(OSError):
        Hdf5Sink("/proc/no/such/dir/x.h5", _specs(r))


def test_recorder_disk_full_keeps_flushed_data(tiny_fs: str, device: str) -> None:
    cam = create_frame_stream(device, height=256, width=256, slot_count=64)  # 128 KiB frames
    r = RingReader(cam.name, "latest")
    path = os.path.join(tiny_fs, "full.h5")
    finished: list[BaseException | None] = []
    rec = Recorder(Hdf5Sink(path, _specs(r)), {cam.name: r}, flush_interval=0.05,
                   on_finished=lambda p, e: finished.append(e))
    rec.start()
    n = 0
    deadline = time.monotonic() + 20
    while rec.running and time.monotonic() < deadline:
        cam.write(np.full((256, 256), n, np.uint16), n, time.time())
        n += 1
        if n % 4 == 0:
            rec.wait(0.01)
    assert not rec.running, "the recorder must stop on a full disk"
    wait_until(lambda: finished, 5, what="on_finished (called just after running turns false)")
    assert isinstance(finished[0], OSError) and rec.error is finished[0]
    assert rec.error.errno == 28 and "free space there" in str(rec.error)
    # stopped before the disk was really full: the file is closed properly, with every frame
    with open_recording(path) as f:
        data = f[f"entry/instrument/{device.replace('/', '_')}/frames"]
        k = data["data"].shape[0]
        assert k >= 4 and data["frame_number"].shape[0] == k
        assert list(data["frame_number"][:]) == list(range(k))
        assert [int(data["data"][i, 5, 5]) for i in range(k)] == list(range(k))
        assert f["entry/end_time"][()]
    # the ring is untouched: a new reader still gets the newest frames
    assert RingReader(cam.name, "oldest").read_next() is not None

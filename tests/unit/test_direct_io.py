"""Frames written with O_DIRECT into chunk space HDF5 reserved, and every fallback to buffered."""

from __future__ import annotations

import errno
import os

import h5py
import numpy as np
import pytest

from datawriter import direct_io
from datawriter.hdf5_sink import Hdf5Sink, StreamSpec, open_recording
from datawriter.ring import RingReader, create_frame_stream

H, W = 256, 256  # 128 KiB frames: large enough and a 4 KiB multiple


@pytest.fixture
def device(ring_device: str) -> str:
    return ring_device


def _record(tmp_path, device: str, n: int, height: int = H, width: int = W) -> tuple[str, str]:
    """n frames through a frame ring into a sink; returns (path, frame_io)."""
    cam = create_frame_stream(device, height=height, width=width, slot_count=8)
    r = RingReader(cam.name, "latest")
    path = str(tmp_path / "d.h5")
    sink = Hdf5Sink(path, [StreamSpec(r.name, r.schema, r.description)])
    sink.start_swmr()
    rng = np.random.default_rng(1)
    for i in range(n):
        cam.write(rng.integers(0, 4096, (height, width), dtype=np.uint16) + np.uint16(i), i, float(i))
        rec = r.read_next(copy=False)
        assert sink.append_record(r.name, rec.batch, rec.is_valid)
        if i == n // 2:
            sink.flush()
            with open_recording(path) as live:  # a SWMR reader sees the O_DIRECT frames
                ds = live[f"entry/instrument/{device.replace('/', '_')}/frames/data"]
                assert ds.shape[0] == i + 1 and int(ds[i].min()) >= i
    io = sink.frame_io
    sink.close()
    return path, io


def _expected(n: int, height: int = H, width: int = W) -> np.ndarray:
    rng = np.random.default_rng(1)
    return np.stack([rng.integers(0, 4096, (height, width), dtype=np.uint16) + np.uint16(i) for i in range(n)])


def _data(path: str, device: str) -> np.ndarray:
    with h5py.File(path, "r") as f:
        return f[f"entry/instrument/{device.replace('/', '_')}/frames/data"][:]


def test_frames_go_to_disk_with_o_direct_from_the_ring(tmp_path, device: str) -> None:
    path, io = _record(tmp_path, device, 12)
    # the first record teaches the ring its padding: it is the only one copied to be aligned
    assert io == "O_DIRECT (12 frames, 1 through the bounce buffer)"
    assert np.array_equal(_data(path, device), _expected(12))
    with h5py.File(path, "r") as f:
        ds = f[f"entry/instrument/{device.replace('/', '_')}/frames/data"]
        assert ds.chunks == (1, H, W)
        offsets = [ds.id.get_chunk_info(i).byte_offset for i in range(12)]
        assert all(o % direct_io.BLOCK == 0 for o in offsets)
    # early allocation reserves no more than the frames: the file is the frames plus metadata
    assert 12 * H * W * 2 < os.path.getsize(path) < 12 * H * W * 2 + 2 * 2**20


def test_a_file_system_refusing_o_direct_at_open_gets_buffered_writes(tmp_path, device: str, monkeypatch) -> None:
    real_open = os.open

    def no_direct(path, flags, *args):  # noqa: ANN001, ANN202
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(path, flags, *args)

    monkeypatch.setattr(direct_io.os, "open", no_direct)
    path, io = _record(tmp_path, device, 6)
    assert io == "buffered (O_DIRECT refused by the file system (Invalid argument))"
    assert np.array_equal(_data(path, device), _expected(6))


def test_a_file_system_refusing_o_direct_writes_falls_back_mid_recording(tmp_path, device: str, monkeypatch) -> None:
    real_pwrite = os.pwrite
    calls = []

    def refuse_after_two(fd, data, offset):  # noqa: ANN001, ANN202
        calls.append(offset)
        if len(calls) > 2:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(direct_io.os, "pwrite", refuse_after_two)
    path, io = _record(tmp_path, device, 8)
    assert io.startswith("buffered (O_DIRECT write refused")
    assert len(calls) == 3  # two frames direct, the third refused and written buffered, then no more tries
    assert np.array_equal(_data(path, device), _expected(8))


def test_frames_that_do_not_fill_whole_blocks_stay_buffered(tmp_path, device: str) -> None:
    path, io = _record(tmp_path, device, 5, height=250, width=257)
    assert io == "buffered (no frames of whole 4 KiB blocks, 64 KiB or more)"
    assert np.array_equal(_data(path, device), _expected(5, 250, 257))


def test_an_unaligned_request_is_refused_before_it_reaches_the_disk(tmp_path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"")
    w = direct_io.DirectChunkWriter(str(path))
    try:
        with pytest.raises(ValueError, match="aligned"):
            w.write(100, bytes(direct_io.BLOCK))
        assert w.write(0, bytes(range(256)) * 16)
        assert path.read_bytes() == bytes(range(256)) * 16
    finally:
        w.close()

"""Blosc2 frame compression (``blosc2-lz4``, ``blosc2-zstd``): frames compressed in worker threads,
one frame per chunk under the standard HDF5 Blosc2 filter, readable by plain h5py + hdf5plugin;
torn and overrun frames counted as for raw frames; a bad Compression value refused up front."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import h5py
import numpy as np
import pytest

from datawriter import compression
from datawriter.compression import BLOSC2_FILTER_ID, COMPRESSIONS
from datawriter.hdf5_sink import Hdf5Sink, StreamSpec
from datawriter.recorder import Recorder
from datawriter.ring import RingReader, create_frame_stream
from tests.waiting import wait_until

H, W = 96, 128

# Run in a fresh interpreter: nothing of tangodaq is imported, only what a user of the file has.
PLAIN_READER = """
import sys, h5py, hdf5plugin, numpy as np
path, expected, group = sys.argv[1:4]
with h5py.File(path, "r") as f:
    ds = f[group + "/data"]
    want = np.load(expected)
    got = ds[()]
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.shape)
    assert got.tobytes() == want.tobytes(), "frames differ"
    numbers = f[group + "/frame_number"][()]
assert not [m for m in sys.modules if m.split(".")[0] in ("datawriter", "deviceservers", "tangodaq")]
print(len(numbers), ",".join(map(str, numbers)))
"""


def camera_frames(n: int, seed: int = 0) -> np.ndarray:
    """Frames as a camera gives them: ~100 ADU offset, read noise, a beam spot with shot noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W]
    spot = 1500.0 * np.exp(-((x - 60) ** 2 + (y - 40) ** 2) / (2 * 12.0**2))
    out = rng.normal(100 + spot, np.sqrt(1.6**2 + spot), (n, H, W))
    return np.clip(out.round(), 0, 4095).astype(np.uint16)


def _group(device: str) -> str:
    return f"entry/instrument/{device.replace('/', '_')}/frames"


def _record(path: str, name: str, comp: str) -> Recorder:
    reader = RingReader(name, "oldest")
    return Recorder(Hdf5Sink(path, [StreamSpec(name, reader.schema, reader.description)], compression=comp),
                    {name: reader})


@pytest.mark.parametrize("comp", ["blosc2-lz4", "blosc2-zstd"])
def test_blosc2_frames_roundtrip_bit_exact_with_plain_h5py_hdf5plugin(tmp_path, ring_device: str, comp: str) -> None:
    frames = camera_frames(12, seed=len(comp))
    cam = create_frame_stream(ring_device, height=H, width=W, slot_count=64)
    for i, fr in enumerate(frames):
        cam.write(fr, 1000 + i, time.time(), time.time(), 1e-3)
    path = str(tmp_path / f"{comp}.h5")
    rec = _record(path, cam.name, comp)
    rec.start()
    wait_until(lambda: rec.stats().records_written == len(frames), what="every frame written")
    assert rec.stop(10) and rec.error is None
    assert rec.sink.compression_workers >= 1 and "worker threads" in rec.sink.frame_io
    np.save(tmp_path / "want.npy", frames)
    out = subprocess.run([sys.executable, "-c", PLAIN_READER, path, str(tmp_path / "want.npy"), _group(ring_device)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["12", ",".join(str(1000 + i) for i in range(12))]
    if comp == "blosc2-lz4":  # the lab's own reader needs no import of hdf5plugin by its caller
        code = ("import sys, numpy as np, datawriter; f = datawriter.open_recording(sys.argv[1]); "
                "print(int(f[sys.argv[2] + '/data'][5].astype(np.int64).sum()))")
        out = subprocess.run([sys.executable, "-c", code, path, _group(ring_device)], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0 and int(out.stdout) == int(frames[5].astype(np.int64).sum()), out.stderr
    with h5py.File(path, "r") as f:  # the layout: the standard filter, one frame per chunk
        ds = f[_group(ring_device) + "/data"]
        assert ds.chunks == (1, H, W)
        dcpl = ds.id.get_create_plist()
        assert dcpl.get_nfilters() == 1
        fid, _flags, cd_values, _name = dcpl.get_filter(0)
        codec = compression.BLOSC2_CODECS[comp]
        assert fid == BLOSC2_FILTER_ID
        # hdf5plugin's layout: revision, block size, type size, chunk bytes, clevel, shuffle, codec, rank, shape
        assert tuple(cd_values[2:]) == (2, H * W * 2, codec.clevel, 2 if codec.bitshuffle else 1,
                                        1 if codec.cname == "lz4" else 5, 3, 1, H, W)
        assert ds.id.get_num_chunks() == len(frames)
        sizes = [ds.id.get_chunk_info(i).size for i in range(len(frames))]
        assert all(0 < s < H * W * 2 for s in sizes), sizes  # each chunk is one compressed frame
        assert ds.id.get_storage_size() == sum(sizes)
        assert int(f[_group(ring_device) + "/lost_records"][()]) == 0
        # the chunk itself: the codec, level, shuffle and block size the value promises
        # (blosc2-zstd uses bit shuffle and 1 MiB blocks: on camera frames both denser and ~1.7x
        # faster than byte shuffle, docs/design.md)
        import blosc2

        _mask, chunk = ds.id.read_direct_chunk((0, 0, 0))
        stored = blosc2.schunk_from_cframe(chunk, copy=True)
        cp = stored.cparams
        assert (cp.codec.name.lower(), cp.clevel, cp.typesize) == (codec.cname, codec.clevel, 2)
        shuffle = blosc2.Filter.BITSHUFFLE if codec.bitshuffle else blosc2.Filter.SHUFFLE
        assert shuffle in cp.filters
        if codec.blocksize:  # a block is never larger than the frame (these test frames are small)
            assert blosc2.get_cbuffer_sizes(stored.get_chunk(0))[2] == min(codec.blocksize, H * W * 2)
    assert rec.sink.compression_ratio == pytest.approx(frames.nbytes / sum(sizes))


def test_torn_and_overrun_frames_counted_as_lost_never_kept(tmp_path, ring_device: str, monkeypatch) -> None:
    """The first frame is overwritten in its ring slot while a worker compresses it, and the ring
    laps the reader meanwhile: the torn frame is dropped and counted, the overrun ones too, and
    every frame kept is the frame its number says (written + lost = produced)."""
    slots = 4
    frames = camera_frames(3 * slots + 2, seed=7)
    for i, fr in enumerate(frames):
        fr[0, :4] = i  # the frame's own number in its pixels
    cam = create_frame_stream(ring_device, height=H, width=W, slot_count=slots)
    started, release = threading.Event(), threading.Event()
    real_encode = compression.Blosc2FrameEncoder.encode
    calls = []

    def slow_first(self, frame):  # noqa: ANN001, ANN202
        calls.append(1)
        if len(calls) == 1:
            started.set()
            assert release.wait(10)
        return real_encode(self, frame)

    monkeypatch.setattr(compression.Blosc2FrameEncoder, "encode", slow_first)
    cam.write(frames[0], 0, time.time())
    path = str(tmp_path / "torn.h5")
    rec = _record(path, cam.name, "blosc2-lz4")
    reader = rec.readers[cam.name]
    rec.start()
    assert started.wait(10)
    for i in range(1, len(frames)):  # laps the 4-slot ring: slot 0 is overwritten under the worker
        cam.write(frames[i], i, time.time())
    release.set()
    wait_until(lambda: rec.stats().records_written + rec.stats().dropped_records == len(frames),
               what="every frame written or counted lost")
    torn = reader.lost_torn  # read before stop closes the reader
    assert rec.stop(10) and rec.error is None
    assert torn >= 1, "the frame overwritten under the worker must be counted as torn"
    st = rec.stats()
    with h5py.File(path, "r") as f:
        g = f[_group(ring_device)]
        numbers = [int(n) for n in g["frame_number"][()]]
        data = g["data"][()]
        lost = int(g["lost_records"][()])
    assert 0 not in numbers, "a frame overwritten while being compressed was kept"
    assert len(numbers) == st.records_written and lost == st.dropped_records > 0
    assert len(numbers) + lost == len(frames)
    for n, fr in zip(numbers, data, strict=True):
        assert fr.tobytes() == frames[n].tobytes(), f"frame {n} is not the frame that was produced"


def test_unknown_compression_refused_with_the_allowed_values(tmp_path, ring_device: str) -> None:
    cam = create_frame_stream(ring_device, height=H, width=W, slot_count=4)
    r = RingReader(cam.name)
    for bad in ("blosc2", "gzip", "BLOSC2-LZ4"):
        with pytest.raises(ValueError, match="must be one of none, .*blosc2-lz4, blosc2-zstd"):
            Hdf5Sink(str(tmp_path / "x.h5"), [StreamSpec(cam.name, r.schema, r.description)], compression=bad)
    assert not os.path.exists(tmp_path / "x.h5")
    assert set(COMPRESSIONS) >= {"none", "blosc2-lz4", "blosc2-zstd", "bitshuffle-lz4", "lz4", "zstd"}


@pytest.mark.parametrize("sigma", [12.0, 250.0])
def test_sim_frames_have_a_real_cameras_noise_for_any_spot(sigma: float) -> None:
    """Offset, read noise and shot noise (variance = signal at unit gain) in the simulated
    camera's frames, for the lab's spot and a beam filling the sensor (which had no shot noise
    before), so compressing them gives the ratio a real camera's frames give."""
    from deviceservers.Pvcam.sim import OFFSET_ADU, READ_NOISE_ADU, SimulatedPrimeBsi

    peak, cx, cy = 1500.0, 1000.0, 1100.0
    cam = SimulatedPrimeBsi(scene=lambda t: (cx, cy, sigma, peak), free_run=True, seed=11)
    cam.open()
    cam.set_exposure(1e-3)
    cam.start_live(4)
    a, b = (cam.poll_frame(1.0).pixels.astype(np.float64) for _ in range(2))
    cam.stop()
    r = 12 if sigma < 50 else 40  # around the spot's centre
    yc, xc = int(cy), int(cx)
    centre = np.s_[yc - r : yc + r, xc - r : xc + r]
    y, x = np.mgrid[centre]
    signal = peak * np.exp(-((x + 0.5 - cx) ** 2 + (y + 0.5 - cy) ** 2) / (2 * sigma**2))
    assert np.mean(a[centre] - OFFSET_ADU) == pytest.approx(signal.mean(), rel=0.03)
    noise_var = np.mean((a[centre] - b[centre]) ** 2) / 2  # two frames: the signal cancels, the noise adds
    assert noise_var == pytest.approx(signal.mean() + READ_NOISE_ADU**2, rel=0.1)
    dark = np.s_[10:300, 10:300] if sigma < 50 else np.s_[5:40, 1900:2040]  # far from the spot
    assert np.median(a[dark]) == OFFSET_ADU
    assert np.std(a[dark]) == pytest.approx(READ_NOISE_ADU, rel=0.1)
    for comp in compression.BLOSC2_CODECS:  # neither flat nor incompressible: a camera's frame
        ratio = a.size * 2 / len(compression.Blosc2FrameEncoder(comp, 2, a.size * 2).encode(a.astype(np.uint16)))
        assert 2.0 < ratio < 7.0, (comp, ratio)


def test_compressed_recording_follows_rings_recreated_with_frames_in_flight(tmp_path, ring_device: str) -> None:
    """A camera that restarts (same shape) and changes its ROI (new shape) while frames are being
    compressed: the old ring's frames still in the workers are written before the switch, into
    the right group, nothing lost, every frame bit-exact."""
    import multiprocessing as mp

    import datawriter
    from tests.unit.test_recorder import _camera

    ctx = mp.get_context("fork")
    name = datawriter.stream_name(ring_device, "frames")
    steps, done = [ctx.Event() for _ in range(3)], ctx.Event()
    path = str(tmp_path / "follow.h5")
    rec = Recorder(Hdf5Sink(path, [], compression="blosc2-zstd"), {}, record_new_streams=True, flush_interval=0.05)
    rec.start()
    p = ctx.Process(target=_camera, args=(ring_device, steps, done))
    p.start()
    try:
        frames = lambda: rec.stats().per_stream.get(name, {}).get("records", 0)  # noqa: E731
        for step, total in enumerate((30, 40, 55)):
            steps[step].set()
            wait_until(lambda total=total: frames() == total, what=f"{total} frames")
        assert done.wait(20)
    finally:
        p.join(20)
        assert rec.stop(20)
    assert rec.error is None and p.exitcode == 0 and rec.stats().dropped_records == 0
    with h5py.File(path, "r") as f:
        g = f[f"entry/instrument/{ring_device.replace('/', '_')}"]
        a, b = g["frames"], g["frames_2"]
        assert a["data"].id.get_create_plist().get_filter(0)[0] == BLOSC2_FILTER_ID
        assert list(a["frame_number"][:]) == list(range(40)) and list(b["frame_number"][:]) == list(range(15))
        want_a = [np.full((16, 24), n + (1000 if n >= 30 else 0), np.uint16) for n in range(40)]
        assert a["data"][()].tobytes() == np.stack(want_a).tobytes()
        assert b["data"][()].tobytes() == np.stack([np.full((8, 12), 2000 + n, np.uint16) for n in range(15)]).tobytes()
        assert int(a["lost_records"][()]) == 0 == int(b["lost_records"][()])

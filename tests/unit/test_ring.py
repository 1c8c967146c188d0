"""Shared-memory ring: format, wrap/overrun accounting, torn reads, processes, crash, time travel."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import numpy as np
import pyarrow as pa
import pytest

import datawriter
from datawriter import ring_format as rf
from datawriter.ring import RingError, RingInUseError, RingReader, create_frame_stream, create_scalar_stream
from tests.waiting import wait_until

CTX = mp.get_context("fork")


@pytest.fixture
def device(ring_device: str) -> str:
    return ring_device


def frame(value: int, h: int = 32, w: int = 48) -> np.ndarray:
    return np.full((h, w), value & 0xFFFF, dtype=np.uint16)


def test_frame_roundtrip_schema_description_and_listing(device: str) -> None:
    w = create_frame_stream(device, height=32, width=48, slot_count=4, units="counts", description="sim camera")
    assert w.name in datawriter.list_streams()
    img = np.arange(32 * 48, dtype=np.uint16).reshape(32, 48)
    w.write(img, 7, 1.5, 1.75, 0.01)
    r = datawriter.open_reader(w.name, start="oldest")
    assert r.description["producer_device"] == device
    assert r.description["units"]["frame"] == "counts"
    assert r.schema.field("frame").type.shape == [32, 48]
    rec = r.read_next(copy=False)
    assert rec is not None and rec.n_rows == 1 and rec.is_view
    got = rec.batch.column("frame").to_numpy_ndarray()[0]
    assert np.array_equal(got, img)
    assert rec.batch.column("frame_number")[0].as_py() == 7
    assert rec.batch.column("timestamp_bof").cast(pa.int64())[0].as_py() == 1_500_000_000
    assert rec.batch.column("exposure_time")[0].as_py() == 0.01
    assert rec.is_valid() and r.lost == 0
    assert r.read_next() is None
    # a slot is a complete Arrow IPC stream on its own
    with open(r.path, "rb") as f:
        f.seek(r.geometry.payload_offset(0) + int(r._slots[0, rf.S_STREAM_OFFSET]))
        payload = f.read(int(r._slots[0, rf.S_PAYLOAD_LEN]))
    assert pa.ipc.open_stream(payload).read_all().num_rows == 1
    with pytest.raises(ValueError):
        w.write(np.zeros((10, 10), np.uint16), 8, 2.0)
    with pytest.raises(RingError, match="no stream"):
        datawriter.open_reader(w.name + "x")


def test_frame_pixels_sit_on_page_boundaries_in_the_ring(device: str) -> None:
    """What lets the DataWriter write frames with O_DIRECT straight from the ring."""
    w = create_frame_stream(device, height=100, width=130, slot_count=6, frames_per_record=2)
    r = RingReader(w.name, start="oldest")
    for i in range(4):
        w.write(frame(i, 100, 130), i, float(i))
    w.write_many(np.stack([frame(7, 100, 130), frame(8, 100, 130)]), [7, 8], [7.0, 8.0])
    w.write_many(np.stack([frame(9, 100, 130), frame(10, 100, 130)]), [9, 10], [9.0, 10.0])
    records = list(iter(lambda: r.read_next(copy=False), None))
    pixels = [rec.batch.column("frame").storage.values.buffers()[1] for rec in records]
    # the first record of each size is written unpadded and teaches the writer the padding
    aligned = [p.address % rf.PAGE == 0 for p in pixels]
    assert aligned[1:4] == [True] * 3 and aligned[5], aligned
    values = [rec.batch.column("frame").to_numpy_ndarray()[:, 50, 60].tolist() for rec in records]
    assert values == [[0], [1], [2], [3], [7, 8], [9, 10]] and r.lost == 0


def test_a_slow_consumer_skips_records_about_to_be_overwritten(device: str) -> None:
    w = create_frame_stream(device, height=8, width=8, slot_count=16)
    for i in range(15):  # record 0 is one write away from being overwritten
        w.write(frame(i, 8, 8), i, float(i))
    plain = RingReader(w.name, start="oldest")
    assert plain.read_next(copy=False).seq == 0 and plain.lost == 0
    slow = RingReader(w.name, start="oldest")
    rec = slow.read_next(copy=False, min_headroom=4)
    assert rec.seq == 7 and slow.lost_overrun == 7, "skips to half the ring, counting the skipped as lost"
    assert [r.seq for r in iter(lambda: slow.read_next(copy=False, min_headroom=4), None)] == list(range(8, 15))


def test_wrap_and_overrun_counting(device: str) -> None:
    w = create_frame_stream(device, height=8, width=8, slot_count=8)
    r = RingReader(w.name, start="oldest")
    for i in range(5):
        w.write(frame(i, 8, 8), i, float(i))
    assert [rec.batch.column("frame_number")[0].as_py() for rec in iter(r.read_next, None)] == list(range(5))
    for i in range(5, 25):  # 20 more into 8 slots while the reader sleeps
        w.write(frame(i, 8, 8), i, float(i))
    got = [rec.batch.column("frame_number")[0].as_py() for rec in iter(r.read_next, None)]
    assert r.lost_overrun == 20 - len(got) and r.lost_torn == 0
    assert got == list(range(25 - len(got), 25)), "after an overrun the reader resumes in order"
    assert 0 < len(got) < 8
    # an independent reader started at "oldest" sees exactly the last slot_count - 1 records
    r2 = RingReader(w.name, start="oldest")
    assert [rec.seq for rec in iter(r2.read_next, None)] == list(range(17, 25))[1:]


def test_torn_view_is_detected_and_counted(device: str) -> None:
    w = create_frame_stream(device, height=8, width=8, slot_count=4)
    r = RingReader(w.name, start="latest")
    w.write(frame(1, 8, 8), 1, 1.0)
    rec = r.read_next(copy=False)
    assert rec is not None and rec.is_valid()
    for i in range(2, 7):  # lap the slot the view points into
        w.write(frame(i, 8, 8), i, float(i))
    assert not rec.is_valid()
    assert not rec.is_valid(), "a torn record is counted once"
    assert r.lost_torn == 1
    copy = RingReader(w.name, start="oldest").read_next(copy=True)
    assert copy is not None
    for i in range(7, 20):
        w.write(frame(i, 8, 8), i, float(i))
    assert copy.is_valid(), "copies own their memory"
    assert copy.batch.column("frame").to_numpy_ndarray()[0, 0, 0] == copy.batch.column("frame_number")[0].as_py()


def test_write_in_progress_is_not_read(device: str) -> None:
    """A slot whose seqlock is odd (producer mid-write, or died there) is never handed out."""
    w = create_frame_stream(device, height=8, width=8, slot_count=4)
    r = RingReader(w.name, start="latest")
    w.write(frame(0, 8, 8), 0, 0.0)
    w.ring._slots[1, rf.S_LOCK] = 2 * 1 + 1  # what a producer leaves when killed while writing record 1
    w.ring._hdr[rf.H_WRITE_SEQ] = 1
    assert r.read_next() is not None
    assert r.read_next() is None and r.lost == 0


def _producer(dev: str, h: int, w: int, slots: int, seconds: float, ready, total) -> None:  # noqa: ANN001
    writer = create_frame_stream(dev, height=h, width=w, slot_count=slots)
    assert ready.wait(20)
    img = np.empty((h, w), np.uint16)
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        img.fill(n & 0xFFFF)
        writer.write(img, n, time.time())
        n += 1
    total.value = n
    writer.close()


def _consumer(name: str, copy: bool, ready, results) -> None:  # noqa: ANN001
    while name not in datawriter.list_streams():
        time.sleep(0.001)
    r = RingReader(name, start="oldest")
    ready.release()
    received = bad = 0
    last = -1
    for rec in r.records(timeout=20, copy=copy):
        fn = rec.batch.column("frame_number")[0].as_py()
        px = rec.batch.column("frame").to_numpy_ndarray()[0]
        consistent = bool((px == (fn & 0xFFFF)).all()) and fn > last
        if not rec.is_valid():
            continue  # torn view: counted in r.lost_torn, data discarded
        received += 1
        bad += not consistent
        last = fn
    results.put((received, r.lost, r.lost_torn, bad))


def test_concurrent_producer_and_two_consumer_processes(device: str) -> None:
    name = datawriter.stream_name(device, "frames")
    ready_evt = CTX.Event()
    sem = CTX.Semaphore(0)
    total = CTX.Value("q", -1)
    results = CTX.Queue()
    prod = CTX.Process(target=_producer, args=(device, 128, 128, 8, 1.5, ready_evt, total))
    cons = [CTX.Process(target=_consumer, args=(name, copy, sem, results)) for copy in (True, False)]
    prod.start()
    for c in cons:
        c.start()
    for _ in cons:
        assert sem.acquire(timeout=20)
    ready_evt.set()
    outs = [results.get(timeout=30) for _ in cons]
    for p in (prod, *cons):
        p.join(10)
        assert p.exitcode == 0
    assert total.value > 100
    for received, lost, _torn, bad in outs:
        assert bad == 0, "a consumer received a torn or out-of-order frame"
        assert received + lost == total.value, "every frame is either received or counted as lost"
        assert received > 0


def _endless_producer(dev: str) -> None:
    writer = create_frame_stream(dev, height=1024, width=1024, slot_count=8)
    img = np.empty((1024, 1024), np.uint16)
    n = 0
    while True:
        img.fill(n & 0xFFFF)
        writer.write(img, n, time.time())
        n += 1


def test_producer_killed_mid_write_leaves_ring_readable(device: str) -> None:
    name = datawriter.stream_name(device, "frames")
    p = CTX.Process(target=_endless_producer, args=(device,))
    p.start()
    try:
        wait_until(lambda: name in datawriter.list_streams(), what="ring")
        r = RingReader(name, start="latest")
        wait_until(lambda: r.write_seq > 30, what="frames")
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
    ws = r.write_seq
    r2 = RingReader(name, start="oldest")
    seen = []
    for rec in r2.records(timeout=5):  # must end by itself: the producer is dead
        fn = rec.batch.column("frame_number")[0].as_py()
        assert (rec.batch.column("frame").to_numpy_ndarray()[0] == (fn & 0xFFFF)).all()
        seen.append(fn)
    assert r2.finished() and not r2.producer_alive()
    assert seen == list(range(ws - len(seen), ws)) and len(seen) >= 6
    # a restarted producer takes the name over
    w = create_frame_stream(device, height=8, width=8, slot_count=4)
    assert w.write(frame(1, 8, 8), 1, 1.0) == 0
    assert r2.replaced()


def _holder(dev: str, ready, release) -> None:  # noqa: ANN001
    create_scalar_stream(dev, "power")
    ready.set()
    release.wait(20)


def test_second_live_producer_is_refused(device: str) -> None:
    ready, release = CTX.Event(), CTX.Event()
    p = CTX.Process(target=_holder, args=(device, ready, release))
    p.start()
    try:
        assert ready.wait(20)
        with pytest.raises(RingInUseError):
            create_scalar_stream(device, "power")
    finally:
        release.set()
        p.join(10)


def test_scalars_batches_and_time_travel(device: str) -> None:
    w = create_scalar_stream(device, "power", units="W", rows_per_record=100, slot_count=64,
                             extra_columns={"range": (np.int8, "")})
    now = time.time()
    # 10 s of data at 1 kHz, in the past: records of 100 rows = 0.1 s each
    ts = now - 10 + np.arange(10_000) * 1e-3
    assert w.write(ts, np.arange(10_000, dtype=float), range=np.ones(10_000, np.int8)) == 100
    before = time.time()  # "3.05 s back" is from the open, however long the writes above took
    r = datawriter.open_reader(w.name, seconds_back=3.05)
    after = time.time()
    rec = r.read_next()
    assert rec is not None
    t = rec.batch.column("timestamp").cast(pa.int64()).to_numpy() / 1e9
    assert t[-1] >= before - 3.05 and after - 3.05 > t[0] - 0.1
    rows = rec.n_rows + sum(x.n_rows for x in iter(r.read_next, None))
    late_ms = (after - now) * 1000  # rows between the data's end and "3.05 s back" from the open
    assert 3050 - late_ms - 100 <= rows <= 3050 + 100 and r.lost == 0
    # older than the ring holds: start at the oldest surviving record, nothing reported lost
    r_old = datawriter.open_reader(w.name, seconds_back=60)
    assert r_old.next_seq == w.ring.write_seq - 64 + 1
    assert datawriter.open_reader(w.name).latest().batch.column("value")[-1].as_py() == 9999.0
    with pytest.raises(TypeError):
        w.write(ts[:10], np.zeros(10), bogus=np.zeros(10))


def _produce_in(folder: str, ring_mb: float, frames: int, out) -> None:  # noqa: ANN001
    """Child process: a camera-sized producer in ``folder``; tells what happened, or dies trying."""
    os.environ["TANGODAQ_SHM_DIR"] = folder
    try:
        w = create_frame_stream("test/ring/tiny", height=256, width=512, ring_size_mb=ring_mb)
    except RingError as exc:
        out.put(("refused", str(exc)))
        return
    for i in range(frames):
        w.write(frame(i, 256, 512), i, time.time())
    blocks = os.stat(w.ring.path).st_blocks * 512
    out.put(("wrote", (blocks, w.ring.geometry.file_size)))
    w.close(unlink=True)


def test_a_ring_that_does_not_fit_its_file_system_is_refused_at_creation(tiny_fs: str) -> None:
    """A 3 MB shared-memory file system (a container's /dev/shm is 64 MB): a ring's file used to be
    sparse, and the producer was killed by SIGBUS at its first frame past the free space, in the
    middle of an acquisition. Now the whole ring is allocated when it is created: one that does not
    fit is refused there with what to change, and one that fits owns all its pages."""
    out = CTX.Queue()
    for ring_mb, expect in ((8.0, "refused"), (1.0, "wrote")):
        p = CTX.Process(target=_produce_in, args=(tiny_fs, ring_mb, 32, out))  # 32 frames of 256 KiB
        p.start()
        p.join(30)
        assert p.exitcode == 0, f"the producer of a {ring_mb} MiB ring died (exit code {p.exitcode}: -7 is SIGBUS)"
        what, detail = out.get(timeout=5)
        assert what == expect, (ring_mb, what, detail)
        if what == "refused":
            assert "do not fit in" in detail and "MiB free" in detail and "RingSizeMB" in detail, detail
            assert not [f for f in os.listdir(tiny_fs) if f.startswith(".")], "the half-made ring was left behind"
        else:
            blocks, size = detail
            assert blocks >= size, f"the ring is sparse: {blocks} of {size} bytes allocated"


def _replace_in(folder: str, out) -> None:  # noqa: ANN001
    """Child process: a ring filling most of ``folder``, closed (as a camera does before a new
    ROI, or left by a server that died), then re-created under the same name with a new shape."""
    os.environ["TANGODAQ_SHM_DIR"] = folder
    first = create_frame_stream("test/ring/tiny", height=256, width=512, ring_size_mb=2.0)
    first.write(frame(1, 256, 512), 1, time.time())
    first.close()  # not unlinked: its readers may still be draining it
    try:
        second = create_frame_stream("test/ring/tiny", height=128, width=512, ring_size_mb=2.0)
    except RingError as exc:
        out.put(("refused", str(exc)))
        return
    second.write(frame(2, 128, 512), 1, time.time())
    out.put(("replaced", sorted(os.listdir(folder))))
    second.close(unlink=True)


def test_a_ring_replacing_its_predecessor_needs_room_for_one_ring_not_two(tiny_fs: str) -> None:
    """With whole rings allocated at creation, the old ring of the same name (still in the folder
    until the new one is renamed over it) must not make a folder with room for one ring refuse
    the second: a camera's ROI change or a server restart on a container's /dev/shm."""
    out = CTX.Queue()
    p = CTX.Process(target=_replace_in, args=(tiny_fs, out))
    p.start()
    p.join(30)
    assert p.exitcode == 0, f"the producer died (exit code {p.exitcode})"
    what, detail = out.get(timeout=5)
    assert what == "replaced", detail
    assert detail == ["tangodaq.test.ring.tiny.frames"], detail

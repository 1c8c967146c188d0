"""Frames: producer (own process) -> shared-memory ring -> Recorder (the DataWriter's engine) -> HDF5.

The frames are the simulated Prime BSI's (``deviceservers/Pvcam/sim.py``: ~100 ADU offset, read
noise, a beam spot with shot noise; ``--beam-sigma``/``--beam-peak``), pre-rendered (16 distinct
frames) so the producer costs what a camera's frames cost the host: a copy into the ring. Each
compression (``--compressions``, default raw, ``blosc2-lz4`` and ``blosc2-zstd``) runs a paced
phase (``--fps``, 100) and a full-speed phase, in one run.

Prints per phase the sustained fps (frames written per second while the producer runs, after a
0.5 s warm-up, next to the producer's own rate over the same window), frames lost, the compression
ratio (frame bytes / bytes in the file), MB/s to disk, next to the raw sequential write bandwidth
of the same disk and a naive h5py ``ds[i] = frame`` writer, all measured in the same run, and the
single-core speed and ratio of each codec on the frames. For each full-speed phase it also prints
the CPU time the producer and the writer side used per frame and the rate the machine's cores
allow with them: a compressed recording cannot beat a raw one whose disk is faster than that
bound. Ratios are printed, nothing is asserted (targets: >= 100 fps paced with zero loss for
every compression, full-speed compressed fps >= raw full-speed fps, raw >= 0.5 x raw disk
bandwidth). "drain" is the time from the producer's end until the file is closed.

    python benchmarks/bench_frames.py            # 30 s per phase
    python benchmarks/bench_frames.py --quick    # 3 s per phase
    python benchmarks/bench_frames.py --quick --baseline 1f657cd
        # also runs the DataWriter code of that git revision (in a subprocess, same disk, same
        # settings, raw frames only) and prints both side by side with the after/before ratios
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import mmap
import multiprocessing as mp
import os
import tempfile
import time
import uuid

import h5py
import numpy as np
from baseline import package_dir, run_at_revision
from ring_folder import private_ring_folder

from datawriter.hdf5_sink import Hdf5Sink, StreamSpec
from datawriter.recorder import Recorder
from datawriter.ring import RingReader, create_frame_stream, remove_stream

H = W = 2048
FRAME_BYTES = H * W * 2
N_FRAMES = 16  # distinct pre-rendered frames the producer cycles through
DEFAULT_COMPRESSIONS = "none,blosc2-lz4,blosc2-zstd"
#: the Recorder publishes its counters every ``stats_interval`` (0.25 s by default): the samples of
#: the writer's progress below need them fresher than their own 50 ms (a --baseline revision may not
#: have the argument)
_RECORDER_ARGS = inspect.signature(Recorder).parameters


def camera_frames(n: int, beam_sigma: float, beam_peak: float, seed: int = 1) -> list[np.ndarray]:
    """``n`` full frames of the simulated Prime BSI with a beam of ``beam_sigma`` px and
    ``beam_peak`` ADU near the centre (each with its own noise; the beam wanders a little)."""
    from deviceservers.Pvcam.sim import SimulatedPrimeBsi

    rng = np.random.default_rng(seed)
    spots = [(1024.0 + rng.normal(0, 3), 1000.0 + rng.normal(0, 3)) for _ in range(n)]
    k = iter(range(n))
    cam = SimulatedPrimeBsi(scene=lambda t: (*spots[next(k) % n], beam_sigma, beam_peak), free_run=True, seed=seed)
    cam.open()
    cam.set_exposure(1e-3)
    cam.start_live(4)
    try:
        return [cam.poll_frame(1.0).pixels for _ in range(n)]
    finally:
        cam.stop()
        cam.close()


def producer(device: str, fps: float, seconds: float, ring_mb: int, beam: tuple[float, float],
             ready, go, total, cpu, progress) -> None:  # noqa: ANN001
    frames = camera_frames(N_FRAMES, *beam)
    w = create_frame_stream(device, height=H, width=W, ring_size_mb=ring_mb)
    ready.set()
    go.wait()
    cpu0 = time.process_time()
    n, t0 = 0, time.monotonic()
    end = t0 + seconds
    while (now := time.monotonic()) < end:
        if fps > 0 and now < t0 + n / fps:
            time.sleep(min(t0 + n / fps - now, 0.002))  # pacing a simulated camera, not waiting for a condition
            continue
        w.write(frames[n % N_FRAMES], n, time.time(), time.time(), 1e-3)
        n += 1
        progress.value = n
    cpu.value = time.process_time() - cpu0  # what copying the frames into the ring cost
    total.value = n
    w.close()


def run_pipeline(folder: str, fps: float, seconds: float, ring_mb: int, compression: str,
                 beam: tuple[float, float]) -> dict:
    device = f"bench/cam/{uuid.uuid4().hex[:8]}"
    name = device.replace("/", ".") + ".frames"
    try:
        return _pipeline(device, name, folder, fps, seconds, ring_mb, compression, beam)
    finally:  # the 1 GB ring must not outlive a failed run in /dev/shm
        remove_stream(name)


def _pipeline(device: str, name: str, folder: str, fps: float, seconds: float, ring_mb: int,
              compression: str, beam: tuple[float, float]) -> dict:
    ctx = mp.get_context("fork")
    ready, go, total, cpu = ctx.Event(), ctx.Event(), ctx.Value("q", 0), ctx.Value("d", 0.0)
    progress = ctx.RawValue("q", 0)  # frames produced so far, read by the sampling below
    p = ctx.Process(target=producer, args=(device, fps, seconds, ring_mb, beam, ready, go, total, cpu, progress))
    p.start()
    ready.wait()
    reader = RingReader(name, start="latest")
    path = os.path.join(folder, f"bench_{uuid.uuid4().hex[:6]}.h5")
    rec = Recorder(Hdf5Sink(path, [StreamSpec(name, reader.schema, reader.description)], compression=compression),
                   {name: reader}, **({"stats_interval": 0.02} if "stats_interval" in _RECORDER_ARGS else {}))
    rec.start()
    t0 = time.monotonic()
    cpu0 = time.process_time()  # this process: the Recorder's threads (writer, compression, page cache)
    go.set()
    samples: list[tuple[float, int, int]] = []
    while p.is_alive():  # sample the writer's and the producer's progress while the producer runs
        samples.append((time.monotonic(), rec.stats().records_written, progress.value))
        p.join(0.05)
    t_end = time.monotonic()
    backlog_at_end = rec.stats().backlog
    rec.stop()
    t_closed = time.monotonic()
    writer_cpu = time.process_time() - cpu0
    st = rec.stats()
    warm = [x for x in samples if x[0] >= t0 + 0.5] or samples
    (ta, wa, pa), (tb, wb, pb) = warm[0], warm[-1]
    sustained = (wb - wa) / (tb - ta) if tb > ta else 0.0
    produced_rate = (pb - pa) / (tb - ta) if tb > ta else 0.0  # the producer's, over the same window
    size = os.path.getsize(path)
    frame_io = getattr(rec.sink, "frame_io", "write_direct_chunk (buffered)")  # a --baseline datawriter may predate it
    ratio = getattr(rec.sink, "compression_ratio", 0.0) or (st.records_written * FRAME_BYTES / size if size else 0.0)
    os.unlink(path)
    return {"produced": total.value, "written": st.records_written, "lost": st.dropped_records,
            "fps": sustained, "producer_fps": produced_rate, "MB/s": sustained * FRAME_BYTES / 1e6, "ratio": ratio,
            "disk_MB/s": sustained * FRAME_BYTES / ratio / 1e6 if ratio else 0.0,
            "overall_fps": st.records_written / (t_closed - t0),
            "backlog_at_end": backlog_at_end, "drain_s": t_closed - t_end,
            "file_MB": size / 1e6, "error": repr(rec.error) if rec.error else None, "frame_io": frame_io,
            "producer_cpu_ms": 1e3 * cpu.value / max(total.value, 1), "producer_cpu_s": cpu.value,
            "writer_cpu_ms": 1e3 * writer_cpu / max(st.records_written, 1)}


def run_phases(a: argparse.Namespace, secs: float, compression: str) -> tuple[dict, dict]:
    beam = (a.beam_sigma, a.beam_peak)
    paced = run_pipeline(a.dir, a.fps, secs, a.ring_mb, compression, beam)
    full = run_pipeline(a.dir, 0, secs, a.ring_mb, compression, beam)
    return paced, full


def kept_up(r: dict, fps: float, secs: float) -> bool:
    """A paced phase kept up: the producer gave the rate, nothing was lost, the writer's rate over
    the sampled window is within 3 % of the producer's over the same window (a paced producer
    catches up in bursts after the scheduler delays it, so the window's rate is the producer's,
    not exactly the asked one), and no more than 0.1 s of frames were waiting in the ring when the
    producer stopped (no growing lag; the ring itself holds seconds)."""
    return (r["lost"] == 0 and r["produced"] >= 0.97 * fps * secs and r["fps"] >= 0.97 * r["producer_fps"]
            and r["backlog_at_end"] <= max(2.0, 0.1 * fps))


def codec_table(beam_sigma: float, beam_peak: float) -> list[str]:
    """Single-core speed and ratio of each Blosc2 codec on the frames (no I/O)."""
    from datawriter.compression import BLOSC2_CODECS, Blosc2FrameEncoder

    frames = camera_frames(4, beam_sigma, beam_peak, seed=5)
    lines = []
    for comp in BLOSC2_CODECS:
        enc = Blosc2FrameEncoder(comp, 2, FRAME_BYTES)
        enc.encode(frames[0])
        t0 = time.perf_counter()
        sizes = [len(enc.encode(f)) for f in frames * 3]
        dt = (time.perf_counter() - t0) / len(sizes)
        lines.append(f"{comp}: ratio {FRAME_BYTES * len(sizes) / sum(sizes):.2f}, {dt * 1e3:.1f} ms per frame on one core "
                     f"({1 / dt:.0f} fps)")
    return lines


def run_baseline(rev: str, a: argparse.Namespace, secs: float) -> tuple[dict, dict]:
    """The phases with the datawriter package of git revision ``rev``, in a subprocess."""
    result = run_at_revision(rev, "datawriter", __file__, [
        "--phases-json", "--duration", str(secs), "--dir", a.dir, "--fps", str(a.fps), "--ring-mb", str(a.ring_mb),
        "--compressions", "none", "--beam-sigma", str(a.beam_sigma), "--beam-peak", str(a.beam_peak)])
    return result["none"]["paced"], result["none"]["full"]


def raw_disk(folder: str, nbytes: int, direct: bool) -> float:
    """Sequential 8 MiB writes of ``nbytes``: buffered (page cache, fsync at the end) or O_DIRECT
    (from a page-aligned buffer); MB/s. Both are printed: which one is the disk's real bandwidth
    depends on the disk and on how much of the run fits the kernel's dirty-page allowance."""
    mem = mmap.mmap(-1, FRAME_BYTES)  # page aligned, as O_DIRECT needs
    mem.write(np.random.default_rng(0).integers(0, 4096, FRAME_BYTES // 2, dtype=np.uint16).tobytes())
    path = os.path.join(folder, "raw.bin")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | (os.O_DIRECT if direct else 0))
    t0 = time.monotonic()
    written = 0
    while written < nbytes:
        written += os.pwrite(fd, mem, written)
    os.fsync(fd)
    dt = time.monotonic() - t0
    os.close(fd)
    os.unlink(path)
    return written / dt / 1e6


def naive_h5py(folder: str, seconds: float) -> float:
    path = os.path.join(folder, "naive.h5")
    frame = np.random.default_rng(0).integers(0, 4096, (H, W), dtype=np.uint16)
    n, t0 = 0, time.monotonic()
    with h5py.File(path, "w", libver="latest") as f:
        ds = f.create_dataset("d", (0, H, W), maxshape=(None, H, W), chunks=(1, H, W), dtype=np.uint16)
        while time.monotonic() - t0 < seconds:
            ds.resize(n + 1, axis=0)
            ds[n] = frame
            n += 1
    dt = time.monotonic() - t0
    os.unlink(path)
    return n / dt


def _line(label: str, r: dict) -> str:
    return (f"{label:>26}: produced {r['produced']:6d}  written {r['written']:6d}  lost {r['lost']:5d}  "
            f"{r['fps']:7.1f} fps  ratio {r.get('ratio', 0.0):4.2f}  {r.get('disk_MB/s', 0.0):7.1f} MB/s to disk  "
            f"backlog at end {r['backlog_at_end']:4d}  drain {r['drain_s']:5.2f} s  error={r['error']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per phase")
    ap.add_argument("--quick", action="store_true", help="3 s per phase")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="folder on the disk to measure")
    ap.add_argument("--fps", type=float, default=100.0, help="paced producer rate for the zero-loss phase")
    ap.add_argument("--ring-mb", type=int, default=1024)
    ap.add_argument("--compressions", default=DEFAULT_COMPRESSIONS,
                    help=f"comma-separated Compression values to run (default {DEFAULT_COMPRESSIONS})")
    ap.add_argument("--beam-sigma", type=float, default=150.0, help="beam spot sigma in pixels (the lab's is 12)")
    ap.add_argument("--beam-peak", type=float, default=2000.0, help="beam spot peak in ADU above the offset")
    ap.add_argument("--baseline", metavar="GIT_REV", help="also run the datawriter of this git revision, side by side")
    ap.add_argument("--phases-json", action="store_true", help=argparse.SUPPRESS)  # used by --baseline
    a = ap.parse_args()
    with private_ring_folder("bench-frames"):
        run(a)


def run(a: argparse.Namespace) -> None:
    secs = 3.0 if a.quick else a.duration
    comps = [c.strip() for c in a.compressions.split(",") if c.strip()]
    if a.phases_json:
        import datawriter

        out = {c: dict(zip(("paced", "full"), run_phases(a, secs, c), strict=True)) for c in comps}
        print(json.dumps({**out, "datawriter": package_dir(datawriter)}))
        return
    print(f"frames {H}x{W} uint16 ({FRAME_BYTES / 2**20:.0f} MiB) of the simulated Prime BSI: offset ~100 ADU, "
          f"read and shot noise, a beam of sigma {a.beam_sigma:g} px and peak {a.beam_peak:g} ADU; "
          f"{secs:.0f} s per phase, {os.cpu_count()} cores, disk folder {a.dir}")
    for line in codec_table(a.beam_sigma, a.beam_peak):
        print(f"{'codec':>26}: {line}")
    base = run_baseline(a.baseline, a, secs) if a.baseline else None
    if "none" in comps:  # raw first: its full-speed rate paces the compressed recordings' third phase
        comps.remove("none")
        comps.insert(0, "none")
    results = {c: run_phases(a, secs, c) for c in comps}
    # A camera gives frames at its own rate; the full-speed producer above instead copies frames
    # as fast as it can, most of them overwritten before anyone reads them, and takes CPU the
    # compression needs. So each compression also records a camera paced at the rate the raw
    # recording reached at full speed: "as fast as raw" in the sense a camera needs.
    at_raw: dict[str, tuple[float, dict]] = {}
    if "none" in results:
        raw_rate = math.floor(results["none"][1]["fps"])
        at_raw = {c: (raw_rate, run_pipeline(a.dir, raw_rate, secs, a.ring_mb, c, (a.beam_sigma, a.beam_peak)))
                  for c in comps if c != "none"}
    raw_bytes = int(min(1000 * secs, 8000) * 1e6)  # past the dirty-page allowance on a long run
    raw_buffered = raw_disk(a.dir, raw_bytes, direct=False)
    raw_direct = raw_disk(a.dir, raw_bytes, direct=True)
    raw = max(raw_buffered, raw_direct)
    naive = naive_h5py(a.dir, min(secs, 5.0))
    rows = []
    if base is not None:
        rows += [(f"{a.baseline} none paced {a.fps:g}", base[0]), (f"{a.baseline} none full speed", base[1])]
    for c, (paced, full) in results.items():
        rows += [(f"{c} paced {a.fps:g}", paced), (f"{c} full speed", full)]
        if c in at_raw:
            rows.append((f"{c} paced {at_raw[c][0]:g} (raw's)", at_raw[c][1]))
    for label, r in rows:
        print(_line(label, r))
    for c, (_, full) in results.items():
        print(f"{'frames written (' + c + ')':>26}: {full['frame_io']}")
    print(f"{'raw disk':>26}: {raw_buffered:7.1f} MB/s buffered (8 MiB pwrite + fsync), "
          f"{raw_direct:7.1f} MB/s O_DIRECT, {raw_bytes / 1e9:.0f} GB each; the ratio uses the better")
    print(f"{'naive h5py':>26}: {naive:7.1f} fps ({naive * FRAME_BYTES / 1e6:.1f} MB/s) with ds[i] = frame")
    for c, (paced, full) in results.items():
        print(f"{c}: paced: producer {paced['produced'] / secs:.1f} fps ({paced['producer_fps']:.1f} in the sampled "
              f"window), writer {paced['fps']:.1f} fps sustained in it, "
              f"{paced['written']} of {paced['produced']} written, {paced['lost']} lost, "
              f"{paced['backlog_at_end']} waiting at the end "
              f"(target >= {a.fps:.0f} fps, 0 lost: {'met' if kept_up(paced, a.fps, secs) else 'NOT met'}); "
              f"full speed {full['fps']:.1f} fps, ratio {full['ratio']:.2f}, {full['disk_MB/s']:.1f} MB/s to disk")
    if "none" in results:
        raw_full = results["none"][1]
        print(f"ratios: raw ring->HDF5 / raw disk = {raw_full['MB/s'] / raw:.2f} (target >= 0.5); "
              f"ring->HDF5 / naive h5py = {raw_full['fps'] / naive:.2f}x")
        for c, (_, full) in results.items():
            if c != "none":
                x = full["fps"] / max(raw_full["fps"], 1e-9)
                rate, r = at_raw[c]
                print(f"ratios: {c} full speed / raw full speed = {full['fps']:.1f} / {raw_full['fps']:.1f} fps = "
                      f"{x:.2f}; disk bandwidth {full['disk_MB/s']:.1f} vs {raw_full['disk_MB/s']:.1f} MB/s; "
                      f"a camera at raw's full-speed rate ({rate:g} fps): {r['written']} of {r['produced']} written, "
                      f"{r['lost']} lost, writer {r['fps']:.1f} fps (target: as fast as raw, 0 lost: "
                      f"{'met' if kept_up(r, rate, secs) else 'NOT met'})")
    cores = os.cpu_count() or 1
    for c, (_, full) in results.items():
        # What this machine's cores allow the writer at full speed, from the CPU the phase itself
        # used: the producer (copying frames into the ring as fast as it can, most of them to be
        # overwritten) takes its share of the cores, the writer side (reading, compressing on
        # every core, writing) gets the rest.
        prod_share = full["producer_cpu_s"] / secs
        wr = full["writer_cpu_ms"]
        bound = max(cores - prod_share, 0.0) * 1e3 / wr if wr > 0 else 0.0
        print(f"{'CPU (' + c + ')':>26}: producer {full['producer_cpu_ms']:5.2f} ms per frame, {prod_share:.2f} of a "
              f"core; writer {wr:5.2f} ms per frame written (read, compress, write); the {cores - prod_share:.2f} "
              f"cores left allow the writer at most {bound:6.1f} fps; measured {full['fps']:6.1f} = "
              f"{full['fps'] / bound if bound else 0:.2f} of that")
    if "none" in results:
        if base is not None:
            paced, full = results["none"]
            print(f"after/before ({a.baseline}): full speed fps x{full['fps'] / max(base[1]['fps'], 1e-9):.2f}, "
                  f"paced fps x{paced['fps'] / max(base[0]['fps'], 1e-9):.2f}, "
                  f"lost paced {base[0]['lost']} -> {paced['lost']}, full {base[1]['lost']} -> {full['lost']}; "
                  f"before: ring->HDF5 / raw disk = {base[1]['MB/s'] / raw:.2f}")


if __name__ == "__main__":
    main()

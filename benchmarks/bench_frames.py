"""Frames: producer (own process) -> shared-memory ring -> Recorder (the DataWriter's engine) -> HDF5.

The frames are the simulated Prime BSI's (``deviceservers/Pvcam/sim.py``: ~100 ADU offset, read
noise, a beam spot with shot noise; ``--beam-sigma``/``--beam-peak``), pre-rendered (16 distinct
frames) so the producer costs what a camera's frames cost the host: a copy into the ring. Each
compression (``--compressions``, default raw, ``blosc2-lz4`` and ``blosc2-zstd``) runs a paced
phase (``--fps``, 100) and a full-speed phase, in one run.

Prints per phase the sustained fps (frames written per second while the producer runs, after a
0.5 s warm-up), frames lost, the compression ratio (frame bytes / bytes in the file), MB/s to
disk, next to the raw sequential write bandwidth of the same disk and a naive h5py ``ds[i] =
frame`` writer, all measured in the same run, and the single-core speed and ratio of each codec
on the frames. Ratios are printed, nothing is asserted (targets: >= 100 fps paced with zero loss
for every compression, full-speed compressed fps >= raw full-speed fps, raw >= 0.5 x raw disk
bandwidth). "drain" is the time from the producer's end until the file is closed.

    python benchmarks/bench_frames.py            # 30 s per phase
    python benchmarks/bench_frames.py --quick    # 3 s per phase
    python benchmarks/bench_frames.py --quick --baseline 1f657cd
        # also runs the DataWriter code of that git revision (in a subprocess, same disk, same
        # settings, raw frames only) and prints both side by side with the after/before ratios
"""

from __future__ import annotations

import argparse
import json
import mmap
import multiprocessing as mp
import os
import subprocess
import sys
import tempfile
import time
import uuid

import h5py
import numpy as np

from datawriter.hdf5_sink import Hdf5Sink, StreamSpec
from datawriter.recorder import Recorder
from datawriter.ring import RingReader, create_frame_stream, remove_stream

H = W = 2048
FRAME_BYTES = H * W * 2
N_FRAMES = 16  # distinct pre-rendered frames the producer cycles through
DEFAULT_COMPRESSIONS = "none,blosc2-lz4,blosc2-zstd"


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
             ready, go, total) -> None:  # noqa: ANN001
    frames = camera_frames(N_FRAMES, *beam)
    w = create_frame_stream(device, height=H, width=W, ring_size_mb=ring_mb)
    ready.set()
    go.wait()
    n, t0 = 0, time.monotonic()
    end = t0 + seconds
    while (now := time.monotonic()) < end:
        if fps > 0 and now < t0 + n / fps:
            time.sleep(min(t0 + n / fps - now, 0.002))  # pacing a simulated camera, not waiting for a condition
            continue
        w.write(frames[n % N_FRAMES], n, time.time(), time.time(), 1e-3)
        n += 1
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
    ready, go, total = ctx.Event(), ctx.Event(), ctx.Value("q", 0)
    p = ctx.Process(target=producer, args=(device, fps, seconds, ring_mb, beam, ready, go, total))
    p.start()
    ready.wait()
    reader = RingReader(name, start="latest")
    path = os.path.join(folder, f"bench_{uuid.uuid4().hex[:6]}.h5")
    rec = Recorder(Hdf5Sink(path, [StreamSpec(name, reader.schema, reader.description)], compression=compression),
                   {name: reader})
    rec.start()
    t0 = time.monotonic()
    go.set()
    samples: list[tuple[float, int]] = []
    while p.is_alive():  # sample the writer's progress while the producer runs
        samples.append((time.monotonic(), rec.stats().records_written))
        p.join(0.05)
    t_end = time.monotonic()
    backlog_at_end = rec.stats().backlog
    rec.stop()
    t_closed = time.monotonic()
    st = rec.stats()
    warm = [x for x in samples if x[0] >= t0 + 0.5] or samples
    (ta, wa), (tb, wb) = warm[0], warm[-1]
    sustained = (wb - wa) / (tb - ta) if tb > ta else 0.0
    size = os.path.getsize(path)
    frame_io = getattr(rec.sink, "frame_io", "write_direct_chunk (buffered)")  # a --baseline datawriter may predate it
    ratio = getattr(rec.sink, "compression_ratio", 0.0) or (st.records_written * FRAME_BYTES / size if size else 0.0)
    os.unlink(path)
    return {"produced": total.value, "written": st.records_written, "lost": st.dropped_records,
            "fps": sustained, "MB/s": sustained * FRAME_BYTES / 1e6, "ratio": ratio,
            "disk_MB/s": sustained * FRAME_BYTES / ratio / 1e6 if ratio else 0.0,
            "overall_fps": st.records_written / (t_closed - t0),
            "backlog_at_end": backlog_at_end, "drain_s": t_closed - t_end,
            "file_MB": size / 1e6, "error": repr(rec.error) if rec.error else None, "frame_io": frame_io}


def run_phases(a: argparse.Namespace, secs: float, compression: str) -> tuple[dict, dict]:
    beam = (a.beam_sigma, a.beam_peak)
    paced = run_pipeline(a.dir, a.fps, secs, a.ring_mb, compression, beam)
    full = run_pipeline(a.dir, 0, secs, a.ring_mb, compression, beam)
    return paced, full


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
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True,
                          cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as tmp:
        archive = subprocess.run(["git", "archive", rev, "datawriter"], cwd=root, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        env = dict(os.environ, PYTHONPATH=tmp + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmd = [sys.executable, os.path.abspath(__file__), "--phases-json", "--duration", str(secs), "--dir", a.dir,
               "--fps", str(a.fps), "--ring-mb", str(a.ring_mb), "--compressions", "none",
               "--beam-sigma", str(a.beam_sigma), "--beam-peak", str(a.beam_peak)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the baseline run of {rev} failed:\n{done.stderr}")
        out = done.stdout
        result = json.loads(out.strip().splitlines()[-1])
        assert result["datawriter"].startswith(tmp), f"baseline ran {result['datawriter']}, not revision {rev}"
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
    secs = 3.0 if a.quick else a.duration
    comps = [c.strip() for c in a.compressions.split(",") if c.strip()]
    if a.phases_json:
        import datawriter

        out = {c: dict(zip(("paced", "full"), run_phases(a, secs, c), strict=True)) for c in comps}
        print(json.dumps({**out, "datawriter": os.path.dirname(datawriter.__file__)}))
        return
    print(f"frames {H}x{W} uint16 ({FRAME_BYTES / 2**20:.0f} MiB) of the simulated Prime BSI: offset ~100 ADU, "
          f"read and shot noise, a beam of sigma {a.beam_sigma:g} px and peak {a.beam_peak:g} ADU; "
          f"{secs:.0f} s per phase, {os.cpu_count()} cores, disk folder {a.dir}")
    for line in codec_table(a.beam_sigma, a.beam_peak):
        print(f"{'codec':>26}: {line}")
    base = run_baseline(a.baseline, a, secs) if a.baseline else None
    results = {c: run_phases(a, secs, c) for c in comps}
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
    for label, r in rows:
        print(_line(label, r))
    for c, (_, full) in results.items():
        print(f"{'frames written (' + c + ')':>26}: {full['frame_io']}")
    print(f"{'raw disk':>26}: {raw_buffered:7.1f} MB/s buffered (8 MiB pwrite + fsync), "
          f"{raw_direct:7.1f} MB/s O_DIRECT, {raw_bytes / 1e9:.0f} GB each; the ratio uses the better")
    print(f"{'naive h5py':>26}: {naive:7.1f} fps ({naive * FRAME_BYTES / 1e6:.1f} MB/s) with ds[i] = frame")
    for c, (paced, full) in results.items():
        # kept up: nothing lost, the writer's rate within the 3 % the 50 ms progress samples allow,
        # and no more than 50 ms of frames waiting in the ring when the producer stopped
        kept_up = (paced["lost"] == 0 and paced["fps"] >= 0.97 * a.fps
                   and paced["backlog_at_end"] <= max(2.0, 0.05 * a.fps))
        print(f"{c}: paced: producer {paced['produced'] / secs:.1f} fps, writer {paced['fps']:.1f} fps sustained, "
              f"{paced['written']} of {paced['produced']} written, {paced['lost']} lost, "
              f"{paced['backlog_at_end']} waiting at the end "
              f"(target >= {a.fps:.0f} fps, 0 lost: {'met' if kept_up else 'NOT met'}); "
              f"full speed {full['fps']:.1f} fps, ratio {full['ratio']:.2f}, {full['disk_MB/s']:.1f} MB/s to disk")
    if "none" in results:
        raw_full = results["none"][1]
        print(f"ratios: raw ring->HDF5 / raw disk = {raw_full['MB/s'] / raw:.2f} (target >= 0.5); "
              f"ring->HDF5 / naive h5py = {raw_full['fps'] / naive:.2f}x")
        for c, (_, full) in results.items():
            if c != "none":
                x = full["fps"] / max(raw_full["fps"], 1e-9)
                print(f"ratios: {c} full speed / raw full speed = {full['fps']:.1f} / {raw_full['fps']:.1f} fps = "
                      f"{x:.2f} (target >= 1: {'met' if x >= 1 else 'NOT met'}); disk bandwidth "
                      f"{full['disk_MB/s']:.1f} vs {raw_full['disk_MB/s']:.1f} MB/s")
        if base is not None:
            paced, full = results["none"]
            print(f"after/before ({a.baseline}): full speed fps x{full['fps'] / max(base[1]['fps'], 1e-9):.2f}, "
                  f"paced fps x{paced['fps'] / max(base[0]['fps'], 1e-9):.2f}, "
                  f"lost paced {base[0]['lost']} -> {paced['lost']}, full {base[1]['lost']} -> {full['lost']}; "
                  f"before: ring->HDF5 / raw disk = {base[1]['MB/s'] / raw:.2f}")


if __name__ == "__main__":
    main()

"""Frames: producer (own process) -> shared-memory ring -> Recorder (the DataWriter's engine) -> HDF5.

Prints sustained fps (frames written per second while the producer runs, after a 0.5 s
warm-up), MB/s and frames lost, next to the raw sequential write bandwidth of the same disk and a
naive h5py ``ds[i] = frame`` writer, all measured in the same run. Ratios are printed, nothing is
asserted (targets: >= 100 fps with zero loss, >= 0.5 x raw disk bandwidth). "drain" is the time
from the producer's end until the file is closed (backlog + close).

    python benchmarks/bench_frames.py            # 30 s per phase
    python benchmarks/bench_frames.py --quick    # 3 s per phase
    python benchmarks/bench_frames.py --quick --baseline 1f657cd
        # also runs the DataWriter code of that git revision (in a subprocess, same disk, same
        # settings) and prints both side by side with the after/before ratios
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


def producer(device: str, fps: float, seconds: float, ring_mb: int, ready, go, total) -> None:  # noqa: ANN001
    frames = [np.random.default_rng(i).integers(0, 4096, (H, W), dtype=np.uint16) for i in range(4)]
    w = create_frame_stream(device, height=H, width=W, ring_size_mb=ring_mb)
    ready.set()
    go.wait()
    n, t0 = 0, time.monotonic()
    end = t0 + seconds
    while (now := time.monotonic()) < end:
        if fps > 0 and now < t0 + n / fps:
            time.sleep(min(t0 + n / fps - now, 0.002))  # pacing a simulated camera, not waiting for a condition
            continue
        w.write(frames[n % 4], n, time.time(), time.time(), 1e-3)
        n += 1
    total.value = n
    w.close()


def run_pipeline(folder: str, fps: float, seconds: float, ring_mb: int, compression: str) -> dict:
    device = f"bench/cam/{uuid.uuid4().hex[:8]}"
    name = device.replace("/", ".") + ".frames"
    try:
        return _pipeline(device, name, folder, fps, seconds, ring_mb, compression)
    finally:  # the 1 GB ring must not outlive a failed run in /dev/shm
        remove_stream(name)


def _pipeline(device: str, name: str, folder: str, fps: float, seconds: float, ring_mb: int,
              compression: str) -> dict:
    ctx = mp.get_context("fork")
    ready, go, total = ctx.Event(), ctx.Event(), ctx.Value("q", 0)
    p = ctx.Process(target=producer, args=(device, fps, seconds, ring_mb, ready, go, total))
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
    os.unlink(path)
    return {"produced": total.value, "written": st.records_written, "lost": st.dropped_records,
            "fps": sustained, "MB/s": sustained * FRAME_BYTES / 1e6, "overall_fps": st.records_written / (t_closed - t0),
            "backlog_at_end": backlog_at_end, "drain_s": t_closed - t_end,
            "file_MB": size / 1e6, "error": repr(rec.error) if rec.error else None, "frame_io": frame_io}


def run_phases(a: argparse.Namespace, secs: float) -> tuple[dict, dict]:
    paced = run_pipeline(a.dir, a.fps, secs, a.ring_mb, a.compression)
    full = run_pipeline(a.dir, 0, secs, a.ring_mb, a.compression)
    return paced, full


def run_baseline(rev: str, a: argparse.Namespace, secs: float) -> tuple[dict, dict]:
    """The phases with the datawriter package of git revision ``rev``, in a subprocess."""
    root = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True, check=True,
                          cwd=os.path.dirname(os.path.abspath(__file__))).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="bench-baseline-") as tmp:
        archive = subprocess.run(["git", "archive", rev, "datawriter"], cwd=root, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        env = dict(os.environ, PYTHONPATH=tmp + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmd = [sys.executable, os.path.abspath(__file__), "--phases-json", "--duration", str(secs), "--dir", a.dir,
               "--fps", str(a.fps), "--ring-mb", str(a.ring_mb), "--compression", a.compression]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"the baseline run of {rev} failed:\n{done.stderr}")
        out = done.stdout
        result = json.loads(out.strip().splitlines()[-1])
        assert result["datawriter"].startswith(tmp), f"baseline ran {result['datawriter']}, not revision {rev}"
        return result["paced"], result["full"]


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
    return (f"{label:>22}: produced {r['produced']:6d}  written {r['written']:6d}  lost {r['lost']:5d}  "
            f"{r['fps']:7.1f} fps  {r['MB/s']:7.1f} MB/s  backlog at end {r['backlog_at_end']:4d}  "
            f"drain {r['drain_s']:5.2f} s  error={r['error']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per phase")
    ap.add_argument("--quick", action="store_true", help="3 s per phase")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="folder on the disk to measure")
    ap.add_argument("--fps", type=float, default=100.0, help="paced producer rate for the zero-loss phase")
    ap.add_argument("--ring-mb", type=int, default=1024)
    ap.add_argument("--compression", default="none")
    ap.add_argument("--baseline", metavar="GIT_REV", help="also run the datawriter of this git revision, side by side")
    ap.add_argument("--phases-json", action="store_true", help=argparse.SUPPRESS)  # used by --baseline
    a = ap.parse_args()
    secs = 3.0 if a.quick else a.duration
    if a.phases_json:
        import datawriter

        paced, full = run_phases(a, secs)
        print(json.dumps({"paced": paced, "full": full, "datawriter": os.path.dirname(datawriter.__file__)}))
        return
    print(f"frames {H}x{W} uint16 ({FRAME_BYTES / 2**20:.0f} MiB), {secs:.0f} s per phase, disk folder {a.dir}")
    base = run_baseline(a.baseline, a, secs) if a.baseline else None
    paced, full = run_phases(a, secs)
    raw_bytes = int(min(1000 * secs, 8000) * 1e6)  # past the dirty-page allowance on a long run
    raw_buffered = raw_disk(a.dir, raw_bytes, direct=False)
    raw_direct = raw_disk(a.dir, raw_bytes, direct=True)
    raw = max(raw_buffered, raw_direct)
    naive = naive_h5py(a.dir, min(secs, 5.0))
    rows = [("paced " + str(a.fps), paced), ("full speed", full)]
    if base is not None:
        rows = [(f"{a.baseline} paced {a.fps}", base[0]), (f"{a.baseline} full speed", base[1])] + \
               [("now " + label, r) for label, r in rows]
    for label, r in rows:
        print(_line(label, r))
    print(f"{'frames written':>22}: {full['frame_io']}")
    print(f"{'raw disk':>22}: {raw_buffered:7.1f} MB/s buffered (8 MiB pwrite + fsync), "
          f"{raw_direct:7.1f} MB/s O_DIRECT, {raw_bytes / 1e9:.0f} GB each; the ratio uses the better")
    print(f"{'naive h5py':>22}: {naive:7.1f} fps ({naive * FRAME_BYTES / 1e6:.1f} MB/s) with ds[i] = frame")
    print(f"ratios: ring->HDF5 / raw disk = {full['MB/s'] / raw:.2f} (target >= 0.5); "
          f"ring->HDF5 / naive h5py = {full['fps'] / naive:.2f}x; "
          f"paced phase: producer {paced['produced'] / secs:.1f} fps, writer {paced['fps']:.1f} fps sustained, "
          f"{paced['written']} of {paced['produced']} written, {paced['lost']} lost (target >= {a.fps:.0f} fps, 0 lost)")
    if base is not None:
        print(f"after/before ({a.baseline}): full speed fps x{full['fps'] / max(base[1]['fps'], 1e-9):.2f}, "
              f"paced fps x{paced['fps'] / max(base[0]['fps'], 1e-9):.2f}, "
              f"lost paced {base[0]['lost']} -> {paced['lost']}, full {base[1]['lost']} -> {full['lost']}; "
              f"before: ring->HDF5 / raw disk = {base[1]['MB/s'] / raw:.2f}")


if __name__ == "__main__":
    main()

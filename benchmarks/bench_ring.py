"""Scalars: batched (timestamp, value) records through a ring to a consumer in another process.

Prints records/s produced and consumed and the records lost (target: >= 20 M records/s).

    python benchmarks/bench_ring.py [--quick] [--duration S] [--rows-per-record N]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import time
import uuid

import numpy as np
from ring_folder import private_ring_folder

from datawriter.ring import RingReader, create_scalar_stream, remove_stream, ring_path


def producer(device: str, rows: int, seconds: float, go, total) -> None:  # noqa: ANN001
    w = create_scalar_stream(device, "power", units="W", rows_per_record=rows, slot_count=256)
    chunk = rows * 16
    ts = time.time_ns() + np.arange(chunk, dtype=np.int64) * 100
    vals = np.random.default_rng(0).random(chunk)
    go.wait()
    n, end = 0, time.monotonic() + seconds
    while time.monotonic() < end:
        w.write(ts, vals)
        n += chunk
    total.value = n
    w.close()


def consumer(name: str, ready, out) -> None:  # noqa: ANN001
    r = RingReader(name, start="latest")
    ready.set()
    rows = 0
    t_first = None
    for rec in r.records(timeout=5.0, copy=True):
        if t_first is None:
            t_first = time.monotonic()
        rows += rec.batch.num_rows
    out.put((rows, r.lost * (rows // max(r.records_read, 1)), r.lost, time.monotonic() - (t_first or time.monotonic())))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--quick", action="store_true", help="2 s")
    ap.add_argument("--rows-per-record", type=int, default=16384)
    a = ap.parse_args()
    with private_ring_folder("bench-ring"):
        run(a)


def run(a: argparse.Namespace) -> None:
    secs = 2.0 if a.quick else a.duration
    ctx = mp.get_context("fork")
    device = f"bench/pm/{uuid.uuid4().hex[:8]}"
    name = device.replace("/", ".") + ".power"
    go, ready, total, out = ctx.Event(), ctx.Event(), ctx.Value("q", 0), ctx.Queue()
    p = ctx.Process(target=producer, args=(device, a.rows_per_record, secs, go, total))
    p.start()
    while not os.path.exists(ring_path(name)):
        time.sleep(0.001)
    c = ctx.Process(target=consumer, args=(name, ready, out))
    c.start()
    ready.wait()
    go.set()
    rows, lost_rows, lost_records, dt = out.get()
    p.join()
    c.join()
    remove_stream(name)
    print(f"scalar ring, {a.rows_per_record} rows per record, {secs:.0f} s, producer and consumer in separate processes")
    print(f"produced {total.value / secs / 1e6:6.1f} M records/s; consumed {rows / secs / 1e6:6.1f} M records/s; "
          f"lost {lost_records} ring records (~{lost_rows} rows)")
    print(f"ratio consumed / target 20 M/s = {rows / secs / 20e6:.2f}")


if __name__ == "__main__":
    main()

"""1830-C streaming into HDF5: the real component and driver against the byte-level simulator, in
its own process (as the Newport1830C server is), writing the ring ``<device>.power`` exactly as
the device does; the DataWriter's Recorder/Hdf5Sink drains it into a file in this process.

Prints the samples/s the meter stream achieved, samples produced, rows in the file, records lost
and the writer's backlog, every 10 s and at the end. Nothing is asserted (target: >= 10 kHz for
the whole run, every sample in the file, 0 lost).

    python benchmarks/bench_powermeter_stream.py              # 10 minutes
    python benchmarks/bench_powermeter_stream.py --quick      # 20 s
    python benchmarks/bench_powermeter_stream.py --duration 60 --dir /data
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
import uuid

import h5py
import numpy as np
from ring_folder import private_ring_folder

from datawriter.hdf5_sink import Hdf5Sink, StreamSpec
from datawriter.recorder import Recorder
from datawriter.ring import RingReader, create_scalar_stream, remove_stream, stream_name

SIM_URL = "sim://newport1830c?reply_delay_s=0&reading_delay_s=0"


def meter(device: str, seconds: float, ready, go, streamed, rate) -> None:  # noqa: ANN001
    """The power meter server's streaming path, without Tango: component + driver + simulator,
    ring created and fed as Newport1830C._open_stream does."""
    from deviceservers.common.serial_link import LinkSettings
    from deviceservers.Newport1830C.component import Newport1830CComponent

    comp = Newport1830CComponent(LinkSettings(url=SIM_URL, timeout_s=1.0), poll_period_s=0.5)
    comp.start()
    deadline = time.monotonic() + 10
    while not comp.communication_ok and time.monotonic() < deadline:
        time.sleep(0.01)  # connecting to the in-process simulator
    ring = create_scalar_stream(
        device, "power", units="W", extra_columns={"flags": (np.uint8, "")},
        description="1830-C readings in watts; flags: 1 invalid (text reply), 2 saturated, 4 over range")
    comp.sink = lambda t, v, f: ring.write(t, v, flags=f)
    ready.set()
    go.wait()
    comp.streaming.set(True)
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 0.5))  # the stream runs in the component's thread; report its counters
        streamed.value = comp.samples_streamed
        rate.value = comp.sample_rate.value or 0.0
    comp.streaming.set(False)
    streamed.value = comp.samples_streamed
    comp.stop()
    ring.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of streaming (default 10 min)")
    ap.add_argument("--quick", action="store_true", help="20 s")
    ap.add_argument("--dir", default=tempfile.gettempdir(), help="folder of the HDF5 file")
    ap.add_argument("--keep", action="store_true", help="keep the HDF5 file")
    a = ap.parse_args()
    with private_ring_folder("bench-powermeter"):
        run(a)


def run(a: argparse.Namespace) -> None:
    secs = 20.0 if a.quick else a.duration
    ctx = mp.get_context("fork")
    device = f"bench/powermeter/{uuid.uuid4().hex[:8]}"
    name = stream_name(device, "power")
    ready, go = ctx.Event(), ctx.Event()
    streamed, rate = ctx.Value("q", 0), ctx.Value("d", 0.0)
    p = ctx.Process(target=meter, args=(device, secs, ready, go, streamed, rate))
    p.start()
    if not ready.wait(30):
        p.kill()
        raise SystemExit("the power meter component did not start")
    reader = RingReader(name, start="oldest")
    path = os.path.join(a.dir, f"bench_1830c_{uuid.uuid4().hex[:6]}.h5")
    rec = Recorder(Hdf5Sink(path, [StreamSpec(name, reader.schema, reader.description)]), {name: reader})
    rec.start()
    print(f"1830-C simulator ({SIM_URL}) streaming into ring {name} -> {path}, {secs:.0f} s")
    t0 = time.monotonic()
    go.set()
    next_report = t0 + 10
    while p.is_alive():
        p.join(0.5)
        now = time.monotonic()
        if now >= next_report:
            st = rec.stats()
            print(f"  t={now - t0:6.0f} s  meter {rate.value:8.0f} samples/s  streamed {streamed.value:10d}  "
                  f"records written {st.records_written:7d}  lost {st.dropped_records}  backlog {st.backlog}", flush=True)
            next_report += 10
    t_end = time.monotonic()
    rec.stop()
    st = rec.stats()
    with h5py.File(path, "r") as f:
        g = f[f"entry/instrument/{device.replace('/', '_')}/power"]
        rows = g["value"].shape[0]
        ts = g["timestamp"][:]
        lost_in_file = int(g["lost_records"][()])
    gaps = int((np.diff(ts) <= 0).sum()) if len(ts) > 1 else 0
    span = (ts[-1] - ts[0]) / 1e9 if len(ts) > 1 else 0.0
    if not a.keep:
        os.unlink(path)
    remove_stream(name)
    produced = streamed.value
    print(f"streamed {produced} samples in {t_end - t0:.1f} s = {produced / (t_end - t0):.0f} samples/s "
          f"(file timestamps span {span:.1f} s: {rows / span if span else 0:.0f} samples/s)")
    print(f"written {rows} rows in {st.records_written} ring records; lost records {st.dropped_records} "
          f"(file lost_records {lost_in_file}); samples missing from the file {produced - rows}; "
          f"non-increasing timestamps {gaps}; error={rec.error}")
    print(f"ratios: samples/s / 10 kHz target = {produced / (t_end - t0) / 10_000:.2f}; "
          f"written / streamed = {rows / produced if produced else 0:.6f}")


if __name__ == "__main__":
    main()

"""Soak: one simulated lab kept busy as a user would, watched for growth of every process.

Starts its own lab (`tangodaq up` in a temporary TANGODAQ_HOME, on a free port block, with
TANGODAQ_BENCH_FAST=1), then for N minutes: the power meter streams into its ring, the
DataWriter records, the Sardana motor ``stage_x`` moves back and forth through the Pool, a
Taurus-like client holds change-event subscriptions on Power/Position/State of several devices,
and every device's State and Status are read every second. It prints, per process of the lab
(every Tango server, the virtual bench, the database, the supervisor) and for this client: RSS
(MiB), threads and open fds (from /proc) at the start, every minute and at the end; the events
received per device per minute; the DataWriter's records written and dropped. At the end, a
table of growth per process (end - start, and the slope per minute over the second half), with
the processes that grew past the thresholds flagged. Nothing is asserted: leaks are read off the
table (held flat for 10 minutes: keep it so).

The lab is stopped and its processes, rings and folder removed on the way out, also on Ctrl-C,
SIGTERM or an error.

    python benchmarks/soak.py                 # 10 minutes
    python benchmarks/soak.py --quick         # 1 minute
    python benchmarks/soak.py --minutes 60 --rss-mib 20
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

# the script runs as `python benchmarks/soak.py`: the repository root holds tests/ (ports, lab)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.ports import free_port_block  # noqa: E402
from tests.system.conftest import Lab  # noqa: E402

SAMPLE_S = 10.0  # /proc is read this often (for the slope); rows are printed every minute
STATUS_READ_S = 1.0  # every device's State and Status, as a GUI's overview refreshes them
MOTOR = "stage_x"  # the Pool's motor (alias) a user would `mv` back and forth
MOTOR_SPAN_MM = (0.0, 2.0)
# (role, attributes) a Taurus panel of the lab would subscribe to
SUBSCRIPTIONS = (
    ("meter", ("Power", "State")),
    ("laser", ("Power", "State")),
    ("stage_x", ("Position", "State")),
    ("stage_y", ("Position", "State")),
    ("hwp", ("Position", "State")),
    ("camera", ("State",)),
    ("datawriter", ("RecordsWritten", "Recording", "State")),
)


# ------------------------------------------------------------------------------ /proc
@dataclass
class Usage:
    rss_mib: float
    threads: int
    fds: int


def usage(pid: int) -> Usage | None:
    """RSS, threads and open fds of ``pid`` from /proc (None if it is gone)."""
    try:
        rss_kib, threads = 0, 0
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss_kib = int(line.split()[1])
                elif line.startswith("Threads:"):
                    threads = int(line.split()[1])
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (OSError, ValueError):
        return None
    return Usage(rss_kib / 1024, threads, fds)


def lab_processes(lab: Lab) -> dict[str, int]:
    """Name -> pid of every process of the lab (re-read each time: the supervisor may restart one)."""
    try:
        state = lab.state()
    except (OSError, ValueError):
        return {}
    procs = {"supervisor": state.get("supervisor_pid")}
    procs.update({p["name"]: p.get("pid") for p in state.get("processes", [])})
    procs["soak client"] = os.getpid()
    return {name: pid for name, pid in procs.items() if pid}


class Sampler:
    """Series of (t, pid, Usage) per process name."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.series: dict[str, list[tuple[float, int, Usage]]] = defaultdict(list)
        self.t0 = time.monotonic()

    def sample(self) -> None:
        t = time.monotonic() - self.t0
        for name, pid in lab_processes(self.lab).items():
            u = usage(pid)
            if u is not None:
                self.series[name].append((t, pid, u))

    def print_row(self, label: str) -> None:
        print(f"--- {label}: process  RSS MiB  threads  fds", flush=True)
        for name in sorted(self.series):
            t, pid, u = self.series[name][-1]
            print(f"    {name:<28} {u.rss_mib:8.1f} {u.threads:8d} {u.fds:5d}   (pid {pid})")


def slope_per_min(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of value over time, per minute (0 with fewer than two points)."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return 60.0 * sum((t - mt) * (v - mv) for t, v in points) / den if den else 0.0


# ------------------------------------------------------------------------------ the load
class Events:
    """Counts change events per device, as a Taurus client's listeners would receive them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: dict[str, int] = defaultdict(int)
        self.errors: dict[str, int] = defaultdict(int)
        self.devices: set[str] = set()  # subscribed, so a device that went quiet shows 0
        self.since = time.monotonic()

    def push(self, ev) -> None:  # noqa: ANN001 - tango.EventData
        dev = ev.device.dev_name() if ev.device is not None else "?"
        with self.lock:
            if ev.err:
                self.errors[dev] += 1
            else:
                self.counts[dev] += 1

    def take(self) -> tuple[dict[str, int], dict[str, int], float]:
        """Counts since the last call (every subscribed device, 0 included) and the seconds they cover."""
        with self.lock:
            counts = {d: self.counts.get(d, 0) for d in self.devices | set(self.counts)}
            errors = dict(self.errors)
            self.counts.clear()
            self.errors.clear()
            now = time.monotonic()
            seconds, self.since = now - self.since, now
        return counts, errors, seconds


def wait_for(what: str, condition, timeout: float) -> None:  # noqa: ANN001
    from tests.waiting import wait_until

    wait_until(condition, timeout=timeout, interval=0.1, what=what)


def start_load(lab: Lab, stop: threading.Event, events: Events, errors: dict[str, int]):  # noqa: ANN201
    """Streaming, recording, subscriptions, the moving motor and the status reader; returns what
    must be undone (proxies and subscription ids) and the worker threads."""
    import tango

    from tango_db.roles import device

    def proxy(name: str) -> tango.DeviceProxy:
        p = tango.DeviceProxy(name)
        p.set_timeout_millis(5000)
        return p

    meter, writer = proxy(device("meter")), proxy(device("datawriter"))
    meter.Range = 0
    meter.Streaming = True
    wait_for("the meter's stream", lambda: meter.SampleRate > 0, 30)
    writer.StartRecording(json.dumps({"name": "soak", "metadata": {"by": "benchmarks/soak.py"}}))
    wait_for("the DataWriter to record", lambda: writer.Recording, 30)

    subs: list[tuple[tango.DeviceProxy, int]] = []
    for role, attrs in SUBSCRIPTIONS:
        p = proxy(device(role))
        for attr in attrs:
            try:
                subs.append((p, p.subscribe_event(attr, tango.EventType.CHANGE_EVENT, events.push)))
                events.devices.add(p.dev_name())
            except tango.DevFailed as exc:
                print(f"    cannot subscribe to {p.dev_name()}/{attr}: {exc.args[0].desc.strip()}")

    axis = proxy(device(MOTOR))
    if not axis.MotorOn:
        axis.MotorOn = True
    motor = proxy(MOTOR)
    moves = [0]

    def move_back_and_forth() -> None:
        k = 0
        while not stop.is_set():
            try:
                motor.Position = MOTOR_SPAN_MM[k % 2]
                k += 1
                # a user's `mv` waits for the motor; so does this (the condition, not a fixed time)
                while motor.State() == tango.DevState.MOVING and not stop.wait(0.1):
                    pass
                moves[0] += 1
            except tango.DevFailed as exc:
                errors["motor: " + exc.args[0].reason] += 1
                stop.wait(1.0)

    names = sorted(set(lab_devices(lab)))
    reads = [0]

    def read_states() -> None:
        proxies = [proxy(n) for n in names]
        while not stop.wait(STATUS_READ_S):
            for p in proxies:
                try:
                    p.State()
                    p.Status()
                    reads[0] += 1
                except tango.DevFailed as exc:
                    errors[f"{p.dev_name()}: {exc.args[0].reason}"] += 1

    threads = [threading.Thread(target=f, name=f.__name__, daemon=True) for f in (move_back_and_forth, read_states)]
    for t in threads:
        t.start()
    return {"meter": meter, "writer": writer, "subs": subs, "moves": moves, "reads": reads}, threads


def lab_devices(lab: Lab) -> list[str]:
    """Every device of the lab's servers, as `tangodaq status` lists them, plus Sardana's."""
    from tango_db.roles import device

    state = lab.state()
    out = [d for p in state.get("processes", []) for d in p.get("devices", {})]
    out += [device(r) for r in ("pool", "macroserver", "door")]
    return out


def stop_load(load: dict | None, threads: list[threading.Thread], stop: threading.Event) -> None:
    """Undo the load before the lab goes down (best effort: the lab is torn down anyway)."""
    stop.set()
    for t in threads:
        t.join(10)
    if not load:
        return
    for p, sid in load["subs"]:
        with contextlib.suppress(Exception):
            p.unsubscribe_event(sid)
    with contextlib.suppress(Exception):
        path = load["writer"].StopRecording()
        wait_for("the recording to close", lambda: not load["writer"].Recording, 30)
        print(f"recording closed: {path}")
    with contextlib.suppress(Exception):
        load["meter"].Streaming = False


# ------------------------------------------------------------------------------ report
def growth_table(sampler: Sampler, rss_mib: float, rss_slope: float, threads: int, fds: int) -> None:
    print("\n=== growth per process (end - start; slope per minute over the second half)")
    print(f"    flagged: RSS > {rss_mib} MiB or > {rss_slope} MiB/min, threads > {threads}, fds > {fds}, or restarted")
    head = (f"    {'process':<28} {'RSS start':>9} {'end':>7} {'growth':>7} {'MiB/min':>8} "
            f"{'thr start':>9} {'end':>4} {'slope':>6} {'fds start':>9} {'end':>4} {'slope':>6}  flag")
    print(head)
    print("    " + "-" * (len(head) - 4))
    for name in sorted(sampler.series):
        s = sampler.series[name]
        first, last = s[0], s[-1]
        t_half = last[0] / 2
        half = [x for x in s if x[0] >= t_half]
        r_slope = slope_per_min([(t, u.rss_mib) for t, _, u in half])
        t_slope = slope_per_min([(t, u.threads) for t, _, u in half])
        f_slope = slope_per_min([(t, u.fds) for t, _, u in half])
        d_rss = last[2].rss_mib - first[2].rss_mib
        d_thr = last[2].threads - first[2].threads
        d_fds = last[2].fds - first[2].fds
        why = []
        if d_rss > rss_mib or r_slope > rss_slope:
            why.append("RSS")
        if d_thr > threads:
            why.append("threads")
        if d_fds > fds:
            why.append("fds")
        if len({pid for _, pid, _ in s}) > 1:
            why.append("restarted")
        print(f"    {name:<28} {first[2].rss_mib:9.1f} {last[2].rss_mib:7.1f} {d_rss:+7.1f} {r_slope:+8.2f} "
              f"{first[2].threads:9d} {last[2].threads:4d} {t_slope:+6.2f} {first[2].fds:9d} {last[2].fds:4d} "
              f"{f_slope:+6.2f}  {'GREW: ' + ', '.join(why) if why else 'ok'}")


def print_minute(events: Events, load: dict, errors: dict[str, int], last: dict) -> None:
    counts, ev_errors, seconds = events.take()
    rec, dropped = load["writer"].RecordsWritten, load["writer"].DroppedRecords
    per_min = 60.0 / seconds if seconds > 0 else 0.0
    print(f"    events received per minute (over {seconds:.0f} s): "
          + (", ".join(f"{d} {n * per_min:.0f}" for d, n in sorted(counts.items())) or "none")
          + (f"; error events: {ev_errors}" if ev_errors else ""))
    print(f"    DataWriter: records {rec} (+{rec - last.get('rec', 0)}), dropped {dropped}; "
          f"motor moves {load['moves'][0]}, State/Status reads {load['reads'][0]}; "
          f"client errors {dict(errors) or 0}", flush=True)
    last["rec"] = rec


# ------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0, help="minutes of load (default 10)")
    ap.add_argument("--quick", action="store_true", help="1 minute")
    ap.add_argument("--rss-mib", type=float, default=10.0, help="flag RSS growth above this (MiB)")
    ap.add_argument("--rss-slope", type=float, default=0.5, help="flag a second-half RSS slope above this (MiB/min)")
    ap.add_argument("--threads", type=int, default=3, help="flag thread growth above this")
    ap.add_argument("--fds", type=int, default=5, help="flag fd growth above this")
    a = ap.parse_args()
    minutes = 1.0 if a.quick else a.minutes

    def terminate(signum, frame) -> None:  # noqa: ANN001 - SIGTERM/SIGHUP tear down like Ctrl-C
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)

    home = Path(tempfile.mkdtemp(prefix="tangodaq-soak-"))
    lab = Lab(home, port=free_port_block())
    os.environ.update({k: lab.env[k] for k in ("TANGODAQ_HOME", "TANGO_HOST", "TANGODAQ_BENCH_FAST")})
    os.environ.pop("TANGODAQ_SHM_DIR", None)
    stop = threading.Event()
    load: dict | None = None
    threads: list[threading.Thread] = []
    errors: dict[str, int] = defaultdict(int)
    events = Events()
    interrupted = False
    try:
        print(f"soak: lab at TANGO_HOST={lab.tango_host}, TANGODAQ_HOME={home}, {minutes:g} min", flush=True)
        t_up = time.monotonic()
        lab.up()
        print(f"lab up in {time.monotonic() - t_up:.1f} s", flush=True)
        load, threads = start_load(lab, stop, events, errors)
        sampler = Sampler(lab)
        events.take()  # rates count from the start row
        sampler.sample()
        sampler.print_row("start")
        last: dict = {}
        end = sampler.t0 + minutes * 60
        next_sample, next_minute, minute = sampler.t0 + SAMPLE_S, sampler.t0 + 60, 1
        while (now := time.monotonic()) < end:
            time.sleep(max(0.0, min(next_sample, end) - now))  # the soak's schedule, not a condition
            if time.monotonic() >= next_sample:
                sampler.sample()
                next_sample += SAMPLE_S
            if time.monotonic() >= next_minute and next_minute < end:
                sampler.print_row(f"minute {minute}")
                print_minute(events, load, errors, last)
                next_minute += 60
                minute += 1
        sampler.sample()
        sampler.print_row(f"end ({(time.monotonic() - sampler.t0) / 60:.1f} min)")
        print_minute(events, load, errors, last)
        growth_table(sampler, a.rss_mib, a.rss_slope, a.threads, a.fds)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the lab", flush=True)
        interrupted = True
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the teardown short
        with contextlib.suppress(Exception):
            stop_load(load, threads, stop)
        lab.teardown()
        shutil.rmtree(f"/dev/shm/tangodaq-{lab.port}", ignore_errors=True)
        left = lab.leftovers()
        shutil.rmtree(home, ignore_errors=True)
        print(f"lab stopped; processes left behind: {left or 'none'}", flush=True)
    if interrupted:
        sys.exit(130)  # as a shell reports a Ctrl-C'd command, so a caller does not take it for a full run


if __name__ == "__main__":
    main()

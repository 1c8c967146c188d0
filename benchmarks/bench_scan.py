"""Step-scan overhead per point: the lab's motors and channels against Sardana's own dummies.

Starts a lab (`tangodaq up` in a temporary TANGODAQ_HOME on a free port block), defines Sardana's
``DummyMotorController`` and ``DummyCounterTimerController`` in the same Pool next to the lab's
elements (motor ``bench_dmot``, channel ``bench_dct`` in measurement group ``bench_mg_dummy``),
and runs the same ``ascan <motor> <a> <b> N <t>`` through the Door for every pair of motor and
measurement group. Per point it prints:

- total: the time between two points' ends (Sardana's ``epoch`` column);
- count: the integration time asked for (for the camera group, plus the camera's readout time:
  the instrument's own time after the exposure, its ``ReadoutTime``);
- motion: the instrument's own move, from its device's State events (MOVING -> ON, stamped by
  the device server); for the laser, from its ``Tuning`` events (stamped when ``WAVelength n``
  went out and when ``READ:WAVelength?`` reached it: the laser tunes while the write reads its
  confirmation back, and Tango stamps a State event when it is pushed, which waits for the
  write to return); for the dummy motor, its motion profile (it has no instrument);
- wait: the acquisition phase (motion end -> point end, Sardana's ``timestamp`` and ``epoch``)
  minus the counting time: waiting for the channel;
- software: what is left (the Pool, the MacroServer, Tango round trips);
- overhead = wait + software, and its ratio to the dummies' overhead in the same run.

Two phases: the fast bench (``TANGODAQ_BENCH_FAST=1``: instrument timing off, only software
remains; target overhead <= 1.5x the dummies') and the realistic bench (the instruments' own
timing; target per point <= move + one meter reading + 50 ms, the meter's reading time measured
on the same run through the meter's ``Measure`` command). Printed, not asserted.

The fast phase ends (without ``--quick`` or ``--motors``) with the continuous scan against the
step scan: ``ascanct hwp 0 180 60 0.05`` and ``ascan`` of the same points, their times, the
bound any sweep has (a point lasts at least its window), and the target per point <= window +
the measurement group's LatencyTime + 20 ms.

    TANGODAQ_HOME is made here; TANGO_HOST is a free port (never 10000).
    python benchmarks/bench_scan.py [--quick] [--phase fast|realistic|both] [--points N] [--motors hwp,wavelength]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

# the script runs as `python benchmarks/bench_scan.py`: the repository root holds tests/ (ports, lab)
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import h5py  # noqa: E402
import numpy as np  # noqa: E402
import tango  # noqa: E402

from tango_db.door_client import run_macro  # noqa: E402
from tests.ports import free_port_block  # noqa: E402
from tests.system.conftest import Lab  # noqa: E402

DUMMY_MOTOR, DUMMY_CT, DUMMY_MG = "bench_dmot", "bench_dct", "bench_mg_dummy"
DUMMY_VELOCITY, DUMMY_ACCEL_S = 1000.0, 0.001  # the dummy motor's profile: ~1 ms per step

#: motor -> (start, end, the lab device and attribute whose change events tell the instrument's own move)
MOTORS = {
    DUMMY_MOTOR: (0.0, 10.0, None, ""),
    "hwp": (0.0, 90.0, "lab/ell14/hwp", "State"),
    "stage_x": (0.0, 2.0, "lab/esp300/x", "State"),
    "wavelength": (790.0, 810.0, "lab/maitai/1", "Tuning"),
}


@dataclass
class Row:
    motor: str
    mg: str
    points: int
    integ: float
    total: list[float] = field(default_factory=list)
    motion: list[float] = field(default_factory=list)
    wait: list[float] = field(default_factory=list)
    software: list[float] = field(default_factory=list)

    @property
    def overhead(self) -> float:
        return statistics.median(w + s for w, s in zip(self.wait, self.software, strict=True))


class MotionLog:
    """Change events of one device's State (moving = MOVING) or of a boolean attribute such as the
    laser's Tuning (moving = True), with the server's time stamps."""

    def __init__(self, proxy: tango.DeviceProxy, attribute: str = "State") -> None:
        self.proxy = proxy
        self.events: list[tuple[float, bool]] = []
        self._lock = threading.Lock()
        self._id = proxy.subscribe_event(attribute, tango.EventType.CHANGE_EVENT, self._on)

    def _on(self, ev: tango.EventData) -> None:
        if ev.err or ev.attr_value is None:
            return
        value = ev.attr_value.value
        with self._lock:
            self.events.append((ev.attr_value.time.totime(), value is True or value == tango.DevState.MOVING))

    def moving_between(self, t0: float, t1: float) -> float:
        """Seconds the device was moving within [t0, t1]."""
        with self._lock:
            events = sorted(self.events)
        total, since = 0.0, None
        if next((moving for t, moving in reversed(events) if t <= t0), False):
            since = t0
        for t, moving in events:
            if t <= t0 or t > t1:
                continue
            if moving and since is None:
                since = t
            elif not moving and since is not None:
                total += t - since
                since = None
        if since is not None:
            total += t1 - since
        return total

    def close(self) -> None:
        self.proxy.unsubscribe_event(self._id)


def dummy_motion_s(distance: float) -> float:
    """The dummy motor's trapezoid: accelerate, cruise, decelerate."""
    return DUMMY_ACCEL_S + abs(distance) / DUMMY_VELOCITY


def define_dummies(lab: Lab) -> None:
    """Sardana's own dummy motor and counter/timer in the lab's Pool, next to the lab's elements."""
    pool = lab.proxy("pool/lab/1", timeout_ms=30000)
    existing = set()
    for attr in ("ControllerList", "MotorList", "ExpChannelList", "MeasurementGroupList"):
        existing |= {__import__("json").loads(s)["name"] for s in pool.read_attribute(attr).value or ()}
    if "bench_dmot_ctrl" not in existing:
        pool.CreateController(["Motor", "DummyMotorController.py", "DummyMotorController", "bench_dmot_ctrl"])
    if DUMMY_MOTOR not in existing:
        pool.CreateElement(["Motor", "bench_dmot_ctrl", "1", DUMMY_MOTOR])
    if "bench_dct_ctrl" not in existing:
        pool.CreateController(["CTExpChannel", "DummyCounterTimerController.py", "DummyCounterTimerController",
                               "bench_dct_ctrl"])
    if DUMMY_CT not in existing:
        pool.CreateElement(["CTExpChannel", "bench_dct_ctrl", "1", DUMMY_CT])
    if DUMMY_MG not in existing:
        pool.CreateMeasurementGroup([DUMMY_MG, DUMMY_CT])
    motor = lab.proxy(DUMMY_MOTOR)
    motor.write_attribute("Velocity", DUMMY_VELOCITY)
    motor.write_attribute("Acceleration", DUMMY_ACCEL_S)
    motor.write_attribute("Deceleration", DUMMY_ACCEL_S)


def last_entry(path: Path) -> tuple[float, np.ndarray, np.ndarray]:
    """(scan start epoch, motion-end times relative to it, point-end epochs) of the last scan."""
    with h5py.File(path, "r") as f:
        name = sorted(f, key=lambda n: int(n.removeprefix("entry")))[-1]
        entry = f[name]
        start = float(entry.attrs["epoch"])
        m = entry["measurement"]
        return start, m["dt"][()], m["epoch"][()]


def camera_readout_s(lab: Lab) -> float:
    """The camera's own time after the exposure (its rolling-shutter readout)."""
    return float(lab.proxy("lab/camera/1").read_attribute("ReadoutTime").value)


def run_scan(lab: Lab, door: str, motor: str, mg: str, points: int, integ: float) -> Row:
    start, end, device, attribute = MOTORS[motor]
    run_macro(door, "senv", "ActiveMntGrp", mg, say=lambda _l: None, timeout=30)
    run_macro(door, "mv", motor, start, say=lambda _l: None, timeout=60)
    log = MotionLog(lab.proxy(device), attribute) if device else None
    try:
        run_macro(door, "ascan", motor, start, end, points, integ, say=lambda _l: None, timeout=600)
    finally:
        if log is not None:
            log.close()
    t_start, rel_motion_end, point_end = last_entry(lab.home / "scans" / "scans.h5")
    # the recorder's start epoch is local time minus 1970: correct a time zone (whole quarter hours)
    offset = round((point_end[0] - (t_start + rel_motion_end[0])) / 900.0) * 900.0
    motion_end = t_start + offset + rel_motion_end
    # the count's instrument time: the exposure, and for the camera its readout
    row = Row(motor, mg, points, integ + (camera_readout_s(lab) if mg == "mg_camera" else 0.0))
    step = (end - start) / points
    for n in range(1, len(point_end)):  # point 0 includes the move from wherever: left out
        total = point_end[n] - point_end[n - 1]
        acq = point_end[n] - motion_end[n]
        moved = log.moving_between(point_end[n - 1], motion_end[n]) if log else dummy_motion_s(step)
        wait = max(0.0, acq - row.integ)
        row.total.append(total)
        row.motion.append(moved)
        row.wait.append(wait)
        row.software.append(total - row.integ - moved - wait)
    return row


def meter_reading_s(lab: Lab) -> float:
    """The meter's own time for one reading (Measure command round trip, median of 5)."""
    meter = lab.proxy("lab/powermeter/1", timeout_ms=5000)
    if "Measure" not in {c.cmd_name for c in meter.command_list_query()}:
        return math.nan
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        meter.command_inout("Measure")
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def continuous_vs_step(lab: Lab, door: str, intervals: int = 60, integ: float = 0.05) -> None:
    """Issue 13's comparison: ``ascanct hwp 0 180 N t`` (mg_continuous, the Pool's software
    synchronizer on time) against ``ascan`` of the same points (mg_power). Printed with the bound
    any sweep has: a point of a continuous scan lasts at least its window, so it cannot be faster
    than the step scan's point divided by the window."""
    quiet = {"say": lambda _l: None}
    run_macro(door, "mv", "hwp", 0, timeout=60, **quiet)
    run_macro(door, "senv", "ActiveMntGrp", "mg_power", timeout=30, **quiet)
    t0 = time.monotonic()
    run_macro(door, "ascan", "hwp", 0, 180, intervals, integ, timeout=600, **quiet)
    step_s = time.monotonic() - t0
    step_points = last_entry(lab.home / "scans" / "scans.h5")[2]
    group = lab.proxy("mg_continuous")
    group.write_attribute("SoftwareSynchronizerInitialDomain", "Time")
    run_macro(door, "senv", "ActiveMntGrp", "mg_continuous", timeout=30, **quiet)
    try:
        t0 = time.monotonic()
        run_macro(door, "ascanct", "hwp", 0, 180, intervals, integ, timeout=600, **quiet)
        sweep_s = time.monotonic() - t0
    finally:
        run_macro(door, "senv", "ActiveMntGrp", "mg_power", timeout=30, **quiet)
    sweep_points = last_entry(lab.home / "scans" / "scans.h5")[2]
    latency = float(group.read_attribute("LatencyTime").value)
    step_point = float(np.median(np.diff(step_points)))
    sweep_point = float(np.median(np.diff(sweep_points)))
    other = sweep_point - integ - latency
    print(f"\n   continuous: ascanct hwp 0 180 {intervals} {integ:g} (mg_continuous) against ascan of the same "
          f"{intervals + 1} points (mg_power)")
    print(f"   ascan {step_s:.1f} s ({1000 * step_point:.0f} ms a point); ascanct {sweep_s:.1f} s "
          f"({1000 * sweep_point:.0f} ms a point = window {1000 * integ:.0f} + the group's LatencyTime "
          f"{1000 * latency:.0f} + {1000 * other:.0f} other)")
    print(f"   ascanct {step_s / sweep_s:.2f}x faster than ascan ({step_point / sweep_point:.2f}x a point); "
          f"no sweep of {1000 * integ:.0f} ms windows can beat {step_point / integ:.1f}x here (ascan's point / the window)")
    print(f"   target per point <= window + LatencyTime + 20 ms: {1000 * other:.0f} ms beyond "
          f"({'met' if other <= 0.020 else 'NOT met'})")


def ms(values: list[float]) -> str:
    return f"{1000 * statistics.median(values):7.1f}"


def phase(name: str, fast: bool, points: int, integ: float, pairs: list[tuple[str, str]],
          continuous: bool = False) -> None:
    home = Path(tempfile.mkdtemp(prefix=f"bench-scan-{name}-"))
    lab = Lab(home, port=free_port_block())
    if not fast:
        lab.env.pop("TANGODAQ_BENCH_FAST", None)
    print(f"\n== {name} bench: ascan <motor> <a> <b> {points} {integ} (lab {lab.tango_host}, {home})")
    t0 = time.monotonic()
    try:
        lab.up()
        print(f"   lab up in {time.monotonic() - t0:.0f} s")
        import os

        os.environ["TANGO_HOST"] = lab.tango_host
        define_dummies(lab)
        door = f"tango://{lab.tango_host}/door/lab/1"
        reading = meter_reading_s(lab)
        run_macro(door, "senv", "ScanEpochCol", "True", say=lambda _l: None, timeout=30)  # each point's end
        if any(motor == "wavelength" for motor, _ in pairs):
            run_macro(door, "laser_on", say=lambda _l: None, timeout=180)  # the laser tunes only when on
        rows = []
        for motor, mg in pairs:
            try:
                rows.append(run_scan(lab, door, motor, mg, points, integ))
            except Exception as exc:  # noqa: BLE001 - a failed pair is printed, the others still run
                print(f"   {motor} + {mg}: FAILED: {' / '.join(str(exc).splitlines()[:4])}")
        floor = next((r.overhead for r in rows if r.motor == DUMMY_MOTOR and r.mg == DUMMY_MG), math.nan)
        print(f"   medians per point in ms; overhead = wait + software; ratio = overhead / dummies' overhead"
              f" ({1000 * floor:.1f} ms); meter reading {1000 * reading:.0f} ms")
        print(f"   {'motor':11s} {'group':15s} {'total':>7s} {'count':>7s} {'motion':>7s} {'wait':>7s} "
              f"{'softw':>7s} {'overh':>7s} {'ratio':>6s}" + ("" if fast else f" {'floor':>7s} {'over fl':>7s}"))
        for r in rows:
            line = (f"   {r.motor:11s} {r.mg:15s} {ms(r.total)} {1000 * r.integ:7.1f} {ms(r.motion)} {ms(r.wait)} "
                    f"{ms(r.software)} {1000 * r.overhead:7.1f} {r.overhead / floor:6.2f}")
            if not fast:
                # the instrument's own time: its move, then the count (at least one meter reading)
                own = statistics.median(r.motion) + max(r.integ, reading if r.mg != DUMMY_MG else 0.0)
                line += f" {1000 * own:7.1f} {1000 * (statistics.median(r.total) - own):7.1f}"
            print(line)
        if continuous:
            try:
                continuous_vs_step(lab, door)
            except Exception as exc:  # noqa: BLE001 - printed like a failed pair
                print(f"   continuous: FAILED: {' / '.join(str(exc).splitlines()[:4])}")
    finally:
        lab.teardown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 intervals and fewer pairs")
    parser.add_argument("--phase", choices=("fast", "realistic", "both"), default="both")
    parser.add_argument("--points", type=int, default=20, help="intervals per scan")
    parser.add_argument("--integ", type=float, default=0.1, help="integration time per point, s")
    parser.add_argument("--motors", default="", help="only these lab motors, comma separated (the dummies' "
                        "reference pair always runs): e.g. --motors wavelength")
    args = parser.parse_args()
    points = 10 if args.quick else args.points
    pairs = [(DUMMY_MOTOR, DUMMY_MG), ("hwp", DUMMY_MG), (DUMMY_MOTOR, "mg_power"), ("hwp", "mg_power"),
             ("stage_x", "mg_power"), ("wavelength", "mg_power"), (DUMMY_MOTOR, "mg_camera"),
             ("hwp", "mg_camera"), ("stage_x", "mg_camera")]
    if args.quick:
        pairs = [(DUMMY_MOTOR, DUMMY_MG), ("hwp", "mg_power"), ("stage_x", "mg_power"), ("hwp", "mg_camera")]
    if args.motors:
        wanted = {m.strip() for m in args.motors.split(",") if m.strip()}
        unknown = wanted - set(MOTORS)
        if unknown:
            parser.error(f"unknown motor(s) {', '.join(sorted(unknown))}: choose from {', '.join(MOTORS)}")
        pairs = [(DUMMY_MOTOR, DUMMY_MG)] + [p for p in pairs if p[0] in wanted]
    if args.phase in ("fast", "both"):
        phase("fast", True, points, args.integ, pairs, continuous=not (args.quick or args.motors))
    if args.phase in ("realistic", "both"):
        phase("realistic", False, points, args.integ,
              [p for p in pairs if p[0] != "wavelength" or not args.quick])


if __name__ == "__main__":
    main()

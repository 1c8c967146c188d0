"""How long a Mai Tai wavelength write waits, while the server polls the laser.

A write (``WAVelength n``, then its confirmation ``WAVelength?``) shares the serial line with
the poll's rounds (status byte, setpoint, wavelength, shutter, power; every fifth poll warm-up,
humidity and pump power too). This runs the Mai Tai component against its simulator with a
given reply time (``--reply-ms``, 50: a real laser answers in tens of ms at 9600 baud), writes a
wavelength ``--writes`` times at random moments between polls, and prints the write call's
median, 90th percentile and maximum, next to the MOVING latency: how long after the call the
component said the laser was tuning. No Tango, no lab; in-process.

    python benchmarks/bench_laser_write.py [--writes 40] [--reply-ms 50] [--baseline GIT_REV]
        # --baseline also runs the deviceservers package of that git revision (in a subprocess,
        # same settings) and prints both side by side
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

from baseline import package_dir, run_at_revision


def measure(writes: int, reply_ms: float, seed: int) -> dict[str, float]:
    from deviceservers.common.component import DeviceState
    from deviceservers.common.serial_link import LinkSettings
    from deviceservers.MaiTai.component import MaiTaiComponent

    url = (f"sim://maitai?reply_delay_s={reply_ms / 1000:g}&start_warm=true&tuning_rate_nm_s=200"
           f"&seed={seed}")
    comp = MaiTaiComponent(LinkSettings(url=url, flow_control="xonxoff", timeout_s=1.0), poll_period_s=0.5)
    moving_at: list[float] = []
    comp.tuning.subscribe(lambda r: moving_at.append(time.monotonic()) if r.value else None)
    comp.start()
    try:
        deadline = time.monotonic() + 30
        while not (comp.communication_ok and comp.state == DeviceState.OFF):
            if time.monotonic() > deadline:
                raise SystemExit(f"the simulated laser did not come up: {comp.state} {comp.status}")
            time.sleep(0.02)  # a benchmark's own wait for start-up, not a product wait
        rng = random.Random(seed)
        calls, to_moving = [], []
        target = 800.0
        for _ in range(writes):
            while comp.is_moving():
                time.sleep(0.01)
            time.sleep(rng.uniform(0.05, 0.6))  # a random moment in the poll cycle
            target = 810.0 if target == 800.0 else 800.0
            n = len(moving_at)
            t0 = time.monotonic()
            comp.set_wavelength(target)
            calls.append(time.monotonic() - t0)
            if len(moving_at) > n:
                to_moving.append(moving_at[n] - t0)
    finally:
        comp.stop()
    deciles = statistics.quantiles(calls, n=10)
    return {"median": statistics.median(calls), "p90": deciles[-1], "max": max(calls),
            "moving_median": statistics.median(to_moving) if to_moving else float("nan")}


def baseline(rev: str, a: argparse.Namespace) -> dict[str, float]:
    """The same measurement with the deviceservers package of git revision ``rev``."""
    return run_at_revision(rev, "deviceservers", __file__, ["--json", "--writes", str(a.writes), "--reply-ms",
                                                             str(a.reply_ms), "--seed", str(a.seed)])


def line(label: str, r: dict[str, float]) -> str:
    return (f"{label:>22}: write call median {1e3 * r['median']:6.1f} ms, p90 {1e3 * r['p90']:6.1f} ms, "
            f"max {1e3 * r['max']:6.1f} ms; Tuning true {1e3 * r['moving_median']:6.1f} ms after the call (median)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--writes", type=int, default=40)
    ap.add_argument("--reply-ms", type=float, default=50.0, help="the simulated laser's reply time")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--baseline", metavar="GIT_REV", help="also run the component of this git revision")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # used by --baseline
    a = ap.parse_args()
    if a.json:
        import deviceservers

        print(json.dumps({**measure(a.writes, a.reply_ms, a.seed), "deviceservers": package_dir(deviceservers)}))
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print(f"Mai Tai component on its simulator: replies {a.reply_ms:g} ms, poll period 0.5 s, {a.writes} "
          f"wavelength writes at random moments")
    before = baseline(a.baseline, a) if a.baseline else None
    now = measure(a.writes, a.reply_ms, a.seed)
    if before is not None:
        print(line(a.baseline, before))
    print(line("this tree", now))
    if before is not None:
        print(f"ratios (this tree / {a.baseline}): p90 {now['p90'] / before['p90']:.2f}, max "
              f"{now['max'] / before['max']:.2f}, median {now['median'] / before['median']:.2f}")


if __name__ == "__main__":
    main()

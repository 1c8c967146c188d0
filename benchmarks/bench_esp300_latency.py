"""ESP300 latency: a client's Position write to ``PA`` on the wire, and Stop to ``ST`` on the wire.

The simulator runs in this process behind a SimulatorServer (socket://, as in the lab), with its
realistic reply latency, so its receive timestamps (Simulator.add_rx_listener) and the client's
clock are the same monotonic clock. The device server runs in its own process
(tests/harness.py) next to a bare device with one memory attribute, whose
write round trip on the same run is the reference. Printed, not asserted.

Targets: write -> wire median under 0.3 ms above the bare write; Stop -> wire p99 under 5 ms.
Also printed: Stop sent while another client's Position write of the same axis is still being
confirmed by the controller: the Stop waits for that write (Tango's one request at a time per
device; see deviceservers/Esp300/device.py for why), so its time is the write's confirmation.

    python benchmarks/bench_esp300_latency.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

# the script runs as `python benchmarks/bench_esp300_latency.py`: the repository root holds tests/
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tango  # noqa: E402
from tango.server import Device, attribute  # noqa: E402

from deviceservers.Esp300.device import Esp300  # noqa: E402
from deviceservers.Esp300.simulator import Esp300Simulator  # noqa: E402
from tango_db.proxies import device_proxy  # noqa: E402
from tests.harness import SIMULATOR_URL, served  # noqa: E402
from tests.waiting import wait_until  # noqa: E402


class BareDevice(Device):
    """The reference: an attribute write that touches nothing but Tango."""

    def init_device(self) -> None:
        super().init_device()
        self._value = 0.0
        self.set_state(tango.DevState.ON)

    @attribute(dtype=float)
    def Value(self) -> float:
        return self._value

    @Value.write
    def Value(self, value: float) -> None:
        self._value = value


class WireWatch:
    """Timestamps of commands arriving at the simulator that start with a given prefix."""

    def __init__(self, sim: Esp300Simulator) -> None:
        self._cond = threading.Condition()
        self._prefix = b""
        self._hit: float | None = None
        sim.add_rx_listener(self._on_rx)

    def arm(self, prefix: bytes) -> None:
        with self._cond:
            self._prefix, self._hit = prefix, None

    def _on_rx(self, t: float, raw: bytes) -> None:
        with self._cond:
            if self._prefix and self._hit is None and raw.startswith(self._prefix):
                self._hit = t
                self._cond.notify_all()

    def wait(self, timeout: float = 5.0) -> float:
        with self._cond:
            if not self._cond.wait_for(lambda: self._hit is not None, timeout):
                raise TimeoutError(f"{self._prefix!r} never reached the simulator")
            assert self._hit is not None
            return self._hit


def stats(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered) * 1e3, ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 tries instead of 1000")
    args = parser.parse_args()
    n = 100 if args.quick else 1000

    sim = Esp300Simulator(reply_delay_s=float(os.environ.get("ESP_DELAY", "0.004")))  # realistic: 4 ms + 19200 baud line time
    watch = WireWatch(sim)
    classes = {Esp300: {"bench/esp300/x": {"SerialURL": SIMULATOR_URL, "Axis": 1}}, BareDevice: {"bench/bare/1": {}}}
    with served(classes, simulator=sim, timeout_s=30, ready=None) as server:
        axis = server["bench/esp300/x"]
        bare = server["bench/bare/1"]
        wait_until(lambda: axis.State() == tango.DevState.ON, 15, what="the axis ON")

        bare_rtt, write_wire, write_rtt = [], [], []
        for i in range(n):
            t0 = time.monotonic()
            bare.write_attribute("Value", float(i))
            bare_rtt.append(time.monotonic() - t0)

            watch.arm(b"1PA")
            t0 = time.monotonic()
            axis.write_attribute("Position", 1.0 if i % 2 else 1.002)
            t1 = time.monotonic()
            write_wire.append(watch.wait() - t0)
            write_rtt.append(t1 - t0)

        stop_wire = []
        for i in range(n):
            watch.arm(b"1PA")
            axis.write_attribute("Position", 10.0 if i % 2 else -10.0)
            watch.wait()
            started = time.monotonic()
            while not sim.is_moving(1):
                if time.monotonic() - started > 2:
                    raise SystemExit(f"try {i}: the axis did not start moving: {axis.State()} {axis.Status()}")
                time.sleep(0.0005)
            time.sleep(0.002 + (i % 7) * 0.003)  # land at different phases of the polling
            watch.arm(b"1ST")
            t0 = time.monotonic()
            axis.Stop()
            stop_wire.append(watch.wait() - t0)

        # Stop while another client's write of the same axis is being confirmed (PA is on the
        # wire, its confirmation not yet back)
        other = device_proxy(server.access("bench/esp300/x"), 3000)
        stop_behind_write = []
        for i in range(n // 2):
            watch.arm(b"1PA")
            writer = threading.Thread(target=other.write_attribute, args=("Position", 10.0 if i % 2 else -10.0))
            writer.start()
            watch.wait()
            watch.arm(b"1ST")
            t0 = time.monotonic()
            axis.Stop()
            stop_behind_write.append(watch.wait() - t0)
            writer.join()
            wait_until(lambda: axis.State() != tango.DevState.MOVING, 10, interval=0.002, what="the axis stopped")

    rows = [
        ("bare DeviceProxy write (round trip)", bare_rtt),
        ("Position write (round trip)", write_rtt),
        ("Position write -> PA on the wire", write_wire),
        ("Stop during a move -> ST on the wire", stop_wire),
        ("Stop during another's write -> ST", stop_behind_write),
    ]
    print(f"ESP300 latency over {n} tries (simulator reply delay {sim.reply_delay_s * 1e3:.1f} ms + line time)")
    for label, samples in rows:
        med, p99 = stats(samples)
        print(f"  {label:40s} median {med:7.3f} ms   p99 {p99:7.3f} ms")
    over = stats(write_wire)[0] - stats(bare_rtt)[0]
    print(f"  write -> wire median minus bare write median: {over:+.3f} ms (target < 0.3 ms)")
    print(f"  Stop -> wire p99: {stats(stop_wire)[1]:.3f} ms (target < 5 ms)")


if __name__ == "__main__":
    main()

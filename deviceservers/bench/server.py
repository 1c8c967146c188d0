"""The virtual optical bench: every serial simulator on its own TCP port, coupled by optics.

One process serves the ESP300 controller, the ELL14 bus (mounts 2, 3, 8), the Mai Tai and the
1830-C on 127.0.0.1, each speaking exactly the bytes of the real instrument, the way a terminal
server presents real serial lines. The device servers reach them with ``socket://`` URLs, the
same code path as in the lab.

The optics model couples them: the 1830-C reads the laser's beam after the half-wave plate, the
quarter-wave plate and the polariser (:mod:`.optics`), and the camera (in the Pvcam server's
process) asks the control port for the scene: where the ESP300 x/y stage puts the spot and how
much light it carries.

Which port serves which instrument comes from the lab configuration (the ``SerialURL`` of each
server class), so lab.json stays the one place that says where things are.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from dataclasses import asdict
from typing import Any
from urllib.parse import urlparse

from deviceservers.common.simulator import Simulator
from deviceservers.common.tcp_server import SimulatorServer
from deviceservers.Ell14.simulator import Ell14BusSimulator
from deviceservers.Esp300.simulator import Esp300Simulator
from deviceservers.MaiTai.simulator import MaiTaiSimulator
from deviceservers.Newport1830C.simulator import Newport1830CSimulator
from tango_db import environment

from .control import ControlServer
from .optics import OpticsModel

log = logging.getLogger("tangodaq.bench")

#: Tango server class -> bench instrument name
INSTRUMENT_OF_CLASS = {
    "Esp300": "esp300",
    "Ell14": "ell14",
    "MaiTai": "maitai",
    "Newport1830C": "newport1830c",
}

HWP_ADDRESS, POL_ADDRESS, QWP_ADDRESS = "2", "3", "8"
STAGE_X_AXIS, STAGE_Y_AXIS = 1, 2


class Bench:
    """The simulators, their coupling, and the fault-injection interface."""

    def __init__(self, *, fast: bool = False, optics: OpticsModel | None = None, seed: int | None = None,
                 warmup_s: float | None = None) -> None:
        self.optics = optics or OpticsModel()
        # Realistic delays by default (a rehearsal should feel like the lab); fast for tests.
        self.maitai = MaiTaiSimulator(
            reply_delay_s=0.005 if fast else 0.1,
            warmup_s=warmup_s if warmup_s is not None else (3.0 if fast else 30.0),  # real: ~120 s
            tuning_rate_nm_s=200.0 if fast else 30.0,
            shutter_lag_s=0.2 if fast else 1.0,
            seed=seed,
        )
        self.ell14 = Ell14BusSimulator(addresses="238", reply_delay_s=0.002 if fast else 0.015, seed=seed)
        # the fast bench leaves only software: no line time either (the realistic one keeps 19200 baud)
        self.esp300 = Esp300Simulator(reply_delay_s=0.001 if fast else 0.004,
                                      char_time_s=0.0 if fast else 10 / 19200, seed=seed)
        self.meter = Newport1830CSimulator(
            reply_delay_s=0.002 if fast else 0.02, reading_delay_s=0.01 if fast else 0.25, seed=seed
        )
        self.meter.source = self.meter_input
        self.simulators: dict[str, Simulator] = {
            "esp300": self.esp300,
            "ell14": self.ell14,
            "maitai": self.maitai,
            "newport1830c": self.meter,
        }
        self.servers: dict[str, SimulatorServer] = {}
        self.control: ControlServer | None = None
        self._stopped = threading.Event()

    # ------------------------------------------------------------------ coupling
    def laser_beam(self) -> tuple[float, float]:
        """(watts leaving the laser through its shutter, wavelength nm)."""
        m = self.maitai
        power = m.output_power_w if (m.emission and m.shutter_open) else 0.0
        return power, m.actual_wavelength_nm

    def transmitted_power(self) -> tuple[float, float]:
        power, nm = self.laser_beam()
        out = self.optics.transmitted_power(
            power, nm,
            self.ell14.position_degrees(HWP_ADDRESS),
            self.ell14.position_degrees(QWP_ADDRESS),
            self.ell14.position_degrees(POL_ADDRESS),
        )
        return out, nm

    def meter_input(self) -> tuple[float, float]:
        """What falls on the 1830-C's detector: (watts, true wavelength nm)."""
        return self.transmitted_power()

    def scene(self) -> dict[str, Any]:
        """What the camera sees: spot centre from the stage, brightness from the optics."""
        power, nm = self.transmitted_power()
        x, y = self.optics.spot(self.esp300.position(STAGE_X_AXIS), self.esp300.position(STAGE_Y_AXIS))
        return {
            "spot_x_px": x,
            "spot_y_px": y,
            "sigma_px": self.optics.spot_sigma_px,
            "power_w": power,
            "peak_adu_per_s": self.optics.spot_peak_adu(power, 1.0),
            "wavelength_nm": nm,
        }

    def truth(self) -> dict[str, Any]:
        """What the calibration macros should find (for tests)."""
        o = self.optics
        return {
            "hwp": {"address": HWP_ADDRESS, **asdict(o.hwp)},
            "qwp": {"address": QWP_ADDRESS, **asdict(o.qwp)},
            "pol": {"address": POL_ADDRESS, **asdict(o.pol)},
            "throughput": o.throughput,
            "px_per_mm": o.px_per_mm,
            "spot_origin_px": list(o.spot_origin_px),
        }

    # ------------------------------------------------------------------ serving
    def serve(self, ports: dict[str, tuple[str, int]], control: tuple[str, int] | None = None) -> None:
        """Serve each named instrument on (host, port); 0 picks a free port."""
        for name, (host, port) in ports.items():
            if name not in self.simulators:
                raise ValueError(f"the bench has no instrument {name!r}; it has {', '.join(self.simulators)}")
            self.servers[name] = SimulatorServer(self.simulators[name], host, port, name=name).start()
            log.info("%s on %s", name, self.servers[name].url)
        if control is not None:
            self.control = ControlServer(self.handle_control, control[0], control[1]).start()
            log.info("control on %s:%s", self.control.host, self.control.port)

    def close(self) -> None:
        for server in self.servers.values():
            server.close()
        if self.control is not None:
            self.control.close()
        self._stopped.set()

    def wait(self) -> None:
        self._stopped.wait()

    # ------------------------------------------------------------------ control
    def handle_control(self, req: dict[str, Any]) -> dict[str, Any]:
        cmd = req.get("cmd")
        if cmd == "scene":
            return self.scene()
        if cmd == "truth":
            return self.truth()
        if cmd == "status":
            return {
                "instruments": {
                    name: {
                        "url": self.servers[name].url if name in self.servers else None,
                        "unplugged": sim.faults.unplugged,
                        "mute": sim.faults.mute,
                        "extra_delay_s": sim.faults.extra_delay_s,
                    }
                    for name, sim in self.simulators.items()
                },
                "laser": {"emission": self.maitai.emission, "shutter_open": self.maitai.shutter_open,
                          "wavelength_nm": self.maitai.actual_wavelength_nm, "power_w": self.maitai.output_power_w,
                          "watchdog_s": self.maitai.watchdog_s},
                "transmitted_w": self.transmitted_power()[0],
            }
        if cmd in ("unplug", "plug", "mute", "unmute", "delay", "garble", "truncate"):
            sim = self._sim(req)
            if cmd == "unplug":
                sim.unplug()
            elif cmd == "plug":
                sim.plug()
            elif cmd == "mute":
                sim.faults.mute = True
            elif cmd == "unmute":
                sim.faults.mute = False
            elif cmd == "delay":
                sim.faults.extra_delay_s = float(req.get("seconds", 0.0))
            elif cmd == "garble":
                sim.faults.garble_next = int(req.get("count", 1))
            elif cmd == "truncate":
                sim.faults.truncate_next = int(req.get("count", 1))
            return {"instrument": req["instrument"]}
        if cmd == "interlock":
            (self.maitai.open_interlock if req.get("open", True) else self.maitai.close_interlock)()
            return {"interlock_open": self.maitai.interlock_open_now}
        if cmd == "local":
            self.maitai.set_local_mode(bool(req.get("on", True)))
            return {"local": self.maitai.local_mode}
        if cmd == "key":
            self.maitai.set_key_switch(bool(req.get("on", True)))
            return {"key_switch_on": self.maitai.key_switch_on}
        if cmd == "shutter":  # somebody presses the shutter button on the front panel
            self.maitai.front_panel_shutter(bool(req.get("open", True)))
            return {"shutter_open_commanded": bool(req.get("open", True))}
        if cmd == "warm":
            self.maitai.finish_warmup()
            return {"warmup_percent": self.maitai.warmup_percent}
        if cmd == "stall":
            address = str(req.get("address", "")).upper()
            stall = bool(req.get("on", True))
            if address not in self.ell14.mounts:
                raise ValueError(f"no ELL14 mount at address {address!r}; mounts: {', '.join(self.ell14.mounts)}")
            if stall:
                self.ell14.mechanical_timeout.add(address)
            else:
                self.ell14.mechanical_timeout.discard(address)
            return {"stalled": sorted(self.ell14.mechanical_timeout)}
        if cmd == "optics":
            for element in ("hwp", "qwp", "pol"):
                for key, value in (req.get(element) or {}).items():
                    setattr(getattr(self.optics, element), key, float(value))
            return self.truth()
        raise ValueError(
            f"unknown bench command {cmd!r}: scene, truth, status, unplug, plug, mute, unmute, delay, garble, "
            "truncate, interlock, local, key, shutter, warm, stall, optics"
        )

    def _sim(self, req: dict[str, Any]) -> Simulator:
        name = str(req.get("instrument", "")).lower()
        if name not in self.simulators:
            raise ValueError(f"no instrument {name!r} on the bench; it has {', '.join(self.simulators)}")
        return self.simulators[name]


# ---------------------------------------------------------------------- configuration
def ports_from_config(config: dict[str, Any]) -> dict[str, tuple[str, int]]:
    """Instrument -> (host, port) from the ``socket://`` SerialURLs of a dsconfig lab file."""
    ports: dict[str, tuple[str, int]] = {}
    for server, instances in config.get("servers", {}).items():
        for classes in instances.values():
            for klass, devices in classes.items():
                instrument = INSTRUMENT_OF_CLASS.get(klass) or INSTRUMENT_OF_CLASS.get(server)
                if instrument is None:
                    continue
                for dev in devices.values():
                    for url in dev.get("properties", {}).get("SerialURL", []):
                        if url.startswith("socket://"):
                            u = urlparse(url)
                            found = (u.hostname or "127.0.0.1", int(u.port or 0))
                            if ports.get(instrument, found) != found:
                                raise ValueError(f"{klass} devices use two bench addresses: {ports[instrument]} and {found}")
                            ports[instrument] = found
    return ports


CONTROL_PORT_OFFSET = 9  # the control port is the lab's database port + 9 (lab.json: ${PORT+9})


def default_control_address() -> tuple[str, int] | None:
    """The control port by convention: TANGO_HOST's port + CONTROL_PORT_OFFSET on loopback."""
    try:
        port = environment.split_tango_host(environment.tango_host())[1]
    except ValueError:
        return None
    return ("127.0.0.1", port + CONTROL_PORT_OFFSET)


def parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tangodaq bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=os.environ.get("TANGODAQ_CONFIG"),
                        help="resolved lab configuration (default: $TANGODAQ_CONFIG, written by `tangodaq up`)")
    parser.add_argument("--fast", action="store_true", default=os.environ.get("TANGODAQ_BENCH_FAST") == "1",
                        help="short warm-up and delays (tests); default: realistic")
    parser.add_argument("--warmup-s", type=float, default=None,
                        help="the laser's warm-up time in seconds (real units: about 120)")
    parser.add_argument("--control", type=parse_address, default=default_control_address(),
                        help="HOST:PORT of the fault-injection and scene port (default: TANGO_HOST's port + 9)")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench %(levelname)s %(message)s")
    if not args.config:
        parser.error("no configuration: pass --config lab.json or run it through `tangodaq up`")
    with open(args.config) as f:
        config = json.load(f)
    ports = ports_from_config(config)
    if not ports:
        log.error("no socket:// SerialURL in %s: nothing to serve", args.config)
        return 2
    bench = Bench(fast=args.fast, seed=args.seed, warmup_s=args.warmup_s)
    try:
        bench.serve(ports, args.control)
    except OSError as exc:
        log.error("cannot listen: %s (another bench or lab may be running: `tangodaq status`)", exc)
        bench.close()
        return 2
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: bench.close())
    log.info("bench ready: %s", ", ".join(f"{n} {s.url}" for n, s in bench.servers.items()))
    sys.stdout.flush()
    bench.wait()
    return 0

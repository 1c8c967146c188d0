"""The virtual bench as a Tango device server (``VirtualBench``), so Starter can run it.

On a laptop ``tangodaq up`` runs the bench as a plain process. A facility rehearsing on the
simulated lab (``tangodaq deploy --simulated``) runs everything under Starter, and Starter only
starts, watches and restarts Tango servers: this server wraps the same ``Bench`` and serves its
instruments on the TCP ports named by its ``Ports`` property (written by deploy from the lab's
``socket://`` SerialURLs), plus the fault-injection control port.

State ON while serving; FAULT with the reason when a port cannot be opened (another bench or lab
holds it), retried at each Init.
"""

from __future__ import annotations

import json
import logging

from tango import DevState
from tango.server import Device, attribute, command, device_property

from deviceservers.common.stack_dump import enable_stack_dumps

from .server import Bench, parse_address

log = logging.getLogger(__name__)


def parse_ports(lines: list[str]) -> tuple[dict[str, tuple[str, int]], tuple[str, int] | None]:
    """``["esp300=127.0.0.1:10001", ..., "control=127.0.0.1:10009"]`` -> (instruments, control)."""
    ports: dict[str, tuple[str, int]] = {}
    control = None
    for line in lines:
        name, sep, address = line.partition("=")
        if not sep:
            raise ValueError(f"Ports entry {line!r} is not name=host:port")
        if name.strip() == "control":
            control = parse_address(address.strip())
        else:
            ports[name.strip()] = parse_address(address.strip())
    return ports, control


class VirtualBench(Device):
    """The simulated optical bench: every instrument simulator on its TCP port, optically coupled."""

    Ports = device_property(
        dtype=(str,), default_value=[],
        doc="instrument=host:port per simulated instrument, and control=host:port for fault injection",
    )
    Fast = device_property(dtype=bool, default_value=False, doc="short warm-up and delays (tests)")
    WarmupS = device_property(dtype=float, default_value=0.0,
                              doc="the laser's warm-up time, s (0: the bench's own, 30 s or 3 s when Fast)")

    def init_device(self) -> None:
        super().init_device()
        self.bench: Bench | None = None
        self.set_state(DevState.INIT)
        try:
            ports, control = parse_ports(list(self.Ports))
            if not ports:
                raise ValueError("the Ports property names no instrument: deploy with `tangodaq deploy --simulated`")
            bench = Bench(fast=self.Fast, warmup_s=self.WarmupS or None)
            try:
                bench.serve(ports, control)
            except OSError:
                bench.close()
                raise
        except (OSError, ValueError) as exc:
            self.set_state(DevState.FAULT)
            self.set_status(f"The bench cannot serve its instruments: {exc}. Free the port (another bench or "
                            "`tangodaq up` lab may hold it) and run Init.")
            self.error_stream(f"bench not serving: {exc}")
            return
        self.bench = bench
        served = ", ".join(f"{n} {s.url}" for n, s in bench.servers.items())
        self.set_state(DevState.ON)
        self.set_status(f"Serving {served}" + (f"; control port {control[0]}:{control[1]}" if control else ""))
        self.info_stream(f"bench serving {served}")

    def delete_device(self) -> None:
        if self.bench is not None:
            self.bench.close()
            self.bench = None

    @attribute(dtype=(str,), max_dim_x=16, description="instrument=url of every served simulator")
    def Instruments(self) -> list[str]:
        if self.bench is None:
            return []
        return [f"{n}={s.url}" for n, s in self.bench.servers.items()]

    @command(dtype_out=str, doc_out="JSON: the optics' hidden offsets that calibrations should find")
    def Truth(self) -> str:
        if self.bench is None:
            raise RuntimeError("the bench is not serving (see Status)")
        return json.dumps(self.bench.truth())


def main(args: list[str] | None = None) -> int:
    enable_stack_dumps()
    return VirtualBench.run_server(args=args) or 0

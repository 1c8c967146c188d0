"""pyserial URL handler for ``sim://<instrument>[?option=value&...]``.

``serial.serial_for_url("sim://newport1830c?reply_delay_s=0")`` returns a port whose far end is
the in-process simulator of that instrument, so the real driver and link code run unchanged.
All ports opened on the same URL in one process reach the same simulator instance (three
ESP300 axis devices see one controller). Options in the query string are passed to the
simulator's constructor (floats, ints and booleans are converted).

The handler is found by pyserial through ``serial.protocol_handler_packages``; importing this
module registers ``deviceservers.common`` there.
"""

from __future__ import annotations

import importlib
import threading
import urllib.parse
from typing import Any

import serial
from serial.serialutil import PortNotOpenError, SerialBase, SerialException

from .simulator import SimConnection, SimConnectionLost, Simulator

#: instrument name in the URL -> "module:Class"
SIMULATORS: dict[str, str] = {
    "newport1830c": "deviceservers.Newport1830C.simulator:Newport1830CSimulator",
    "esp300": "deviceservers.Esp300.simulator:Esp300Simulator",
    "ell14": "deviceservers.Ell14.simulator:Ell14BusSimulator",
    "maitai": "deviceservers.MaiTai.simulator:MaiTaiSimulator",
}

_instances: dict[str, Simulator] = {}
_lock = threading.Lock()

if "deviceservers.common" not in serial.protocol_handler_packages:
    serial.protocol_handler_packages.append("deviceservers.common")


def _convert(value: str) -> Any:
    low = value.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    for conv in (int, float):
        try:
            return conv(value)
        except ValueError:
            pass
    return value


def parse_sim_url(url: str) -> tuple[str, dict[str, Any]]:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "sim":
        raise SerialException(f"not a sim:// URL: {url!r}")
    name = (parts.netloc or parts.path).strip("/").lower()
    if name not in SIMULATORS:
        raise SerialException(f"unknown simulated instrument {name!r} in {url!r}; known: {', '.join(sorted(SIMULATORS))}")
    options = {k: _convert(v) for k, v in urllib.parse.parse_qsl(parts.query)}
    return name, options


def get_simulator(url: str) -> Simulator:
    """The process-wide simulator instance for ``url`` (created on first use)."""
    with _lock:
        sim = _instances.get(url)
        if sim is None:
            name, options = parse_sim_url(url)
            module_name, class_name = SIMULATORS[name].split(":")
            cls = getattr(importlib.import_module(module_name), class_name)
            sim = cls(**options)
            _instances[url] = sim
        return sim


def forget_simulators() -> None:
    """Drop every in-process simulator (tests start from a fresh instrument)."""
    with _lock:
        _instances.clear()


class Serial(SerialBase):
    """A pyserial port whose far end is an in-process simulator."""

    _conn: SimConnection | None = None

    def open(self) -> None:
        if self._port is None:
            raise SerialException("Port must be configured before it can be used.")
        if self.is_open:
            raise SerialException("Port is already open.")
        try:
            self._conn = get_simulator(self.portstr).connect()
        except SimConnectionLost as exc:
            raise SerialException(f"could not open {self.portstr}: {exc}") from exc
        self.is_open = True

    def from_url(self, url: str) -> str:
        parse_sim_url(url)
        return url

    def _reconfigure_port(self) -> None:
        """Baud rate and flow control mean nothing in-process."""

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        self.is_open = False

    @property
    def in_waiting(self) -> int:
        if not self.is_open or self._conn is None:
            raise PortNotOpenError()
        if self._conn.lost:
            raise SerialException("simulated cable pulled")
        return self._conn.in_waiting()

    def read(self, size: int = 1) -> bytes:
        if not self.is_open or self._conn is None:
            raise PortNotOpenError()
        try:
            return self._conn.read(size, self._timeout)
        except SimConnectionLost as exc:
            raise SerialException(str(exc)) from exc

    def write(self, data: bytes) -> int:
        if not self.is_open or self._conn is None:
            raise PortNotOpenError()
        try:
            self._conn.write(bytes(data))
        except SimConnectionLost as exc:
            raise SerialException(str(exc)) from exc
        return len(data)

    def reset_input_buffer(self) -> None:
        if self._conn is not None:
            self._conn.reset_input()

    def reset_output_buffer(self) -> None:
        """Nothing is buffered on the way out."""

    def flush(self) -> None:
        """Writes are delivered synchronously."""

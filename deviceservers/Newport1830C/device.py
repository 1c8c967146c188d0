"""Tango device server ``Newport1830C``: the power meter."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from tango.server import command

from deviceservers.common.device import InstrumentDevice, tango_errors
from deviceservers.common.parameter import Parameter
from deviceservers.common.serial_link import LinkSettings

from .component import Newport1830CComponent


class Newport1830C(InstrumentDevice):
    """Newport 1830-C optical power meter on RS-232 (9600 8N1, no handshake, LF)."""

    DEFAULT_BAUD_RATE = 9600
    DEFAULT_FLOW_CONTROL = "none"
    DEFAULT_TIMEOUT_S = 1.0  # a reading can take 0.5 s at 9600 baud
    DEFAULT_POLL_PERIOD_MS = 500
    WRITE_TERMINATOR = b"\n"
    READ_TERMINATOR = b"\n"

    component: Newport1830CComponent

    def create_component(self, settings: LinkSettings, poll_period_s: float, logger: logging.Logger) -> Newport1830CComponent:
        return Newport1830CComponent(settings, poll_period_s, logger)

    # ------------------------------------------------------------------ streaming into the ring
    def write_parameter(self, p: Parameter[Any], value: Any) -> None:
        if p.name == "Streaming" and value and self.component.sink is None:
            self._open_stream()
        super().write_parameter(p, value)

    def _open_stream(self) -> None:
        """Create the ring ``<device>.power``: the component hands it numpy arrays, never Arrow."""
        from datawriter import create_scalar_stream

        self._stream = create_scalar_stream(
            self.get_name(), "power", units="W", extra_columns={"flags": (np.uint8, "")},
            description="1830-C readings in watts; flags: 1 invalid (text reply), 2 saturated, 4 over range")

        def sink(timestamps: np.ndarray, watts: np.ndarray, flags: np.ndarray) -> None:
            self._stream.write(timestamps, watts, flags=flags)

        self.component.sink = sink

    def delete_device(self) -> None:
        super().delete_device()
        stream = getattr(self, "_stream", None)
        if stream is not None:
            stream.close()
            self._stream = None

    @command(dtype_out=float, doc_out="the reading in watts")
    @tango_errors
    def Measure(self) -> float:
        """Take one reading now (D?, sent ahead of the polls) and return it in watts; Power is
        updated too. For counts that must not wait for the next poll: the meter's reading time
        is the only wait. Refused (InstrumentRefused) when the meter answers SAT, OVER, ERR or
        UNDER instead of a number."""
        return self.component.measure()

    @command(doc_in="", doc_out="")
    @tango_errors
    def StoreReference(self) -> None:
        """Store the current reading as the reference for relative (dB, REL) units."""
        self.component.store_reference()

    @command
    @tango_errors
    def Zero(self) -> None:
        """Store the current reading as zero and subtract it from now on. Block the beam first."""
        self.component.zero_now()


def main(args: list[str] | None = None) -> None:
    Newport1830C.run_server(args=args)


if __name__ == "__main__":
    main()

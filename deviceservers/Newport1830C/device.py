"""Tango device server ``Newport1830C``: the power meter."""

from __future__ import annotations

import logging

from tango.server import command

from deviceservers.common.device import InstrumentDevice, tango_errors
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

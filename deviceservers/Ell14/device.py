"""Tango device server ``Ell14``: one device per Thorlabs ELL14 rotation mount.

All mounts of one bus (same ``SerialURL``) run in one server instance and share one link and one
bus dispatcher (:mod:`deviceservers.Ell14.bus`): the port can be opened only once, the end of a
move of one mount can arrive during another mount's question, and at most ``MaxMovingMounts``
mounts may move at once on one supply.
"""

from __future__ import annotations

import logging

from tango.server import command, device_property

from deviceservers.common.device import InstrumentDevice, tango_errors
from deviceservers.common.serial_link import LinkSettings

from .bus import MAX_MOVING
from .component import SWEEP_EVERY_MOVES, Ell14Component


class Ell14(InstrumentDevice):
    """Thorlabs Elliptec ELL14 rotation mount on an RS-485 bus (9600 8N1, no handshake;
    commands unterminated, replies end with CR LF)."""

    DEFAULT_BAUD_RATE = 9600
    DEFAULT_FLOW_CONTROL = "none"
    DEFAULT_TIMEOUT_S = 0.5  # a query is answered in ~20 ms; moves are not waited for on the link
    DEFAULT_POLL_PERIOD_MS = 500
    WRITE_TERMINATOR = b""  # the mounts frame commands by length
    READ_TERMINATOR = b"\r\n"

    Address = device_property(dtype=str, default_value="0",
                              doc="Bus address of this mount, one hex digit 0-F (factory setting 0)")
    MaxMovingMounts = device_property(
        dtype=int, default_value=MAX_MOVING,
        doc="Most mounts of this bus allowed to move at once (supply: 1.2 A peak per moving mount); "
        "further moves wait in a queue. The smallest value among the bus's devices wins.")
    SweepEveryMoves = device_property(
        dtype=int, default_value=SWEEP_EVERY_MOVES,
        doc="Status recommends CleanMechanics when MovesSinceSweep reaches this")

    component: Ell14Component

    def create_component(self, settings: LinkSettings, poll_period_s: float, logger: logging.Logger) -> Ell14Component:
        return Ell14Component(settings, self.Address, poll_period_s, logger, max_moving=self.MaxMovingMounts,
                              sweep_every_moves=self.SweepEveryMoves)

    @command(dtype_in=int, doc_in="0 = clockwise, 1 = anticlockwise")
    @tango_errors
    def Home(self, direction: int) -> None:
        """Move to the home position (the index mark plus HomeOffset); sets Homed on arrival."""
        self.component.home(direction)

    @command
    @tango_errors
    def Stop(self) -> None:
        """Stop this mount now (also drops its move if it was waiting for a free slot)."""
        self.component.stop_motion()

    @command(dtype_in=float, doc_in="angle in degrees, -360..360")
    @tango_errors
    def MoveRelative(self, degrees: float) -> None:
        """Start a move by the given angle and return at once (State MOVING until the end)."""
        self.component.move_relative(degrees)

    @command
    @tango_errors
    def JogForward(self) -> None:
        """Move forward by JogStep."""
        self.component.jog(True)

    @command
    @tango_errors
    def JogBackward(self) -> None:
        """Move backward by JogStep."""
        self.component.jog(False)

    @command
    @tango_errors
    def SaveUserData(self) -> None:
        """Store Velocity, JogStep and HomeOffset in the mount (they survive a power cycle)."""
        self.component.save_user_data()

    @command
    @tango_errors
    def CleanMechanics(self) -> None:
        """Run the mount's own cleaning cycle (protocol command cm): full-range sweeps for a few
        minutes, State MOVING meanwhile, Stop ends it. Resets MovesSinceSweep when it completes.
        Thorlabs recommends one about every 10 000 moves; block the beam if the sweep matters."""
        self.component.clean_mechanics()


def main(args: list[str] | None = None) -> None:
    Ell14.run_server(args=args)


if __name__ == "__main__":
    main()

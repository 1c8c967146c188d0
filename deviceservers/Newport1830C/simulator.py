"""A Newport 1830-C optical power meter, byte for byte.

What it does as the real meter does:

* echoes every command until it receives ``E0`` (the factory setting is echo on);
* set commands (``W0800``, ``R3``, ``A1``...) are silent; queries answer one LF-terminated line;
* ``D?`` answers in the current units: watts in scientific notation (``+.11E-9``, ``1.234E-6``),
  dB/dBm/REL as fixed-point numbers; a reading takes a while (``reading_delay_s``);
* readings follow the incident power, the silicon detector's responsivity at the *true*
  wavelength divided by the one at the wavelength setting (a wrong setting reads wrong), the
  attenuator (OD 3, corrected by the meter), the zero offset, noise and the range;
* manual range too low -> over-range bit 8 (and ``OVER`` in text mode); detector above its
  saturation -> bit 4 (and ``SAT`` in text mode); the status byte ``Q?`` also carries parameter
  error (1), command error (2), busy (32) and reading ready (128);
* unknown commands and bad values are silent, with the error bits set, until ``CS``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable

from deviceservers.common.simulator import Simulator

# Silicon photodiode responsivity (A/W) versus wavelength (nm): the 818-SL curve's shape.
_RESPONSIVITY = [
    (300, 0.03), (400, 0.12), (500, 0.27), (600, 0.37), (700, 0.45), (800, 0.52),
    (900, 0.60), (950, 0.62), (1000, 0.55), (1050, 0.35), (1100, 0.15),
]

#: full scale of manual ranges R1..R8 in watts (without attenuator)
RANGE_FULL_SCALE = [2.5 * 10.0 ** (n - 10) for n in range(1, 9)]
SATURATION_W = 2.0e-3  # on the detector element
ATTENUATION = 1.0e-3  # OD 3 attenuator

STATUS_PARAM_ERROR = 1
STATUS_CMD_ERROR = 2
STATUS_SATURATED = 4
STATUS_OVER_RANGE = 8
STATUS_BUSY = 32
STATUS_READY = 128


def responsivity(nm: float) -> float:
    """Detector responsivity (A/W) at ``nm`` by linear interpolation."""
    pts = _RESPONSIVITY
    if nm <= pts[0][0]:
        return pts[0][1]
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if nm <= x1:
            return y0 + (y1 - y0) * (nm - x0) / (x1 - x0)
    return pts[-1][1]


def format_sci(watts: float) -> str:
    """Scientific notation the way the meter prints it: ``1.234E-6``, ``+.11E-9`` style."""
    if watts == 0:
        return "0E-12"
    exp = int(math.floor(math.log10(abs(watts))))
    mantissa = watts / 10.0**exp
    return f"{mantissa:.3f}E{exp}"


class Newport1830CSimulator(Simulator):
    input_terminators = (b"\n", b"\r")
    reply_terminator = b"\n"

    def __init__(
        self,
        reply_delay_s: float = 0.02,
        reading_delay_s: float = 0.25,
        incident_power_w: float = 1.234e-6,
        true_wavelength_nm: float = 800.0,
        noise: float = 0.002,
        text_errors: bool = False,
        seed: int | None = None,
    ) -> None:
        super().__init__(reply_delay_s=reply_delay_s, seed=seed)
        self.reading_delay_s = reading_delay_s
        self.incident_power_w = incident_power_w
        self.true_wavelength_nm = true_wavelength_nm
        self.noise = noise
        self.text_errors = text_errors  # answer OVER/SAT instead of a number
        #: the bench replaces this with the optics model: () -> (watts, true wavelength nm)
        self.source: Callable[[], tuple[float, float]] | None = None
        self.echo = True
        self.attenuator = False
        self.beeper = True
        self.filter = 3  # 1 slow, 2 medium, 3 fast
        self.hold = False
        self.backlight = 1
        self.lockout = False
        self.range = 0  # 0 auto, 1..8 manual
        self.units = 1  # 1 W, 2 dB, 3 dBm, 4 REL
        self.wavelength_nm = 800
        self.zero_on = False
        self.zero_offset_w = 0.0
        self.reference_w = 1.0e-3
        self.error_bits = 0
        self._held_reading: float | None = None

    # ------------------------------------------------------------------ physics
    def incident(self) -> tuple[float, float]:
        if self.source is not None:
            return self.source()
        return self.incident_power_w, self.true_wavelength_nm

    def measure(self) -> tuple[float, int]:
        """(reading in watts, status bits for saturation/over range) as the meter computes it."""
        power, true_nm = self.incident()
        on_detector = power * (ATTENUATION if self.attenuator else 1.0)
        bits = 0
        if on_detector > SATURATION_W:
            bits |= STATUS_SATURATED
            on_detector = SATURATION_W
        noise_scale = {1: 0.25, 2: 0.5, 3: 1.0}[self.filter]
        current = on_detector * responsivity(true_nm)
        current *= 1.0 + self.rng.gauss(0.0, self.noise * noise_scale)
        current += self.rng.gauss(0.0, 2e-13)  # dark noise floor, amps
        reading = current / responsivity(self.wavelength_nm)
        if self.attenuator:
            reading /= ATTENUATION
        reading -= self.zero_offset_w if self.zero_on else 0.0
        full_scale = self.full_scale()
        if abs(reading) > full_scale:
            bits |= STATUS_OVER_RANGE
        return reading, bits

    def full_scale(self) -> float:
        scale = 1.0 / ATTENUATION if self.attenuator else 1.0
        if self.range == 0:
            return RANGE_FULL_SCALE[-1] * scale
        return RANGE_FULL_SCALE[self.range - 1] * scale

    def status_byte(self) -> int:
        _, bits = self.measure()
        return self.error_bits | bits | STATUS_READY

    # ------------------------------------------------------------------ protocol
    def on_bytes(self, conn, data, now):  # noqa: ANN001 - see base class
        if self.echo:
            # The meter echoes characters as it receives them.
            self.reply(conn, data, delay=0.0, terminate=False)
        super().on_bytes(conn, data, now)

    def handle(self, command: str, now: float) -> str | None:
        cmd = command.strip().upper()
        if not cmd:
            return None
        letter, arg = cmd[0], cmd[1:]
        if arg == "?":
            return self._query(letter)
        return self._set(letter, arg)

    def _query(self, letter: str) -> str | None:
        if letter == "D":
            return self._reading()
        values = {
            "A": lambda: str(int(self.attenuator)),
            "F": lambda: str(self.filter),
            "R": lambda: str(self.range),
            "U": lambda: str(self.units),
            "W": lambda: str(self.wavelength_nm),
            "Z": lambda: str(int(self.zero_on)),
            "Q": lambda: str(self.status_byte()),
        }
        fn = values.get(letter)
        if fn is None:
            self.error_bits |= STATUS_CMD_ERROR
            return None
        return fn()

    def _reading(self) -> str:
        reading, bits = self.measure()
        if self.hold and self._held_reading is not None:
            reading = self._held_reading
        self._held_reading = reading
        # A reading takes its time; other queries are quick.
        self._pending_delay = self.reading_delay_s
        if self.text_errors and bits & STATUS_SATURATED:
            return "SAT"
        if self.text_errors and bits & STATUS_OVER_RANGE:
            return "OVER"
        if self.units == 1:
            if bits & STATUS_OVER_RANGE:
                reading = math.copysign(self.full_scale(), reading)
            return format_sci(reading)
        if reading <= 0:
            return "UNDER" if self.text_errors else "-99.99"
        if self.units == 2:
            return f"{10 * math.log10(reading / self.reference_w):.2f}"
        if self.units == 3:
            return f"{10 * math.log10(reading / 1e-3):.2f}"
        return f"{reading / self.reference_w:.4f}"

    def reply(self, conn, text, delay=None, *, terminate=True):  # noqa: ANN001
        pending = getattr(self, "_pending_delay", None)
        if pending is not None and delay is None:
            delay = pending
            self._pending_delay = None
        super().reply(conn, text, delay, terminate=terminate)

    def _set(self, letter: str, arg: str) -> None:
        def digit(lo: int, hi: int) -> int | None:
            if not re.fullmatch(r"\d+", arg):
                return None
            v = int(arg)
            return v if lo <= v <= hi else None

        if letter == "C" and arg == "S":
            self.error_bits = 0
            return None
        if letter == "S" and arg == "":
            self.reference_w, _ = self.measure()
            return None
        handlers: dict[str, tuple[int, int, Callable[[int], None]]] = {
            "A": (0, 1, lambda v: setattr(self, "attenuator", bool(v))),
            "B": (0, 1, lambda v: setattr(self, "beeper", bool(v))),
            "E": (0, 1, lambda v: setattr(self, "echo", bool(v))),
            "F": (1, 3, lambda v: setattr(self, "filter", v)),
            "G": (0, 1, lambda v: setattr(self, "hold", not v)),
            "K": (0, 2, lambda v: setattr(self, "backlight", v)),
            "L": (0, 1, lambda v: setattr(self, "lockout", bool(v))),
            "R": (0, 8, lambda v: setattr(self, "range", v)),
            "U": (1, 4, lambda v: setattr(self, "units", v)),
            "W": (300, 1100, lambda v: setattr(self, "wavelength_nm", v)),
            "Z": (0, 1, self._set_zero),
        }
        h = handlers.get(letter)
        if h is None:
            self.error_bits |= STATUS_CMD_ERROR
            return None
        if letter == "W" and len(arg) != 4:
            self.error_bits |= STATUS_PARAM_ERROR
            return None
        v = digit(h[0], h[1])
        if v is None:
            self.error_bits |= STATUS_PARAM_ERROR
            return None
        h[2](v)
        return None

    def _set_zero(self, on: int) -> None:
        if on:
            self.zero_on = False
            self.zero_offset_w, _ = self.measure()
            self.zero_on = True
        else:
            self.zero_on = False
            self.zero_offset_w = 0.0

"""A Spectra-Physics Mai Tai tunable Ti:sapphire laser, byte for byte.

What it does as the real laser does (INSTRUMENTS.md):

* SCPI, case-insensitive, long or short forms (``SHUTter 1`` = ``SHUT 1`` = ``shut 1``), a value
  after a space, commands end with CR, LF or both, every reply ends with LF; set commands are
  silent, only queries answer; replies carry units (``820nm``, ``3.000W``, ``100.00%``);
* ``*IDN?`` answers the string logged from a lab unit;
* warm-up: ``READ:PCTWarmedup?`` is 0 % on a cold laser; ``ON`` at 0 % starts the diode
  stabilisation (``warmup_s``, ~2 min by default), ``ON`` at 1-99 % is an execution error (in
  ``*STB?`` bits 1 and 7 and in the ``SYSTem:ERR?`` queue), ``ON`` at 100 % starts emission;
* tuning at a finite rate (``tuning_rate_nm_s``): ``WAVelength?`` is the commanded value at once,
  ``READ:WAVelength?`` follows it; the laser tunes in whole nanometres;
* output power peaks near 800 nm and falls toward the ends of the range, 0 without emission;
* ``SHUTter?`` reports the old state for ``shutter_lag_s`` after ``SHUTter 0|1``;
* ``TIMer:WATChdog n`` switches the pump (emission) off after n s without a valid command;
* LOCAL mode (front panel) and key switch off: set commands are accepted and ignored;
* an open interlock switches emission off, closes the shutter, and sets ``*STB?`` bit 5
  (system error) until it is closed; emission stays off until the next ``ON``.

Error codes follow the SCPI convention (-1xx command errors, -2xx execution errors, positive
device-specific codes) with texts an operator understands; INSTRUMENTS.md gives the format
("numeric error + text"), not the unit's code list.

Physics is computed lazily from ``time.monotonic()`` so there are no threads to stop. The public
properties and fault-injection methods at the end are what the virtual bench and tests use.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable

from deviceservers.common.simulator import Simulator

IDN = "Spectra Physics,MaiTai,3227/51054/40856,0245-2.00.34 / CD00000019 / 214-00.004.057"

ERR_UNDEFINED_HEADER = (-113, "Undefined header")
ERR_MISSING_PARAMETER = (-109, "Missing parameter")
ERR_ILLEGAL_VALUE = (-224, "Illegal parameter value")
ERR_OUT_OF_RANGE = (-222, "Data out of range")
ERR_NOT_WARM = (-221, "Settings conflict: ON refused, the laser is still warming up")
ERR_INTERLOCK_BLOCKS = (-221, "Settings conflict: interlock open")
ERR_INTERLOCK_OPEN = (310, "System error: interlock open, emission stopped")


def _node(pattern: str) -> tuple[str, str]:
    """SCPI node ``WAVelength`` -> (short ``WAV``, long ``WAVELENGTH``)."""
    short = "".join(c for c in pattern if not c.islower())
    return short, pattern.upper()


class MaiTaiSimulator(Simulator):
    input_terminators = (b"\r\n", b"\n", b"\r")
    reply_terminator = b"\n"

    def __init__(
        self,
        reply_delay_s: float = 0.1,
        warmup_s: float = 120.0,
        start_warm: bool = False,
        tuning_rate_nm_s: float = 30.0,
        shutter_lag_s: float = 1.0,
        wavelength_nm: float = 800.0,
        wavelength_min_nm: float = 690.0,
        wavelength_max_nm: float = 1040.0,
        peak_power_w: float = 3.0,
        pump_power_w: float = 13.43,
        humidity_pct: float = 7.26,
        emission_bit: int = 6,
        noise: float = 0.002,
        seed: int | None = None,
    ) -> None:
        super().__init__(reply_delay_s=reply_delay_s, seed=seed)
        self.warmup_s = warmup_s
        self.tuning_rate_nm_s = tuning_rate_nm_s
        self.shutter_lag_s = shutter_lag_s
        self.wavelength_min_nm = wavelength_min_nm
        self.wavelength_max_nm = wavelength_max_nm
        self.peak_power_w = peak_power_w
        self.pump_power_w = pump_power_w
        self.humidity_pct = humidity_pct
        self.emission_bit = emission_bit
        self.noise = noise
        self.mode = "POW"  # MODE? as logged from a lab unit (the manual says PPOW)
        now = self._now()
        self._warm_always = start_warm
        self._warmup_started: float | None = None
        self._emission = False
        self._target = float(round(wavelength_nm))
        self._tune_from = self._target
        self._tune_t0 = now
        self._shutter_cmd = False
        self._shutter_prev = False
        self._shutter_t0 = now - shutter_lag_s
        self._watchdog_s = 0.0
        self._last_valid = now
        self._errors: deque[tuple[int, str]] = deque(maxlen=30)
        self.local_mode = False
        self.key_switch_on = True
        self.interlock_open_now = False
        self._commands = self._command_table()

    @staticmethod
    def _now() -> float:
        return time.monotonic()

    # ------------------------------------------------------------------ physics (lazy)
    def warmup_at(self, now: float) -> float:
        if self._warm_always:
            return 100.0
        if self._warmup_started is None:
            return 0.0
        if self.warmup_s <= 0:
            return 100.0
        return min(100.0, 100.0 * (now - self._warmup_started) / self.warmup_s)

    def wavelength_at(self, now: float) -> float:
        delta = self._target - self._tune_from
        if delta == 0 or self.tuning_rate_nm_s <= 0:
            return self._target
        travelled = self.tuning_rate_nm_s * max(0.0, now - self._tune_t0)
        if travelled >= abs(delta):
            return self._target
        return self._tune_from + math.copysign(travelled, delta)

    def shutter_at(self, now: float) -> bool:
        return self._shutter_cmd if now - self._shutter_t0 >= self.shutter_lag_s else self._shutter_prev

    def emission_at(self, now: float) -> bool:
        self._check_watchdog(now)
        return self._emission

    def power_at(self, now: float) -> float:
        """Output power: a gain curve peaking near 800 nm, 0 without emission."""
        if not self.emission_at(now):
            return 0.0
        nm = self.wavelength_at(now)
        gain = math.exp(-0.5 * ((nm - 800.0) / 120.0) ** 2)
        return max(0.0, self.peak_power_w * gain * (1.0 + self.rng.gauss(0.0, self.noise)))

    def _check_watchdog(self, now: float) -> None:
        if self._watchdog_s > 0 and self._emission and now - self._last_valid > self._watchdog_s:
            self._emission = False  # the pump goes off: nobody is watching the laser

    def _set_emission(self, on: bool) -> None:
        self._emission = on

    def _command_shutter(self, open_: bool, now: float) -> None:
        if open_ == self._shutter_cmd:
            return
        self._shutter_prev = self.shutter_at(now)
        self._shutter_cmd = open_
        self._shutter_t0 = now

    def _start_tuning(self, nm: float, now: float) -> None:
        self._tune_from = self.wavelength_at(now)
        self._target = nm
        self._tune_t0 = now

    def status_byte(self, now: float) -> int:
        stb = 0
        if any(-199 <= code <= -100 for code, _ in self._errors):
            stb |= 1 << 0
        if any(-299 <= code <= -200 for code, _ in self._errors):
            stb |= 1 << 1
        if self.interlock_open_now:
            stb |= 1 << 5
        if self.emission_at(now):
            stb |= 1 << self.emission_bit
        if self._errors or self.interlock_open_now:
            stb |= 1 << 7
        return stb

    def _error(self, err: tuple[int, str]) -> None:
        self._errors.append(err)

    # ------------------------------------------------------------------ protocol
    def _command_table(self) -> list[tuple[list[tuple[str, str]], bool, Callable[[str, float], str | None]]]:
        spec: list[tuple[str, Callable[[str, float], str | None]]] = [
            ("*IDN?", lambda a, t: IDN),
            ("*STB?", lambda a, t: str(self.status_byte(t))),
            ("SYSTem:ERR?", self._q_error),
            ("READ:PCTWarmedup?", lambda a, t: f"{self.warmup_at(t):.2f}%"),
            ("READ:HUMidity?", lambda a, t: f"{self.humidity_pct + self.rng.gauss(0, 0.01):.2f}%"),
            ("WAVelength?", lambda a, t: f"{self._target:.0f}nm"),
            ("READ:WAVelength?", lambda a, t: f"{self.wavelength_at(t):.0f}nm"),
            ("WAVelength:MIN?", lambda a, t: f"{self.wavelength_min_nm:.0f}nm"),
            ("WAVelength:MAX?", lambda a, t: f"{self.wavelength_max_nm:.0f}nm"),
            ("READ:POWer?", lambda a, t: f"{self.power_at(t):.3f}W"),
            ("POWer?", lambda a, t: f"{self.power_at(t):.3f}W"),
            ("READ:PLASer:POWer?", lambda a, t: f"{self.pump_power_w if self.emission_at(t) else 0.0:.2f}W"),
            ("PLASer:POWer?", lambda a, t: f"{self.pump_power_w:.2f}W"),
            ("SHUTter?", lambda a, t: str(int(self.shutter_at(t)))),
            ("MODE?", lambda a, t: self.mode),
            ("TIMer:WATChdog?", lambda a, t: f"{self._watchdog_s:.0f}"),
            ("ON", self._c_on),
            ("OFF", self._c_off),
            ("SHUTter", self._c_shutter),
            ("WAVelength", self._c_wavelength),
            ("TIMer:WATChdog", self._c_watchdog),
            ("SAVe", lambda a, t: None),
            # service settings: a real laser accepts them; the suite must never send them
            ("PLASer:POWer", self._c_service),
            ("PLASer:PCURrent", self._c_service),
            ("MODE", self._c_service),
        ]
        table = []
        for pattern, fn in spec:
            query = pattern.endswith("?")
            nodes = [_node(n) for n in pattern.rstrip("?").split(":")]
            table.append((nodes, query, fn))
        return table

    def _lookup(self, header: str) -> tuple[bool, Callable[[str, float], str | None]] | None:
        query = header.endswith("?")
        tokens = header.rstrip("?").lstrip(":").upper().split(":")
        for nodes, is_query, fn in self._commands:
            if is_query != query or len(nodes) != len(tokens):
                continue
            if all(tok in node for tok, node in zip(tokens, nodes, strict=True)):
                return is_query, fn
        return None

    def handle(self, command: str, now: float) -> str | None:
        header, _, arg = command.strip().partition(" ")
        found = self._lookup(header)
        self._check_watchdog(now)
        if found is None:
            self._error(ERR_UNDEFINED_HEADER)
            return None  # the laser stays silent; the host finds out from *STB?
        self._last_valid = now
        is_query, fn = found
        if not is_query and self._ignoring_sets():
            return None  # LOCAL mode or key switch off: accepted and ignored
        return fn(arg.strip(), now)

    def _ignoring_sets(self) -> bool:
        return self.local_mode or not self.key_switch_on

    def _q_error(self, arg: str, now: float) -> str:
        if not self._errors:
            return '0,"No error"'
        code, text = self._errors.popleft()
        return f'{code},"{text}"'

    def _c_on(self, arg: str, now: float) -> None:
        if self.interlock_open_now:
            self._error(ERR_INTERLOCK_BLOCKS)
            return None
        pct = self.warmup_at(now)
        if pct >= 100.0:
            self._set_emission(True)
        elif self._warmup_started is None:
            self._warmup_started = now  # ON at 0 % starts the diode stabilisation
        else:
            self._error(ERR_NOT_WARM)
        return None

    def _c_off(self, arg: str, now: float) -> None:
        self._set_emission(False)
        return None

    def _c_shutter(self, arg: str, now: float) -> None:
        if arg not in ("0", "1"):
            self._error(ERR_MISSING_PARAMETER if not arg else ERR_ILLEGAL_VALUE)
            return None
        if arg == "1" and self.interlock_open_now:
            self._error(ERR_INTERLOCK_BLOCKS)
            return None
        self._command_shutter(arg == "1", now)
        return None

    def _c_wavelength(self, arg: str, now: float) -> None:
        try:
            nm = float(arg)
        except ValueError:
            self._error(ERR_MISSING_PARAMETER if not arg else ERR_ILLEGAL_VALUE)
            return None
        if not math.isfinite(nm) or not self.wavelength_min_nm <= nm <= self.wavelength_max_nm:
            self._error(ERR_OUT_OF_RANGE)
            return None
        self._start_tuning(float(round(nm)), now)
        return None

    def _c_watchdog(self, arg: str, now: float) -> None:
        try:
            seconds = float(arg)
        except ValueError:
            self._error(ERR_ILLEGAL_VALUE)
            return None
        if seconds < 0:
            self._error(ERR_OUT_OF_RANGE)
            return None
        self._watchdog_s = seconds
        return None

    def _c_service(self, arg: str, now: float) -> None:
        """Accepted as a real laser does; recorded in ``log`` where tests look for it."""
        return None

    # ------------------------------------------------------------------ for the bench and tests
    @property
    def emission(self) -> bool:
        with self._cond:
            return self.emission_at(self._now())

    @property
    def shutter_open(self) -> bool:
        with self._cond:
            return self.shutter_at(self._now())

    @property
    def actual_wavelength_nm(self) -> float:
        with self._cond:
            return self.wavelength_at(self._now())

    @property
    def output_power_w(self) -> float:
        with self._cond:
            return self.power_at(self._now())

    @property
    def warmup_percent(self) -> float:
        with self._cond:
            return self.warmup_at(self._now())

    @property
    def watchdog_s(self) -> float:
        """The serial watchdog as set by ``TIMer:WATChdog`` (0: disabled)."""
        with self._cond:
            return self._watchdog_s

    @property
    def errors(self) -> list[tuple[int, str]]:
        """The error queue as the laser holds it (not drained by reading)."""
        with self._cond:
            return list(self._errors)

    def open_interlock(self) -> None:
        """Somebody opened the enclosure: emission stops, the shutter closes, *STB? bit 5."""
        with self._cond:
            now = self._now()
            self.interlock_open_now = True
            self._set_emission(False)
            self._shutter_cmd = self._shutter_prev = False
            self._shutter_t0 = now - self.shutter_lag_s
            self._error(ERR_INTERLOCK_OPEN)

    def close_interlock(self) -> None:
        """Interlock closed again; emission stays off until the next ON."""
        with self._cond:
            self.interlock_open_now = False

    def set_local_mode(self, local: bool) -> None:
        """Front panel in LOCAL: set commands are accepted and ignored."""
        with self._cond:
            self.local_mode = local

    def set_key_switch(self, on: bool) -> None:
        """Key switch off: emission stops and set commands are ignored until it is on again."""
        with self._cond:
            self.key_switch_on = on
            if not on:
                self._set_emission(False)

    def front_panel_tune(self, nm: float) -> None:
        """Somebody tunes from the front panel (works in LOCAL mode; the host is not told)."""
        with self._cond:
            self._start_tuning(float(round(nm)), self._now())

    def front_panel_shutter(self, open_: bool) -> None:
        """Somebody presses the shutter button on the front panel (the host is not told)."""
        with self._cond:
            self._command_shutter(open_, self._now())

    def power_cycle(self) -> None:
        """Mains off and on: cold (0 %), no emission, shutter closed, watchdog off, errors gone."""
        with self._cond:
            now = self._now()
            self._warm_always = False
            self._warmup_started = None
            self._emission = False
            self._shutter_cmd = self._shutter_prev = False
            self._shutter_t0 = now - self.shutter_lag_s
            self._watchdog_s = 0.0
            self._errors.clear()

    def finish_warmup(self) -> None:
        """Jump to 100 % (a laser that has been on its supply for hours)."""
        with self._cond:
            self._warm_always = True

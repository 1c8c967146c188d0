"""The lab's experiment macros (MacroServer MacroPath: this folder).

Safety contract of every macro here (class ``LabMacro``): parameters are checked before anything
moves; on stop, abort or error the laser shutter is closed if this macro opened it and the motors
it moved are stopped. Scans are Sardana's own (``ascan``/``mesh``), so every curve is recorded by
the configured recorders (ScanDir/ScanFile) and stop/abort work at each point.

Light only while the macro that asked for it is alive (docs/laser-safety.md): a macro opens the
shutter with ``OpenShutterWithLease`` and a thread (``ShutterHold``) renews the lease while the
macro is on the Door's stack. If the MacroServer dies, nothing renews and the laser server closes
the shutter when the lease runs out (``MACRO_LEASE_S``); on_stop/on_abort hooks need the
MacroServer alive, the lease does not.

Pause: Sardana gives a macro no resume hook, and its ``on_pause`` runs on the innermost macro
(the ascan), not ours. So the renewing thread watches the Door: when it is paused (STANDBY) it
closes the shutter; before each measurement (the scans' ``pre-acq`` hook, or explicitly in
loops) the macro that opened the shutter reopens it. Nobody else reopens it, and a shutter that
was closed by someone else (lease refused) stops the macro instead of measuring in the dark.

Device names come from the lab's roles (``tango_db.roles``), never spelled here.
"""

from __future__ import annotations

import importlib
import json
import logging
import math
import time
from pathlib import Path

import numpy as np
import tango
from sardana.macroserver.macro import Macro, Type
from sardana.macroserver.msexception import InterruptException

import tangodaq_macros._polarization_analysis as polarization_analysis
from deviceservers.MaiTai.lease import (
    DEFAULT_LEASE_S,
    RENEW_EVERY_S,
    ShutterLease,
    check_light_door,
    describe,
)
from deviceservers.MaiTai.lease import laser_door as lease_laser_door
from tango_db.proxies import SLOW_COMMAND_TIMEOUT_MS, device_proxy
from tango_db.roles import MOUNT_ROLES, STAGE_ROLES, device, lab_roles

importlib.reload(polarization_analysis)  # so that `relmaclib lab_macros` also picks up the maths
from tangodaq_macros._polarization_analysis import fit_offsets, periodicity  # noqa: E402

MOUNTS = ("hwp", "qwp", "pol")  # Sardana motor names (the Pool's elements), not Tango devices
SCAN_PROGRESS_ENV = "LabScanProgress"  # the resumable scan of a lab macro in progress (LabMacro.resumable_scan)
WARMUP_TIMEOUT_S = 600
#: the laser server closes the shutter this long after the last renewal (renewed every
#: RENEW_EVERY_S): see deviceservers.MaiTai.lease, shared with the demo experiment
MACRO_LEASE_S = DEFAULT_LEASE_S

log = logging.getLogger("tangodaq.macros")


def scan_file_path(scan_dir: str, scan_file: str | list[str], scan_id: int = 0) -> Path:
    """The HDF5 file among the MacroServer's ScanFile (one name or a list) in ScanDir, for scan
    ``scan_id`` (Sardana formats ``{ScanID}`` in the names)."""
    names = [scan_file] if isinstance(scan_file, str) else list(scan_file)
    name = next((n for n in names if n.endswith((".h5", ".hdf5", ".nxs"))), names[0])
    return Path(str(scan_dir).format(ScanID=scan_id)) / name.format(ScanID=scan_id)


def lab_devices(*extra_roles: str) -> list[str]:
    """The lab's devices, by role (the database's Roles, or the simulated lab's names); roles a
    deployment does not have are left out."""
    roles = lab_roles()
    wanted = (*STAGE_ROLES, *MOUNT_ROLES, "laser", "meter", "camera", "datawriter", *extra_roles)
    return [roles[r] for r in wanted if r in roles]


def setup_attributes() -> dict[str, tuple[str, ...]]:
    """What save_setup stores: device -> writable settings (restore writes them back and verifies)."""
    attrs: dict[str, tuple[str, ...]] = {device(r): ("Position", "Velocity") for r in STAGE_ROLES}
    attrs.update({device(r): ("Position",) for r in MOUNT_ROLES})
    attrs[device("laser")] = ("Wavelength",)
    attrs[device("meter")] = ("Wavelength", "Range", "Filter", "Attenuator")
    attrs[device("camera")] = ("ExposureTime", "Binning")
    return attrs


# 10 s, not Tango's 3 s: a server that has just started may have its serial link busy identifying
# the instrument, and a command that confirms by readback (the Mai Tai's shutter, 2 s) waits behind
# it; `tangodaq demo` right after `up` timed out once in laser_on with 3 s.
def proxy(name: str, timeout_ms: int = SLOW_COMMAND_TIMEOUT_MS) -> tango.DeviceProxy:
    return device_proxy(name, timeout_ms)


class ShutterHold(ShutterLease):
    """The laser shutter held open for one macro, by a lease the laser server enforces.

    The shared client side (``deviceservers.MaiTai.lease``, also used by the demo experiment):
    a daemon thread renews the lease every ``RENEW_EVERY_S`` while the macro is on its Door's
    stack and the Door is not paused. It stops renewing (so the shutter closes within
    ``MACRO_LEASE_S``) when the macro is gone; it closes the shutter at once when the Door is
    paused. It never reopens: only the macro's own thread does, in :meth:`ensure_open`. Any
    failure of the thread is kept in ``lost``, and :meth:`ensure_open` raises then, or when the
    thread has died. The thread talks to Sardana only through non-``mAPI`` accessors (``door``,
    ``executor``, ``parent_macro``), which never raise a StopException into it.
    """

    def __init__(self, macro: Macro, laser: str) -> None:
        super().__init__(laser, owner=macro._name, lease_s=MACRO_LEASE_S, renew_every_s=RENEW_EVERY_S,
                         alive=self._macro_running, paused=self._door_paused, connect=proxy, logger=log)
        self._macro = macro

    def _macro_running(self) -> bool:
        try:
            m = self._macro.executor.getRunningMacro()
            while m is not None:
                if m is self._macro:
                    return True
                m = m.parent_macro
        except Exception:  # noqa: BLE001 - cannot tell: stop renewing, the lease closes the shutter
            log.exception("cannot tell whether %s still runs", self._macro._name)
        return False

    def _door_paused(self) -> bool:
        try:
            return self._macro.door.get_state() == Macro.Pause
        except Exception:  # noqa: BLE001 - no state: not a reason to close
            return False

    def ensure_open(self) -> bool:
        """Macro thread, before a measurement: reopen after a pause; True when it reopened.

        Raises when the shutter was closed by someone else, or when nobody renews the lease any
        more (the renewing thread died): the macro must not measure darkness."""
        return self.reopen()


class LabMacro:
    """Mixin of the lab's macros (not a Macro itself, so not listed as one): shutter and motor safety on stop, abort and error."""

    def _init_safety(self) -> None:
        if not hasattr(self, "_moved"):
            self._moved: list[str] = []
            self._opened_shutter = False
            self._hold: ShutterHold | None = None
            self._borrowed_light = False  # the shutter was already open (someone else's lease)

    def require_laser_door(self) -> None:
        """Light only from the laser Door, when the deployment has one (access control: only laser
        operators may run macros there; see ``deviceservers.MaiTai.lease.check_light_door``). The
        laser Door is the one the MacroServer read at its start (``lease.laser_door``)."""
        laser_door = lease_laser_door()
        if laser_door:  # no laser Door (a laptop lab, no access control): any Door
            check_light_door(self.getDoorName(), laser_door)

    def open_shutter(self) -> None:
        """Open the laser shutter under a lease renewed while this macro runs (``ShutterHold``).

        A shutter already open (someone aligning by hand, holding the manual lease) is left to
        its owner: this macro neither takes it over nor closes it (an operator may measure with
        the light a laser operator holds). Opening it is refused off the laser Door."""
        self._init_safety()
        laser = device("laser")
        if not proxy(laser).read_attribute("Shutter").value:
            self.require_laser_door()
            self._hold = ShutterHold(self, laser)
            self._opened_shutter = True  # from the request on: a late opening is ours to close
            self._hold.open()
        else:
            self._borrowed_light = True

    def light_check(self, *_args) -> None:
        """Before each measurement (a scan's pre-acq hook): the light this macro asked for is there."""
        self._init_safety()
        if self._hold is not None and self._hold.ensure_open():
            self.output("laser shutter reopened after the pause")
        elif self._borrowed_light and not proxy(device("laser")).read_attribute("Shutter").value:
            raise RuntimeError("the laser shutter, open when this macro started, was closed by its owner or when its "
                               "lease ran out: stopping instead of measuring in the dark")

    def on_pause(self) -> None:
        """Sardana's pause hook (macro thread, at a pause point of this macro): close the shutter."""
        self._init_safety()
        if self._hold is not None:
            self._hold.close_for_pause()

    def uses(self, *motors: str) -> None:
        self._init_safety()
        self._moved.extend(m for m in motors if m not in self._moved)

    def make_safe(self, *, from_hook: bool = False) -> None:
        """Stop the motors this macro moved, stop renewing, close the shutter it opened.

        Every step is tried whatever the others do. A close that fails is raised at the end
        (the macro must not end "finish" with the light possibly on), except from the stop and
        abort hooks (``from_hook``), where Sardana ends the macro anyway and the error is logged;
        the lease, no longer renewed, then closes the shutter within ``MACRO_LEASE_S``."""
        self._init_safety()
        for name in self._moved:
            try:
                self.getMoveable(name).stop()
            except Exception as exc:  # noqa: BLE001 - keep going: the shutter matters more
                self.warning("could not stop %s: %s", name, exc)
        if self._hold is not None:
            self._hold.release()
            self._hold = None
        if not self._opened_shutter:
            return
        try:
            proxy(device("laser")).command_inout("CloseShutter")
        except Exception as exc:  # noqa: BLE001 - reported below, after being logged
            reason = describe(exc)
            self.error("COULD NOT CLOSE THE LASER SHUTTER: %s (no longer renewed: the laser server closes it when "
                       "its lease runs out, within %.0f s)", reason, MACRO_LEASE_S)
            if from_hook:
                return
            raise RuntimeError(f"could not close the laser shutter this macro opened: {reason}. Its lease is no "
                               f"longer renewed, so the laser server closes it within {MACRO_LEASE_S:.0f} s; check "
                               "the laser (State, Status) before the next measurement") from exc
        self._opened_shutter = False
        self.warning("laser shutter closed (this macro had opened it)")

    def on_abort(self) -> None:
        self.make_safe(from_hook=True)

    def on_stop(self) -> None:
        self.make_safe(from_hook=True)

    def lit(self, body, *args):
        """Open the shutter, then run ``body``; both guarded, so a failed opening is made safe too
        (an OpenShutterWithLease that times out may still open the shutter late)."""

        def opened_then_body():
            self.open_shutter()
            return body(*args)

        return self.guarded(opened_then_body)

    def guarded(self, body, *args):
        """Run ``body``; on an error make safe and re-raise (stop/abort call the hooks).

        A stop or abort passing through here stays what it is: its hooks follow, so a failed close
        is only logged then (``from_hook``), as Sardana ends the macro anyway."""
        self._init_safety()
        try:
            return body(*args)
        except InterruptException:
            self.make_safe(from_hook=True)
            raise
        except Exception:
            self.make_safe()
            raise

    def check_motor_range(self, name: str, *targets: float) -> None:
        motor = self.getMoveable(name)
        try:
            lo, hi = motor.getPositionObj().getLimits()
        except Exception:  # noqa: BLE001 - pseudo motors may have none
            return
        for t in targets:
            if not math.isfinite(t):
                raise ValueError(f"{name}: {t} is not a number")
            if lo is not None and hi is not None and not (float(lo) <= t <= float(hi)):
                raise ValueError(f"{name}: {t} is outside its limits [{lo}, {hi}]")

    def scan_columns(self, scan_macro, motor: str, channel: str = "power") -> tuple[np.ndarray, np.ndarray]:
        """(motor positions, channel values) of a finished Sardana scan."""
        xs, ys = [], []
        for rec in scan_macro.data.records:
            x = y = None
            for key, value in rec.data.items():
                short = str(key).rsplit("/", 1)[-1]
                if short == motor or key == motor:
                    x = value
                elif (channel in str(key)) and isinstance(value, int | float):
                    y = value
            if x is not None and y is not None:
                xs.append(float(x))
                ys.append(float(y))
        return np.array(xs), np.array(ys)

    def scan(self, motor: str, start: float, end: float, intervals: int, count_time: float):
        return self._scan_macro("ascan", motor, start, end, intervals, count_time)

    def free_scan(self, motor: str, positions: np.ndarray, count_time: float):
        """``fscan`` of ``motor`` over ``positions`` (the rest of an interrupted ``ascan``)."""
        # fscan evaluates its path expression: no spaces allowed in it
        path = "x=[" + ",".join(repr(float(x)) for x in positions) + "]"
        return self._scan_macro("fscan", path, str(count_time), motor, "x")

    def resumable_scan(self, motor: str, start: float, end: float, intervals: int, count_time: float,
                       resume: bool) -> tuple[np.ndarray, np.ndarray]:
        """An ``ascan`` that an interruption (stop, abort, a dead MacroServer) does not lose.

        While it runs, the environment variable ``LabScanProgress`` names this macro, the scan's
        parameters and the scan numbers (ScanID) of its scans. ``resume`` (this macro again with
        resume=True, its other parameters then ignored) reads the points already recorded in
        those scans' entries of the scan file and measures only the others (``fscan`` over the
        remaining positions), in a new entry; the (positions, powers) returned are the whole
        curve, each point once. A completed scan clears the variable."""
        name = self.getName()
        entries: list[int] = []
        if resume:
            state = self._scan_progress()
            if not state or state.get("macro") != name:
                what = f" (the interrupted one is a {state['macro']})" if state else ""
                raise ValueError(f"nothing to resume for {name}{what}")
            motor, start, end, intervals, count_time = state["scan"]
            entries = [int(e) for e in state["entries"]]
        positions = np.linspace(start, end, intervals + 1)
        done_x, done_y = self.recorded_points(entries, motor)
        if resume:
            self.output("resuming the %s of %s: %d of %d points recorded (scan %s), %d to measure", name, motor,
                        len(done_x), len(positions), ", ".join(map(str, entries)) or "none",
                        len(positions) - len(done_x))
        x, y = np.array([]), np.array([])
        remaining = positions[len(done_x):]
        if resume and len(remaining):
            self.wait_for_interrupted_light()
        if len(remaining):
            scan_id = self.next_scan_id()
            if scan_id not in entries:  # else: an attempt whose scan never started (it took no ScanID)
                entries.append(scan_id)
            self.setEnv(SCAN_PROGRESS_ENV, {"macro": name, "scan": [motor, start, end, intervals, count_time],
                                            "entries": entries})
            if len(done_x):
                m = self.lit(self.free_scan, motor, remaining, count_time)
            else:
                m = self.lit(self.scan, motor, start, end, intervals, count_time)
            x, y = self.scan_columns(m, motor)
        self.unsetEnv(SCAN_PROGRESS_ENV)
        return np.concatenate([done_x, x]), np.concatenate([done_y, y])

    def wait_for_interrupted_light(self) -> None:
        """A run interrupted with the light on (its MacroServer killed) leaves the shutter open under
        a lease nobody renews, until the laser server closes it (``MACRO_LEASE_S``). The resumed run
        waits for that instead of measuring with light it does not hold (which would go out under
        it); light someone keeps renewing (an operator aligning) is used after that time, as any
        macro uses a shutter it finds open."""
        laser = proxy(device("laser"))
        if not laser.read_attribute("Shutter").value:
            return
        wait_s = MACRO_LEASE_S + 3.0  # the lease, the laser server's poll and the shutter's travel
        self.output("the laser shutter is still open, maybe under the interrupted run's lease: waiting up to "
                    "%.0f s for it to end", wait_s)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and laser.read_attribute("Shutter").value:
            self.checkPoint()  # stop and abort still work while waiting
            time.sleep(0.2)

    def _scan_progress(self) -> dict | None:
        try:
            return self.getEnv(SCAN_PROGRESS_ENV) or None
        except Exception:  # noqa: BLE001 - sardana's UnknownEnv: nothing interrupted
            return None

    def next_scan_id(self) -> int:
        """The ScanID Sardana gives the next scan (it adds one to the environment's at the start)."""
        try:
            return int(self.getEnv("ScanID")) + 1
        except Exception:  # noqa: BLE001 - no scan yet in this environment
            return 1

    def recorded_points(self, entries: list[int], motor: str, channel: str = "power") -> tuple[np.ndarray, np.ndarray]:
        """(motor positions, channel values) recorded in the scan file's entries ``entries``, in
        order. A scan that never started has no entry (nothing from it); an entry that is not a
        scan of ``motor`` by this macro (another Door's scan took that number) is left out."""
        import h5py  # only when resuming

        xs: list[float] = []
        ys: list[float] = []
        for entry in entries:
            path = scan_file_path(self.getEnv("ScanDir"), self.getEnv("ScanFile"), entry)
            if not path.exists():
                continue  # interrupted before the recorder made the file: nothing recorded
            with h5py.File(path, "r", locking=False) as f:  # nobody writes it now: this macro scans
                scan = f.get(f"entry{entry}")
                group = scan.get("measurement") if scan is not None else None
                if group is None or motor not in group or channel not in group:
                    continue
                title = scan["title"][()] if "title" in scan else b""
                title = title.decode() if isinstance(title, bytes) else str(title)
                if not title.startswith(("ascan ", "fscan ")) or motor not in title.split():
                    self.warning("scan %d (%s) is not this macro's: left out", entry, title)
                    continue
                x, y = group[motor][()], group[channel][()]
                n = min(len(x), len(y))  # a point is recorded whole, or not at all
                xs.extend(float(v) for v in x[:n])
                ys.extend(float(v) for v in y[:n])
        return np.array(xs), np.array(ys)

    def _scan_macro(self, kind: str, *args):
        self.setEnv("ActiveMntGrp", "mg_power")
        scan_macro, _ = self.createMacro(kind, *args)
        scan_macro.appendHook((self.light_check, ["pre-acq"]))
        # Sardana pauses whichever macro runs when PauseMacro arrives, and resumes whichever runs
        # when ResumeMacro arrives: a pause that lands on this macro (not yet in its scan) is
        # honoured here, where this macro is still the one running, so the resume reaches it.
        self.pausePoint()
        self.runMacro(scan_macro)
        return scan_macro


# ------------------------------------------------------------------------------ laser


class laser_on(LabMacro, Macro):
    """Start the Mai Tai safely: shutter closed, warm up (with progress), emission on."""

    param_def = [["timeout", Type.Float, WARMUP_TIMEOUT_S, "seconds to wait for the warm-up"]]

    def run(self, timeout):
        if timeout <= 0:
            raise ValueError("timeout must be > 0 s")
        self.require_laser_door()
        self.guarded(self._run, timeout)

    def _run(self, timeout):
        laser = proxy(device("laser"))
        if laser.read_attribute("Shutter").value:
            laser.command_inout("CloseShutter")
        t0 = time.monotonic()
        last = -1.0
        while True:
            state = laser.state()
            if state == tango.DevState.ON and laser.read_attribute("Emission").value:
                break
            if state in (tango.DevState.FAULT, tango.DevState.DISABLE):
                raise RuntimeError(f"the laser cannot start: {laser.status().strip()}")
            pct = float(laser.read_attribute("WarmupPercent").value or 0.0)
            if state in (tango.DevState.OFF, tango.DevState.ALARM):
                # ALARM after an emission stop nobody asked for: On restarts it; an unsafe
                # laser (interlock) refuses On with the reason, which ends this macro
                laser.command_inout("On")  # starts the warm-up, or emission at 100 %
            if pct != last:
                self.output("warming up: %.0f %%", pct)
                last = pct
            if time.monotonic() - t0 > timeout:
                raise RuntimeError(f"the laser did not reach emission within {timeout:.0f} s ({laser.status().strip()})")
            self.checkPoint()
            time.sleep(0.2)
        self.output("laser on: %s", laser.status().strip())


class laser_off(LabMacro, Macro):
    """Close the shutter (confirmed), then stop emission."""

    def run(self):
        laser = proxy(device("laser"))
        laser.command_inout("CloseShutter")
        deadline = time.monotonic() + 10
        while laser.read_attribute("Shutter").value:
            if time.monotonic() > deadline:
                raise RuntimeError("the shutter did not confirm closed within 10 s: check the laser")
            self.checkPoint()
            time.sleep(0.1)
        laser.command_inout("Off")
        self.output("laser off: %s", laser.status().strip())


# ------------------------------------------------------------------------------ scans


class wavelength_scan(LabMacro, Macro):
    """Tune the laser across a range with the meter's wavelength following; averaged power per point."""

    param_def = [
        ["start", Type.Float, None, "first wavelength (nm)"],
        ["end", Type.Float, None, "last wavelength (nm)"],
        ["intervals", Type.Integer, None, "number of intervals"],
        ["count_time", Type.Float, None, "averaging time per point (s)"],
        ["resume", Type.Boolean, False, "continue the last interrupted wavelength_scan (other parameters ignored)"],
    ]
    result_def = [["curve", Type.String, None, "JSON {wavelength_nm: [...], power_w: [...]}"]]

    def run(self, start, end, intervals, count_time, resume):
        if not resume:
            if intervals < 1 or count_time <= 0:
                raise ValueError("intervals must be >= 1 and count_time > 0")
            self.check_motor_range("wavelength", start, end)
        self.uses("wavelength_tracked")
        x, y = self.resumable_scan("wavelength_tracked", start, end, intervals, count_time, resume)
        self.make_safe()
        return json.dumps({"wavelength_nm": x.tolist(), "power_w": y.tolist()})


class polarization_scan(LabMacro, Macro):
    """Sweep one mount, record power, fit Malus's law: angle offset and extinction ratio."""

    param_def = [
        ["mount", Type.Moveable, None, "the rotation mount (hwp, qwp or pol)"],
        ["start", Type.Float, 0.0, "first angle (deg)"],
        ["end", Type.Float, 180.0, "last angle (deg)"],
        ["intervals", Type.Integer, 36, "number of intervals"],
        ["count_time", Type.Float, 0.2, "averaging time per point (s)"],
        ["resume", Type.Boolean, False, "continue the last interrupted polarization_scan (other parameters ignored)"],
    ]
    result_def = [["fit", Type.String, None, "JSON {period_deg, angle_of_max_deg, extinction_ratio, ...}"]]

    def run(self, mount, start, end, intervals, count_time, resume):
        name = mount.getName()
        if resume:
            state = self._scan_progress() or {}
            if state.get("macro") == self.getName():
                name = state["scan"][0]  # the interrupted run's mount, whichever was given now
        else:
            if intervals < 3 or count_time <= 0:
                raise ValueError("intervals must be >= 3 and count_time > 0")
            if abs(end - start) < 90:
                raise ValueError("sweep at least 90 degrees to fit Malus's law")
            self.check_motor_range(name, start, end)
        self.uses(name)
        x, y = self.resumable_scan(name, start, end, intervals, count_time, resume)
        self.make_safe()
        k, f1, f2 = periodicity(x, y)
        fit = f1 if k == 1 else f2
        result = {"mount": name, "period_deg": 180 / k, "angle_of_max_deg": fit.theta_max_deg,
                  "p_max_w": fit.p_max, "p_min_w": fit.p_min, "extinction_ratio": fit.extinction_ratio,
                  "points": len(x)}
        self.output("%s: period %.0f deg, maximum at %.2f deg, extinction ratio %.3g",
                    name, 180 / k, fit.theta_max_deg, fit.extinction_ratio)
        return json.dumps(result)


class polarization_characterization(LabMacro, Macro):
    """Find which mount holds the HWP, the QWP and the polariser, and their angle offsets.

    Each mount is swept (the others at 0) at two wavelengths; the polariser is the mount whose
    power repeats every 180°, the half-wave plate the 90°-periodic one with the deeper
    modulation, the quarter-wave plate the other. The offsets come from a Jones-model fit of all
    sweeps (two wavelengths lift the half-wave plate's rotation ambiguity). The plates' offsets
    are modulo 90° (both plates turned by 90° give the same powers: power through a polariser
    cannot tell their fast axes from their slow ones), the polariser's modulo 180°."""

    param_def = [
        ["step", Type.Float, 15.0, "angle step (deg)"],
        ["count_time", Type.Float, 0.2, "averaging time per point (s)"],
        ["second_wavelength", Type.Float, 700.0, "the wavelength besides 800 nm (nm)"],
    ]
    result_def = [["report", Type.String, None, "JSON {roles: {mount: role}, offsets_deg: {...}}"]]

    def run(self, step, count_time, second_wavelength):
        if not 1 <= step <= 30 or count_time <= 0:
            raise ValueError("step must be within 1..30 degrees and count_time > 0")
        self.check_motor_range("wavelength", 800.0, second_wavelength)
        self.uses(*MOUNTS, "wavelength_tracked")
        return self.lit(self._run, step, count_time, second_wavelength)

    def _run(self, step, count_time, second_wavelength):
        intervals = int(round(180 / step))
        cols: dict[str, list[float]] = {"hwp": [], "qwp": [], "pol": [], "wl": [], "p": []}
        kinds: dict[str, tuple[int, float]] = {}
        for wl in (800.0, second_wavelength):
            self.execMacro("mv", "wavelength_tracked", wl)
            for mount in MOUNTS:
                self.execMacro("mv", *[x for m in MOUNTS for x in (m, 0.0)])
                scan = self.scan(mount, 0.0, 180.0 - 180.0 / intervals, intervals - 1, count_time)
                x, y = self.scan_columns(scan, mount)
                if wl == 800.0:
                    k, f1, f2 = periodicity(x, y)
                    kinds[mount] = (k, (f1 if k == 1 else f2).contrast)
                for a, p in zip(x, y, strict=True):
                    for m in MOUNTS:
                        cols[m].append(a if m == mount else 0.0)
                    cols["wl"].append(wl)
                    cols["p"].append(p)
        polarisers = [m for m, (k, _) in kinds.items() if k == 1]
        plates = sorted((m for m, (k, _) in kinds.items() if k == 2), key=lambda m: -kinds[m][1])
        if len(polarisers) != 1 or len(plates) != 2:
            raise RuntimeError(f"cannot tell the elements apart from their periodicity: {kinds}")
        roles = {polarisers[0]: "polariser", plates[0]: "half-wave plate", plates[1]: "quarter-wave plate"}
        by_role = {r: m for m, r in roles.items()}
        offsets, rms = fit_offsets(cols[by_role["half-wave plate"]], cols[by_role["quarter-wave plate"]],
                                   cols[by_role["polariser"]], cols["wl"], cols["p"])
        report = {"roles": roles, "offsets_deg": {by_role["half-wave plate"]: offsets["hwp"],
                                                   by_role["quarter-wave plate"]: offsets["qwp"],
                                                   by_role["polariser"]: offsets["pol"]},
                  "input_power_w": {f"{wl:g}": w for wl, w in offsets["scales"].items()}, "fit_rms": rms}
        for m in MOUNTS:
            self.output("%-4s %-20s offset %+.2f deg", m, roles[m], report["offsets_deg"][m])
        self.make_safe()
        return json.dumps(report)


PROGRESS_ENV = "WaveplateCalibrationProgress"


def complete_lines(path: str) -> int:
    """Points already in a calibration file: its complete lines (a partial last line, from an
    abort in the middle of a write, is cut off so the resumed run rewrites that point)."""
    file = Path(path)
    if not file.exists():
        return 0
    data = file.read_bytes()
    keep = data[: data.rfind(b"\n") + 1]
    if len(keep) != len(data):
        file.write_bytes(keep)
    return keep.count(b"\n")


def format_duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


class waveplate_calibration(LabMacro, Macro):
    """The long sweep wavelength × polariser × HWP × QWP, resumable after a stop or abort.

    Every point is one line of a JSON-lines file in ScanDir, written as soon as it is measured.
    The environment variable ``WaveplateCalibrationProgress`` holds that file and the sweep's
    parameters until the sweep completes; ``waveplate_calibration resume=True`` (any other
    parameters are then ignored) continues with the first point not in the file, so nothing is
    measured twice and nothing is skipped, whatever the moment of the interruption."""

    param_def = [
        ["wl_start", Type.Float, 750.0, "nm"], ["wl_end", Type.Float, 850.0, "nm"],
        ["wl_intervals", Type.Integer, 2, ""], ["angle_step", Type.Float, 45.0, "deg (pol, hwp, qwp)"],
        ["count_time", Type.Float, 0.1, "s per point"],
        ["resume", Type.Boolean, False, "continue the last interrupted calibration"],
    ]
    result_def = [["path", Type.String, None, "JSON lines file with every point"]]

    MOTION_S_PER_POINT = 0.5  # first estimate of the mounts' motion per point (then measured)

    def run(self, wl_start, wl_end, wl_intervals, angle_step, count_time, resume):
        if resume:
            try:
                state = self.getEnv(PROGRESS_ENV)
            except Exception:  # noqa: BLE001 - sardana's UnknownEnv: never started or completed
                state = None
            if not state:
                raise ValueError("nothing to resume: no interrupted calibration")
            path = state["path"]
            wl_start, wl_end, wl_intervals, angle_step, count_time = state["params"]
        if wl_intervals < 0 or not 1 <= angle_step <= 90 or count_time <= 0:
            raise ValueError("wl_intervals >= 0, angle_step within 1..90 deg, count_time > 0")
        self.check_motor_range("wavelength", wl_start, wl_end)
        wls = np.linspace(wl_start, wl_end, wl_intervals + 1)
        angles = np.arange(0.0, 180.0, angle_step)
        points = [(float(w), float(p), float(h), float(q)) for w in wls for p in angles for h in angles for q in angles]
        if resume:
            first = complete_lines(path)
            self.output("resuming %s at point %d/%d", path, first + 1, len(points))
        else:
            folder = Path(self.getEnv("ScanDir"))
            folder.mkdir(parents=True, exist_ok=True)
            path, first = str(folder / f"waveplate_calibration_{time.strftime('%Y%m%d-%H%M%S')}.jsonl"), 0
            Path(path).write_text("")
            self.setEnv(PROGRESS_ENV, {"path": path,
                                       "params": [wl_start, wl_end, wl_intervals, angle_step, count_time]})
        estimate = (len(points) - first) * (count_time + self.MOTION_S_PER_POINT)
        self.output("%d points to measure, about %s", len(points) - first, format_duration(estimate))
        self.uses("wavelength_tracked", *MOUNTS)
        mg = self.getMeasurementGroup("mg_power")

        def body():
            t0 = time.monotonic()
            with open(path, "a") as out:
                for i in range(first, len(points)):
                    w, p, h, q = points[i]
                    self.pausePoint()  # a pause landing on this macro between points (on_pause closes)
                    self.execMacro("mv", "wavelength_tracked", w, "pol", p, "hwp", h, "qwp", q)
                    self.light_check()
                    _, values = mg.count(count_time)
                    power = next(v for k, v in values.items() if "power" in str(k))
                    out.write(json.dumps({"point": i, "wavelength_nm": w, "pol": p, "hwp": h, "qwp": q,
                                          "power_w": power}) + "\n")
                    out.flush()
                    left = (time.monotonic() - t0) / (i + 1 - first) * (len(points) - i - 1)
                    self.output("point %d/%d, %s left", i + 1, len(points), format_duration(left))
                    self.checkPoint()

        self.lit(body)
        self.unsetEnv(PROGRESS_ENV)
        self.make_safe()
        self.output("calibration complete: %s", path)
        return path


class stage_camera_raster(LabMacro, Macro):
    """A stage mesh with one camera frame per point (laser shutter open), frames recorded by the
    DataWriter; Sardana's scan file holds a reference to each frame (mg_camera)."""

    param_def = [
        ["x_start", Type.Float, None, "mm"], ["x_end", Type.Float, None, "mm"], ["x_intervals", Type.Integer, None, ""],
        ["y_start", Type.Float, None, "mm"], ["y_end", Type.Float, None, "mm"], ["y_intervals", Type.Integer, None, ""],
        ["exposure", Type.Float, None, "s"],
    ]

    def run(self, x0, x1, nx, y0, y1, ny, exposure):
        if nx < 1 or ny < 1 or exposure <= 0:
            raise ValueError("intervals must be >= 1 and exposure > 0")
        self.check_motor_range("stage_x", x0, x1)
        self.check_motor_range("stage_y", y0, y1)
        self.uses("stage_x", "stage_y")
        self.setEnv("ActiveMntGrp", "mg_camera")
        try:
            mesh, _ = self.createMacro("mesh", "stage_x", x0, x1, nx, "stage_y", y0, y1, ny, exposure)
            mesh.appendHook((self.light_check, ["pre-acq"]))

            def raster():
                self.pausePoint()  # see LabMacro.scan
                self.runMacro(mesh)

            self.lit(raster)  # the spot is the laser's: no light, no spot
        finally:
            self.setEnv("ActiveMntGrp", "mg_power")
        self.make_safe()


# ------------------------------------------------------------------------------ recording, status, setups


class record_start(Macro):
    """Start a DataWriter recording of the lab's streams."""

    param_def = [["name", Type.String, "recording", "recording name"],
                 ["pre_trigger_s", Type.Float, 0.0, "seconds of history to include"]]
    result_def = [["path", Type.String, None, "file path"]]

    def run(self, name, pre_trigger_s):
        if pre_trigger_s < 0:
            raise ValueError("pre_trigger_s must be >= 0")
        path = proxy(device("datawriter")).command_inout(
            "StartRecording", json.dumps({"name": name, "pre_trigger_s": pre_trigger_s}))
        self.output("recording to %s", path)
        return path


class record_stop(Macro):
    """Stop the DataWriter recording; returns once the file is complete and closed."""

    result_def = [["path", Type.String, None, "file path"]]

    def run(self):
        writer = proxy(device("datawriter"))
        path = writer.command_inout("StopRecording")
        deadline = time.monotonic() + 60
        while writer.read_attribute("Recording").value:  # still writing the rings' backlog
            if time.monotonic() > deadline:
                raise RuntimeError(f"the DataWriter is still finishing {path} after 60 s: {writer.status().strip()}")
            self.checkPoint()
            time.sleep(0.05)
        self.output("recording stopped: %s", path)
        return path


class lab_status(Macro):
    """A table of every lab device, its state and status."""

    def run(self):
        rows = [("DEVICE", "STATE", "STATUS")]
        for dev in lab_devices("pool", "macroserver", "door"):
            try:
                p = proxy(dev, 1500)
                state, status = str(p.state()), p.status().strip().splitlines()[0]
            except tango.DevFailed as exc:
                state, status = "DOWN", exc.args[0].desc.strip().splitlines()[0]
            rows.append((dev, state, status[:70]))
        widths = [max(len(r[i]) for r in rows) for i in range(3)]
        for r in rows:
            self.output("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def _setups_dir(macro: Macro) -> Path:
    folder = Path(macro.getEnv("ScanDir")) / "setups"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


class save_setup(Macro):
    """Save every writable setting of the lab under a name."""

    param_def = [["name", Type.String, None, "setup name"]]

    def run(self, name):
        if not name.replace("_", "").replace("-", "").isalnum():
            raise ValueError("a setup name is letters, digits, - and _")
        setup: dict[str, dict] = {}
        for dev, attrs in setup_attributes().items():
            try:
                p = proxy(dev)
                values = p.read_attributes(list(attrs))
            except tango.DevFailed:
                self.warning("%s is not reachable: not saved", dev)
                continue
            setup[dev] = {a: v.value for a, v in zip(attrs, values, strict=True) if not v.has_failed}
            setup[dev] = {a: (x.tolist() if hasattr(x, "tolist") else x) for a, x in setup[dev].items()}
        path = _setups_dir(self) / f"{name}.json"
        path.write_text(json.dumps(setup, indent=2))
        self.output("setup %s saved (%d devices) to %s", name, len(setup), path)


class restore_setup(LabMacro, Macro):
    """Write a saved setup back, wait for the motion to end and verify every value."""

    param_def = [["name", Type.String, None, "setup name"]]

    def run(self, name):
        path = _setups_dir(self) / f"{name}.json"
        if not path.exists():
            raise ValueError(f"no setup {name!r} (saved setups: {sorted(p.stem for p in path.parent.glob('*.json'))})")
        setup = json.loads(path.read_text())
        allowed = {dev.lower(): {a.lower() for a in attrs} for dev, attrs in setup_attributes().items()}
        foreign = [f"{dev}/{attr}" for dev, values in setup.items() for attr in values
                   if attr.lower() not in allowed.get(dev.lower(), set())]
        if foreign:  # a setup file is data: it must not write the shutter or anything save_setup never stores
            raise ValueError(f"setup {name!r} holds settings restore_setup does not write: {', '.join(foreign)}")
        self.guarded(self._restore, setup)

    def _restore(self, setup):
        proxies = {}
        for dev, values in setup.items():
            p = proxies[dev] = proxy(dev)
            for attr, value in values.items():
                p.write_attribute(attr, value)
        deadline = time.monotonic() + 120
        while any(p.state() == tango.DevState.MOVING for p in proxies.values()):
            if time.monotonic() > deadline:
                raise RuntimeError("motion did not end within 120 s")
            self.checkPoint()
            time.sleep(0.1)
        wrong = []
        for dev, values in setup.items():
            for attr, value in values.items():
                got = proxies[dev].read_attribute(attr).value
                ok = (abs(float(got) - float(value)) <= 0.05 * max(1.0, abs(float(value)) * 0.01)
                      if isinstance(value, float) else np.array_equal(np.asarray(got), np.asarray(value)))
                if not ok:
                    wrong.append(f"{dev}/{attr} = {got} (wanted {value})")
        if wrong:
            raise RuntimeError("restore not verified: " + "; ".join(wrong))
        self.output("setup restored and verified (%d devices)", len(setup))


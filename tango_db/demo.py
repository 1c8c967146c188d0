"""The demo a newcomer sees first: real readings from the simulated lab, through Tango.

Every step talks to the running device servers through the Tango database, exactly as itango,
Taurus or a Sardana macro would, and prints what it did and what came back. The demo puts every
setting it touches back the way it found it. Devices are found by their roles
(``tango_db.roles``), never by a spelled name.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

import numpy as np
import tango

from .invocation import command
from .proxies import device_proxy
from .waiting import WaitTimeout, wait_until

Say = Callable[[str], None]


def _fmt_w(watts: float | None) -> str:
    if watts is None or not math.isfinite(watts):
        return "no valid reading"
    for scale, unit in ((1.0, "W"), (1e-3, "mW"), (1e-6, "µW"), (1e-9, "nW")):
        if abs(watts) >= scale:
            return f"{watts / scale:.4g} {unit}"
    return f"{watts / 1e-12:.4g} pW"


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    """Whether ``condition`` held within ``timeout`` s (a device restarting counts as "not yet")."""
    try:
        return bool(wait_until(condition, timeout, 0.05, retry_on=(tango.DevFailed,)))
    except WaitTimeout:
        return False


def power_meter_demo(say: Say) -> bool:
    """Read, write and watch the 1830-C. Returns True when every step behaved."""
    ok = True
    from .experiment import device

    name = device("meter")
    pm = device_proxy(name)
    say(f"\n== {name}: {pm.info().dev_class} — {pm.State()}: {pm.Status()}")
    if not _wait(lambda: pm.State() in (tango.DevState.ON, tango.DevState.ALARM), 20):
        say(f"   the power meter is {pm.State()}: {pm.Status()}")
        return False

    wavelength0, range0 = pm.Wavelength, pm.Range
    labels = list(pm.get_attribute_config("Range").enum_labels)

    # 1. change events: what a GUI sees
    events: list[float] = []
    got = threading.Event()

    def on_power(ev: tango.EventData) -> None:
        if not ev.err and ev.attr_value is not None and ev.attr_value.value is not None:
            events.append(ev.attr_value.value)
            if len(events) >= 5:
                got.set()

    eid = pm.subscribe_event("Power", tango.EventType.CHANGE_EVENT, on_power)
    got.wait(15)
    pm.unsubscribe_event(eid)
    say(f"   {len(events)} Power change events: " + ", ".join(_fmt_w(v) for v in events[:5]))
    ok &= len(events) >= 5

    r = pm.read_attribute("Power")
    watts = f"{r.value:.4e} W" if r.value is not None else "no number"
    say(f"   Power = {_fmt_w(r.value)} ({watts}, quality {r.quality.name}), "
        f"PowerDbm = {pm.PowerDbm:.2f} dBm, at {pm.Wavelength:.0f} nm, range {labels[pm.Range]}")

    # 2. a wrong wavelength setting reads wrong, as on the real meter
    pm.Wavelength = 633
    _wait(lambda: pm.Wavelength == 633, 5)
    p633 = _settled_power(pm)
    say(f"   Wavelength = 633 nm (the beam is at {wavelength0:.0f} nm): Power reads {_fmt_w(p633)} "
        "— the meter corrects for the responsivity it was told, so set it to the laser's wavelength")
    pm.Wavelength = wavelength0

    # 3. a manual range too low: ALARM, and the reading is flagged
    pm.Range = 1
    alarmed = _wait(lambda: pm.State() == tango.DevState.ALARM, 10)
    q = pm.read_attribute("Power").quality
    say(f"   Range = R1: state {pm.State()} — {pm.Status()} (Power quality {q.name})")
    ok &= alarmed and q == tango.AttrQuality.ATTR_ALARM
    pm.Range = range0
    _wait(lambda: pm.State() == tango.DevState.ON, 10)

    # 4. bad input is refused with a clear message, and nothing changes
    for attr, value in (("Wavelength", 5000), ("Wavelength", float("nan")), ("Range", 9)):
        try:
            pm.write_attribute(attr, value)
            say(f"   {attr} = {value}: accepted?! (it should not be)")
            ok = False
        except tango.DevFailed as exc:
            say(f"   {attr} = {value}: refused — {exc.args[0].desc}")
    say(f"   still at {pm.Wavelength:.0f} nm, range {labels[pm.Range]}, state {pm.State()}")
    say(f"   health: CommunicationOk={pm.CommunicationOk}, ErrorCount={pm.ErrorCount}")
    return ok


def _settled_power(pm: tango.DeviceProxy) -> float | None:
    """The first reading taken after the last write (polling takes one period to catch up)."""
    t0 = time.time()

    def fresh() -> tango.DeviceAttribute | None:
        r = pm.read_attribute("Power")
        return r if r.time.totime() > t0 + 0.05 else None

    try:
        return wait_until(fresh, 5, 0.05).value
    except WaitTimeout:
        return pm.Power


def run_demo(say: Say = print) -> int:
    from .door_client import MacroFailed
    from .experiment import ExperimentError, laser_on, release_light, run_experiment

    t0 = time.monotonic()
    say("tangodaq demo: the simulated lab, through Tango")
    try:
        say("\n== laser: safe start (warm-up, tune, emission, shutter)")
        laser_on(say)
        ok = power_meter_demo(say)
        res = run_experiment(say)
    except (ExperimentError, MacroFailed, tango.DevFailed) as exc:
        msg = exc.args[0].desc if isinstance(exc, tango.DevFailed) else str(exc)
        say(f"\nthe experiment stopped: {msg}\n(`{command('status')}` shows every device's state)")
        return 1
    finally:
        try:
            release_light()  # stop renewing this process's shutter lease, then close
        except (tango.DevFailed, ExperimentError):
            say("   COULD NOT CLOSE THE LASER SHUTTER: close it by hand")
    s = res.summary
    say("\n== summary")
    say(f"   file            {res.file}")
    say(f"   plot            {res.plot}")
    say(f"   Malus fit       maximum at {res.fit['max_angle_deg']:.2f}° of the HWP, extinction ratio "
        f"{res.fit['extinction_ratio']:.0f}:1, {len(res.angles)} angles")
    say(f"   beam spot       {res.px_per_mm:.1f} px/mm over {len(res.stage_mm)} stage positions (one frame each)")
    say(f"   in the file     {s['frames']} camera frames {tuple(s.get('frame_shape', []))}, "
        f"{s['samples']} power samples, manifest of {s['manifest_devices']} devices")
    lost = s["lost_records"] + s["camera"]["lost"]
    say(f"   lost            {lost} ({s['lost_records']} ring records, {s['camera']['lost']} camera frames)")
    # One Snap per raster point: PVCAM numbers the frames of each acquisition from 1, so what must
    # hold is one recorded frame per point, a spot in each, and nothing lost.
    ok &= (s["frames"] == len(res.stage_mm) > 0 and s["samples"] > 0 and lost == 0
           and all(np.isfinite(res.spot_px)))
    say(f"\n{'demo finished' if ok else 'demo finished WITH PROBLEMS (see above)'} in {time.monotonic() - t0:.1f} s; "
        f"the lab keeps running: `{command('status')}` shows it, `{command('down')}` stops it")
    return 0 if ok else 1

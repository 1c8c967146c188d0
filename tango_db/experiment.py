"""The demo experiment on the virtual bench, run as a scientist would: Sardana macros through
the Door (as spock does), with Tango for the rest.

1. ``laser_on`` (warm-up with progress, emission) and open the shutter under a lease renewed by
   a thread of this process for as long as the experiment needs light (``hold_light``, the same
   ``deviceservers.MaiTai.lease.ShutterLease`` the lab macros use): if this process dies, the
   laser server closes the shutter within the lease (docs/laser-safety.md);
2. set the power meter to the laser's wavelength and stream it into its ring;
3. record everything with the DataWriter;
4. ``polarization_scan hwp``: sweep the half-wave plate, average the streamed power at each angle
   (Sardana's ``power`` channel reads the ring), fit Malus's law;
5. ``stage_camera_raster``: a stage mesh with a camera frame per point, recorded by the DataWriter;
   the spot's displacement per mm is measured from the recorded frames;
6. close the shutter (whatever happened), stop the recording, and print what the file holds;
7. save a PNG plot next to the HDF5 file.

Every number printed is read back from the instruments or from the files, never assumed. No
device name is spelled here: each step asks the lab's roles (``tango_db.roles``) for the laser, the
meter, the camera, the mounts, the stage axes, the DataWriter and the Door, so the same experiment
runs on a deployment that names its devices ``b12/...``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tango

from deviceservers.MaiTai.lease import LeaseLost, ShutterLease, describe

from .proxies import device_proxy
from .waiting import WaitTimeout, wait_until

Say = Callable[[str], None]

WAVELENGTH_NM = 800.0
MOUNTS = ("hwp", "pol", "qwp")  # roles of the rotation mounts the experiment homes
STAGE_AXES = ("stage_x", "stage_y")  # roles of the stage axes the raster moves
# Sardana element names (the Pool's motors, see tango_db/sardana.json), not Tango device names:
HWP_SCAN = ("hwp", 0, 180, 24, 0.2)  # mount, start, end, intervals, integration time (s)
RASTER = (0, 2, 4, 0, 0.5, 1, 0.02)  # x start, end, intervals; y start, end, intervals; exposure (s)


class ExperimentError(RuntimeError):
    """A step could not be done; the message says what to do."""


def device(role: str) -> str:
    """The Tango name of the device playing ``role`` in the running lab (``tango_db.roles``);
    ExperimentError naming the missing role when the lab has none."""
    from .roles import device as role_device

    try:
        return role_device(role)
    except KeyError as exc:
        raise ExperimentError(exc.args[0]) from None


def proxy(role: str) -> tango.DeviceProxy:
    return device_proxy(device(role))


@dataclass
class Results:
    angles: list[float] = field(default_factory=list)
    powers: list[float] = field(default_factory=list)
    fit: dict[str, float] = field(default_factory=dict)
    stage_mm: list[float] = field(default_factory=list)
    stage_y_mm: list[float] = field(default_factory=list)
    spot_px: list[float] = field(default_factory=list)
    px_per_mm: float = float("nan")
    file: str = ""
    plot: str = ""
    summary: dict[str, Any] = field(default_factory=dict)


def wait_for(what: str, condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> None:
    """Poll ``condition`` until true (a device state or flag: nothing to subscribe to); raise
    ExperimentError naming ``what`` after ``timeout``. An error of ``condition`` (a device in
    FAULT) ends the wait at once."""
    try:
        wait_until(condition, timeout, interval, what)
    except WaitTimeout:
        raise ExperimentError(f"timed out after {timeout:.0f} s waiting for {what}") from None


def idle(proxy: tango.DeviceProxy) -> bool:
    state = proxy.State()
    if state in (tango.DevState.FAULT, tango.DevState.ALARM):
        raise ExperimentError(f"{proxy.dev_name()} is {state}: {proxy.Status()}")
    return state not in (tango.DevState.MOVING, tango.DevState.INIT)


def move(proxy: tango.DeviceProxy, position: float, timeout: float = 30.0) -> float:
    proxy.Position = position
    wait_for(f"{proxy.dev_name()} to reach {position}", lambda: idle(proxy), timeout)
    return proxy.Position


# ---------------------------------------------------------------------- light
_light: ShutterLease | None = None  # the lease this process holds on the laser's shutter, if any


def hold_light() -> None:
    """Open the shutter under a renewed lease, or check the one this process already holds.

    ExperimentError when the light this process held was lost (closed by someone else, the lease
    refused): the experiment stops instead of measuring in the dark."""
    global _light
    if _light is not None:
        light_check()
        return
    hold = ShutterLease(device("laser"), owner="the demo experiment")
    hold.open()
    _light = hold


def light_check() -> None:
    """Between steps: the light this process holds is still there (ExperimentError if not)."""
    if _light is None:
        raise ExperimentError("the laser shutter is not held open by this experiment")
    try:
        _light.check()
    except LeaseLost as exc:
        raise ExperimentError(str(exc)) from None


def release_light() -> None:
    """Stop renewing and close the shutter (DevFailed when the close fails: the lease, no longer
    renewed, then closes it within its few seconds)."""
    global _light
    hold, _light = _light, None
    if hold is not None:
        hold.close()
    else:
        proxy("laser").CloseShutter()


# ---------------------------------------------------------------------- steps
def laser_on(say: Say) -> tango.DeviceProxy:
    """The ``laser_on`` macro (safe start, warm-up progress printed live), then the shutter, held
    open by this process's renewed lease until :func:`release_light`."""
    from .door_client import run_macro

    laser = proxy("laser")
    if laser.State() == tango.DevState.FAULT:
        raise ExperimentError(f"the laser is in FAULT: {laser.Status()}")
    if not laser.Emission:
        run_macro(device("door"), "laser_on", say=lambda line: say(f"   {line}"))
    laser.Wavelength = WAVELENGTH_NM
    wait_for("the end of tuning", lambda: not laser.Tuning and laser.State() != tango.DevState.MOVING, 60)
    hold_light()
    wait_for("the shutter to open", lambda: laser.Shutter, 5)
    say(f"   laser: emission on, {laser.Wavelength:.1f} nm, {laser.Power:.3f} W, shutter open "
        f"({laser.State()})")
    return laser


def prepare_optics(say: Say) -> None:
    mounts = [proxy(role) for role in MOUNTS]
    for m in mounts:
        if not m.Homed:
            m.Home(0)
    for m in mounts:
        wait_for(f"{m.dev_name()} to home", lambda m=m: m.Homed and idle(m), 30)
    say("   mounts homed: " + ", ".join(f"{m.dev_name()} {m.Position:.2f}°" for m in mounts))
    for axis in STAGE_AXES:
        stage = proxy(axis)
        if not stage.MotorOn:
            stage.MotorOn = True
        move(stage, 0.0)


def start_meter_stream(say: Say, nm: float) -> tango.DeviceProxy:
    meter = proxy("meter")
    meter.Wavelength = round(nm)
    meter.Range = 0  # AUTO
    meter.Streaming = True
    wait_for("the meter's stream", lambda: meter.SampleRate > 0, 10)
    say(f"   power meter at {meter.Wavelength:.0f} nm, streaming {meter.SampleRate:.0f} samples/s")
    return meter


def last_scan_entry() -> dict[str, np.ndarray]:
    """The columns of the newest scan in Sardana's HDF5 file (ScanDir/ScanFile of the lab)."""
    import h5py

    from . import paths

    path = paths.data_dir() / "scans" / "scans.h5"
    with h5py.File(path, "r", locking=False) as f:
        name = max(f, key=lambda n: int(n.removeprefix("entry")) if n.startswith("entry") else -1)
        m = f[name]["measurement"]
        return {k: m[k][()] for k in m if k != "pre_scan_snapshot"}


def hwp_sweep(say: Say, res: Results) -> None:
    """``polarization_scan`` through the Door; its points come back from Sardana's scan file."""
    from .door_client import run_macro

    out = run_macro(device("door"), "polarization_scan", *HWP_SCAN, say=lambda line: say(f"   {line}"))
    fit = json.loads(str(out))
    entry = last_scan_entry()
    res.angles = [float(a) for a in entry["hwp"]]
    res.powers = [float(p) for p in entry["power"]]
    res.fit = {
        "max_angle_deg": float(fit["angle_of_max_deg"]),
        "period_deg": float(fit["period_deg"]),
        "p_max_w": float(fit["p_max_w"]),
        "p_min_w": float(fit["p_min_w"]),
        "extinction_ratio": float(fit["extinction_ratio"]),
    }
    f = res.fit
    say(f"   Malus fit: period {f['period_deg']:.0f}°, maximum at HWP {f['max_angle_deg']:.2f}°, "
        f"P max {f['p_max_w'] * 1e3:.4f} mW, extinction ratio {f['extinction_ratio']:.0f}:1")


def spot_column(image: np.ndarray) -> float:
    """Column of the spot in the frame's pixels (background-subtracted centroid), NaN if none."""
    img = image.astype(np.float64)
    img -= np.median(img)
    img[img < 5 * max(img.std(), 1.0)] = 0.0
    if img.sum() <= 0:
        return float("nan")
    cols = np.arange(img.shape[1])
    return float((img.sum(axis=0) * (cols + 0.5)).sum() / img.sum())


def camera_raster(say: Say, res: Results) -> None:
    """``stage_camera_raster`` through the Door: one frame per point, into the running recording."""
    from .door_client import run_macro

    run_macro(device("door"), "stage_camera_raster", *RASTER, say=lambda line: say(f"   {line}"))
    entry = last_scan_entry()
    res.stage_mm = [float(x) for x in entry["stage_x"]]
    res.stage_y_mm = [float(y) for y in entry["stage_y"]]


def measure_spots(res: Results) -> None:
    """The spot's column in each raster frame of the DataWriter file, and px per mm of stage x."""
    import datawriter
    from datawriter.hdf5_sink import _device_group_name  # the sink's own naming of device groups

    with datawriter.open_recording(res.file) as f:
        cam = f[f"entry/instrument/{_device_group_name(device('camera'))}"]
        frames = [g["data"] for g in cam.values() if hasattr(g, "keys") and "data" in g and g["data"].ndim == 3]
        stack = [frames_ds[i] for frames_ds in frames for i in range(frames_ds.shape[0])]
    n = len(res.stage_mm)
    res.spot_px = [spot_column(img) for img in stack[-n:]] if len(stack) >= n else []
    good = [(x, p) for x, y, p in zip(res.stage_mm, res.stage_y_mm, res.spot_px, strict=False)
            if np.isfinite(p) and y == res.stage_y_mm[0]]
    if len(good) >= 2:
        xs, ps = zip(*good, strict=True)
        res.px_per_mm = float(np.polyfit(xs, ps, 1)[0])


def summarise_file(path: str) -> dict[str, Any]:
    import datawriter

    out: dict[str, Any] = {"frames": 0, "samples": 0, "lost_records": 0, "manifest_devices": 0}
    with datawriter.open_recording(path) as f:
        inst = f["entry/instrument"]
        for dev in inst.values():
            for stream in dev.values() if hasattr(dev, "values") else []:
                if not hasattr(stream, "keys"):
                    continue
                if "data" in stream and stream["data"].ndim == 3:
                    out["frames"] += stream["data"].shape[0]
                    out["frame_shape"] = list(stream["data"].shape[1:])
                    numbers = stream["frame_number"][()]
                    out["frame_numbers_contiguous"] = bool(np.all(np.diff(numbers) == 1)) if numbers.size else True
                elif "value" in stream:
                    out["samples"] += stream["value"].shape[0]
                if "lost_records" in stream.attrs:
                    out["lost_records"] += int(stream.attrs["lost_records"])
                elif "lost_records" in stream:
                    out["lost_records"] += int(np.sum(stream["lost_records"][()]))
        if "manifest_start" in inst:
            out["manifest_devices"] = len(inst["manifest_start"])
    return out


def save_plot(res: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    a = np.array(res.angles)
    ax1.plot(a, np.array(res.powers) * 1e3, "o", label="polarization_scan (Sardana, ring-averaged power)")
    fine = np.linspace(0, 180, 721)
    f = res.fit
    mean, amp = (f["p_max_w"] + f["p_min_w"]) / 2, (f["p_max_w"] - f["p_min_w"]) / 2
    ax1.plot(fine, (mean + amp * np.cos(np.radians(4 * (fine - f["max_angle_deg"])))) * 1e3, "-",
             label=f"Malus fit: max at {f['max_angle_deg']:.2f}°, extinction {f['extinction_ratio']:.0f}:1")
    ax1.set_xlabel("half-wave plate angle (°)")
    ax1.set_ylabel("transmitted power (mW)")
    ax1.set_title("Power after the polariser")
    ax1.legend(fontsize=8)
    for y in sorted(set(res.stage_y_mm)):
        pts = [(x, p) for x, yy, p in zip(res.stage_mm, res.stage_y_mm, res.spot_px, strict=False) if yy == y]
        if pts:
            ax2.plot(*zip(*pts, strict=True), "s-", label=f"stage y = {y:g} mm")
    ax2.legend(fontsize=8)
    ax2.set_xlabel("stage x (mm)")
    ax2.set_ylabel("spot column in the recorded frame (px)")
    ax2.set_title(f"stage_camera_raster: spot moves {res.px_per_mm:.1f} px/mm")
    fig.suptitle(Path(res.file).name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------- the whole run
def run_experiment(say: Say) -> Results:
    res = Results()
    writer = proxy("datawriter")
    laser: tango.DeviceProxy | None = None
    meter: tango.DeviceProxy | None = None
    recording = False
    try:
        if not proxy("laser").Emission:
            say("\n== laser: safe start")
        laser = laser_on(say)
        say("\n== optics and stage")
        prepare_optics(say)
        meter = start_meter_stream(say, laser.Wavelength)
        say("\n== recording")
        res.file = writer.StartRecording(json.dumps({
            "name": "demo",
            "metadata": {"sample": "virtual bench", "operator": "tangodaq demo",
                         "experiment": "HWP sweep and beam-spot raster"},
        }))
        recording = True
        say(f"   DataWriter → {res.file}")
        say("\n== half-wave plate sweep: polarization_scan " + " ".join(map(str, HWP_SCAN)))
        hwp_sweep(say, res)
        light_check()
        say("\n== camera raster: stage_camera_raster " + " ".join(map(str, RASTER)))
        cam = proxy("camera")
        lost_before = cam.FramesLost
        camera_raster(say, res)
        light_check()  # every frame had the light this experiment held
        res.summary["camera"] = {"lost": int(cam.FramesLost - lost_before)}
    finally:
        if laser is not None or _light is not None:
            try:
                release_light()
                say("   shutter closed")
            except tango.DevFailed as exc:
                say(f"   COULD NOT CLOSE THE SHUTTER: {describe(exc)} — its lease is no longer renewed, so the "
                    "laser server closes it within a few seconds; check the laser")
        if meter is not None:
            meter.Streaming = False
        if recording:
            res.file = writer.StopRecording()
            wait_for("the file to be closed", lambda: not writer.Recording, 30)
    res.summary.update(summarise_file(res.file))
    measure_spots(res)
    say("   spot column vs stage x (from the recorded frames): " + ", ".join(
        f"{x:.1f} mm → {p:.1f} px" for x, y, p in zip(res.stage_mm, res.stage_y_mm, res.spot_px, strict=False)
        if y == res.stage_y_mm[0]))
    png = Path(res.file).with_suffix(".png")
    save_plot(res, png)
    res.plot = str(png)
    return res

"""The demo experiment on the virtual bench, through Tango, as a scientist would run it.

1. warm the laser and switch it on safely (progress while it warms), tune it, open the shutter;
2. set the power meter to the laser's wavelength and stream it into its ring;
3. record everything with the DataWriter;
4. sweep the half-wave plate, average the streamed power at each angle, fit Malus's law;
5. image the beam spot with the camera while the stage moves, and measure how far it moved;
6. close the shutter (whatever happened), stop the recording, and print what the file holds;
7. save a PNG plot next to the HDF5 file.

Every number printed is read back from the instruments or from the file, never assumed.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tango

Say = Callable[[str], None]

LASER, METER, CAMERA, WRITER = "lab/maitai/1", "lab/powermeter/1", "lab/camera/1", "lab/datawriter/1"
HWP, POL, QWP = "lab/ell14/hwp", "lab/ell14/pol", "lab/ell14/qwp"
STAGE_X, STAGE_Y = "lab/esp300/x", "lab/esp300/y"
WAVELENGTH_NM = 800.0
HWP_ANGLES = np.arange(0.0, 181.0, 7.5)
STAGE_POSITIONS_MM = [0.0, 0.5, 1.0, 1.5, 2.0]
AVERAGE_S = 0.2


class ExperimentError(RuntimeError):
    """A step could not be done; the message says what to do."""


@dataclass
class Results:
    angles: list[float] = field(default_factory=list)
    powers: list[float] = field(default_factory=list)
    fit: dict[str, float] = field(default_factory=dict)
    stage_mm: list[float] = field(default_factory=list)
    spot_px: list[float] = field(default_factory=list)
    px_per_mm: float = float("nan")
    file: str = ""
    plot: str = ""
    summary: dict[str, Any] = field(default_factory=dict)


def wait_for(what: str, condition: Callable[[], bool], timeout: float, interval: float = 0.05) -> None:
    """Poll ``condition`` until true; raise ExperimentError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise ExperimentError(f"timed out after {timeout:.0f} s waiting for {what}")


def idle(proxy: tango.DeviceProxy) -> bool:
    state = proxy.State()
    if state in (tango.DevState.FAULT, tango.DevState.ALARM):
        raise ExperimentError(f"{proxy.dev_name()} is {state}: {proxy.Status()}")
    return state not in (tango.DevState.MOVING, tango.DevState.INIT)


def move(proxy: tango.DeviceProxy, position: float, timeout: float = 30.0) -> float:
    proxy.Position = position
    wait_for(f"{proxy.dev_name()} to reach {position}", lambda: idle(proxy), timeout)
    return proxy.Position


# ---------------------------------------------------------------------- steps
def laser_on(say: Say) -> tango.DeviceProxy:
    laser = tango.DeviceProxy(LASER)
    if laser.State() == tango.DevState.FAULT:
        raise ExperimentError(f"the laser is in FAULT: {laser.Status()}")
    if not laser.Emission:
        if laser.WarmupPercent < 100:
            if laser.WarmupPercent == 0:
                laser.On()  # at 0 % this starts the warm-up (the diode stabilises first)
            say("   laser warming up …")
            last = -1
            t0 = time.monotonic()
            while laser.WarmupPercent < 100:
                pct = int(laser.WarmupPercent)
                if pct // 10 != last // 10:
                    say(f"   warm-up {pct:3d} % ({time.monotonic() - t0:.0f} s)")
                    last = pct
                if time.monotonic() - t0 > 300:
                    raise ExperimentError("the laser did not warm up in 5 minutes: check it and run again")
                time.sleep(0.25)
            say("   warm-up 100 %")
        laser.Wavelength = WAVELENGTH_NM  # safe start: tune before emission
        laser.On()
        wait_for("emission", lambda: laser.Emission, 10)
    laser.Wavelength = WAVELENGTH_NM
    wait_for("the end of tuning", lambda: not laser.Tuning and laser.State() != tango.DevState.MOVING, 60)
    laser.OpenShutter()
    wait_for("the shutter to open", lambda: laser.Shutter, 5)
    say(f"   laser: emission on, {laser.Wavelength:.1f} nm, {laser.Power:.3f} W, shutter open "
        f"({laser.State()})")
    return laser


def prepare_optics(say: Say) -> None:
    mounts = [tango.DeviceProxy(n) for n in (HWP, POL, QWP)]
    for m in mounts:
        if not m.Homed:
            m.Home(0)
    for m in mounts:
        wait_for(f"{m.dev_name()} to home", lambda m=m: m.Homed and idle(m), 30)
    say("   mounts homed: " + ", ".join(f"{m.dev_name()} {m.Position:.2f}°" for m in mounts))
    for axis in (STAGE_X, STAGE_Y):
        stage = tango.DeviceProxy(axis)
        if not stage.MotorOn:
            stage.MotorOn = True
        move(stage, 0.0)


def start_meter_stream(say: Say, nm: float) -> tango.DeviceProxy:
    meter = tango.DeviceProxy(METER)
    meter.Wavelength = round(nm)
    meter.Range = 0  # AUTO
    meter.Streaming = True
    wait_for("the meter's stream", lambda: meter.SampleRate > 0, 10)
    say(f"   power meter at {meter.Wavelength:.0f} nm, streaming {meter.SampleRate:.0f} samples/s")
    return meter


def averaged_power(reader: Any, seconds: float, min_samples: int = 3) -> float:
    """Mean of the samples streamed from now on, over ``seconds`` and at least ``min_samples``.

    On the real meter (one reading per ~0.3 s) the window grows until it holds enough samples;
    at the simulator's kHz rates it is exactly ``seconds`` long. NaN samples (OVER, SAT) are left
    out, and if nothing valid arrives the error says why.
    """
    t_start = time.time_ns()
    t_end = t_start + int(seconds * 1e9)
    values: list[np.ndarray] = []
    count = 0
    reader.seek_latest()
    deadline = time.monotonic() + seconds + 10
    while time.monotonic() < deadline:
        rec = reader.read_next()
        if rec is None:
            reader.wait(0.1)
            continue
        ts = rec.batch.column("timestamp").cast("int64").to_numpy()
        v = rec.batch.column("value").to_numpy()
        keep = ts >= t_start
        values.append(v[keep])
        count += int(np.isfinite(v[keep]).sum())
        if ts[-1] >= t_end and count >= min_samples:
            break
    samples = np.concatenate(values) if values else np.array([])
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        raise ExperimentError("no valid power samples: is the meter saturated or its stream stopped? "
                              "(see `tangodaq status`)")
    return float(samples.mean())


def fit_malus(angles_deg: np.ndarray, power: np.ndarray) -> dict[str, float]:
    """Least squares of P(θ) = a + b·cos 4θ + c·sin 4θ: a half-wave plate before a polariser."""
    t = np.radians(angles_deg)
    design = np.column_stack([np.ones_like(t), np.cos(4 * t), np.sin(4 * t)])
    (a, b, c), *_ = np.linalg.lstsq(design, power, rcond=None)
    amplitude = math.hypot(b, c)
    max_angle = (math.degrees(math.atan2(c, b)) / 4.0) % 90.0
    p_max, p_min = a + amplitude, a - amplitude
    residual = float(np.sqrt(np.mean((design @ np.array([a, b, c]) - power) ** 2)))
    return {
        "max_angle_deg": max_angle,
        "p_max_w": p_max,
        "p_min_w": p_min,
        "extinction_ratio": p_min / p_max if p_max > 0 else float("nan"),
        "rms_residual_w": residual,
    }


def hwp_sweep(say: Say, res: Results) -> None:
    import datawriter

    hwp = tango.DeviceProxy(HWP)
    reader = datawriter.open_reader(datawriter.stream_name(METER, "power"))
    t0 = time.monotonic()
    for i, angle in enumerate(HWP_ANGLES):
        actual = move(hwp, float(angle))
        res.angles.append(actual)
        res.powers.append(averaged_power(reader, AVERAGE_S))
        if i % 6 == 0 or i == len(HWP_ANGLES) - 1:
            say(f"   HWP {actual:6.2f}°  {res.powers[-1] * 1e3:8.4f} mW   ({i + 1}/{len(HWP_ANGLES)}, "
                f"{time.monotonic() - t0:.0f} s)")
    reader.close()
    res.fit = fit_malus(np.array(res.angles), np.array(res.powers))
    f = res.fit
    say(f"   Malus fit: maximum at HWP {f['max_angle_deg']:.2f}° (mod 90°), P max {f['p_max_w'] * 1e3:.4f} mW, "
        f"extinction ratio {f['extinction_ratio']:.2e}, rms residual {f['rms_residual_w'] * 1e6:.3f} µW")
    move(hwp, f["max_angle_deg"])  # leave the most light on for the camera


def spot_centroid(image: np.ndarray, roi: np.ndarray, binning: int) -> float:
    """Column of the spot in sensor pixels (background-subtracted centroid)."""
    img = image.astype(np.float64)
    img -= np.median(img)
    img[img < 5 * max(img.std(), 1.0)] = 0.0
    if img.sum() <= 0:
        return float("nan")
    cols = np.arange(img.shape[1])
    return float(roi[0] + binning * ((img.sum(axis=0) * (cols + 0.5)).sum() / img.sum()))


def camera_raster(say: Say, res: Results) -> dict[str, int]:
    cam = tango.DeviceProxy(CAMERA)
    stage = tango.DeviceProxy(STAGE_X)
    cam.Roi = [768, 768, 512, 512]
    cam.Binning = 2
    cam.ExposureTime = 0.02
    cam.NbFrames = 0
    before = cam.FramesAcquired
    cam.StartAcquisition()
    try:
        wait_for("the camera to run", lambda: cam.State() == tango.DevState.RUNNING, 10)
        for x in STAGE_POSITIONS_MM:
            actual = move(stage, x)
            t_arrived = time.time()
            wait_for("a camera frame taken after the stage stopped",
                     lambda t=t_arrived: cam.read_attribute("LastImage").time.totime() > t + 0.05, 10)
            roi, binning = np.asarray(cam.Roi), int(cam.Binning)
            res.stage_mm.append(actual)
            res.spot_px.append(spot_centroid(cam.LastImage, roi, binning))
        say("   spot column vs stage x: " + ", ".join(f"{x:.1f} mm → {p:.1f} px" for x, p in zip(res.stage_mm, res.spot_px, strict=True)))
    finally:
        cam.StopAcquisition()
        move(stage, 0.0)
    good = np.isfinite(res.spot_px)
    if good.sum() >= 2:
        res.px_per_mm = float(np.polyfit(np.array(res.stage_mm)[good], np.array(res.spot_px)[good], 1)[0])
    say(f"   the spot moves {res.px_per_mm:.1f} px per mm of stage travel; camera frames: "
        f"{cam.FramesAcquired - before} acquired, {cam.FramesLost} lost")
    return {"acquired": int(cam.FramesAcquired - before), "lost": int(cam.FramesLost)}


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
    ax1.plot(a, np.array(res.powers) * 1e3, "o", label="measured (streamed, averaged)")
    fine = np.linspace(0, 180, 721)
    f = res.fit
    mean, amp = (f["p_max_w"] + f["p_min_w"]) / 2, (f["p_max_w"] - f["p_min_w"]) / 2
    ax1.plot(fine, (mean + amp * np.cos(np.radians(4 * (fine - f["max_angle_deg"])))) * 1e3, "-",
             label=f"fit: max at {f['max_angle_deg']:.2f}°, extinction {f['extinction_ratio']:.1e}")
    ax1.set_xlabel("half-wave plate angle (°)")
    ax1.set_ylabel("transmitted power (mW)")
    ax1.set_title("Power after the polariser")
    ax1.legend(fontsize=8)
    ax2.plot(res.stage_mm, res.spot_px, "s-")
    ax2.set_xlabel("stage x (mm)")
    ax2.set_ylabel("spot column on the camera (px)")
    ax2.set_title(f"Beam spot: {res.px_per_mm:.1f} px/mm")
    fig.suptitle(Path(res.file).name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ---------------------------------------------------------------------- the whole run
def run_experiment(say: Say) -> Results:
    res = Results()
    writer = tango.DeviceProxy(WRITER)
    laser: tango.DeviceProxy | None = None
    meter: tango.DeviceProxy | None = None
    recording = False
    try:
        if not tango.DeviceProxy(LASER).Emission:
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
        say("\n== half-wave plate sweep")
        hwp_sweep(say, res)
        say("\n== camera: beam spot while the stage moves")
        camera = camera_raster(say, res)
        res.summary["camera"] = camera
    finally:
        if laser is not None:
            try:
                laser.CloseShutter()
                say("   shutter closed")
            except tango.DevFailed as exc:
                say(f"   COULD NOT CLOSE THE SHUTTER: {exc.args[0].desc} — close it by hand")
        if meter is not None:
            meter.Streaming = False
        if recording:
            res.file = writer.StopRecording()
            wait_for("the file to be closed", lambda: not writer.Recording, 30)
    res.summary.update(summarise_file(res.file))
    png = Path(res.file).with_suffix(".png")
    save_plot(res, png)
    res.plot = str(png)
    return res

"""Sardana 2D controller for the Pvcam camera: one frame per start, recorded by the DataWriter.

- The integration time is the camera's ``ExposureTime``; each start is a ``Snap`` (software
  synchronisation: one frame per scan point).
- Frames never go through Sardana: the camera writes them to its shared-memory ring, the
  DataWriter records the ring to HDF5, and the channel's value is a *reference* to the frame in
  that file (Sardana value referencing, enabled for the camera in the lab's measurement groups):
  ``h5file://<file>::/entry/instrument/<camera>/frames/data#index=<i>`` where ``i`` is the frame's
  row in that dataset. Sardana's HDF5 recorder keeps these strings (its virtual-dataset step
  only understands one dataset per frame and leaves other references as they are).
- If the DataWriter is not recording when an acquisition is prepared, the controller starts a
  recording for it (named after the camera) and stops it after the last of the prepared starts,
  or on stop/abort; a recording started by someone else (``record_start``) is used and left
  running, and frames are then referenced by their start-of-exposure time
  (``#timestamp_bof=<epoch s>``, the file's ``timestamp_bof`` dataset).
- In a continuous scan (``ascanct``, ``meshct``: one start per window, software triggers) each
  window is one frame exposed for the window's integration time, referenced as above; such a
  scan is refused without value referencing (full frames at every window would go through the
  Pool, the Door and the recorders). ``latency_time`` (the pause the scan leaves after each
  window) is how long the last frames took to reach the Pool after their exposure, so that no
  trigger comes while the camera still reads the previous frame; a trigger the Pool skipped
  anyway leaves its point without a value, and the recording is still closed after the scan
  (no start for three windows).
- With referencing disabled, ``ReadOne`` returns the camera's ``LastImage`` preview, and the count
  is refused at preparation while the preview is binned (``PreviewBinning`` > 1): a scan never
  stores binned frames unawares.
- The axis attributes ``TangoDevice`` and ``DataWriter`` (memorized: the Pool restores them) name
  the devices; an axis that has none memorized gets the lab's ``camera`` and ``datawriter`` roles
  (``tango_db.roles``).
"""

from __future__ import annotations

import json
import math
import threading
import time
from typing import Any

import numpy as np
import tango
from sardana import State
from sardana.pool.controller import (
    Access,
    DataAccess,
    DefaultValue,
    Description,
    Memorize,
    Memorized,
    Referable,
    TwoDController,
    Type,
)

from tango_db.proxies import device_proxy
from tango_db.roles import device_or_empty as role_default
from tangodaq_controllers._acquisition import LatencyTracker

TIMEOUT_MS = 3000
PREPARE_TIMEOUT_MS = 30000  # PrepareAcquisition maps the whole ring: ~0.6 s per GiB
FRAME_TIMEOUT_S = 10.0  # beyond the exposure
FILE_CLOSE_TIMEOUT_S = 30.0  # for the DataWriter to write its backlog and close the file
LATENCY_MARGIN_S = 0.03  # beyond the slowest recent frame: the Pool's bookkeeping after the read, jitter
SNAP_OVERHEAD_S = 0.1  # before any frame was measured: the Snap round trip and the frame's way to the device
IDLE_AFTER_WINDOWS = 3  # a continuous scan with no start for this many windows (and 2 s) is over


def safe(name: str) -> str:
    return name.strip("/").replace("/", "_")




class CameraTwoDController(TwoDController, Referable):
    """A Pvcam device as a Sardana 2D channel with frames recorded by a DataWriter."""

    gender = "TwoD"
    model = "tangodaq Pvcam"
    organization = "tangodaq"

    axis_attributes = {
        "TangoDevice": {
            Type: str, Access: DataAccess.ReadWrite, Memorize: Memorized,
            Description: "the Pvcam device (default: the lab's camera role)",
        },
        "DataWriter": {
            Type: str, Access: DataAccess.ReadWrite, Memorize: Memorized,
            Description: "the DataWriter device that records the camera's frames (default: the lab's "
                         "datawriter role)",
        },
    }

    def __init__(self, inst: str, props: dict, *args: Any, **kwargs: Any) -> None:
        super().__init__(inst, props, *args, **kwargs)
        self.ax: dict[int, dict[str, Any]] = {}
        self.integ_time = 0.1
        # how long after its window (exposure) a frame was known to the Pool: the camera's readout,
        # the frame's way to the device and the state loop. Continuous scans space their triggers
        # by at least this (the measurement group's LatencyTime), so none comes while the camera
        # is still busy with the previous window's frame (a trigger that comes then is skipped).
        self._latency = LatencyTracker(SNAP_OVERHEAD_S, LATENCY_MARGIN_S)
        self._period_s = 0.1  # one window and the pause after it (PrepareOne's integration time + latency)
        self._readout, self._readout_read_at = 0.0, -1e9  # the camera's ReadoutTime, cached (see _readout_s)
        self._lock = threading.RLock()  # the Pool's calls and the abandoned-acquisition timer

    ROLE_DEFAULTS = {"TangoDevice": "camera", "DataWriter": "datawriter"}

    # ------------------------------------------------------------------ axes
    def GetAxisAttributes(self, axis: int) -> dict:
        """Sardana's axis attributes, with the devices' defaults taken from the lab's roles now."""
        attrs = super().GetAxisAttributes(axis)
        for name, role in self.ROLE_DEFAULTS.items():
            attrs[name][DefaultValue] = role_default(role)
        return attrs

    def AddDevice(self, axis: int) -> None:
        self.ax[axis] = {
            "device": role_default("camera"), "writer": role_default("datawriter"), "cam": None, "dw": None,
            "ref_enabled": False, "own_recording": False, "file": "", "index": 0, "starts_left": 0,
            "started": 0.0, "frames_before": 0, "ref": "", "error": "", "snapped": False,
        }

    def DeleteDevice(self, axis: int) -> None:
        self.ax.pop(axis, None)

    def GetAxisExtraPar(self, axis: int, name: str) -> Any:
        a = self.ax[axis]
        return {"tangodevice": a["device"], "datawriter": a["writer"]}[name.lower()]

    def SetAxisExtraPar(self, axis: int, name: str, value: Any) -> None:
        a = self.ax[axis]
        key = {"tangodevice": ("device", "cam"), "datawriter": ("writer", "dw")}[name.lower()]
        a[key[0]], a[key[1]] = str(value).strip(), None

    def SetAxisPar(self, axis: int, name: str, value: Any) -> None:
        if name.lower() == "value_ref_enabled":
            self.ax[axis]["ref_enabled"] = bool(value)
        # value_ref_pattern is not used: the DataWriter decides the file

    def GetAxisPar(self, axis: int, name: str) -> Any:
        if name.lower() == "shape":
            try:
                roi = self._cam(axis).read_attribute("Roi").value
                binning = self._cam(axis).read_attribute("Binning").value
                b = int(np.atleast_1d(binning)[0]) or 1
                return [int(roi[2]) // b, int(roi[3]) // b]
            except (tango.DevFailed, TypeError, IndexError, ValueError):
                return [0, 0]
        if name.lower() == "value_ref_enabled":
            return self.ax[axis]["ref_enabled"]
        return None

    def _proxy(self, axis: int, which: str, key: str) -> tango.DeviceProxy:
        a = self.ax[axis]
        if a[key] is None:
            a[key] = device_proxy(a[which], TIMEOUT_MS)
        return a[key]

    def _cam(self, axis: int) -> tango.DeviceProxy:
        return self._proxy(axis, "device", "cam")

    def _dw(self, axis: int) -> tango.DeviceProxy:
        return self._proxy(axis, "writer", "dw")

    def GetCtrlPar(self, parameter: str) -> Any:
        """``latency_time``: the time a frame needs after its exposure to reach the Pool, from the
        last frames (before any: the camera's ReadoutTime plus the Snap's own overhead)."""
        if parameter.lower() == "latency_time":
            floor = self._readout_s() + SNAP_OVERHEAD_S + LATENCY_MARGIN_S
            return max(self._latency.latency_s(), floor) if self._latency.measured else floor
        return super().GetCtrlPar(parameter)

    def _readout_s(self) -> float:
        """The camera's ReadoutTime (its current ROI and speed), re-read at most every 10 s: the
        Pool asks for latency_time at every integration-time change."""
        now = time.monotonic()
        if self.ax and now - self._readout_read_at > 10.0:
            try:
                self._readout = float(self._cam(next(iter(self.ax))).read_attribute("ReadoutTime").value or 0.0)
                self._readout_read_at = now
            except (tango.DevFailed, TypeError, ValueError):
                pass  # the last value read (0 before any)
        return self._readout

    # ------------------------------------------------------------------ acquisition
    def PrepareOne(self, axis: int, value: float, repetitions: int, latency: float, nb_starts: int) -> None:
        # the software acquisition's LoadOne gets no latency: the pause between windows is known here
        self._period_s = float(value) + max(0.0, float(latency or 0.0))
        with self._lock:  # a timer of the previous acquisition must not end this one
            a = self.ax[axis]
            self._cancel_end_timer(a)
            a["started"] = 0.0
        # a recording this controller started for an acquisition that lost its last windows (a
        # meshct's previous line, an ascanct that lost a trigger) is its own, not someone else's
        self._finish(axis)
        a["starts_left"] = max(1, int(nb_starts))
        a["error"] = ""
        a["reopen"] = False
        a["continuous"] = nb_starts > 1 and self._in_continuous_scan()
        if a["continuous"] and not a["ref_enabled"]:
            # A continuous scan (one start per window): full frames as values would go through the
            # Pool, the Door and the recorders at every window (8 MiB each), far slower than the
            # windows, and a window whose frame is missing makes Sardana's HDF5 recorder write a
            # whole NaN image element by element: the scan stalls for minutes.
            raise ValueError(
                f"{a['device']}: a continuous scan ({nb_starts} windows) records the camera only by reference: "
                "enable value referencing for this channel (Experiment Configuration, column 'Ref'; "
                "the lab's mg_camera has it), so that the DataWriter records the frames and the scan keeps "
                "references to them")
        self._prepare_camera(axis)
        if not a["ref_enabled"]:
            binning = int(self._cam(axis).read_attribute("PreviewBinning").value or 1)
            if binning > 1:
                # The value is then the LastImage preview, which may be binned for the live view;
                # a scan must never store binned frames as if they were the camera's.
                raise ValueError(
                    f"{a['device']}: PreviewBinning is {binning}, so LastImage is a binned preview; enable "
                    "value referencing for this channel (frames recorded by the DataWriter) or set "
                    "PreviewBinning to 1")
            return
        dw = self._dw(axis)
        if dw.read_attribute("Recording").value:
            a["own_recording"], a["file"] = False, str(dw.read_attribute("FilePath").value)
        else:
            a["file"] = dw.command_inout(
                "StartRecording", json.dumps({"name": safe(a["device"]), "metadata": {"source": "sardana"}}))
            a["own_recording"], a["index"] = True, 0

    def _prepare_camera(self, axis: int) -> None:
        """The camera reserves its frame ring now, before the recording starts and anything
        moves (Sardana prepares once per step scan, per waypoint of a continuous scan, per
        count of ``ct``): made at the first window's Snap instead (after a ROI or binning
        change), the ring's allocation (~0.15 s for 256 MiB) delayed that frame, and in a
        continuous scan the next trigger came while the camera was still busy and was skipped.
        A ring that does not fit, or a camera busy with its live view, refuses the scan here."""
        a = self.ax[axis]
        cam = self._cam(axis)
        try:
            cam.set_timeout_millis(PREPARE_TIMEOUT_MS)  # a large ring takes seconds to map
            try:
                cam.command_inout("PrepareAcquisition")
            except tango.DevFailed as exc:
                if exc.args[0].reason != "API_CommandNotFound":
                    raise
                # a camera server older than this controller: its first Snap makes the ring
            finally:
                cam.set_timeout_millis(TIMEOUT_MS)
            live = bool(cam.read_attribute("Live").value)
        except (tango.DevFailed, TypeError) as exc:
            a["cam"] = None
            raise ValueError(f"{a['device']}: cannot prepare the acquisition: {self._why(axis, exc)}") from None
        if live:
            raise ValueError(
                f"{a['device']}: the camera is acquiring live (its live view): stop it first "
                "(StopAcquisition, or the live view's Stop), then run the scan again")

    def LoadOne(self, axis: int, value: float, repetitions: int, latency: float) -> None:
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"exposure (integration time) must be > 0 s, not {value}")
        if repetitions != 1:
            raise ValueError("the camera takes one frame per start (software synchronisation)")
        self.integ_time = float(value)
        a = self.ax[axis]
        a["load_error"] = ""
        try:
            self._cam(axis).write_attribute("ExposureTime", self.integ_time)
        except (tango.DevFailed, TypeError) as exc:
            # Not raised: an exception from LoadOne or StartOne leaves Sardana's acquisition
            # action unfinished (its thread pool logs it as uncaught) and the scan waits for ever;
            # the reason goes to StateOne, whose Fault ends the acquisition and names the cause.
            a["load_error"] = f"{a['device']}: cannot set ExposureTime {value:g} s: {self._why(axis, exc)}"
            a["cam"] = None

    def StartOne(self, axis: int, value: float | None = None) -> None:
        a = self.ax[axis]
        with self._lock:
            self._cancel_end_timer(a)
            a["started"] = time.time()  # under the lock: a timer already waiting for it sees this start
            if a.get("reopen"):  # its recording was closed after a long pause (see _end_if_idle)
                self._reopen_recording(axis)
        cam = self._cam(axis)
        a["ref"], a["error"], a["snapped"] = "", a.get("load_error", ""), False
        if a["error"]:
            return  # StateOne reports it (see LoadOne)
        try:
            cam.command_inout("Snap")
        except (tango.DevFailed, TypeError) as exc:
            a["error"] = f"{a['device']}: Snap failed: {self._why(axis, exc)}"
            a["cam"] = None
            return
        a["snapped"] = True

    def _why(self, axis: int, exc: Exception) -> str:
        """What went wrong, in words: PyTango raises a bare ``TypeError`` ("unsupported
        data_format") for a write to a device it cannot reach; a ping then gives the reason."""
        if isinstance(exc, tango.DevFailed):
            return exc.args[0].desc.strip()
        try:
            self._cam(axis).ping()
        except tango.DevFailed as failed:
            return f"{failed.args[0].desc.strip()} (is its server, or the network to its host, down?)"
        return str(exc)

    def StateOne(self, axis: int) -> tuple[Any, str]:
        a = self.ax[axis]
        try:
            cam = self._cam(axis)
            state_da, frames_da = cam.read_attributes(["State", "FramesAcquired"])  # one round trip
            state, frames = state_da.value, int(frames_da.value or 0)
        except tango.DevFailed as exc:
            self.ax[axis]["cam"] = None
            if a["error"]:
                return State.Fault, a["error"]
            return State.Fault, f"{a['device']}: {exc.args[0].desc.strip()}"
        if a["error"]:
            return State.Fault, a["error"]
        if a["snapped"]:
            if state == tango.DevState.RUNNING or frames < 1:
                if time.time() - a["started"] > self.integ_time + FRAME_TIMEOUT_S:
                    a["error"] = f"{a['device']}: no frame {FRAME_TIMEOUT_S:.0f} s after the exposure ({cam.status().strip()})"
                    self._finish(axis, aborted=True)
                    return State.Fault, a["error"]
                return State.Moving, f"{a['device']}: exposing {self.integ_time:g} s"
            a["snapped"] = False
            self._latency.note_tail(time.time() - (a["started"] + self.integ_time))
            self._frame_done(axis)
        if state in (tango.DevState.FAULT, tango.DevState.DISABLE):
            return State.Fault, f"{a['device']}: {cam.status().strip()}"
        if state == tango.DevState.ALARM:
            return State.Alarm, f"{a['device']}: {cam.status().strip()}"
        return State.On, f"{a['device']}: ready"

    def _frame_done(self, axis: int) -> None:
        a = self.ax[axis]
        if a["ref_enabled"] and a["file"]:
            dataset = f"/entry/instrument/{safe(a['device'])}/frames/data"
            where = f"index={a['index']}" if a["own_recording"] else f"timestamp_bof={a['started']:.6f}"
            a["ref"] = f"h5file://{a['file']}::{dataset}#{where}"
            a["index"] += 1
        a["starts_left"] -= 1
        if a["starts_left"] <= 0:
            self._finish(axis)
        elif a["own_recording"] and a.get("continuous"):
            self._arm_end_timer(axis)

    def _in_continuous_scan(self) -> bool:
        """Whether the acquisition being prepared is a continuous scan's: its measurement group's
        synchronization repeats (N windows from one description), where a step scan has one window
        per start. Sardana hands the controller N starts either way; the group is the Pool's
        controller's operator while it prepares the acquisition."""
        try:
            description = self._getPoolController().operator.synch_description
            return any(d.repetitions > 1 for d in description.values())
        except Exception as exc:  # noqa: BLE001 - another Sardana: as in a step scan
            self._log.debug("cannot read the acquisition's synchronization: %s", exc)
            return False

    # A window whose trigger the Pool skipped (the previous window still being read: its software
    # synchronizer drops the trigger, and the scan gets no value there) never calls StartOne, so
    # counting starts alone could leave the recording this controller started running for ever:
    # in a continuous scan, after a few windows without a start it is closed (a start that still
    # comes records into a new file, and its reference says which).
    def _arm_end_timer(self, axis: int) -> None:
        a = self.ax[axis]
        wait_s = max(2.0, IDLE_AFTER_WINDOWS * self._period_s)
        timer = threading.Timer(wait_s, self._end_if_idle, (axis, a["started"]))
        timer.daemon = True
        a["end_timer"] = timer
        timer.start()

    @staticmethod
    def _cancel_end_timer(a: dict[str, Any]) -> None:
        timer = a.pop("end_timer", None)
        if timer is not None:
            timer.cancel()

    def _end_if_idle(self, axis: int, started: float) -> None:
        with tango.EnsureOmniThread():
            with self._lock:
                a = self.ax.get(axis)
                if a is None or a["started"] != started or not a["own_recording"] or a["starts_left"] <= 0:
                    return  # a start came after all, or the acquisition ended otherwise
                a["reopen"] = True
                self._log.warning(
                    "%s: no window started for %.1f s with %d of the continuous scan's windows to come (triggers "
                    "the Pool skipped while the previous window was still being read: those points have no value); "
                    "closing the recording %s (a later start records into a new file)",
                    a["device"], time.time() - started, a["starts_left"], a["file"])
            self._finish(axis)  # outside the lock: the Pool's calls must not wait for the file to close

    def _reopen_recording(self, axis: int) -> None:
        a = self.ax[axis]
        try:
            a["file"] = self._dw(axis).command_inout(
                "StartRecording", json.dumps({"name": safe(a["device"]), "metadata": {"source": "sardana"}}))
            a["own_recording"], a["index"], a["reopen"] = True, 0, False
        except (tango.DevFailed, TypeError) as exc:
            a["file"] = ""  # no reference into the closed file; StateOne reports why
            a["error"] = a["load_error"] = (
                f"{a['writer']}: cannot start a recording for the camera's frames: {self._why(axis, exc)}")

    def _finish(self, axis: int, aborted: bool = False) -> None:
        """Stop the recording this controller started, if any, and wait for its file to close.
        Taken under the lock, done outside it (the timer's thread and the Pool's calls)."""
        with self._lock:
            a = self.ax[axis]
            ours = a["own_recording"]
            a["own_recording"] = False
        if ours:
            try:
                dw = self._dw(axis)
                dw.command_inout("StopRecording")
                # StopRecording may return while the DataWriter still writes the rings' backlog;
                # the references must point at a complete, closed file when the count ends
                if not self._wait_recording_ended(dw, FILE_CLOSE_TIMEOUT_S):
                    self._log.warning("%s: still finishing %s after %.0f s", a["writer"], a["file"],
                                      FILE_CLOSE_TIMEOUT_S)
            except tango.DevFailed as exc:
                self._log.warning("%s: StopRecording failed: %s", a["writer"], exc.args[0].desc.strip())

    @staticmethod
    def _wait_recording_ended(dw: tango.DeviceProxy, timeout_s: float) -> bool:
        """Wait for the DataWriter's ``Recording`` to turn false: one read (StopRecording has
        usually closed the file already), else its change event (the first one, delivered at
        subscription, is the current value), with a read every 0.25 s for events that cannot
        reach the Pool (a firewall between hosts). True when it ended in time."""
        if not dw.read_attribute("Recording").value:
            return True
        ended = threading.Event()

        def on_change(event: tango.EventData) -> None:
            if not event.err and event.attr_value is not None and not event.attr_value.value:
                ended.set()

        try:
            event_id = dw.subscribe_event("Recording", tango.EventType.CHANGE_EVENT, on_change)
        except tango.DevFailed:
            event_id = None
        try:
            deadline = time.monotonic() + timeout_s
            while not ended.wait(min(0.25, max(0.0, deadline - time.monotonic()))):
                if not dw.read_attribute("Recording").value:
                    return True
                if time.monotonic() >= deadline:
                    return False
            return True
        finally:
            if event_id is not None:
                try:
                    dw.unsubscribe_event(event_id)
                except tango.DevFailed:
                    pass

    def ReadOne(self, axis: int) -> Any:
        return self._cam(axis).read_attribute("LastImage").value

    def RefOne(self, axis: int) -> str:
        return self.ax[axis]["ref"]

    def StopOne(self, axis: int) -> None:
        a = self.ax[axis]
        self._cancel_end_timer(a)
        a["snapped"] = False
        try:
            if self._cam(axis).state() == tango.DevState.RUNNING:
                self._cam(axis).command_inout("StopAcquisition")
        finally:
            self._finish(axis, aborted=True)

    def AbortOne(self, axis: int) -> None:
        self.StopOne(axis)

"""The ``DataWriter`` Tango device: records shared-memory rings into HDF5/NeXus files.

States: ON idle, RUNNING recording (or finishing a recording), FAULT when the last recording
ended on an error (disk full, unwritable folder); FAULT clears on the next successful
``StartRecording``. The device never lets an error escape into the server: command errors are
raised to the client as DevFailed with a reason, recorder errors become FAULT plus Status.

All file and ring work happens in the :class:`~datawriter.recorder.Recorder` thread; this class
only validates requests, builds the recorder, reads the manifest devices and publishes the
recorder's counters as attributes with change events (pushed at most 4 times per second).
"""

from __future__ import annotations

import json
import os
import re
import time
from typing import Any

import numpy as np
import tango
from tango import AttrWriteType, DevState
from tango.server import Device, attribute, command, device_property

from .hdf5_sink import COMPRESSIONS, Hdf5Sink, StreamSpec
from .recorder import Recorder, RecorderStats
from .ring import RingError, RingReader, list_streams

EVENT_ATTRIBUTES = ("Recording", "RecordsWritten", "BytesWritten", "WriteRate", "Backlog", "DroppedRecords")
STOP_WAIT_S = 2.0  # StopRecording waits this long for the file to close (under the 3 s client time-out)


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "recording"


def _plain(value: Any) -> Any:
    """A Tango attribute value as something HDF5 can store."""
    if isinstance(value, DevState):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return np.asarray(value)
    return value


def read_manifest(devices: list[str], timeout_ms: int = 2000) -> dict[str, dict[str, Any]]:
    """Value, unit, quality and time of every attribute of every device; errors are recorded,
    never raised (an unreachable device must not stop a recording)."""
    out: dict[str, dict[str, Any]] = {}
    for dev in devices:
        try:
            proxy = tango.DeviceProxy(dev)
            proxy.set_timeout_millis(timeout_ms)
            infos = {i.name: i for i in proxy.attribute_list_query_ex()}
            das = proxy.read_attributes(list(infos), extract_as=tango.ExtractAs.Numpy)
        except tango.DevFailed as exc:
            out[dev] = {"error": exc.args[0].desc.strip()}
            continue
        attrs: dict[str, Any] = {}
        for name, da in zip(infos, das, strict=True):
            info = infos[name]
            unit = "" if info.unit in ("No unit", "") else info.unit
            entry: dict[str, Any] = {"unit": unit, "description": "" if info.description == "No description" else info.description}
            if da.has_failed:
                errs = da.get_err_stack()
                entry["value"] = None
                entry["error"] = errs[0].desc.strip() if errs else "read failed"
            else:
                entry["value"] = _plain(da.value)
                entry["quality"] = str(da.quality)
                entry["time"] = da.time.totime()
                if info.data_type == tango.CmdArgType.DevEnum and info.enum_labels:
                    entry["enum_labels"] = list(info.enum_labels)
            attrs[name] = entry
        out[dev] = attrs
    return out


class DataWriter(Device):
    """Records the lab's shared-memory data streams into HDF5/NeXus files (SWMR, readable while written)."""

    OutputDir = device_property(dtype=str, default_value="/tmp/tangodaq-data", doc="folder of the HDF5 files")
    Streams = device_property(dtype=(str,), default_value=[], doc="stream names to record (a stream whose ring does not exist yet is recorded from when it "
        "appears); empty: every ring, including rings that appear during the recording")
    ManifestDevices = device_property(
        dtype=(str,), default_value=[], doc="devices whose attributes are stored at start and end of each recording"
    )
    Compression = device_property(dtype=str, default_value="none", doc=f"frame compression: one of {', '.join(COMPRESSIONS)}")

    def init_device(self) -> None:
        super().init_device()
        self._recorder: Recorder | None = None
        self._file_path = ""
        self._stats = RecorderStats()
        self._streams: list[str] = []
        self._last_push = 0.0
        for name in EVENT_ATTRIBUTES:
            self.set_change_event(name, True, False)
        self.set_state(DevState.ON)
        self.set_status("Idle: call StartRecording to record " + (", ".join(self.Streams) or "every stream on this host"))

    def delete_device(self) -> None:
        rec = self._recorder
        if rec is not None and rec.running:
            rec.stop(timeout=10.0)

    # ------------------------------------------------------------------------- attributes

    @attribute(dtype=bool, doc="a recording is in progress (or finishing)")
    def Recording(self) -> bool:
        return self._recorder is not None and self._recorder.running

    @attribute(dtype=str, doc="file of the current or last recording")
    def FilePath(self) -> str:
        return self._file_path

    @attribute(dtype=np.int64, doc="ring records written in this recording (a frame, or a batch of scalar samples)")
    def RecordsWritten(self) -> int:
        return self._stats.records_written

    @attribute(dtype=np.int64, unit="B", doc="bytes handed to HDF5 in this recording")
    def BytesWritten(self) -> int:
        return self._stats.bytes_written

    @attribute(dtype=float, unit="MB/s", format="%.1f", doc="write rate over the last second")
    def WriteRate(self) -> float:
        return self._stats.write_rate_mb_s

    @attribute(dtype=np.int64, doc="records committed to the rings and not yet written")
    def Backlog(self) -> int:
        return self._stats.backlog

    @attribute(dtype=np.int64, doc="records lost in this recording (overwritten in a ring before they could be written)")
    def DroppedRecords(self) -> int:
        return self._stats.dropped_records

    @attribute(dtype=(str,), max_dim_x=1024, access=AttrWriteType.READ, doc="streams of the current/last recording, else those a recording would take")
    def StreamNames(self) -> list[str]:
        if self._recorder is not None:
            return self._recorder.stream_names + self._recorder.awaited_streams
        if self._streams:
            return self._streams
        return list(self.Streams) or list_streams()

    # ------------------------------------------------------------------------- commands

    @command(dtype_in=str, doc_in='JSON {"name": str, "metadata": {...}, "pre_trigger_s": seconds}', dtype_out=str, doc_out="file path")
    def StartRecording(self, argin: str) -> str:
        if self._recorder is not None and self._recorder.running:
            tango.Except.throw_exception(
                "DataWriter_Busy", f"already recording to {self._file_path}; call StopRecording first", "StartRecording"
            )
        try:
            params = json.loads(argin) if argin.strip() else {}
            if not isinstance(params, dict):
                raise ValueError("the argument must be a JSON object")
            name = str(params.get("name") or "recording")
            metadata = params.get("metadata") or {}
            if not isinstance(metadata, dict):
                raise ValueError("'metadata' must be a JSON object")
            pre = float(params.get("pre_trigger_s", params.get("pre_trigger", 0.0)) or 0.0)
            if pre < 0:
                raise ValueError("pre-trigger seconds must be >= 0")
        except (ValueError, TypeError) as exc:
            tango.Except.throw_exception("DataWriter_BadArgument", f"bad StartRecording argument {argin!r}: {exc}", "StartRecording")
        # Streams that do not exist yet are awaited: producers create their rings when they start
        # (the camera at acquisition start, the power meter when Streaming goes on).
        named = list(self.Streams)
        streams = named or list_streams()
        start: str | float = time.time() - pre if pre > 0 else "latest"
        readers: dict[str, RingReader] = {}
        awaited: list[str] = []
        for s in streams:
            try:
                readers[s] = RingReader(s, start=start)
            except RingError:
                if not named:  # listed a moment ago, removed since: it is picked up again if it comes back
                    continue
                awaited.append(s)
        path = ""
        try:
            os.makedirs(self.OutputDir, exist_ok=True)
            path = self._new_path(name)
            sink = Hdf5Sink(
                path,
                [StreamSpec(n, r.schema, r.description) for n, r in readers.items()],
                title=name,
                metadata=metadata,
                compression=self.Compression,
            )
        except OSError as exc:
            for r in readers.values():
                r.close()
            self._fault(f"cannot create a file in OutputDir {self.OutputDir!r}: {exc}", path)
            tango.Except.throw_exception("DataWriter_CannotWrite", self.get_status(), "StartRecording")
        except ValueError as exc:
            for r in readers.values():
                r.close()
            tango.Except.throw_exception("DataWriter_BadConfiguration", str(exc), "StartRecording")
        devices = list(self.ManifestDevices)
        self._stats = RecorderStats()
        self._streams = list(readers)
        self._file_path = path
        self._recorder = Recorder(
            sink,
            readers,
            record_new_streams=not named,
            awaited_streams=awaited,
            manifest=(lambda: read_manifest(devices)) if devices else None,
            on_stats=self._on_stats,
            on_finished=self._on_finished,
            thread_context=tango.EnsureOmniThread,
        )
        self.set_state(DevState.RUNNING)
        self.set_status(self._recording_status())
        self._recorder.start()
        self.push_change_event("Recording", True)
        return path

    @command(dtype_out=str, doc_out="file path of the recording (also when it was already stopped)")
    def StopRecording(self) -> str:
        rec = self._recorder
        if rec is None:
            return self._file_path
        if rec.running and not rec.stop(timeout=STOP_WAIT_S):
            self.set_status(
                f"Finishing {rec.path}: writing the {rec.stats().backlog} records still in the rings; Recording turns False when done"
            )
        return rec.path

    # ------------------------------------------------------------------------- internals

    def _recording_status(self) -> str:
        rec = self._recorder
        names = rec.stream_names if rec is not None else self._streams
        text = f"Recording {', '.join(names) or 'no stream yet'} to {self._file_path}"
        if rec is not None and rec.awaited_streams:
            text += f"; waiting for {', '.join(rec.awaited_streams)} to appear"
        elif rec is not None and rec.record_new_streams:
            text += "; streams that appear are added"
        return text

    def _new_path(self, name: str) -> str:
        base = os.path.join(self.OutputDir, f"{_safe_name(name)}_{time.strftime('%Y%m%d-%H%M%S')}")
        path, i = base + ".h5", 1
        while os.path.exists(path):
            path, i = f"{base}_{i}.h5", i + 1
        return path

    def _fault(self, reason: str, path: str) -> None:
        self.set_state(DevState.FAULT)
        kept = f" {path} is readable up to the last flushed record." if path and os.path.exists(path) else ""
        self.set_status(f"{reason}.{kept} Free disk space or change OutputDir, then call StartRecording again.")

    def _on_stats(self, stats: RecorderStats) -> None:
        self._stats = stats
        now = time.monotonic()
        if now - self._last_push < 0.2:
            return
        self._last_push = now
        rec = self._recorder
        if rec is not None and rec.running and len(stats.per_stream) != len(self._streams):
            self._streams = list(stats.per_stream)  # a stream appeared
            self.set_status(self._recording_status())
        self._push_all()

    def _push_all(self) -> None:
        s = self._stats
        rec = self._recorder
        self.push_change_event("Recording", rec is not None and rec.running)
        self.push_change_event("RecordsWritten", s.records_written)
        self.push_change_event("BytesWritten", s.bytes_written)
        self.push_change_event("WriteRate", s.write_rate_mb_s)
        self.push_change_event("Backlog", s.backlog)
        self.push_change_event("DroppedRecords", s.dropped_records)

    def _on_finished(self, path: str, error: BaseException | None) -> None:
        rec = self._recorder
        frame_io = ""
        if rec is not None:
            self._stats = rec.stats()
            frame_io = rec.sink.frame_io
            self.info_stream(f"{path} closed; frames written {frame_io}")
        if error is None:
            self.set_state(DevState.ON)
            self.set_status(
                f"Idle. Last recording: {path} ({self._stats.records_written} records, "
                f"{self._stats.dropped_records} lost; frames written {frame_io})"
            )
        else:
            self._fault(f"recording to {path} failed: {error}", path)
        try:
            self._push_all()
        except tango.DevFailed:  # device being deleted
            pass


def main(args: list[str] | None = None, **kwargs: Any) -> None:
    """Console script ``DataWriter <instance>``."""
    DataWriter.run_server(args=args, **kwargs)


if __name__ == "__main__":
    main()

"""The ``DataWriter`` Tango device: records shared-memory rings into HDF5/NeXus files.

States: ON idle, RUNNING recording (or finishing a recording), FAULT when the last recording
ended on an error (disk full, unwritable folder); FAULT clears on the next successful
``StartRecording``. The device never lets an error escape into the server: command errors are
raised to the client as DevFailed with a reason, recorder errors become FAULT plus Status.

A recording whose server was killed is not lost silently: a journal next to the output
(:mod:`datawriter.recovery`) lets the restarted DataWriter repair the file (plainly readable,
end time, ``ended_abnormally``, losses), report it in Status and ``LastRecovery``, and continue
the recording in a new file linked both ways (``/entry/continued_in``, ``/entry/continues``).
``StartRecording`` refuses any argument it cannot honour exactly (``DataWriter_BadArgument``)
before anything is created.

All file and ring work happens in the :class:`~datawriter.recorder.Recorder` thread; this class
only validates requests, builds the recorder, reads the manifest devices and publishes the
recorder's counters as attributes with change events (pushed at most 4 times per second), and
State and Status with change events on every change.

Every event goes through one :class:`~deviceservers.common.events.EventPusher` thread, never
straight from the recorder thread: cppTango takes the device monitor to push from a user thread,
and ``StopRecording``/``Init`` hold that monitor while they wait for the recorder to close the
file, so a push from the recorder would stall the stop until the client's wait ran out.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import tango
from tango import AttrWriteType, DevState
from tango.server import Device, attribute, command, device_property

from deviceservers.common import fault_log
from deviceservers.common.events import EventPusher
from deviceservers.common.stack_dump import enable_stack_dumps
from tango_db.proxies import device_proxy

from . import recovery
from .compression import COMPRESSIONS, check_compression
from .hdf5_sink import Hdf5Sink, StreamSpec, check_metadata
from .recorder import Recorder, RecorderStats
from .ring import RingError, RingReader, list_streams

EVENT_ATTRIBUTES = ("Recording", "FilePath", "RecordsWritten", "BytesWritten", "WriteRate", "Backlog", "DroppedRecords")
STOP_WAIT_S = 2.0  # StopRecording and Init wait this long for the file to close (under the 3 s client time-out)
SHUTDOWN_WAIT_S = 10.0  # a server shutting down waits this long for the file to close before it exits


START_KEYS = {"name": "file name prefix and title (text, at most 200 characters)",
              "metadata": "JSON object stored under /entry/user_metadata",
              "pre_trigger_s": "seconds of ring history to include, 0..3600",
              "pre_trigger": "alias of pre_trigger_s"}
MAX_ARGUMENT_CHARS = 1 << 20
MAX_NAME_CHARS = 200  # with the date suffix the file name stays under the 255 bytes file systems allow
MAX_PRE_TRIGGER_S = 3600.0
MAX_METADATA_DEPTH = 16
MAX_METADATA_ITEMS = 1000


def _refuse_constant(text: str) -> float:
    raise ValueError(f"{text} is not a number a recording can use")


def _count_items(tree: Mapping[str, Any], depth: int = 1) -> int:
    if depth > MAX_METADATA_DEPTH:
        raise ValueError(f"'metadata' is nested deeper than {MAX_METADATA_DEPTH} levels")
    n = 0
    for value in tree.values():
        n += 1 + (_count_items(value, depth + 1) if isinstance(value, Mapping) else 0)
    return n


def parse_start_argument(argin: str) -> tuple[str, dict[str, Any], float]:
    """``StartRecording``'s JSON argument as (name, metadata, pre-trigger seconds).

    Raises ValueError for anything the recording cannot honour exactly: not a JSON object, an
    unknown key (a typo would otherwise give a file named ``recording_...``), NaN or infinite
    numbers, a name that is not text, too long for a file name or holds control characters
    (an embedded NUL cuts the file name short), metadata HDF5 cannot store, a pre-trigger that
    is not a finite number of seconds in range. Checked before anything is created, so a
    refusal has no side effect.
    """
    if len(argin) > MAX_ARGUMENT_CHARS:
        raise ValueError(f"the argument is longer than {MAX_ARGUMENT_CHARS} characters")
    try:
        params = json.loads(argin, parse_constant=_refuse_constant) if argin.strip() else {}
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None
    if not isinstance(params, dict):
        raise ValueError("the argument must be a JSON object")
    unknown = sorted(set(params) - set(START_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))}; the keys are "
                         + "; ".join(f"{k}: {v}" for k, v in START_KEYS.items()))
    name = params.get("name")
    if name is None:
        name = "recording"
    if not isinstance(name, str):
        raise ValueError(f"'name' must be text, not {type(name).__name__}")
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"'name' has {len(name)} characters; at most {MAX_NAME_CHARS}")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError("'name' contains control characters (such as NUL or a line break)")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("'name' is not valid Unicode text (a lone surrogate)") from None
    name = name or "recording"
    metadata = params.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise ValueError("'metadata' must be a JSON object")
    if _count_items(metadata) > MAX_METADATA_ITEMS:
        raise ValueError(f"'metadata' has more than {MAX_METADATA_ITEMS} entries")
    check_metadata(metadata)
    if "pre_trigger_s" in params and "pre_trigger" in params:
        raise ValueError("give 'pre_trigger_s' or its alias 'pre_trigger', not both")
    pre = params.get("pre_trigger_s", params.get("pre_trigger"))
    if pre is None:
        pre = 0.0
    if isinstance(pre, bool) or not isinstance(pre, int | float):
        raise ValueError(f"'pre_trigger_s' must be a number of seconds, not {type(pre).__name__}")
    if not (0 <= pre <= MAX_PRE_TRIGGER_S):
        raise ValueError(f"'pre_trigger_s' must be between 0 and {MAX_PRE_TRIGGER_S:g} s, not {pre}")
    pre = float(pre)
    if not math.isfinite(pre):  # pragma: no cover - excluded by the range check
        raise ValueError("'pre_trigger_s' must be finite")
    return name, metadata, pre


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
            proxy = device_proxy(dev, timeout_ms)
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


def manifest_devices_from_roles(own_name: str) -> list[str]:
    """Every instrument the lab's roles name (tango_db.roles), for an empty ManifestDevices:
    a renamed lab records its own devices with no list to keep in step. Sardana's servers and
    this DataWriter are left out."""
    from tango_db.roles import lab_roles

    out: list[str] = []
    for role, dev in sorted(lab_roles().items()):
        if role in {"pool", "macroserver", "door", "datawriter"} or dev.lower() == own_name.lower():
            continue
        if dev not in out:
            out.append(dev)
    return out


class DataWriter(Device):
    """Records the lab's shared-memory data streams into HDF5/NeXus files (SWMR, readable while written)."""

    OutputDir = device_property(dtype=str, default_value="/tmp/tangodaq-data", doc="folder of the HDF5 files")
    Streams = device_property(dtype=(str,), default_value=[], doc="stream names to record (a stream whose ring does not exist yet is recorded from when it "
        "appears); empty: every ring, including rings that appear during the recording")
    ManifestDevices = device_property(
        dtype=(str,), default_value=[],
        doc="devices whose attributes are stored at start and end of each recording; "
        "empty: every instrument the lab's roles name (tango_db.roles)",
    )
    Compression = device_property(
        dtype=str, default_value="none",
        doc=f"frame compression, one of {', '.join(COMPRESSIONS)}: blosc2-lz4 (fast, Blosc2 LZ4 + bit shuffle) and "
        "blosc2-zstd (dense, Blosc2 zstd level 1 + byte shuffle) compress in worker threads at full frame rate; "
        "the other filters run in the writer thread (about 30 fps of full frames). All open with h5py + hdf5plugin",
    )

    def init_device(self) -> None:
        super().init_device()
        # An Init whose delete_device could not wait for a stop to finish: that recorder still
        # writes its file (and owns its journal); it is kept, never dropped, never taken for a crash.
        finishing: Recorder | None = getattr(self, "_recorder", None)
        if finishing is not None and not finishing.running:
            finishing = None
        self._recorder = finishing
        self._journal: recovery.Journal | None = getattr(self, "_journal", None) if finishing else None
        self._file_path = self._file_path if finishing else ""
        self._stats = finishing.stats() if finishing else RecorderStats()
        self._streams: list[str] = list(finishing.stream_names) if finishing else []
        self._last_push = 0.0
        self._last_recovery = ""
        # One pusher for the life of the device, kept across Init: a recording that finishes in
        # the background after an Init still gets its last events (Recording False, State ON) out.
        if getattr(self, "_events", None) is None:
            self._events = EventPusher(self.get_name(), logging.getLogger(f"tangodaq.{self.get_name()}"))
        for name in ("State", "Status", *EVENT_ATTRIBUTES):
            self.set_change_event(name, True, False)
        if finishing is not None:
            self._set_state_status(DevState.RUNNING, f"Finishing {finishing.path} (stopped by Init): writing the "
                                   f"{finishing.stats().backlog} records still in the rings; Recording turns False when done")
        else:
            self._set_state_status(DevState.ON, "Idle: call StartRecording to record "
                                   + (", ".join(self.Streams) or "every stream on this host"))
        self._recover()
        self._check_compression()

    def _check_compression(self) -> None:
        """A Compression property the sink cannot honour (a typo, a codec whose package is
        missing) puts the device in FAULT at Init, saying the allowed values, instead of
        surfacing at the first StartRecording (which refuses it too)."""
        try:
            check_compression(self.Compression)
        except ValueError as exc:
            self._set_state_status(DevState.FAULT, f"Cannot record: {exc}. Set the Compression property to one of "
                                   "these and run Init." + (f" {self._last_recovery}" if self._last_recovery else ""))
            fault_log.record(self.get_name(), "FAULT", self.get_status(), logging.ERROR, self)

    def delete_device(self) -> None:
        """Stop the recording (Init, server shutdown). Its journal is marked ``stopping`` first:
        if the process dies before the file is closed, the next start repairs the file and does
        not continue a recording that was being stopped. An Init waits as long as a client waits
        for StopRecording and lets a longer stop finish in the background (init_device keeps the
        recorder); a server shutting down waits longer, since its threads die with it."""
        rec = self._recorder
        if rec is None or not rec.running:
            return
        self._mark_stopping()
        try:
            shutting_down = tango.Util.instance().is_svr_shutting_down()
        except tango.DevFailed:  # no Util (not in a server): treat as shutting down, wait longest
            shutting_down = True
        if not rec.stop(timeout=SHUTDOWN_WAIT_S if shutting_down else STOP_WAIT_S):
            self.warn_stream(f"{rec.path} still being written after the stop request "
                             f"({rec.stats().backlog} records left); it finishes in the background")
        if shutting_down and getattr(self, "_events", None) is not None:
            self._events.close()  # the device goes: no push may reach it any more

    def _mark_stopping(self) -> None:
        journal = self._journal
        if journal is None:
            return
        try:
            journal.set_state("stopping")
        except OSError as exc:
            self.warn_stream(f"recovery journal not updated: {exc}")

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

    @attribute(dtype=str, doc="the last recording found unfinished when this server started (its writer was "
               "killed): the file, what was kept and lost, and the file it continues in; empty if none")
    def LastRecovery(self) -> str:
        return self._last_recovery

    @attribute(dtype=(str,), max_dim_x=1024, access=AttrWriteType.READ, doc="streams of the current/last recording, else those a recording would take")
    def StreamNames(self) -> list[str]:
        if self._recorder is not None:
            return self._recorder.stream_names + self._recorder.awaited_streams
        if self._streams:
            return self._streams
        return list(self.Streams) or list_streams()

    # ------------------------------------------------------------------------- commands

    @command(dtype_in=str, doc_in='JSON {"name": str, "metadata": {...}, "pre_trigger_s": seconds}; '
             "any other key, or a value that cannot be honoured, is refused (DataWriter_BadArgument)",
             dtype_out=str, doc_out="file path")
    def StartRecording(self, argin: str) -> str:
        if self._recorder is not None and self._recorder.running:
            tango.Except.throw_exception(
                "DataWriter_Busy", f"already recording to {self._file_path}; call StopRecording first", "StartRecording"
            )
        try:
            name, metadata, pre = parse_start_argument(argin)
        except ValueError as exc:
            shown = argin if len(argin) <= 200 else argin[:200] + "..."
            fault_log.refused(self, "StartRecording", exc)
            tango.Except.throw_exception("DataWriter_BadArgument", f"bad StartRecording argument {shown!r}: {exc}",
                                         "StartRecording")
        return self._start(name, metadata, pre)

    def _start(self, name: str, metadata: dict[str, Any], pre: float, resume: dict[str, Any] | None = None,
               path: str = "", continues: str = "") -> str:
        """Open the readers and the file and start the recorder thread. ``resume`` (a crashed
        recording's journal): each stream whose ring is still the same one is read from the
        first record the crashed file lacks; ``continues`` is that file."""
        # Streams that do not exist yet are awaited: producers create their rings when they start
        # (the camera at acquisition start, the power meter when Streaming goes on).
        named = list(self.Streams)
        resumed = dict((resume or {}).get("streams") or {})
        streams = named or sorted(set(list_streams()) | set(resumed))
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
                continue
            pos = resumed.get(s)
            if pos is not None:
                r = readers[s]
                if r.created_ns == pos.get("ring_created_ns") and r.producer_pid == pos.get("ring_pid"):
                    r.seek_seq(int(pos.get("next_seq", 0)))
                else:  # the producer re-created its ring meanwhile: all of the new one is after the crash
                    r.seek_oldest()
        try:
            os.makedirs(self.OutputDir, exist_ok=True)
            path = path or self._new_path(name)
            sink = Hdf5Sink(
                path,
                [StreamSpec(n, r.schema, r.description) for n, r in readers.items()],
                title=name,
                metadata=metadata,
                compression=self.Compression,
                continues=continues,
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
        try:
            self._journal = recovery.Journal(recovery.journal_path(self.OutputDir, self.get_name()), {
                "device": self.get_name(), "path": path, "name": name, "metadata": metadata})
        except OSError as exc:  # the file could be created, so this is unlikely; record without a journal
            self._journal = None
            self.warn_stream(f"no recovery journal for {path}: {exc}")
        devices = list(self.ManifestDevices) or manifest_devices_from_roles(self.get_name())
        self._stats = RecorderStats()
        self._streams = list(readers)
        self._file_path = path
        journal = self._journal
        self._recorder = Recorder(
            sink,
            readers,
            record_new_streams=not named,
            awaited_streams=awaited,
            manifest=(lambda: read_manifest(devices)) if devices else None,
            on_stats=self._on_stats,
            # the journal goes with its recording: an Init meanwhile may have reset self._journal
            on_finished=lambda p, e, j=journal: self._on_finished(p, e, j),
            on_flush=journal.update if journal is not None else None,
            thread_context=tango.EnsureOmniThread,
        )
        if self.get_state() in (DevState.FAULT, DevState.ALARM):
            fault_log.record(self.get_name(), "RECOVERED", f"RUNNING (after {self.get_state()}): recording to {path}",
                             log=self)
        self._set_state_status(DevState.RUNNING, self._recording_status())
        self._recorder.start()
        self._queue_push("Recording", True, "FilePath", path)
        return path

    @command(dtype_out=str, doc_out="file path of the recording (also when it was already stopped)")
    def StopRecording(self) -> str:
        rec = self._recorder
        if rec is None:
            return self._file_path
        if rec.running:  # killed while finishing: recover the file, do not continue the recording
            self._mark_stopping()
        if rec.running and not rec.stop(timeout=STOP_WAIT_S):
            self._set_state_status(None, f"Finishing {rec.path}: writing the {rec.stats().backlog} records still in "
                                   "the rings; Recording turns False when done")
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
        if self._last_recovery and rec is not None and rec.sink.path == self._continuation:
            text += f". Recovered after a crash: {self._last_recovery}"
        return text

    def _recover(self) -> None:
        """Finish the recording a killed predecessor left (see :mod:`datawriter.recovery`) and,
        if it was recording (not stopping), continue it in a new file linked to the old one."""
        self._continuation = ""
        try:
            journal = recovery.stale_journal(self.OutputDir, self.get_name())
        except OSError as exc:
            self.warn_stream(f"cannot look for an unfinished recording in {self.OutputDir}: {exc}")
            return
        if journal is None:
            return
        busy = self._recorder is not None and self._recorder.running  # an Init while a stop drains
        continuing = (journal.get("state") == "recording" and not journal.get("error") and not busy
                      and os.path.exists(str(journal.get("path") or "")))
        name = str(journal.get("name") or "recording")
        new_path = self._new_path(name) if continuing else ""
        report = recovery.repair(journal, continued_in=new_path, count_unflushed=not continuing)
        if report.closed_cleanly:  # killed after closing the file, before removing the journal
            self.info_stream(report.text())
            try:
                os.unlink(journal["journal"])
            except OSError:
                pass
            if not busy:
                self._set_state_status(None, f"{self.get_status()}. {report.text()}")
            return
        self._last_recovery = report.text()
        fault_log.record(self.get_name(), "CRASH_RECOVERY" if report.ok else "FAULT", self._last_recovery,
                         logging.WARNING if report.ok else logging.ERROR)
        try:
            os.unlink(journal["journal"])
        except OSError:
            pass
        if not report.ok:
            self.error_stream(self._last_recovery)
            self._set_state_status(DevState.ALARM, f"{self._last_recovery}. Check the file by hand; StartRecording "
                                   "starts a new recording.")
            return
        self.warn_stream(self._last_recovery)
        if continuing:
            self._continuation = new_path
            try:
                metadata = journal.get("metadata") if isinstance(journal.get("metadata"), dict) else {}
                self._start(name, metadata, 0.0, resume=journal, path=new_path, continues=str(journal["path"]))
            except tango.DevFailed as exc:
                self._last_recovery += f"; it could not be continued: {exc.args[0].desc}"
                self.error_stream(self._last_recovery)
                self._set_state_status(None, f"{self.get_status()} {self._last_recovery}")
            return
        if busy:  # the recording still finishing keeps the Status; the recovery is added to it
            if journal.get("state") == "recording":
                self._last_recovery += "; not continued: the previous recording was still finishing"
            self._set_state_status(None, f"{self.get_status()}. {self._last_recovery}")
            return
        self._set_state_status(None, f"Idle. {self._last_recovery}")

    def _new_path(self, name: str) -> str:
        base = os.path.join(self.OutputDir, f"{_safe_name(name)}_{time.strftime('%Y%m%d-%H%M%S')}")
        path, i = base + ".h5", 1
        while os.path.exists(path):
            path, i = f"{base}_{i}.h5", i + 1
        return path

    def _fault(self, reason: str, path: str) -> None:
        kept = f" {path} is readable up to the last flushed record." if path and os.path.exists(path) else ""
        self._set_state_status(DevState.FAULT, f"{reason}.{kept} Free disk space or change OutputDir, then call "
                               "StartRecording again.")
        fault_log.record(self.get_name(), "FAULT", self.get_status(), logging.ERROR, self)

    def _on_stats(self, stats: RecorderStats) -> None:
        self._stats = stats
        now = time.monotonic()
        if now - self._last_push < 0.2:
            return
        self._last_push = now
        rec = self._recorder
        if rec is not None and rec.running and len(stats.per_stream) != len(self._streams):
            self._streams = list(stats.per_stream)  # a stream appeared
            self._set_state_status(None, self._recording_status())
        self._push_all()

    def _set_state_status(self, state: DevState | None, status: str) -> None:
        """Set State (unless None) and Status and queue their change events: clients (Taurus,
        the soak) subscribe instead of polling. Safe from any thread: nothing here waits for the
        device monitor."""
        if state is not None:
            self.set_state(state)
        self.set_status(status)
        self._queue_push("State", self.get_state(), "Status", status)

    def _queue_push(self, *names_values: Any) -> None:
        """Queue change events (name, value, name, value, ...) for the event thread, with the
        values of now: a later change cannot overtake or merge with them."""
        pairs = list(zip(names_values[::2], names_values[1::2], strict=True))

        def push() -> None:
            for name, value in pairs:
                try:
                    self.push_change_event(name, value)
                except tango.DevFailed:  # during init_device (attribute not yet created) or deletion
                    pass

        self._events.submit(push)

    def _push_all(self) -> None:
        s = self._stats
        rec = self._recorder
        self._queue_push("Recording", rec is not None and rec.running, "FilePath", self._file_path,
                         "RecordsWritten", s.records_written,
                         "BytesWritten", s.bytes_written, "WriteRate", s.write_rate_mb_s, "Backlog", s.backlog,
                         "DroppedRecords", s.dropped_records)

    def _on_finished(self, path: str, error: BaseException | None, journal: recovery.Journal | None) -> None:
        rec = self._recorder
        # The file is closed: nothing to recover any more. Unless a newer recording already wrote
        # its own journal at the same path (it may start as soon as this one stops running).
        if journal is not None and (self._journal is journal or self._journal is None):
            self._journal = None
            try:
                journal.remove()
            except OSError as exc:
                self.warn_stream(f"recovery journal {journal.path} not removed: {exc}")
        frame_io = ""
        if rec is not None:
            self._stats = rec.stats()
            frame_io = rec.sink.frame_io
            self.info_stream(f"{path} closed; frames written {frame_io}")
        if error is None:
            self._set_state_status(DevState.ON, f"Idle. Last recording: {path} ({self._stats.records_written} records, "
                                   f"{self._stats.dropped_records} lost; frames written {frame_io})")
        else:
            self._fault(f"recording to {path} failed: {error}", path)
        self._push_all()


def main(args: list[str] | None = None, **kwargs: Any) -> None:
    """Console script ``DataWriter <instance>``."""
    enable_stack_dumps()
    DataWriter.run_server(args=args, **kwargs)


if __name__ == "__main__":
    main()

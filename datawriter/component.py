"""The DataWriter's component: recordings, their recovery and their counters, with no Tango.

Built on the same :class:`~deviceservers.common.component.ComponentBase` as the instruments, so
the ``DataWriter`` device is a :class:`~deviceservers.common.device.ParameterDevice` like every
other: its counters are Parameters (attributes with change and archive events, pushed by the
device's one event thread), its State and Status are derived here, and the fault history and the
health attributes come from the shared layer.

What is derived, and from what (:meth:`DataWriterComponent.evaluate_state`):

* FAULT when the ``Compression`` property cannot be honoured (until it is fixed and Init runs),
  when a recording could not start (an unwritable ``OutputDir``) or the last one failed (disk
  full); the next successful :meth:`~DataWriterComponent.start_recording` clears it;
* RUNNING while a recorder runs (recording, or finishing a stopped recording);
* ALARM when the recording a killed predecessor left could not be repaired;
* ON otherwise, saying what the last recording was.

All file and ring work happens in the :class:`~datawriter.recorder.Recorder` thread. Nothing here
pushes events or waits for the device's monitor: the recorder's end only publishes Parameters and
derives the state, and the device's event thread does the pushing, so ``StopRecording`` (which
holds the monitor while it waits for the file to close) never waits for an event.

A recording that is still finishing when the device is re-initialised keeps its component (the
device re-uses it), so its end still reaches the device and its journal is never taken for a crash.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from deviceservers.common import fault_log
from deviceservers.common.component import ComponentBase, DeviceState
from deviceservers.common.parameter import Parameter

from . import recovery
from .compression import check_compression
from .hdf5_sink import Hdf5Sink, StreamSpec
from .recorder import Recorder, RecorderStats
from .ring import RingError, RingReader, list_streams

MONITOR_RECORDING_S = 0.25  # counters published (and events pushed) at most 4 times a second
MONITOR_IDLE_S = 1.0

Manifest = dict[str, dict[str, Any]]


class RecordingRefused(RuntimeError):
    """A recording that cannot start; ``reason`` is the Tango error reason clients switch on."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class WriterSettings:
    """The device properties a recording uses (read again at every Init)."""

    output_dir: str
    streams: tuple[str, ...] = ()  # empty: every ring, also those that appear while recording
    compression: str = "none"


def safe_name(name: str) -> str:
    """A recording's name as a file-name prefix."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "recording"


class DataWriterComponent(ComponentBase):
    """Records shared-memory rings into HDF5/NeXus files, one :class:`Recorder` at a time."""

    label = "data writer"

    def __init__(
        self,
        device_name: str,
        settings: WriterSettings,
        *,
        manifest_devices: Callable[[], list[str]] = list,
        read_manifest: Callable[[list[str]], Manifest] | None = None,
        thread_context: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        super().__init__("Starting", MONITOR_IDLE_S, logger)
        self.device_name = device_name
        # the devices whose attributes each recording stores at its start and end (asked at each
        # start: the lab's roles may change), and how to read them
        self._manifest_devices = manifest_devices
        self._read_manifest = read_manifest
        self._thread_context = thread_context
        self._derive_lock = threading.Lock()  # evaluate + set, so two threads never publish out of order
        #: how long :meth:`stop` (Init, server shutdown) waits for the file to close
        self.finish_wait_s = 2.0
        self._recorder: Recorder | None = None
        self._journal: recovery.Journal | None = None
        self._handled = threading.Event()  # the current recorder's end was handled (journal, counters)
        self._stop_requested_by = ""  # "" (not stopped), "StopRecording" or "Init"
        self._start_failure = ""  # FAULT text of a recording that could not start
        self._recovery_alarm = ""  # ALARM text of a crashed recording that could not be repaired
        self._note = ""  # what the idle (or finishing) status adds: the last recovery
        self._continuation = ""  # file continuing a crashed recording
        self._config_error = ""
        self.settings = settings
        self.configure(settings)

        def counter(name: str, description: str, unit: str = "") -> Parameter[Any]:
            return self.add(Parameter(name, int, unit=unit, description=description, initial=0, local=True,
                                      int64=True))

        self._recording = self.add(Parameter("Recording", bool, initial=False, local=True,
                                             description="a recording is in progress (or finishing)"))
        self._file_path = self.add(Parameter("FilePath", str, initial="", local=True,
                                             description="file of the current or last recording"))
        self._written = counter("RecordsWritten", "ring records written in this recording (a frame, or a batch of "
                                "scalar samples)")
        self._bytes = counter("BytesWritten", "bytes handed to HDF5 in this recording", "B")
        self._rate = self.add(Parameter("WriteRate", float, unit="MB/s", fmt="%.1f", initial=0.0, local=True,
                                        description="write rate over the last second"))
        self._backlog = counter("Backlog", "records committed to the rings and not yet written")
        self._dropped = counter("DroppedRecords", "records lost in this recording (overwritten in a ring before "
                                "they could be written)")
        self._last_recovery = self.add(Parameter(
            "LastRecovery", str, initial="", local=True,
            description="the last recording found unfinished when this server started (its writer was killed): the "
                        "file, what was kept and lost, and the file it continues in; empty if none"))

    # ------------------------------------------------------------------ configuration
    def configure(self, settings: WriterSettings) -> None:
        """New properties (Init): used from the next recording on; a ``Compression`` the sink
        cannot honour is a FAULT that says the allowed values, until it is fixed."""
        self.settings = settings
        try:
            check_compression(settings.compression)
        except ValueError as exc:
            self._config_error = str(exc)
        else:
            self._config_error = ""

    # ------------------------------------------------------------------ what clients see
    @property
    def recording(self) -> bool:
        rec = self._recorder
        return rec is not None and rec.running

    @property
    def file_path(self) -> str:
        return str(self._file_path.value or "")

    @property
    def last_recovery(self) -> str:
        return str(self._last_recovery.value or "")

    def stream_names(self) -> list[str]:
        """The streams of the current or last recording, else those a recording would take."""
        rec = self._recorder
        if rec is not None:
            return rec.stream_names + rec.awaited_streams
        return list(self.settings.streams) or list_streams()

    @property
    def communication_ok(self) -> bool:
        """The writer can record: its configuration is usable and its last recording did not fail."""
        return not (self._config_error or self._start_failure or self._last_error_of_recorder())

    # ------------------------------------------------------------------ life
    def start(self) -> None:
        """Finish what a killed predecessor left (and continue it), then watch the recordings."""
        self._recover()
        self.update_state()
        super().start()

    def stop(self) -> None:
        """Stop the recording (Init, server shutdown), waiting ``finish_wait_s`` for the file to
        close; a longer stop finishes in the background (the device keeps this component)."""
        rec = self._recorder
        if rec is not None and rec.running and not self._stop_and_wait(rec, self.finish_wait_s, "Init"):
            self.log.warning("%s still being written after the stop request (%d records left); it finishes in the "
                             "background", rec.path, rec.stats().backlog)
        super().stop()

    # ------------------------------------------------------------------ commands
    def start_recording(self, name: str, metadata: dict[str, Any], pre_trigger_s: float) -> str:
        """Start a recording (arguments checked by the caller); returns the file path.

        Raises :class:`RecordingRefused`: ``DataWriter_Busy`` while a recording runs or finishes,
        ``DataWriter_BadConfiguration`` for properties the sink cannot honour,
        ``DataWriter_CannotWrite`` when the file cannot be created (the device then shows FAULT).
        """
        if self.recording:
            raise RecordingRefused("DataWriter_Busy", f"already recording to {self.file_path}; call StopRecording first")
        return self._start(name, metadata, pre_trigger_s)

    def stop_recording(self, timeout: float) -> str:
        """Ask the recording to end and wait up to ``timeout`` s for its file to close; a longer
        stop goes on in the background (RUNNING, "Finishing ..." until Recording turns False).
        Returns the file path (also when it was already stopped)."""
        rec = self._recorder
        if rec is None:
            return self.file_path
        if rec.running:
            self._stop_and_wait(rec, timeout, "StopRecording")
        return rec.path

    def _stop_and_wait(self, rec: Recorder, timeout: float, by: str) -> bool:
        # Killed while finishing: the next start recovers the file and does not continue the recording.
        self._mark_stopping()
        self._stop_requested_by = self._stop_requested_by or by
        deadline = time.monotonic() + timeout
        done = rec.stop(timeout=timeout) and self._handled.wait(max(0.0, deadline - time.monotonic()))
        self._publish(rec)
        self.update_state()
        return done

    # ------------------------------------------------------------------ monitor
    def poll_once(self) -> float:
        """Publish the counters of the recording in progress; the status follows the streams."""
        rec = self._recorder
        if rec is None or not rec.running:
            return MONITOR_IDLE_S
        self._publish(rec)
        self.update_state()
        return MONITOR_RECORDING_S

    def update_state(self) -> None:
        with self._derive_lock:
            super().update_state()

    def evaluate_state(self) -> tuple[DeviceState, str]:
        note = f". {self._note}" if self._note else ""
        if self._config_error:
            recovered = f" {self.last_recovery}" if self.last_recovery else ""
            return DeviceState.FAULT, (f"Cannot record: {self._config_error}. Set the Compression property to one of "
                                       f"these and run Init.{recovered}")
        rec = self._recorder
        if rec is not None and rec.running:
            if self._stop_requested_by:
                by = " (stopped by Init)" if self._stop_requested_by == "Init" else ""
                return DeviceState.RUNNING, (f"Finishing {rec.path}{by}: writing the {rec.stats().backlog} records still "
                                             f"in the rings; Recording turns False when done{note}")
            return DeviceState.RUNNING, self._recording_status(rec)
        if self._start_failure:
            return DeviceState.FAULT, self._start_failure
        error = self._last_error_of_recorder()
        if rec is not None and error:
            return DeviceState.FAULT, self._fault_text(f"recording to {rec.path} failed: {error}", rec.path)
        if self._recovery_alarm:
            return DeviceState.ALARM, self._recovery_alarm
        if rec is not None:
            s = rec.stats()
            return DeviceState.ON, (f"Idle. Last recording: {rec.path} ({s.records_written} records, "
                                    f"{s.dropped_records} lost; frames written {rec.sink.frame_io}){note}")
        streams = ", ".join(self.settings.streams) or "every stream on this host"
        return DeviceState.ON, f"Idle: call StartRecording to record {streams}{note}"

    # ------------------------------------------------------------------ internals
    def _last_error_of_recorder(self) -> str:
        rec = self._recorder
        if rec is None or rec.running or rec.error is None:
            return ""
        return str(rec.error)

    def _recording_status(self, rec: Recorder) -> str:
        text = f"Recording {', '.join(rec.stream_names) or 'no stream yet'} to {rec.path}"
        if rec.awaited_streams:
            text += f"; waiting for {', '.join(rec.awaited_streams)} to appear"
        elif rec.record_new_streams:
            text += "; streams that appear are added"
        if self.last_recovery and rec.path == self._continuation:
            text += f". Recovered after a crash: {self.last_recovery}"
        return text

    @staticmethod
    def _fault_text(reason: str, path: str) -> str:
        kept = f" {path} is readable up to the last flushed record." if path and os.path.exists(path) else ""
        return f"{reason}.{kept} Free disk space or change OutputDir, then call StartRecording again."

    def _publish(self, rec: Recorder) -> None:
        s: RecorderStats = rec.stats()
        self._recording.publish(rec.running)
        self._file_path.publish(rec.path)
        self._written.publish(s.records_written)
        self._bytes.publish(s.bytes_written)
        self._rate.publish(s.write_rate_mb_s)
        self._backlog.publish(s.backlog)
        self._dropped.publish(s.dropped_records)

    def _new_path(self, name: str) -> str:
        base = os.path.join(self.settings.output_dir, f"{safe_name(name)}_{time.strftime('%Y%m%d-%H%M%S')}")
        path, i = base + ".h5", 1
        while os.path.exists(path):
            path, i = f"{base}_{i}.h5", i + 1
        return path

    def _open_readers(self, pre_trigger_s: float, resume: dict[str, Any] | None) -> tuple[dict[str, RingReader], list[str]]:
        """A reader per stream (those named that do not exist yet are awaited: producers create
        their rings when they start). ``resume``: each stream whose ring is still the one the
        crashed recording read is read from the first record its file lacks."""
        named = list(self.settings.streams)
        resumed = dict((resume or {}).get("streams") or {})
        streams = named or sorted(set(list_streams()) | set(resumed))
        start: str | float = time.time() - pre_trigger_s if pre_trigger_s > 0 else "latest"
        readers: dict[str, RingReader] = {}
        awaited: list[str] = []
        for s in streams:
            try:
                readers[s] = RingReader(s, start=start)
            except RingError:
                if named:
                    awaited.append(s)
                continue  # unnamed: listed a moment ago, removed since; picked up again if it comes back
            pos = resumed.get(s)
            if pos is not None:
                r = readers[s]
                if r.created_ns == pos.get("ring_created_ns") and r.producer_pid == pos.get("ring_pid"):
                    r.seek_seq(int(pos.get("next_seq", 0)))
                else:  # the producer re-created its ring meanwhile: all of the new one is after the crash
                    r.seek_oldest()
        return readers, awaited

    def _start(self, name: str, metadata: dict[str, Any], pre_trigger_s: float, resume: dict[str, Any] | None = None,
               path: str = "", continues: str = "") -> str:
        """Open the readers and the file and start the recorder thread; ``continues`` is the file
        of the crashed recording this one continues."""
        if self._config_error:
            raise RecordingRefused("DataWriter_BadConfiguration", self._config_error)
        readers, awaited = self._open_readers(pre_trigger_s, resume)
        try:
            os.makedirs(self.settings.output_dir, exist_ok=True)
            path = path or self._new_path(name)
            sink = Hdf5Sink(path, [StreamSpec(n, r.schema, r.description) for n, r in readers.items()], title=name,
                            metadata=metadata, compression=self.settings.compression, continues=continues)
        except OSError as exc:
            for r in readers.values():
                r.close()
            self._start_failure = self._fault_text(
                f"cannot create a file in OutputDir {self.settings.output_dir!r}: {exc}", path)
            self.update_state()
            raise RecordingRefused("DataWriter_CannotWrite", self._start_failure) from exc
        except ValueError as exc:
            for r in readers.values():
                r.close()
            raise RecordingRefused("DataWriter_BadConfiguration", str(exc)) from exc
        try:
            self._journal = recovery.Journal(recovery.journal_path(self.settings.output_dir, self.device_name), {
                "device": self.device_name, "path": path, "name": name, "metadata": metadata})
        except OSError as exc:  # the file could be created, so this is unlikely; record without a journal
            self._journal = None
            self.log.warning("no recovery journal for %s: %s", path, exc)
        devices = self._manifest_devices() if self._read_manifest is not None else []
        read_manifest = self._read_manifest
        journal = self._journal
        handled = threading.Event()
        rec = Recorder(
            sink,
            readers,
            record_new_streams=not self.settings.streams,
            awaited_streams=awaited,
            manifest=(lambda: read_manifest(devices)) if devices and read_manifest is not None else None,
            # the journal and the end go with their recording: a newer one may start as soon as this one stops
            on_finished=lambda p, e, j=journal, h=handled: self._on_finished(p, e, j, h),
            on_flush=journal.update if journal is not None else None,
            thread_context=self._thread_context,
        )
        self._recorder, self._handled = rec, handled
        self._stop_requested_by = ""
        self._start_failure = ""
        self._recovery_alarm = ""
        if path != self._continuation:
            self._note = ""
        self._publish(rec)
        self.update_state()
        rec.start()
        self.request_poll()
        return path

    def _mark_stopping(self) -> None:
        journal = self._journal
        if journal is None:
            return
        try:
            journal.set_state("stopping")
        except OSError as exc:
            self.log.warning("recovery journal not updated: %s", exc)

    def _on_finished(self, path: str, error: BaseException | None, journal: recovery.Journal | None,
                     handled: threading.Event) -> None:
        """In the recorder thread, once its file is closed (or abandoned): nothing to recover any
        more, the last counters, the state. Unless a newer recording already wrote its own journal
        at the same path (it may start as soon as this one stops running)."""
        try:
            if journal is not None and (self._journal is journal or self._journal is None):
                self._journal = None
                try:
                    journal.remove()
                except OSError as exc:
                    self.log.warning("recovery journal %s not removed: %s", journal.path, exc)
            rec = self._recorder
            if rec is not None and rec.path == path:
                self.log.info("%s closed; frames written %s", path, rec.sink.frame_io)
                self._publish(rec)
            if error is not None:
                self.record_error(f"recording to {path} failed: {error}")
        finally:
            handled.set()
            self.update_state()

    def _recover(self) -> None:
        """Finish the recording a killed predecessor left (see :mod:`datawriter.recovery`) and,
        if it was recording (not stopping), continue it in a new file linked to the old one."""
        self._continuation = ""
        try:
            journal = recovery.stale_journal(self.settings.output_dir, self.device_name)
        except OSError as exc:
            self.log.warning("cannot look for an unfinished recording in %s: %s", self.settings.output_dir, exc)
            return
        if journal is None:
            return
        busy = self.recording  # an Init while a stop drains: that recording is not a crash, and goes on
        continuing = (journal.get("state") == "recording" and not journal.get("error") and not busy
                      and os.path.exists(str(journal.get("path") or "")))
        name = str(journal.get("name") or "recording")
        new_path = self._new_path(name) if continuing else ""
        report = recovery.repair(journal, continued_in=new_path, count_unflushed=not continuing)
        with contextlib.suppress(OSError):
            os.unlink(journal["journal"])
        if report.closed_cleanly:  # killed after closing the file, before removing the journal
            self.log.info("%s", report.text())
            self._note = report.text()
            return
        text = report.text()
        fault_log.record(self.device_name, "CRASH_RECOVERY" if report.ok else "FAULT", text,
                         logging.WARNING if report.ok else logging.ERROR)
        if not report.ok:
            self._last_recovery.publish(text)
            self.log.error("%s", text)
            self._recovery_alarm = f"{text}. Check the file by hand; StartRecording starts a new recording."
            return
        self.log.warning("%s", text)
        if continuing:
            self._last_recovery.publish(text)
            self._continuation = new_path
            try:
                metadata = journal.get("metadata") if isinstance(journal.get("metadata"), dict) else {}
                self._start(name, metadata, 0.0, resume=journal, path=new_path, continues=str(journal["path"]))
            except RecordingRefused as exc:
                text += f"; it could not be continued: {exc}"
                self._last_recovery.publish(text)
                self.log.error("%s", text)
                self._note = text
            return
        if busy and journal.get("state") == "recording":  # the recording still finishing keeps the Status
            text += "; not continued: the previous recording was still finishing"
        self._last_recovery.publish(text)
        self._note = text

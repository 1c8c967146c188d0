"""Crash recovery of recordings: a journal next to the output, and the repair of an unfinished file.

A DataWriter killed during a recording (``kill -9``, OOM killer, power cut of the server
process) leaves an HDF5 file whose superblock still says "open for SWMR writing": plain
``h5py.File(path, "r")`` refuses it, it has no ``end_time`` and no loss counts, and nothing
says that a recording was lost. So every recording keeps a small JSON *journal* in its output
folder (``.tangodaq-journal.<device>.json``):

* written when the recording starts (file, name, metadata, writer pid and host);
* rewritten after every flush (about once a second, one small atomic ``rename``) with, per
  stream, the rows that flush made durable and the ring position (ring identity and sequence
  number) of the next record not yet in the file;
* marked ``stopping`` when a stop is requested, and removed when the file is closed.

A DataWriter that starts and finds a journal of a writer that is gone (:func:`stale_journal`:
its process has exited or is a zombie; a journal of this very process never is) repairs the
file (:func:`repair`): it clears the file's consistency flags the way ``h5clear -s`` does
(through HDF5's own file-access property, not an external tool that may not be installed),
cuts every stream to the rows the journal says the last flush made durable (and that all its
datasets have: rows written after the last journal update may lack their data, and the
continuation re-reads those records from the ring), and writes ``end_time`` (the last flush),
an ``ended_abnormally`` note, ``lost_records`` per stream and the link to the file the recording
continues in. If the crashed writer was recording (not stopping), the DataWriter then continues
in a new file from the first record the old file lacks, as long as the producer's ring still
holds it (see :mod:`datawriter.device`). A writer killed after it closed its file properly but
before it removed the journal left nothing to repair: the file is left as it is.

No Tango here: the device calls these functions.
"""

from __future__ import annotations

import ctypes
import datetime as _dt
import json
import os
import re
import socket
import tempfile
import threading
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np

from deviceservers.common import procfs

JOURNAL_PREFIX = ".tangodaq-journal."
JOURNAL_VERSION = 1


def _now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).astimezone().isoformat()


def journal_path(output_dir: str, device: str) -> str:
    """The journal of ``device``'s recordings in ``output_dir`` (one recording at a time)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", device).strip("._") or "datawriter"
    return os.path.join(output_dir, f"{JOURNAL_PREFIX}{safe}.json")


class Journal:
    """The journal of the recording in progress; owned by one DataWriter."""

    def __init__(self, path: str, data: dict[str, Any]) -> None:
        self.path = path
        self._lock = threading.Lock()  # the recorder thread updates, the device thread sets the state
        self.data = {
            "version": JOURNAL_VERSION,
            "state": "recording",
            "pid": os.getpid(),
            "pid_start": procfs.own_start_time(),  # with the pid it identifies this process
            "host": socket.gethostname(),
            "started": _now_iso(),
            "flushed": None,
            "streams": {},
            "groups": {},
            **data,
        }
        self._write()

    def _write(self) -> None:
        with self._lock:
            self._write_locked()

    def _write_locked(self) -> None:
        folder = os.path.dirname(self.path)
        fd, tmp = tempfile.mkstemp(prefix=".journal-", dir=folder)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(self.data, fh)
            os.replace(tmp, self.path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def update(self, progress: dict[str, Any]) -> None:
        """Record what the last flush made durable (``Recorder.progress()``)."""
        self.data["flushed"] = _now_iso()
        self.data["streams"] = progress["streams"]
        self.data["groups"] = progress["groups"]
        self._write()

    def set_state(self, state: str) -> None:
        self.data["state"] = state
        self._write()

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def stale_journal(output_dir: str, device: str) -> dict[str, Any] | None:
    """The journal of a recording whose writer is gone (killed), or None.

    A journal whose writer process is still alive (same host, same pid and start time) is left
    alone: another server instance of the same device is recording, or this very process is
    (an Init of the device while its recording still drains must not repair the file being
    written). A zombie (killed, not reaped yet) is gone; so is a later process with the pid.
    """
    path = journal_path(output_dir, device)
    try:
        with open(path) as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        return {"path": "", "journal": path, "error": f"unreadable journal {path}: {exc}"}
    if not isinstance(data, dict):
        return {"path": "", "journal": path, "error": f"unreadable journal {path}: not an object"}
    try:
        pid = int(data.get("pid") or 0)
    except (TypeError, ValueError):
        pid = 0
    if data.get("host") == socket.gethostname() and procfs.alive(pid, data.get("pid_start")):
        return None
    data["journal"] = path
    return data


@dataclass
class RecoveryReport:
    """What :func:`repair` found and did, for the Status, the log and ``LastRecovery``."""

    path: str
    time: str = field(default_factory=_now_iso)
    ok: bool = True
    error: str = ""
    records: int = 0
    lost: int = 0
    lost_unknown: list[str] = field(default_factory=list)
    last_flush: str = ""
    continued_in: str = ""
    #: the file had been closed properly (end time, losses) before its writer died; only the
    #: journal was left: nothing was changed, nothing is to be continued
    closed_cleanly: bool = False

    def text(self) -> str:
        if not self.ok:
            return f"{self.time}: could not repair {self.path or 'the unfinished recording'}: {self.error}"
        if self.closed_cleanly:
            return (f"{self.time}: {self.path} was closed properly before its writer stopped (only its "
                    "recovery journal was left): nothing to recover")
        out = (f"{self.time}: recovered {self.path}, whose writer died during the recording: "
               f"{self.records} records kept up to {self.last_flush or 'the start'}, {self.lost} lost")
        if self.lost_unknown:
            out += (f" (plus an unknown number from {', '.join(self.lost_unknown)}: ring replaced or gone, "
                    "or not flushed yet)")
        if self.continued_in:
            out += f"; the recording continues in {self.continued_in}"
        return out


def _libhdf5() -> ctypes.CDLL:
    """The HDF5 library h5py is using (already loaded in this process)."""
    h5py.h5p.create(h5py.h5p.FILE_ACCESS)  # make sure it is loaded
    with open("/proc/self/maps") as fh:
        for line in fh:
            lib = line.rsplit(None, 1)[-1]
            base = os.path.basename(lib)
            if base.startswith("libhdf5") and not base.startswith("libhdf5_hl") and ".so" in base:
                return ctypes.CDLL(lib)
    raise OSError("the HDF5 library used by h5py is not loaded in this process")


def closed_cleanly(path: str) -> bool:
    """The file opens without clearing any flag (its writer closed it) and has its ``end_time``
    (written only by a proper close): a finished recording, not one to repair."""
    try:
        with h5py.File(path, "r") as f:
            entry = f.get("entry")
            return isinstance(entry, h5py.Group) and "end_time" in entry
    except OSError:  # still marked open for writing (the writer died with it open), or unreadable
        return False


def open_unfinished(path: str) -> h5py.File:
    """Open a file left "open for writing" by a dead writer, read/write, clearing its status
    flags: what ``h5clear -s`` does, through the file-access property it sets. When the file
    is closed, HDF5 writes a clean superblock and plain readers can open it again."""
    try:
        return h5py.File(path, "r+", libver="latest")
    except OSError as exc:
        if "already open for write" not in str(exc) and "h5clear" not in str(exc):
            raise
    lib = _libhdf5()
    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_libver_bounds(h5py.h5f.LIBVER_LATEST, h5py.h5f.LIBVER_LATEST)
    lib.H5Pset.argtypes = [ctypes.c_int64, ctypes.c_char_p, ctypes.c_void_p]
    lib.H5Pset.restype = ctypes.c_int
    flag = ctypes.c_uint32(1)  # hbool_t: the first byte is read (little endian) whatever its size
    if lib.H5Pset(fapl.id, b"clear_status_flags", ctypes.byref(flag)) < 0:
        raise OSError(f"HDF5 refused to clear the status flags of {path}")
    fid = h5py.h5f.open(os.fsencode(path), h5py.h5f.ACC_RDWR, fapl=fapl)
    return h5py.File(fid)


def _cut_rows(grp: h5py.Group, durable: int) -> int:
    """Cut every dataset of a stream group to the ``durable`` rows the journal says the last
    flush made durable, or fewer if a dataset has fewer. Rows beyond are not kept even when
    every dataset has them: HDF5 may have written a dataset's new size before its data (frame
    chunks, column rows) when it evicted metadata, or a flush completed without the journal
    update that follows it, and the continuation re-reads those records from the ring."""
    datasets = [ds for ds in grp.values() if isinstance(ds, h5py.Dataset) and ds.maxshape and ds.maxshape[0] is None]
    if not datasets:
        return 0
    n = max(0, min(durable, *(ds.shape[0] for ds in datasets)))
    for ds in datasets:
        if ds.shape[0] != n:
            ds.resize(n, axis=0)
    return n


def _has_rows(grp: h5py.Group) -> bool:
    return any(isinstance(ds, h5py.Dataset) and ds.ndim and ds.shape[0] for ds in grp.values())


def unflushed_records(journal: dict[str, Any]) -> tuple[dict[str, int], list[str]]:
    """Records committed to each ring after the last flush (in no file), counted in the rings
    that are still the same ones; the streams whose ring was replaced or is gone are listed."""
    from .ring import RingError, RingReader

    counts: dict[str, int] = {}
    unknown: list[str] = []
    for name, pos in (journal.get("streams") or {}).items():
        try:
            reader = RingReader(name)
        except (RingError, OSError, ValueError):
            unknown.append(name)
            continue
        try:
            if reader.created_ns == pos.get("ring_created_ns") and reader.producer_pid == pos.get("ring_pid"):
                counts[name] = max(0, reader.write_seq - int(pos.get("next_seq", 0)))
            else:
                unknown.append(name)
        finally:
            reader.close()
    return counts, unknown


def repair(journal: dict[str, Any], *, continued_in: str = "", count_unflushed: bool = True) -> RecoveryReport:
    """Make the crashed recording of ``journal`` a finished, plainly readable file.

    ``continued_in``: the file the recording goes on in (linked both ways; the records after
    the last flush go there, so they are not counted lost here). ``count_unflushed``: count
    the records the producers committed after the last flush as lost (when not continued).
    """
    path = str(journal.get("path") or "")
    report = RecoveryReport(path, last_flush=str(journal.get("flushed") or journal.get("started") or ""))
    if journal.get("error"):
        report.ok, report.error = False, str(journal["error"])
        return report
    if not os.path.exists(path):
        report.ok, report.error = False, "the file is gone"
        return report
    if closed_cleanly(path):  # killed between closing the file and removing the journal
        report.closed_cleanly = True
        return report
    unflushed, unknown = unflushed_records(journal) if count_unflushed else ({}, [])
    report.lost_unknown = unknown
    groups: dict[str, Any] = journal.get("groups") or {}
    current = {pos.get("group"): name for name, pos in (journal.get("streams") or {}).items()}
    try:
        with open_unfinished(path) as f:
            entry = f["entry"]
            instrument = entry.get("instrument")
            for dev in (instrument.values() if instrument is not None else []):
                if not isinstance(dev, h5py.Group):
                    continue
                for grp in dev.values():
                    if not isinstance(grp, h5py.Group) or "stream" not in grp.attrs:
                        continue
                    flushed = groups.get(grp.name)
                    if flushed is None and _has_rows(grp):  # appeared after the last journal update
                        report.lost_unknown.append(str(grp.attrs["stream"]))
                    rows = _cut_rows(grp, int((flushed or {}).get("rows", 0)))
                    lost = int((flushed or {}).get("lost", 0))
                    stream = current.get(grp.name)
                    if stream is not None:
                        lost += unflushed.get(stream, 0)
                    if "lost_records" in grp:
                        del grp["lost_records"]
                    grp.create_dataset("lost_records", data=np.int64(lost))
                    grp.attrs["records"] = rows
                    report.records += rows
                    report.lost += lost
            if "end_time" not in entry:
                end = entry.create_dataset("end_time", data=report.last_flush)
                end.attrs["note"] = "time of the last flush before the writer died; later records are not in this file"
            note = (f"the DataWriter (pid {journal.get('pid')} on {journal.get('host')}) died during the recording; "
                    f"file repaired at {report.time} by pid {os.getpid()}")
            if "ended_abnormally" in entry:
                del entry["ended_abnormally"]
            entry.create_dataset("ended_abnormally", data=note)
            entry.attrs["ended_abnormally"] = True
            if report.lost_unknown:
                entry.attrs["lost_unknown_streams"] = report.lost_unknown
            if continued_in:
                entry.attrs["continued_in"] = continued_in
                if "continued_in" not in entry:
                    entry.create_dataset("continued_in", data=continued_in)
                report.continued_in = continued_in
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        report.ok, report.error = False, str(exc)
    return report

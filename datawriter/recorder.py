"""The background writer of one recording: drains ring readers into an :class:`Hdf5Sink`.

One thread per recording does all HDF5 work, because h5py serialises every call behind one
global lock anyway; a second writer thread would only add contention. Blosc2 compression
(``blosc2-lz4``, ``blosc2-zstd``) is the exception: it needs no HDF5, so the sink's worker threads
compress the next few frames (straight from their ring slots) while this thread writes the
finished ones, in order; a record is kept only if its slot was still valid after both. The
thread:

1. reads the start manifest (through a callable, so this module stays free of Tango) and writes
   it while the file is still in ordinary mode, then switches the file to SWMR;
2. loops over the readers, taking a bounded number of records from each per pass so that one
   fast stream cannot starve the others, hands them to HDF5 straight from the ring (no copy of
   a frame in Python), and discards any record whose seqlock says the producer overwrote it
   while it was being written (counted as lost, never written corrupted);
3. every ``scan_interval`` (0.2 s, never per record) follows the streams: a ring re-created by
   its producer (camera ROI/binning change, restarted server) is drained and then followed from
   the new ring's first record, into the same datasets if the schema is the same, else into a
   new group ``<stream>_2`` of the same device saying why; with ``record_new_streams`` (or for
   ``awaited_streams``) rings that appear during the recording are added from their first record;
4. flushes every ``flush_interval`` seconds (the small metadata columns are written then, in one
   call per column) and updates its :class:`RecorderStats` (:meth:`Recorder.stats`) a few times
   per second, which the DataWriter's monitor thread publishes;
5. on stop, looks for new/replaced rings once more, drains every record committed before the
   stop request, reads the end manifest and closes the file.

An ``OSError`` (disk full, folder removed, permission lost) ends the recording: the file is
released with what was flushed, ``error`` says why, and ``on_finished`` is called. Rings are
never modified by readers, so nothing a later recording could take is lost.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from .hdf5_sink import DiskNearlyFull, Hdf5Sink, StreamSpec, _now_iso
from .losses import StreamLosses
from .ring import Record, RingReader, list_streams

Manifest = Mapping[str, Mapping[str, Any]]


_ERRNO_RE = re.compile(r"errno = (\d+), error message = '([^']*)'")


def as_os_error(exc: BaseException) -> BaseException:
    """h5py reports some failed writes (e.g. a flush on a full disk) as RuntimeError with the
    errno buried in HDF5's message; turn those into an OSError with that errno so callers can
    tell "disk full" from a bug."""
    if isinstance(exc, OSError):
        return exc
    m = _ERRNO_RE.search(str(exc))
    if m is None:
        return exc
    err = OSError(int(m.group(1)), f"{m.group(2)} ({str(exc).splitlines()[0]})")
    err.__cause__ = exc
    return err


@dataclass(frozen=True)
class RecorderStats:
    """Counters of one recording. All counts are ring records (one frame per record for frame
    streams, a batch of samples for scalar streams)."""

    records_written: int = 0
    bytes_written: int = 0
    write_rate_mb_s: float = 0.0
    backlog: int = 0
    dropped_records: int = 0
    per_stream: dict[str, dict[str, int]] = field(default_factory=dict)


@dataclass
class _Followed:
    """One stream followed through the recording, across re-creations of its ring."""

    name: str
    key: str  # the sink's dataset group being appended to
    schema: Any
    losses: StreamLosses[RingReader]  # and the reader the stream is read with now
    records: int = 0
    segments: int = 1

    @property
    def reader(self) -> RingReader:
        return self.losses.reader

    @property
    def lost(self) -> int:
        return self.losses.total


class Recorder:
    """Owns the sink and the readers of one recording from :meth:`start` until it finishes.

    ``readers`` are the streams present at the start. ``record_new_streams`` adds every ring that
    appears later (the DataWriter's ``Streams`` property empty); ``awaited_streams`` names rings
    that do not exist yet and are added when they appear. Replaced rings are always followed.
    """

    def __init__(
        self,
        sink: Hdf5Sink,
        readers: Mapping[str, RingReader],
        *,
        manifest: Callable[[], Manifest] | None = None,
        flush_interval: float = 1.0,
        stats_interval: float = 0.25,
        scan_interval: float = 0.2,
        max_records_per_pass: int = 16,
        record_new_streams: bool = False,
        awaited_streams: Sequence[str] = (),
        on_finished: Callable[[str, BaseException | None], None] | None = None,
        on_flush: Callable[[dict[str, Any]], None] | None = None,
        thread_context: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    ) -> None:
        self.sink = sink
        self._manifest = manifest
        self.flush_interval = flush_interval
        self.stats_interval = stats_interval
        self.scan_interval = scan_interval
        self.max_records_per_pass = max_records_per_pass
        self.record_new_streams = record_new_streams
        self._awaited = [n for n in awaited_streams if n not in readers]
        self._on_finished = on_finished
        self._on_flush = on_flush
        self._thread_context = thread_context or contextlib.nullcontext
        self._stop = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._followed: dict[str, _Followed] = {
            n: _Followed(n, n, r.schema, StreamLosses(r)) for n, r in readers.items()
        }
        #: streams seen but not recordable (schema HDF5 cannot take): name -> reason
        self.skipped: dict[str, str] = {}
        self._stats = RecorderStats()
        #: records being compressed by the sink's workers, oldest first (appended in this order)
        self._inflight: deque[tuple[_Followed, str, Record, Future[list[bytes]]]] = deque()
        self._max_inflight = sink.compression_workers + 2  # every worker busy, one result waiting
        self._rate_window: list[tuple[float, int]] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"recorder:{sink.path}", daemon=True)

    @property
    def path(self) -> str:
        return self.sink.path

    @property
    def readers(self) -> dict[str, RingReader]:
        """The current reader of every stream being recorded."""
        return {n: f.reader for n, f in list(self._followed.items())}

    @property
    def stream_names(self) -> list[str]:
        """Streams recorded so far (including those that appeared during the recording)."""
        return list(self._followed)

    @property
    def awaited_streams(self) -> list[str]:
        """Named streams that have not appeared yet."""
        return [n for n in self._awaited if n not in self._followed]

    def start(self) -> None:
        self._thread.start()

    def request_stop(self) -> None:
        """Ask the thread to drain what was committed so far and close the file."""
        self._stop.set()

    def stop(self, timeout: float | None = None) -> bool:
        """Request a stop and wait up to ``timeout`` s; returns whether the file is closed."""
        self.request_stop()
        return self._done.wait(timeout)

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    def stats(self) -> RecorderStats:
        with self._lock:
            return self._stats

    # ---------------------------------------------------------------------------- the thread

    def _run(self) -> None:
        with self._thread_context():
            try:
                if self._manifest is not None:
                    self.sink.write_manifest("start", self._read_manifest())
                self.sink.start_swmr()
                self._drain_loop()
                self._publish(time.monotonic(), force=True)
                for f in self._followed.values():
                    self.sink.set_lost(f.key, f.losses.in_segment)
                end = self._read_manifest() if self._manifest is not None else None
                self.sink.close(manifest_end=end)
            except DiskNearlyFull as exc:  # stopped with room to spare: close the file properly
                self.error = exc
                self._drop_inflight()
                self._close_after_error()
            except BaseException as exc:  # an OSError is the expected case; anything else is a bug, reported the same way
                self.error = as_os_error(exc)
                self._drop_inflight()
                self.sink.abort()
            finally:
                for f in self._followed.values():
                    f.reader.close()
                self._done.set()
                self._publish(time.monotonic(), force=True)
                if self._on_finished is not None:
                    self._on_finished(self.sink.path, self.error)

    def _close_after_error(self) -> None:
        """Close the file with everything appended so far, its loss counts and end time (no
        end manifest: reading devices is not worth risking the file); abort if that fails."""
        try:
            for f in self._followed.values():
                self.sink.set_lost(f.key, f.losses.in_segment)
            self.sink.close(manifest_end=None)
        except BaseException:  # noqa: BLE001 - keep what was flushed
            self.sink.abort()

    def _read_manifest(self) -> Manifest:
        """The manifest, or a record of why it could not be read: a manifest problem is
        documented in the file, it never costs the recording."""
        assert self._manifest is not None
        try:
            return self._manifest()
        except Exception as exc:
            return {"manifest": {"error": f"manifest could not be read: {exc!r}"}}

    def _drain(self, f: _Followed, limit: int | None, max_records: int) -> int:
        """Write up to ``max_records`` records of one stream; returns how many were read."""
        reader, sink, key = f.reader, self.sink, f.key
        did = 0
        for _ in range(max_records):
            if limit is not None and reader.next_seq >= limit:
                break
            if len(self._inflight) >= self._max_inflight:
                self._complete("one")
            rec = reader.read_next(copy=False, min_headroom=reader.slot_count // 8)
            if rec is None:
                break
            did += 1
            compressing = sink.prepare(key, rec.batch)
            if compressing is not None:  # appended by _complete once compressed, in order
                self._inflight.append((f, key, rec, compressing))
                continue
            # torn (overwritten while HDF5 read it): nothing kept, counted in reader.lost_torn
            if sink.append_record(key, rec.batch, rec.is_valid):
                f.records += 1
            del rec
        return did

    def _complete(self, wait: str = "none") -> int:
        """Append the records whose frames the workers have compressed, oldest first, stopping
        at the first one not done yet (``wait="none"``), after waiting for the oldest (``"one"``)
        or after waiting for every one (``"all"``: before a flush, a ring switch, a new stream or
        the end). A record overwritten in its ring meanwhile is not kept and counts as lost
        (``reader.lost_torn``), exactly as for raw frames. Returns how many were appended."""
        done = 0
        while self._inflight:
            f, key, rec, compressing = self._inflight[0]
            if not compressing.done() and not (wait == "all" or (wait == "one" and done == 0)):
                break
            chunks = compressing.result()  # a compression error ends the recording, as a write error does
            self._inflight.popleft()
            if self.sink.append_record(key, rec.batch, rec.is_valid, chunks):
                f.records += 1
            del rec
            done += 1
        return done

    def _drop_inflight(self) -> None:
        """The recording ends on an error: records still being compressed are not written; they
        count as lost."""
        while self._inflight:
            f, _, _, compressing = self._inflight.popleft()
            compressing.cancel()
            f.losses.dropped()

    def _drain_loop(self) -> None:
        sink = self.sink
        targets: dict[str, int] | None = None
        last_flush = last_stats = last_scan = time.monotonic()
        idle_delay = 0.0
        while True:
            if targets is None and self._stop.is_set():
                self._scan()  # a ring re-created just before the stop still gets drained
                targets = {n: f.reader.write_seq for n, f in self._followed.items()}
            did = 0
            for name, f in list(self._followed.items()):
                did += self._drain(f, targets[name] if targets is not None else None, self.max_records_per_pass)
            did += self._complete()
            now = time.monotonic()
            if targets is None and now - last_scan >= self.scan_interval:
                self._scan()
                last_scan = now
            if now - last_flush >= self.flush_interval:
                self._complete("all")  # the file and the journal's ring positions agree
                sink.flush()
                self._flushed()
                last_flush = now
            if now - last_stats >= self.stats_interval:
                self._publish(now)
                last_stats = now
            if targets is not None and all(
                f.reader.next_seq >= targets[n] or f.reader.finished() for n, f in self._followed.items()
            ):
                self._complete("all")
                sink.flush()
                return
            if did:
                idle_delay = 0.0
            elif self._inflight:  # nothing new to read: wait for the oldest compression instead
                self._complete("one")
            else:
                # nothing anywhere: back off (0.2 .. 5 ms), but wake at once on a stop request
                idle_delay = min(max(idle_delay * 2, 2e-4), 5e-3)
                self._stop.wait(idle_delay)

    def progress(self) -> dict[str, Any]:
        """What the file holds after a flush: per dataset group its rows and losses, per stream
        its group and the ring position of the first record not in the file (ring identity and
        sequence number). Written to the recovery journal, so that after a crash the file can be
        finished and the recording continued from the right record."""
        sink = self.sink
        streams = {}
        for name, f in list(self._followed.items()):
            r = f.reader
            sink.set_lost(f.key, f.losses.in_segment)
            streams[name] = {"group": sink.group_path(f.key), "next_seq": r.next_seq,
                             "ring_created_ns": r.created_ns, "ring_pid": r.producer_pid}
        return {"streams": streams, "groups": sink.progress()}

    def _flushed(self) -> None:
        if self._on_flush is None:
            return
        try:
            self._on_flush(self.progress())
        except Exception:  # noqa: BLE001 - a journal that cannot be written must not end the recording
            pass

    # ------------------------------------------------------------------ following the streams

    def _scan(self) -> None:
        """Follow re-created rings and add new ones. A stat per stream and, when new streams are
        wanted, one directory listing: run every ``scan_interval``, never per record."""
        for f in list(self._followed.values()):
            if f.reader.replaced():
                self._follow_replacement(f)
        if self.record_new_streams or self._awaited:
            for name in list_streams():
                if name in self._followed or name in self.skipped:
                    continue
                if self.record_new_streams or name in self._awaited:
                    self._add_stream(name)

    def _open_new(self, name: str) -> RingReader | None:
        try:
            return RingReader(name, start="oldest")
        except (RuntimeError, OSError, ValueError):  # gone again, or not a ring: look again next scan
            return None

    def _add_stream(self, name: str) -> None:
        reader = self._open_new(name)
        if reader is None:
            return
        self._complete("all")  # the sink may reopen its file to add the stream
        try:
            key = self.sink.add_stream(
                StreamSpec(name, reader.schema, reader.description),
                attrs={"appeared": _now_iso(), "reason": "stream appeared during the recording"},
            )
        except ValueError as exc:
            self.skipped[name] = str(exc)
            reader.close()
            return
        # records the producer wrote before we found the ring and that are already overwritten
        self._followed[name] = _Followed(name, key, reader.schema,
                                         StreamLosses(reader, gone_before=reader.next_seq))

    def _follow_replacement(self, f: _Followed) -> None:
        new = self._open_new(f.name)
        if new is None:
            return  # removed without a successor (yet): keep draining the old ring
        self._drain(f, f.reader.write_seq, 1 << 30)  # everything the old ring committed
        self._complete("all")  # before the old ring's memory goes
        old = f.reader
        f.losses.follow(new, gone_before=new.next_seq)
        old.close()
        if new.schema.equals(f.schema, check_metadata=False):
            return  # same layout: the same datasets go on
        reason = _schema_change(f.name, f.schema, new.schema)
        key = self.sink.add_stream(
            StreamSpec(f.name, new.schema, new.description),
            attrs={"appeared": _now_iso(), "reason": reason, "continues": self.sink.group_path(f.key)},
        )
        # the records the new ring lost before it was found belong to the new group
        self.sink.set_lost(f.key, f.losses.start_segment(carried=new.next_seq))
        f.key, f.schema = key, new.schema
        f.segments += 1

    def _publish(self, now: float, force: bool = False) -> None:
        total_bytes = self.sink.bytes_written
        self._rate_window.append((now, total_bytes))
        while len(self._rate_window) > 2 and now - self._rate_window[0][0] > 1.0:
            self._rate_window.pop(0)
        t0, b0 = self._rate_window[0]
        rate = (total_bytes - b0) / (now - t0) / 1e6 if now > t0 else 0.0
        per_stream = {}
        for name, f in list(self._followed.items()):
            try:
                backlog = f.reader.backlog
            except (AttributeError, ValueError):  # reader closed at the very end
                backlog = 0
            per_stream[name] = {"records": f.records, "lost": f.lost, "backlog": backlog, "segments": f.segments}
        stats = RecorderStats(
            records_written=sum(p["records"] for p in per_stream.values()),
            bytes_written=total_bytes,
            write_rate_mb_s=0.0 if self._done.is_set() else rate,
            backlog=sum(p["backlog"] for p in per_stream.values()),
            dropped_records=sum(p["lost"] for p in per_stream.values()),
            per_stream=per_stream,
        )
        with self._lock:
            self._stats = stats


def _schema_change(name: str, old: Any, new: Any) -> str:
    """Why a re-created ring needs a new dataset group, in words."""
    def shape(schema: Any) -> list[int] | None:
        for fld in schema:
            if isinstance(fld.type, pa.FixedShapeTensorType):
                return [int(x) for x in fld.type.shape]
        return None

    a, b = shape(old), shape(new)
    if a is not None and b is not None and a != b:
        return f"frame shape changed from {a} to {b} when the producer re-created ring {name}"
    return f"the columns of ring {name} changed when its producer re-created it"

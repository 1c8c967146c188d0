"""The background writer of one recording: drains ring readers into an :class:`Hdf5Sink`.

One thread per recording does all HDF5 work, because h5py serialises every call behind one
global lock anyway; a second writer thread would only add contention. The thread:

1. reads the start manifest (through a callable, so this module stays free of Tango) and writes
   it while the file is still in ordinary mode, then switches the file to SWMR;
2. loops over the readers, taking a bounded number of records from each per pass so that one
   fast stream cannot starve the others, appends them zero-copy, and discards (truncates) any
   record whose seqlock says the producer overwrote it while it was being written;
3. flushes at least every ``flush_interval`` seconds and publishes :class:`RecorderStats` a few
   times per second;
4. on stop, drains every record committed before the stop request, reads the end manifest and
   closes the file.

An ``OSError`` (disk full, folder removed, permission lost) ends the recording: the file is
released with what was flushed, ``error`` says why, and ``on_finished`` is called. Rings are
never modified by readers, so nothing a later recording could take is lost.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .hdf5_sink import Hdf5Sink
from .ring import RingReader

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


class Recorder:
    """Owns the sink and the readers of one recording from :meth:`start` until it finishes."""

    def __init__(
        self,
        sink: Hdf5Sink,
        readers: Mapping[str, RingReader],
        *,
        manifest: Callable[[], Manifest] | None = None,
        flush_interval: float = 0.5,
        stats_interval: float = 0.25,
        max_records_per_pass: int = 16,
        on_stats: Callable[[RecorderStats], None] | None = None,
        on_finished: Callable[[str, BaseException | None], None] | None = None,
        thread_context: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
    ) -> None:
        self.sink = sink
        self.readers = dict(readers)
        self._manifest = manifest
        self.flush_interval = flush_interval
        self.stats_interval = stats_interval
        self.max_records_per_pass = max_records_per_pass
        self._on_stats = on_stats
        self._on_finished = on_finished
        self._thread_context = thread_context or contextlib.nullcontext
        self._stop = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._records = dict.fromkeys(self.readers, 0)
        self._lost0 = {n: r.lost for n, r in self.readers.items()}
        self._stats = RecorderStats()
        self._rate_window: list[tuple[float, int]] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"recorder:{sink.path}", daemon=True)

    @property
    def path(self) -> str:
        return self.sink.path

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
                for name, r in self.readers.items():
                    self.sink.set_lost(name, r.lost - self._lost0[name])
                end = self._read_manifest() if self._manifest is not None else None
                self.sink.close(manifest_end=end)
            except BaseException as exc:  # an OSError is the expected case; anything else is a bug, reported the same way
                self.error = as_os_error(exc)
                self.sink.abort()
            finally:
                for r in self.readers.values():
                    r.close()
                self._done.set()
                self._publish(time.monotonic(), force=True)
                if self._on_finished is not None:
                    self._on_finished(self.sink.path, self.error)

    def _read_manifest(self) -> Manifest:
        """The manifest, or a record of why it could not be read: a manifest problem is
        documented in the file, it never costs the recording."""
        assert self._manifest is not None
        try:
            return self._manifest()
        except Exception as exc:
            return {"manifest": {"error": f"manifest could not be read: {exc!r}"}}

    def _drain_loop(self) -> None:
        sink = self.sink
        targets: dict[str, int] | None = None
        last_flush = last_stats = time.monotonic()
        idle_delay = 0.0
        while True:
            if targets is None and self._stop.is_set():
                targets = {n: r.write_seq for n, r in self.readers.items()}
            did = 0
            for name, reader in self.readers.items():
                limit = targets[name] if targets is not None else None
                for _ in range(self.max_records_per_pass):
                    if limit is not None and reader.next_seq >= limit:
                        break
                    rec = reader.read_next(copy=False)
                    if rec is None:
                        break
                    rows_before, nbytes = sink.append(name, rec.batch)
                    if not rec.is_valid():  # overwritten while we wrote it: undo, already counted as lost
                        sink.truncate(name, rows_before, nbytes)
                        continue
                    self._records[name] += 1
                    did += 1
                    del rec
            now = time.monotonic()
            if now - last_flush >= self.flush_interval:
                sink.flush()
                last_flush = now
            if now - last_stats >= self.stats_interval:
                self._publish(now)
                last_stats = now
            if targets is not None and all(
                r.next_seq >= targets[n] or r.finished() for n, r in self.readers.items()
            ):
                sink.flush()
                return
            if did:
                idle_delay = 0.0
            else:
                # nothing anywhere: back off (0.2 .. 5 ms), but wake at once on a stop request
                idle_delay = min(max(idle_delay * 2, 2e-4), 5e-3)
                self._stop.wait(idle_delay)

    def _publish(self, now: float, force: bool = False) -> None:
        total_bytes = self.sink.bytes_written
        self._rate_window.append((now, total_bytes))
        while len(self._rate_window) > 2 and now - self._rate_window[0][0] > 1.0:
            self._rate_window.pop(0)
        t0, b0 = self._rate_window[0]
        rate = (total_bytes - b0) / (now - t0) / 1e6 if now > t0 else 0.0
        per_stream = {}
        for name, r in self.readers.items():
            try:
                backlog = r.backlog
            except (AttributeError, ValueError):  # reader closed at the very end
                backlog = 0
            per_stream[name] = {
                "records": self._records[name],
                "lost": r.lost - self._lost0[name],
                "backlog": backlog,
            }
        stats = RecorderStats(
            records_written=sum(self._records.values()),
            bytes_written=total_bytes,
            write_rate_mb_s=0.0 if self._done.is_set() else rate,
            backlog=sum(p["backlog"] for p in per_stream.values()),
            dropped_records=sum(p["lost"] for p in per_stream.values()),
            per_stream=per_stream,
        )
        with self._lock:
            self._stats = stats
        if self._on_stats is not None:
            try:
                self._on_stats(stats)
            except Exception:  # a failing observer must not end the recording
                pass

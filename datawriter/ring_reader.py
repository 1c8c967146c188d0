"""Reading a ring from any process: an independent position per reader, overruns and torn reads
detected with the per-slot seqlock and counted in :attr:`RingReader.lost`."""

from __future__ import annotations

import mmap
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from . import ring_format as rf
from .ring_format import RingError
from .ring_names import list_streams, ring_path


@dataclass
class Record:
    """One record read from a ring.

    ``batch`` is a pyarrow RecordBatch. For a copy (the default) it owns its memory and is valid
    forever. For a zero-copy view (``copy=False``) it aliases the ring: the producer may overwrite
    it at any time, so call :meth:`is_valid` *after* using the data and discard the result if it
    returns False (the reader then counts the record as lost).
    """

    seq: int
    batch: pa.RecordBatch
    t_first_ns: int
    t_last_ns: int
    n_rows: int
    _lock_word: np.ndarray | None = field(default=None, repr=False)
    _lock: int = field(default=0, repr=False)
    _on_torn: Callable[[], None] | None = field(default=None, repr=False)
    _torn: bool = field(default=False, repr=False)

    @property
    def is_view(self) -> bool:
        return self._lock_word is not None

    def is_valid(self) -> bool:
        """Whether the data is still the record that was read (always True for copies).

        A view found invalid is counted once in its reader's ``lost_torn``.
        """
        if self._lock_word is None or self._torn:
            return not self._torn
        if int(self._lock_word[0]) == self._lock:
            return True
        self._torn = True
        if self._on_torn is not None:
            self._on_torn()
        return False


class RingReader:
    """An independent, read-only consumer of one ring.

    ``start`` is ``"latest"`` (only records committed after opening), ``"oldest"`` (everything
    still in the ring) or a time in seconds since the epoch (see :meth:`seek_time`).
    """

    def __init__(self, name: str, start: str | float = "latest") -> None:
        self.name = name
        self.path = ring_path(name) if os.sep not in name else name
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            raise RingError(f"no stream {name!r} (no ring {self.path}); available: {list_streams()}") from None
        try:
            st = os.fstat(fd)
            self._inode = st.st_ino
            self._mm = mmap.mmap(fd, st.st_size, mmap.MAP_SHARED, mmap.PROT_READ)
        finally:
            os.close(fd)
        header = rf.parse_header(self._mm, self.path)
        self.geometry = header.geometry
        self.schema: pa.Schema = header.schema
        self.description: dict = header.description
        self.producer_pid = header.producer_pid
        self.created_ns = header.created_ns
        self._hdr = rf.header_view(self._mm)
        self._slots = rf.slot_headers_view(self._mm, self.geometry)
        self._view = memoryview(self._mm)
        self.slot_count = self.geometry.slot_count
        # after an overrun, resume this many records ahead of the oldest surviving one so the
        # reader is not immediately lapped again by a producer that is faster than it: half the
        # ring. Resuming near the oldest record instead makes a slow consumer (the DataWriter,
        # ~5 ms per 8 MiB frame) read slots the producer is about to overwrite, and every such
        # torn read wastes a whole frame's write (measured: 45 % of the disk writes of a 30 s
        # full-speed run with 1/8 of the ring; benchmarks/bench_frames.py)
        self.resume_margin = max(1, min(self.slot_count // 2, self.slot_count - 1))
        self.lost_overrun = 0
        self.lost_torn = 0
        self.records_read = 0
        self._next = 0
        if start == "latest":
            self.seek_latest()
        elif start == "oldest":
            self.seek_oldest()
        elif isinstance(start, int | float):
            self.seek_time(float(start))
        else:
            raise ValueError(f"start must be 'latest', 'oldest' or a time in seconds, not {start!r}")

    # -- state ------------------------------------------------------------------------------

    @property
    def write_seq(self) -> int:
        return int(self._hdr[rf.H_WRITE_SEQ])

    @property
    def next_seq(self) -> int:
        return self._next

    @property
    def lost(self) -> int:
        """Records this reader will never see: overwritten before (overrun) or while (torn) reading."""
        return self.lost_overrun + self.lost_torn

    @property
    def backlog(self) -> int:
        """Committed records not read yet that are still in the ring."""
        return max(0, min(self.write_seq - self._next, self.slot_count))

    @property
    def producer_closed(self) -> bool:
        return int(self._hdr[rf.H_STATE]) == rf.STATE_CLOSED

    def producer_alive(self) -> bool:
        return not self.producer_closed and rf.pid_alive(self.producer_pid)

    def replaced(self) -> bool:
        """True when a new ring was published under this name (e.g. the producer restarted)."""
        try:
            return os.stat(self.path).st_ino != self._inode
        except FileNotFoundError:
            return True

    def finished(self) -> bool:
        """The producer closed the stream or died, and everything committed has been read."""
        return self._next >= self.write_seq and (self.producer_closed or not rf.pid_alive(self.producer_pid))

    # -- positioning --------------------------------------------------------------------------

    def seek_latest(self) -> None:
        """Skip to the end: the next read returns the next record the producer commits."""
        self._next = self.write_seq

    def seek_oldest(self) -> None:
        self._next = max(0, self.write_seq - self.slot_count + 1)

    def seek_seq(self, seq: int) -> None:
        """Position at record ``seq`` (e.g. the first record a crashed recording did not
        store). Records of it already overwritten are counted in :attr:`lost` by the next read."""
        self._next = max(0, min(int(seq), self.write_seq))

    def seek_time(self, t: float) -> None:
        """Position at the first record still in the ring that has data at or after ``t``
        (seconds since the epoch); at the end if every record is older."""
        t_ns = int(round(t * 1e9))
        ws = self.write_seq
        seqs = np.arange(max(0, ws - self.slot_count + 1), ws, dtype=np.int64)
        idx = seqs % self.slot_count
        locks = self._slots[idx, rf.S_LOCK].astype(np.int64)
        t_last = self._slots[idx, rf.S_T_LAST_NS].view(np.int64)
        ok = np.nonzero((locks == 2 * seqs + 2) & (t_last >= t_ns))[0]
        self._next = int(seqs[ok[0]]) if len(ok) else ws

    def seek_seconds_back(self, seconds: float) -> None:
        self.seek_time(time.time() - seconds)

    # -- reading ------------------------------------------------------------------------------

    def _decode(self, buf: pa.Buffer, batch_offset: int) -> pa.RecordBatch:
        msg = pa.ipc.read_message(buf.slice(batch_offset))
        return pa.ipc.read_record_batch(msg, self.schema)

    def read_next(self, copy: bool = True, min_headroom: int = 0) -> Record | None:
        """The next record, or None if the producer has not committed one yet. Never blocks.

        ``min_headroom``: treat a record as already lost when the producer will overwrite it
        within that many records. A consumer that spends milliseconds on each record (a
        zero-copy write to disk) passes a few slots, so it skips ahead instead of spending a
        write on a record that is torn by the time the write ends."""
        n = self.slot_count
        limit = max(1, n - min_headroom)
        while True:
            ws = self.write_seq
            s = self._next
            if s >= ws:
                return None
            if ws - s > limit:  # overrun: records s .. ws-n were (or are about to be) overwritten
                resume = max(s + 1, ws - n + min(max(self.resume_margin, min_headroom), n - 1))
                self.lost_overrun += resume - s
                self._next = s = resume
            idx = s % n
            slot = self._slots[idx]
            lock = int(slot[rf.S_LOCK])
            if lock != 2 * s + 2:
                if lock > 2 * s + 2:  # overwritten between our two loads
                    self.lost_overrun += 1
                    self._next = s + 1
                    continue
                return None
            plen = int(slot[rf.S_PAYLOAD_LEN])
            boff = int(slot[rf.S_BATCH_OFFSET])
            soff = int(slot[rf.S_STREAM_OFFSET])
            t0 = int(slot[rf.S_T_FIRST_NS].view(np.int64))
            t1 = int(slot[rf.S_T_LAST_NS].view(np.int64))
            rows = int(slot[rf.S_N_ROWS])
            start = self.geometry.payload_offset(idx) + soff
            if soff + plen > self.geometry.payload_capacity or boff >= plen:
                valid = False
            elif copy:
                data = self._mm[start : start + plen]  # one memcpy out of the ring
                valid = int(slot[rf.S_LOCK]) == lock
            else:
                data = self._view[start : start + plen]
                valid = True
            if valid:
                try:
                    batch = self._decode(pa.py_buffer(data), boff)
                except (pa.ArrowException, ValueError):  # a view overwritten while being parsed
                    valid = False
            if valid and not copy:
                valid = int(slot[rf.S_LOCK]) == lock
            self._next = s + 1
            if not valid:
                self.lost_torn += 1
                continue
            self.records_read += 1
            if copy:
                return Record(s, batch, t0, t1, rows)
            return Record(s, batch, t0, t1, rows, self._slots[idx, rf.S_LOCK : rf.S_LOCK + 1], lock, self._count_torn)

    def _count_torn(self) -> None:
        self.lost_torn += 1

    def latest(self, copy: bool = True) -> Record | None:
        """The newest committed record, without moving this reader's position (for live views)."""
        saved = self._next, self.lost_overrun, self.lost_torn, self.records_read
        try:
            for back in range(1, min(self.slot_count, self.write_seq) + 1):
                self._next = self.write_seq - back
                rec = self.read_next(copy=copy)
                if rec is not None:
                    rec._on_torn = None  # a live view going stale is not a loss of this reader's stream
                    return rec
            return None
        finally:
            self._next, self.lost_overrun, self.lost_torn, self.records_read = saved

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until a record is available or the stream finished; returns whether one is available.

        Polls with back-off (see the module docstring for why there is no cross-process wake-up).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 50e-6
        while self._next >= self.write_seq:
            if self.finished():
                return False
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                delay = min(delay, left)
            time.sleep(delay)
            delay = min(delay * 2, 2e-3)
        return True

    def records(self, timeout: float | None = None, copy: bool = True) -> Iterator[Record]:
        """Yield records as they come. Ends when no record arrived for ``timeout`` seconds
        (None: never) or when the producer closed or died and the ring is drained."""
        while True:
            rec = self.read_next(copy=copy)
            if rec is not None:
                yield rec
                continue
            if not self.wait(timeout):
                return

    __iter__ = records

    def close(self) -> None:
        # No explicit unmap, for the reason given in RingWriter.close: zero-copy batches and
        # Record seqlock views may outlive the reader; the mapping goes with the last of them.
        del self._hdr, self._slots
        self._view = None
        self._mm = None  # type: ignore[assignment]

    def __enter__(self) -> RingReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"RingReader({self.name!r}, next={self._next}, write_seq={self.write_seq}, "
            f"slots={self.slot_count}, lost={self.lost})"
        )


def open_reader(name: str, start: str | float = "latest", seconds_back: float | None = None) -> RingReader:
    """Open a stream by name for reading; ``seconds_back`` starts that many seconds in the past."""
    if seconds_back is not None:
        return RingReader(name, start=time.time() - seconds_back)
    return RingReader(name, start=start)


def stream_info(name: str) -> dict[str, Any]:
    """Description, schema and geometry of a stream without keeping it open."""
    with RingReader(name) as r:
        return {
            "name": name,
            "description": r.description,
            "schema": r.schema,
            "slot_count": r.slot_count,
            "slot_size": r.geometry.slot_size,
            "write_seq": r.write_seq,
            "producer_pid": r.producer_pid,
            "producer_alive": r.producer_alive(),
        }


# ----------------------------------------------------------------------------------- helpers


"""Shared-memory Arrow rings: one producer, any number of independent consumers, any process.

Producers (device servers) hand numpy arrays to a :class:`FrameStreamWriter` or
:class:`ScalarStreamWriter`; those build an Arrow record batch around the arrays without copying
and serialise it straight into the ring's memory map, so an 8 MiB frame costs one memcpy. The
producer never blocks and never looks at consumers: when the ring wraps, the oldest records are
overwritten. Consumers (:class:`RingReader`) are read-only mappings; each keeps its own position,
detects overruns and torn reads with the per-slot seqlock of :mod:`datawriter.ring_format`, and
counts every record it lost in :attr:`RingReader.lost`.

Reading from another process::

    import datawriter
    print(datawriter.list_streams())                 # ['lab.camera.1.frames', ...]
    r = datawriter.open_reader("lab.camera.1.frames")
    rec = r.latest()                                  # newest record (a safe copy) or None
    img = rec.batch.column("frame").to_numpy_ndarray()[0]   # (height, width) uint16
    r.seek_seconds_back(5.0)                          # time travel: start 5 s in the past
    for rec in r.records(timeout=1.0):                # iterate; stops after 1 s without data
        print(rec.seq, rec.batch.num_rows, r.lost)

Waiting for new records polls the header's write counter with a short exponential back-off
(50 us .. 2 ms). That is deliberate: a cross-process wake-up (futex, eventfd, pipe) would make the
producer do a syscall per record on behalf of consumers it must not depend on.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from tango_db import environment

from . import ring_format as rf

RING_PREFIX = "tangodaq."
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
TIMESTAMP_TYPE = pa.timestamp("ns", tz="UTC")


class RingError(RuntimeError):
    """A ring cannot be created, opened or written; the message says which and why."""


class RingInUseError(RingError):
    """Another live process already produces into a ring of this name."""


SYSTEM_TANGORC = "/etc/tangorc"  # where the Tango C++ library looks last (its compiled-in TANGO_RC_FILE)
RING_DIR_MODE = 0o2775  # group-writable, setgid: rings of any user of the folder's group
RING_FILE_MODE = 0o660  # readable and replaceable by the group, nobody else


def tango_host() -> str:
    """The Tango database this process uses (:func:`tango_db.environment.tango_host`: the
    environment, ``~/.tangorc``, then :data:`SYSTEM_TANGORC`); "" when none names one."""
    return environment.tango_host(SYSTEM_TANGORC)


def shm_dir() -> str:
    """Folder that holds the rings: ``$TANGODAQ_SHM_DIR``, else one folder per Tango database.

    Rings are named after devices (``lab.camera.1.frames``), and two labs on one host (a
    developer's and a test session's) have the same device names: the folder is therefore
    ``/dev/shm/tangodaq-<database port>`` (10000 when no database is configured), the database
    being the one the process really uses (:func:`tango_host`: environment, ``~/.tangorc``,
    ``/etc/tangorc``). Producers and readers call this same function, so a client of the lab
    finds the lab's rings with no further setting. ``TANGODAQ_SHM_DIR`` overrides it (tests,
    or a host whose servers and clients cannot agree on a database address).

    The folder is created by the first producer with mode 2775 (group-writable, setgid, so
    every ring in it belongs to the folder's group) and rings with mode 0660: servers run by a
    service user and readers of other users in the same group share it.
    """
    return environment.ring_folder(tango_host())


def ensure_shm_dir() -> str:
    """Create the ring folder for a producer (group-writable, setgid) and return it. A folder
    this user owns with narrower permissions (made by an older version) is widened; one owned
    by another user is left as it is (its owner's group decides who may produce there)."""
    folder = shm_dir()
    try:
        os.mkdir(folder, RING_DIR_MODE)
    except FileExistsError:
        pass
    except FileNotFoundError:  # a parent is missing (an explicit TANGODAQ_SHM_DIR)
        os.makedirs(folder, RING_DIR_MODE, exist_ok=True)
    st = os.stat(folder)
    if st.st_uid == os.geteuid() and (st.st_mode & 0o7777) != RING_DIR_MODE:
        os.chmod(folder, RING_DIR_MODE)  # mkdir's mode is masked by the umask
    return folder


def stream_name(device: str, stream: str) -> str:
    """``("lab/camera/1", "frames")`` -> ``"lab.camera.1.frames"``: the ring name of a device's stream."""
    name = f"{device.strip('/').replace('/', '.')}.{stream}" if device else stream
    _check_name(name)
    return name


def _check_name(name: str) -> None:
    if not _NAME_RE.match(name) or ".." in name:
        raise ValueError(f"invalid stream name {name!r}: use letters, digits, '_', '-' and '.' separators")


def ring_path(name: str) -> str:
    _check_name(name)
    return os.path.join(shm_dir(), RING_PREFIX + name)


def list_streams() -> list[str]:
    """Names of all rings on this host (complete ones only: rings are published by an atomic rename)."""
    try:
        entries = os.listdir(shm_dir())
    except FileNotFoundError:
        return []
    return sorted(e[len(RING_PREFIX) :] for e in entries if e.startswith(RING_PREFIX) and _NAME_RE.match(e[len(RING_PREFIX) :]))


def remove_stream(name: str) -> bool:
    """Unlink a ring file. Open readers and the writer keep their mapping; returns whether it existed."""
    try:
        os.unlink(ring_path(name))
        return True
    except FileNotFoundError:
        return False


def to_ns(t: Any) -> np.ndarray:
    """Timestamps to int64 ns since the epoch: floats are seconds (``time.time()``), integers are
    already ns, ``datetime64`` is converted. Returns a 1-D array."""
    a = np.atleast_1d(np.asarray(t))
    if np.issubdtype(a.dtype, np.datetime64):
        return a.astype("datetime64[ns]").astype(np.int64)
    if np.issubdtype(a.dtype, np.floating):
        return np.round(a * 1e9).astype(np.int64)
    if np.issubdtype(a.dtype, np.integer):
        return a.astype(np.int64, copy=False)
    raise TypeError(f"timestamps must be float seconds, integer ns or datetime64, not {a.dtype}")


def _ts_array(ns: np.ndarray) -> pa.Array:
    """int64 ns -> Arrow timestamp[ns, UTC] array sharing the numpy buffer (no compute kernel, no copy)."""
    ns = np.ascontiguousarray(ns, dtype=np.int64)
    return pa.Array.from_buffers(TIMESTAMP_TYPE, len(ns), [None, pa.py_buffer(ns)])


# ----------------------------------------------------------------------------------- writer


class RingWriter:
    """The single producer of one ring. Not thread-safe: one thread writes.

    Creating a writer publishes a new ring file atomically (built under a temporary name, then
    renamed), replacing a ring of the same name left by a producer that closed or died. If a
    live process other than this one still owns that name, :class:`RingInUseError` is raised.
    """

    def __init__(
        self,
        name: str,
        schema: pa.Schema,
        *,
        slot_count: int,
        payload_capacity: int,
        description: Mapping[str, Any] | None = None,
        align_last_buffer: bool = False,
    ) -> None:
        """``align_last_buffer``: pad each slot's stream so that the last body buffer (a frame
        ring's pixels) starts on a page boundary; ``payload_capacity`` must then include a
        page of slack."""
        if slot_count < 2:
            raise ValueError("a ring needs at least 2 slots")
        self.name = name
        self.path = ring_path(name)
        self.schema = schema
        self._check_owner()
        self._schema_stream = rf.serialize_schema(schema)
        # the record batch message starts after the schema message (the 8 trailing bytes of a
        # schema-only stream are its end-of-stream marker)
        self._batch_offset = len(self._schema_stream) - 8
        desc = dict(description or {})
        desc.setdefault("stream", name)
        desc.setdefault("host", socket.gethostname())
        desc_bytes = json.dumps(desc).encode("utf-8")
        self.description = desc
        self.geometry = rf.RingGeometry(
            rf.header_size_for(self._schema_stream, desc_bytes), slot_count, rf.slot_size_for(payload_capacity)
        )
        folder = ensure_shm_dir()  # only producers create the folder; readers just look
        tmp = os.path.join(folder, f".{RING_PREFIX}{name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, RING_FILE_MODE)
        try:
            os.fchmod(fd, RING_FILE_MODE)  # whatever the umask: the group reads it and may replace it
            os.ftruncate(fd, self.geometry.file_size)
            self._mm = mmap.mmap(fd, self.geometry.file_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            os.close(fd)
            os.unlink(tmp)
            raise RingError(f"cannot create ring {name!r} of {self.geometry.file_size} bytes in {shm_dir()}: {exc}") from exc
        os.close(fd)
        rf.write_header(self._mm, self.geometry, self._schema_stream, desc_bytes, os.getpid(), time.time_ns())
        self._hdr = rf.header_view(self._mm)
        self._slots = rf.slot_headers_view(self._mm, self.geometry)
        self._payloads = [  # writable views; the stream goes at an offset into its payload
            memoryview(self._mm)[self.geometry.payload_offset(i) : self.geometry.payload_offset(i + 1) - rf.SLOT_HEADER_BYTES]
            for i in range(slot_count)
        ]
        self._hdr[rf.H_STATE] = rf.STATE_OPEN
        os.replace(tmp, self.path)
        self._seq = 0
        self._closed = False
        self._align = align_last_buffer
        self._pads: dict[int, int] = {}  # rows per record -> stream offset that page-aligns the pixels

    def _aligning_pad(self, stream: pa.Buffer, pad: int) -> int:
        """From the record just written at offset ``pad`` of its payload (``stream``): the
        offset that puts the last body buffer of a record with as many rows on a page boundary.
        The IPC layout of a record depends only on its row count (buffer lengths, not values,
        are in the metadata) and every payload starts at the same offset within its page, so
        this is computed once per row count."""
        batch = pa.ipc.read_record_batch(pa.ipc.read_message(stream.slice(self._batch_offset)), self.schema)
        # Array.buffers() includes the children's buffers (a tensor column's storage and values)
        last = max(b.address for col in batch.columns for b in col.buffers() if b is not None and b.size)
        return (pad - last) % rf.PAGE  # moving the stream by (new - pad) moves `last` onto a page

    def _check_owner(self) -> None:
        try:
            with open(self.path, "rb") as f:
                head = f.read(rf.HEADER_FIXED_BYTES)
        except FileNotFoundError:
            return
        if len(head) < rf.HEADER_FIXED_BYTES or head[:8] != rf.MAGIC:
            return
        words = np.frombuffer(head, dtype="<u8")
        pid = int(words[rf.H_PRODUCER_PID])
        if int(words[rf.H_STATE]) == rf.STATE_OPEN and pid != os.getpid() and rf.pid_alive(pid):
            raise RingInUseError(f"stream {self.name!r} is being produced by live process {pid}")

    @property
    def slot_count(self) -> int:
        return self.geometry.slot_count

    @property
    def payload_capacity(self) -> int:
        return self.geometry.payload_capacity

    @property
    def write_seq(self) -> int:
        """Number of records committed so far (the sequence number of the next record)."""
        return self._seq

    def write_batch(self, batch: pa.RecordBatch, t_first_ns: int | None = None, t_last_ns: int | None = None) -> int:
        """Commit one record batch of the ring's schema; returns its sequence number.

        Never blocks. ``t_first_ns``/``t_last_ns`` are the record's time span (used by readers
        to start N seconds back in time); they default to now.
        """
        if self._closed:
            raise RingError(f"ring {self.name!r} is closed")
        if not batch.schema.equals(self.schema):
            raise ValueError(f"batch schema does not match ring {self.name!r}:\n{batch.schema}\n!=\n{self.schema}")
        size = len(self._schema_stream) + pa.ipc.get_record_batch_size(batch)
        pad = self._pads.get(batch.num_rows, 0) if self._align else 0
        if size + pad > self.geometry.payload_capacity:
            pad = 0
        if size > self.geometry.payload_capacity:
            raise ValueError(
                f"record of {size} bytes does not fit the {self.geometry.payload_capacity}-byte slots of ring {self.name!r}"
            )
        now = time.time_ns()
        s = self._seq
        idx = s % self.geometry.slot_count
        slot = self._slots[idx]
        slot[rf.S_LOCK] = 2 * s + 1  # odd: readers treat the slot as being written
        stream = pa.py_buffer(self._payloads[idx][pad:])
        sink = pa.FixedSizeBufferWriter(stream)
        with pa.ipc.new_stream(sink, self.schema) as w:
            w.write_batch(batch)
        slot[rf.S_STREAM_OFFSET] = pad
        slot[rf.S_PAYLOAD_LEN] = sink.tell()
        slot[rf.S_BATCH_OFFSET] = self._batch_offset
        if self._align and batch.num_rows not in self._pads:
            self._pads[batch.num_rows] = self._aligning_pad(stream, pad)
        slot[rf.S_T_FIRST_NS] = np.int64(now if t_first_ns is None else t_first_ns).view(np.uint64)
        slot[rf.S_T_LAST_NS] = np.int64(now if t_last_ns is None else t_last_ns).view(np.uint64)
        slot[rf.S_N_ROWS] = batch.num_rows
        slot[rf.S_COMMIT_NS] = now
        slot[rf.S_LOCK] = 2 * s + 2  # even: committed
        self._seq = s + 1
        self._hdr[rf.H_WRITE_SEQ] = s + 1
        return s

    def close(self, unlink: bool = False) -> None:
        """Mark the stream finished (readers end their iteration once drained); optionally remove it."""
        if self._closed:
            return
        self._closed = True
        self._hdr[rf.H_STATE] = rf.STATE_CLOSED
        if unlink:
            self._unlink_if_ours()
        # Never mmap.close() explicitly: numpy views over a mapping do not pin it (NumPy releases
        # the buffer export after construction), so an explicit unmap would leave any surviving
        # view (a Record's seqlock word, a test's slot view) dangling -> segfault. Dropping our
        # references unmaps when the last view is garbage collected.
        del self._hdr, self._slots, self._payloads
        self._mm = None  # type: ignore[assignment]

    def _unlink_if_ours(self) -> None:
        try:
            with open(self.path, "rb") as f:
                words = np.frombuffer(f.read(rf.HEADER_FIXED_BYTES), dtype="<u8")
            if int(words[rf.H_PRODUCER_PID]) == os.getpid() and int(words[rf.H_CREATED_NS]) == int(self._hdr[rf.H_CREATED_NS]):
                os.unlink(self.path)
        except (OSError, ValueError):
            pass

    def __enter__(self) -> RingWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ----------------------------------------------------------------------------------- reader


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


def _field(name: str, type_: pa.DataType, units: str = "", description: str = "") -> pa.Field:
    md = {}
    if units:
        md["units"] = units
    if description:
        md["description"] = description
    return pa.field(name, type_, nullable=False, metadata=md or None)


def frame_schema(height: int, width: int, dtype: Any = np.uint16, units: str = "counts") -> pa.Schema:
    """Schema of a frame stream: per row one frame as a fixed-shape tensor plus its metadata."""
    return pa.schema(
        [
            _field("frame_number", pa.int64(), "", "frame number from the camera, contiguous unless frames were lost"),
            _field("timestamp_bof", TIMESTAMP_TYPE, "ns", "beginning of frame (exposure start)"),
            _field("timestamp_eof", TIMESTAMP_TYPE, "ns", "end of frame (readout end)"),
            _field("exposure_time", pa.float64(), "s", "exposure time"),
            _field("frame", pa.fixed_shape_tensor(pa.from_numpy_dtype(np.dtype(dtype)), [height, width]), units, "image"),
        ]
    )


class FrameStreamWriter:
    """Producer of a frame stream; see :func:`create_frame_stream`."""

    def __init__(self, ring: RingWriter, height: int, width: int, dtype: np.dtype) -> None:
        self.ring = ring
        self.height, self.width, self.dtype = height, width, np.dtype(dtype)
        self._tensor_type = ring.schema.field("frame").type
        self._value_type = pa.from_numpy_dtype(self.dtype)

    @property
    def name(self) -> str:
        return self.ring.name

    def write(
        self,
        frame: np.ndarray,
        frame_number: int,
        timestamp_bof: float | int,
        timestamp_eof: float | int | None = None,
        exposure_s: float = float("nan"),
    ) -> int:
        """Publish one ``(height, width)`` frame; timestamps are float seconds or int ns since the
        epoch. Returns the record's sequence number. Never blocks."""
        return self.write_many(
            frame[np.newaxis],
            [frame_number],
            [timestamp_bof],
            None if timestamp_eof is None else [timestamp_eof],
            [exposure_s],
        )

    def write_many(
        self,
        frames: np.ndarray,
        frame_numbers: Any,
        timestamps_bof: Any,
        timestamps_eof: Any = None,
        exposures_s: Any = None,
    ) -> int:
        """Publish ``(n, height, width)`` frames as one record (it must fit one slot)."""
        frames = np.asarray(frames)
        if frames.ndim != 3 or frames.shape[1:] != (self.height, self.width):
            raise ValueError(f"frames of shape {frames.shape[1:]} for stream {self.name!r} of ({self.height}, {self.width})")
        if frames.dtype != self.dtype:
            if not np.can_cast(frames.dtype, self.dtype, "safe"):
                raise TypeError(f"frames of dtype {frames.dtype} cannot be stored safely as {self.dtype} in {self.name!r}")
            frames = frames.astype(self.dtype)
        frames = np.ascontiguousarray(frames)
        n = frames.shape[0]
        bof = to_ns(timestamps_bof)
        eof = bof if timestamps_eof is None else to_ns(timestamps_eof)
        exp = np.full(n, np.nan) if exposures_s is None else np.asarray(exposures_s, dtype=np.float64).reshape(n)
        fnum = np.asarray(frame_numbers, dtype=np.int64).reshape(n)
        if len(bof) != n or len(eof) != n:
            raise ValueError("one timestamp per frame expected")
        values = pa.Array.from_buffers(self._value_type, frames.size, [None, pa.py_buffer(frames.reshape(-1))])
        storage = pa.FixedSizeListArray.from_arrays(values, self.height * self.width)
        batch = pa.RecordBatch.from_arrays(
            [
                pa.array(fnum),
                _ts_array(bof),
                _ts_array(eof),
                pa.array(exp),
                pa.ExtensionArray.from_storage(self._tensor_type, storage),
            ],
            schema=self.ring.schema,
        )
        return self.ring.write_batch(batch, int(bof.min()), int(bof.max()))

    def close(self, unlink: bool = False) -> None:
        self.ring.close(unlink=unlink)

    def __enter__(self) -> FrameStreamWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def create_frame_stream(
    device: str,
    stream: str = "frames",
    *,
    height: int,
    width: int,
    dtype: Any = np.uint16,
    units: str = "counts",
    ring_size_mb: float = 512,
    slot_count: int | None = None,
    frames_per_record: int = 1,
    description: str = "",
    extra: Mapping[str, Any] | None = None,
) -> FrameStreamWriter:
    """Create (or replace) the ring ``<device with dots>.<stream>`` for frames of one shape.

    The ring holds ``slot_count`` records (default: as many as fit ``ring_size_mb``, at least 4)
    of up to ``frames_per_record`` frames each. A change of frame shape (ROI, binning) needs a
    new stream: call this again. ``extra`` is merged into the JSON description (e.g. pixel size).
    """
    schema = frame_schema(height, width, dtype, units)
    dt = np.dtype(dtype)
    frames = np.zeros((frames_per_record, height, width), dtype=dt)
    values = pa.Array.from_buffers(pa.from_numpy_dtype(dt), frames.size, [None, pa.py_buffer(frames.reshape(-1))])
    sample_batch = pa.RecordBatch.from_arrays(
        [
            pa.array(np.zeros(frames_per_record, np.int64)),
            _ts_array(np.zeros(frames_per_record, np.int64)),
            _ts_array(np.zeros(frames_per_record, np.int64)),
            pa.array(np.zeros(frames_per_record)),
            pa.ExtensionArray.from_storage(schema.field("frame").type, pa.FixedSizeListArray.from_arrays(values, height * width)),
        ],
        schema=schema,
    )
    # + a page: the stream is padded so the pixels start page aligned (RingWriter.align_last_buffer)
    capacity = len(rf.serialize_schema(schema)) + pa.ipc.get_record_batch_size(sample_batch) + 256 + rf.PAGE
    if slot_count is None:
        slot_count = max(4, int(ring_size_mb * 1024 * 1024) // rf.slot_size_for(capacity))
    name = stream_name(device, stream)
    desc = {
        "producer_device": device,
        "stream_label": stream,
        "stream_kind": "frames",
        "units": {"frame": units, "exposure_time": "s", "timestamp_bof": "ns", "timestamp_eof": "ns"},
        "frame_shape": [height, width],
        "dtype": dt.str,
        "description": description,
        **dict(extra or {}),
    }
    ring = RingWriter(name, schema, slot_count=slot_count, payload_capacity=capacity, description=desc,
                      align_last_buffer=True)
    return FrameStreamWriter(ring, height, width, dt)


class ScalarStreamWriter:
    """Producer of a scalar stream; see :func:`create_scalar_stream`."""

    def __init__(self, ring: RingWriter, rows_per_record: int, columns: list[tuple[str, np.dtype]]) -> None:
        self.ring = ring
        self.rows_per_record = rows_per_record
        self._columns = columns  # value columns after "timestamp"

    @property
    def name(self) -> str:
        return self.ring.name

    def write(self, timestamps: Any, values: Any, **extra: Any) -> int:
        """Publish rows (timestamps: float s or int ns; values and extra columns: same length).

        Rows are cut into records of at most ``rows_per_record``; returns the number of records.
        Batch on the caller's side too: one call per sample costs a record per sample.
        """
        ts = to_ns(timestamps)
        n = len(ts)
        expected = {name for name, _ in self._columns[1:]}
        if set(extra) != expected:
            raise TypeError(
                f"stream {self.name!r} takes the columns {sorted(expected)}: missing {sorted(expected - set(extra))}, "
                f"unknown {sorted(set(extra) - expected)}"
            )
        cols = [np.asarray(values)] + [np.asarray(extra[name]) for name, _ in self._columns[1:]]
        arrays = []
        for (cname, dt), c in zip(self._columns, cols, strict=True):
            c = np.atleast_1d(c)
            if len(c) != n:
                raise ValueError(f"column {cname!r} has {len(c)} rows, timestamps have {n}")
            arrays.append(np.ascontiguousarray(c, dtype=dt))
        written = 0
        for a in range(0, n, self.rows_per_record):
            b = min(n, a + self.rows_per_record)
            t = ts[a:b]
            batch = pa.RecordBatch.from_arrays(
                [_ts_array(t)] + [pa.array(c[a:b]) for c in arrays], schema=self.ring.schema
            )
            self.ring.write_batch(batch, int(t[0]), int(t[-1]))
            written += 1
        return written

    def close(self, unlink: bool = False) -> None:
        self.ring.close(unlink=unlink)

    def __enter__(self) -> ScalarStreamWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def create_scalar_stream(
    device: str,
    stream: str,
    *,
    units: str = "",
    dtype: Any = np.float64,
    extra_columns: Mapping[str, tuple[Any, str]] | None = None,
    rows_per_record: int = 4096,
    slot_count: int = 256,
    description: str = "",
    extra: Mapping[str, Any] | None = None,
) -> ScalarStreamWriter:
    """Create (or replace) the ring ``<device with dots>.<stream>`` for (timestamp, value, ...) rows.

    ``extra_columns`` maps further column names to ``(numpy dtype, units)``; only numeric
    columns are supported (they become HDF5 datasets one to one).
    """
    columns: list[tuple[str, np.dtype]] = [("value", np.dtype(dtype))]
    fields = [
        _field("timestamp", TIMESTAMP_TYPE, "ns", "sample time"),
        _field("value", pa.from_numpy_dtype(np.dtype(dtype)), units, description),
    ]
    unit_map = {"timestamp": "ns", "value": units}
    for cname, (cdt, cunit) in (extra_columns or {}).items():
        dt = np.dtype(cdt)
        if dt.kind not in "biuf":
            raise TypeError(f"column {cname!r}: only numeric columns are supported, not {dt}")
        columns.append((cname, dt))
        fields.append(_field(cname, pa.from_numpy_dtype(dt), cunit))
        unit_map[cname] = cunit
    schema = pa.schema(fields)
    row_bytes = 8 + sum(dt.itemsize for _, dt in columns)
    capacity = len(rf.serialize_schema(schema)) + 1024 + 64 * (len(columns) + 1) + rows_per_record * row_bytes
    name = stream_name(device, stream)
    desc = {
        "producer_device": device,
        "stream_label": stream,
        "stream_kind": "scalars",
        "units": unit_map,
        "description": description,
        **dict(extra or {}),
    }
    ring = RingWriter(name, schema, slot_count=slot_count, payload_capacity=capacity, description=desc)
    return ScalarStreamWriter(ring, rows_per_record, columns)

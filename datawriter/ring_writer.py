"""The single producer of one ring: publishes records into shared memory, never blocks, never
waits for readers (see :mod:`datawriter.ring` for the whole picture)."""

from __future__ import annotations

import errno
import json
import mmap
import os
import socket
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from . import ring_format as rf
from .ring_format import RingError, RingInUseError
from .ring_names import RING_FILE_MODE, RING_PREFIX, ensure_shm_dir, ring_path, shm_dir

#: ``madvise`` advice that maps every page of a shared mapping writable now (Linux 5.14+); the
#: Python 3.11 ``mmap`` module does not name it yet
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)


def reserve(fd: int, size: int, name: str, folder: str) -> None:
    """Allocate the whole ring file now. ``ftruncate`` alone makes a sparse file: on a
    shared-memory file system too small for it (a container's 64 MiB ``/dev/shm``) the producer
    would be killed by SIGBUS at the first write into a page that cannot be allocated, in the
    middle of an acquisition. Reserved here, a ring that does not fit is refused at creation
    with what to change."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        # ENOMEM: a memory-limited container's tmpfs (its cgroup) cannot give the pages
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.ENOMEM):
            return  # a file system without allocation (emulation refused): sparse, as before
        try:
            st = os.statvfs(folder)
            room = f"{st.f_bavail * st.f_frsize / 2**20:.0f} MiB free of {st.f_blocks * st.f_frsize / 2**20:.0f} MiB"
        except OSError:
            room = "free space unknown"
        raise RingError(
            f"cannot create ring {name!r}: its {size / 2**20:.0f} MiB do not fit in {folder} ({room}, "
            f"{exc.strerror}). Give the device a smaller ring (a camera's RingSizeMB property), free the "
            "folder of stale rings, or enlarge the shared-memory file system (docker run --shm-size=1g; "
            "the size= option of the /dev/shm tmpfs)") from exc


def prefault(mm: mmap.mmap) -> None:
    """Map every page of the ring now. The first write into each page of a fresh ring otherwise
    costs a page fault: measured 4.5-5.6 ms instead of 1.2-1.7 ms to write an 8 MiB frame into
    the allocated file, for the whole first lap of a camera's ring (its first 30-60 frames).
    ~0.5 ms per MiB, once, at creation: a producer makes its ring before its first record is
    due (the camera when an acquisition is prepared: ``PrepareAcquisition``), or that record
    waits for it. A kernel without the advice (before 5.14) keeps the lazy mapping."""
    try:
        mm.madvise(MADV_POPULATE_WRITE)
    except OSError:
        pass


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
            try:
                reserve(fd, self.geometry.file_size, name, folder)
            except RingError:
                # The ring this one replaces (a closed or dead producer's: a live one was refused
                # above; this camera's own before an ROI change) still holds its pages until the
                # rename below, so a folder with room for one ring would need room for two. Its
                # readers keep their mapping and see a replacement, as after any re-creation.
                if not self._remove_replaced():
                    raise
                reserve(fd, self.geometry.file_size, name, folder)
            self._mm = mmap.mmap(fd, self.geometry.file_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except RingError:
            os.close(fd)
            os.unlink(tmp)
            raise
        except OSError as exc:
            os.close(fd)
            os.unlink(tmp)
            raise RingError(f"cannot create ring {name!r} of {self.geometry.file_size} bytes in {shm_dir()}: {exc}") from exc
        os.close(fd)
        prefault(self._mm)
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

    def _remove_replaced(self) -> bool:
        """Remove the ring of this name that the new one will replace; False if there is none."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return False
        return True

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

"""Binary layout of a tangodaq shared-memory ring: the header and the seqlock slots.

This module is the single place that knows byte offsets. :mod:`datawriter.ring` builds the
writer and readers on top of it; nothing else should compute an offset into a ring file.

A ring file (``/dev/shm/tangodaq.<stream>``) is::

    +--------------------------------------------------------------+  0
    | header: 16 little-endian uint64 words (see ``H_*`` below)     |
    | schema: Arrow IPC stream bytes of the stream's schema        |  H_SCHEMA_OFFSET
    | description: UTF-8 JSON (producer device, stream, units, ...) |  H_DESC_OFFSET
    +--------------------------------------------------------------+  header_size (page aligned)
    | slot 0: 8 uint64 words of slot header, then payload          |
    |   payload: [padding][Arrow IPC stream]                        |
    | slot 1 ...                                                    |  header_size + i * slot_size
    +--------------------------------------------------------------+

Every slot holds a complete Arrow IPC *stream* (schema message, one record batch message,
end-of-stream marker), so a slot can be decoded on its own. It starts ``S_STREAM_OFFSET`` bytes
into the payload: a frame ring pads the stream so that the frame pixels (the last body buffer)
start on a page boundary, which lets the DataWriter hand them to an ``O_DIRECT`` write
straight from the ring. ``S_PAYLOAD_LEN`` is the stream's length and ``S_BATCH_OFFSET`` where
the record batch message starts within the stream, so readers can skip re-parsing the schema.

Concurrency protocol (one writer, any number of read-only readers, no locks, no syscalls):

* Record ``s`` (0-based, monotonically increasing) lives in slot ``s % slot_count``.
* The writer stores ``lock = 2*s + 1`` (odd: being written), writes the payload and the slot
  metadata, stores ``lock = 2*s + 2`` (even: committed), then ``write_seq = s + 1``.
* A reader that wants record ``s`` reads ``lock``; ``2*s + 2`` means committed and readable,
  anything smaller means not written yet, anything larger means overwritten (an overrun). After
  copying (or using a zero-copy view of) the payload, the reader reads ``lock`` again: if it
  changed, the writer lapped the reader during the read and the record is torn and discarded.
* A writer killed mid-write leaves one slot with an odd ``lock`` and ``write_seq`` pointing at
  it; every committed record stays readable and a reader sees a stream that simply stops.

The 64-bit words are read and written through aligned numpy views, which compile to single
8-byte loads and stores, and x86-64 keeps stores in program order (TSO), which is what the
protocol relies on. On weakly ordered CPUs (ARM) the same code is correct only as long as the
interpreter's own barriers (the GIL hand-off, C calls between the stores) order the stores;
tangodaq targets x86-64 acquisition hosts.
"""

from __future__ import annotations

import json
import mmap
import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

MAGIC = b"TDQRING\x01"
FORMAT_VERSION = 2  # 2: S_STREAM_OFFSET (page-aligned frame pixels)
PAGE = 4096

#: Header word indices (uint64 each).
H_MAGIC = 0
H_VERSION = 1
H_HEADER_SIZE = 2
H_SLOT_COUNT = 3
H_SLOT_SIZE = 4
H_WRITE_SEQ = 5
H_PRODUCER_PID = 6
H_CREATED_NS = 7
H_STATE = 8
H_SCHEMA_OFFSET = 9
H_SCHEMA_LEN = 10
H_DESC_OFFSET = 11
H_DESC_LEN = 12
H_WORDS = 16
HEADER_FIXED_BYTES = H_WORDS * 8

#: Values of ``H_STATE``.
STATE_CREATING = 0
STATE_OPEN = 1
STATE_CLOSED = 2

#: Slot header word indices (uint64 each); the payload follows at ``SLOT_HEADER_BYTES``.
S_LOCK = 0
S_PAYLOAD_LEN = 1
S_BATCH_OFFSET = 2
S_T_FIRST_NS = 3
S_T_LAST_NS = 4
S_N_ROWS = 5
S_COMMIT_NS = 6
S_STREAM_OFFSET = 7
S_WORDS = 8
SLOT_HEADER_BYTES = S_WORDS * 8


class RingError(RuntimeError):
    """A ring cannot be created, opened or written; the message says which and why."""


class RingInUseError(RingError):
    """Another live process already produces into a ring of this name."""


class RingFormatError(RuntimeError):
    """The file is not a tangodaq ring, or a ring of an incompatible version."""


def round_up(n: int, multiple: int) -> int:
    return (n + multiple - 1) // multiple * multiple


def header_size_for(schema_bytes: bytes, desc_bytes: bytes) -> int:
    """Bytes before slot 0: fixed words, schema, description, rounded to a page so that slot
    payloads start page aligned (large memcpys into them run at full speed)."""
    return round_up(HEADER_FIXED_BYTES + len(schema_bytes) + len(desc_bytes), PAGE)


def slot_size_for(payload_capacity: int) -> int:
    """Slot size (header + payload) rounded to a page."""
    return round_up(SLOT_HEADER_BYTES + payload_capacity, PAGE)


def serialize_schema(schema: pa.Schema) -> bytes:
    """The schema as an Arrow IPC stream with no batches (readable with ``pa.ipc.open_stream``)."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, schema):
        pass
    return sink.getvalue().to_pybytes()


def deserialize_schema(data: bytes | memoryview) -> pa.Schema:
    return pa.ipc.open_stream(pa.py_buffer(bytes(data))).schema


@dataclass(frozen=True)
class RingGeometry:
    """Where things are in one ring file; computed once, shared by writer and readers."""

    header_size: int
    slot_count: int
    slot_size: int

    @property
    def file_size(self) -> int:
        return self.header_size + self.slot_count * self.slot_size

    @property
    def payload_capacity(self) -> int:
        return self.slot_size - SLOT_HEADER_BYTES

    def slot_offset(self, index: int) -> int:
        return self.header_size + index * self.slot_size

    def payload_offset(self, index: int) -> int:
        return self.header_size + index * self.slot_size + SLOT_HEADER_BYTES


def header_view(buf: mmap.mmap) -> np.ndarray:
    """The header words as a uint64 numpy view of the mapping (writes go straight to the ring)."""
    return np.ndarray((H_WORDS,), dtype="<u8", buffer=buf, offset=0)


def slot_headers_view(buf: mmap.mmap, geometry: RingGeometry) -> np.ndarray:
    """All slot headers as one strided ``(slot_count, S_WORDS)`` uint64 view.

    Row ``i`` aliases the header of slot ``i``, so the time-travel search can look at every
    slot's timestamps with one vectorised numpy expression.
    """
    return np.ndarray(
        (geometry.slot_count, S_WORDS),
        dtype="<u8",
        buffer=buf,
        offset=geometry.header_size,
        strides=(geometry.slot_size, 8),
    )


def write_header(
    buf: mmap.mmap, geometry: RingGeometry, schema_bytes: bytes, desc_bytes: bytes, pid: int, created_ns: int
) -> None:
    """Initialise a fresh ring's header; the ring is left in ``STATE_CREATING``."""
    hdr = header_view(buf)
    schema_off = HEADER_FIXED_BYTES
    desc_off = schema_off + len(schema_bytes)
    buf[schema_off : schema_off + len(schema_bytes)] = schema_bytes
    buf[desc_off : desc_off + len(desc_bytes)] = desc_bytes
    hdr[H_MAGIC] = np.frombuffer(MAGIC, dtype="<u8")[0]
    hdr[H_VERSION] = FORMAT_VERSION
    hdr[H_HEADER_SIZE] = geometry.header_size
    hdr[H_SLOT_COUNT] = geometry.slot_count
    hdr[H_SLOT_SIZE] = geometry.slot_size
    hdr[H_WRITE_SEQ] = 0
    hdr[H_PRODUCER_PID] = pid
    hdr[H_CREATED_NS] = created_ns
    hdr[H_STATE] = STATE_CREATING
    hdr[H_SCHEMA_OFFSET] = schema_off
    hdr[H_SCHEMA_LEN] = len(schema_bytes)
    hdr[H_DESC_OFFSET] = desc_off
    hdr[H_DESC_LEN] = len(desc_bytes)


@dataclass(frozen=True)
class RingHeader:
    """The immutable part of a ring header, as parsed by a reader."""

    geometry: RingGeometry
    schema: pa.Schema
    description: dict
    producer_pid: int
    created_ns: int


def parse_header(buf: mmap.mmap, path: str) -> RingHeader:
    """Validate magic and version and decode schema and description, with errors that name the file."""
    if len(buf) < HEADER_FIXED_BYTES:
        raise RingFormatError(f"{path}: too small to be a tangodaq ring ({len(buf)} bytes)")
    hdr = header_view(buf)
    if hdr[H_MAGIC].tobytes() != MAGIC:
        raise RingFormatError(f"{path}: not a tangodaq ring (bad magic)")
    if int(hdr[H_VERSION]) != FORMAT_VERSION:
        raise RingFormatError(
            f"{path}: ring format version {int(hdr[H_VERSION])}, this reader understands {FORMAT_VERSION}"
        )
    geometry = RingGeometry(int(hdr[H_HEADER_SIZE]), int(hdr[H_SLOT_COUNT]), int(hdr[H_SLOT_SIZE]))
    if len(buf) < geometry.file_size:
        raise RingFormatError(f"{path}: truncated ring ({len(buf)} < {geometry.file_size} bytes)")
    so, sl = int(hdr[H_SCHEMA_OFFSET]), int(hdr[H_SCHEMA_LEN])
    do, dl = int(hdr[H_DESC_OFFSET]), int(hdr[H_DESC_LEN])
    schema = deserialize_schema(buf[so : so + sl])
    description = json.loads(buf[do : do + dl].decode("utf-8"))
    return RingHeader(geometry, schema, description, int(hdr[H_PRODUCER_PID]), int(hdr[H_CREATED_NS]))


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (rings never cross hosts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed but not yet reaped child is a zombie: it exists, but will never write again
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] != b"Z"
    except (OSError, ValueError):
        return True

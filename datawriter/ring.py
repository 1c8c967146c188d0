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

The ring is split by role: :mod:`~datawriter.ring_names` (where rings live, what they are called),
:mod:`~datawriter.ring_format` (the bytes), :mod:`~datawriter.ring_writer`,
:mod:`~datawriter.ring_reader` and :mod:`~datawriter.ring_streams` (frames and scalars). This
module is the one place to import them from.
"""

from __future__ import annotations

from .ring_format import RingError, RingInUseError
from .ring_names import (
    RING_DIR_MODE,
    RING_FILE_MODE,
    RING_PREFIX,
    SYSTEM_TANGORC,
    ensure_shm_dir,
    list_streams,
    remove_stream,
    ring_path,
    shm_dir,
    stream_name,
    tango_host,
)
from .ring_reader import Record, RingReader, open_reader, stream_info
from .ring_streams import (
    TIMESTAMP_TYPE,
    FrameStreamWriter,
    ScalarStreamWriter,
    create_frame_stream,
    create_scalar_stream,
    frame_schema,
    to_ns,
)
from .ring_writer import RingWriter

__all__ = [
    "RING_DIR_MODE",
    "RING_FILE_MODE",
    "RING_PREFIX",
    "SYSTEM_TANGORC",
    "TIMESTAMP_TYPE",
    "FrameStreamWriter",
    "Record",
    "RingError",
    "RingInUseError",
    "RingReader",
    "RingWriter",
    "ScalarStreamWriter",
    "create_frame_stream",
    "create_scalar_stream",
    "ensure_shm_dir",
    "frame_schema",
    "list_streams",
    "open_reader",
    "remove_stream",
    "ring_path",
    "shm_dir",
    "stream_info",
    "stream_name",
    "tango_host",
    "to_ns",
]

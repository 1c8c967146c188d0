"""Typed streams on a ring: frames (a fixed-shape tensor per row with its timestamps) and scalars
(timestamp, value and numeric columns), their Arrow schemas, and the timestamp conversions."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

import numpy as np
import pyarrow as pa

from . import ring_format as rf
from .ring_names import stream_name
from .ring_writer import RingWriter

TIMESTAMP_TYPE = pa.timestamp("ns", tz="UTC")


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


class _StreamWriter:
    """What every typed producer shares: its ring, its name, and closing it (also as a context)."""

    def __init__(self, ring: RingWriter) -> None:
        self.ring = ring

    @property
    def name(self) -> str:
        return self.ring.name

    def close(self, unlink: bool = False) -> None:
        self.ring.close(unlink=unlink)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FrameStreamWriter(_StreamWriter):
    """Producer of a frame stream; see :func:`create_frame_stream`."""

    def __init__(self, ring: RingWriter, height: int, width: int, dtype: np.dtype) -> None:
        super().__init__(ring)
        self.height, self.width, self.dtype = height, width, np.dtype(dtype)
        self._tensor_type = ring.schema.field("frame").type
        self._value_type = pa.from_numpy_dtype(self.dtype)

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


class ScalarStreamWriter(_StreamWriter):
    """Producer of a scalar stream; see :func:`create_scalar_stream`."""

    def __init__(self, ring: RingWriter, rows_per_record: int, columns: list[tuple[str, np.dtype]]) -> None:
        super().__init__(ring)
        self.rows_per_record = rows_per_record
        self._columns = columns  # value columns after "timestamp"

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

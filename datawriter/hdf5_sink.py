"""The HDF5/NeXus file of one recording, written with h5py (no Tango, no threads of its own).

Layout (one file per recording, one NXentry)::

    /                                   NXroot   default=entry, creator, file_time
    /entry                              NXentry  default=data
        title, start_time, end_time, program_name (version, host, pid, user)
        user_metadata/                  NXcollection   the StartRecording JSON "metadata"
        instrument/                     NXinstrument
            <lab_camera_1>/             NXdetector (frame streams) or NXsensor, tango_device=...
                <frames>/               NXcollection, one per stream: a dataset per column
                    data                (n, height, width), chunks (1, height, width)
                    frame_number, timestamp_bof, timestamp_eof, exposure_time   (n,)
                    lost_records        written at close
                <frames_2>/             the same stream after its producer re-created the ring with
                                        another frame shape (attrs reason, continues, appeared)
            <lab_powermeter_1>/<power>/ timestamp (n,) int64 ns, value (n,), ...
            manifest_start/ manifest_end/   NXcollection: <device>/<attribute> = value, units=...
        data/                           NXdata: links to the first stream's signal (default plot)

HDF5 cannot create objects under SWMR, so the end manifest and ``end_time`` are written after
the SWMR session is closed, by reopening the file in ordinary read/write mode, and a stream added
during the recording (:meth:`Hdf5Sink.add_stream`) briefly closes the SWMR session the same way. A file whose writer was killed still opens
with ``h5py.File(path, "r", swmr=True)`` (or after ``h5clear -s``) up to the last flush.

Frames are written one per chunk, raw bytes straight from the ring's memory, bypassing HDF5's
selection and filter machinery (what makes per-frame writing about 10x faster than
``ds[i] = frame``): uncompressed frames of 64 KiB and more with ``O_DIRECT`` into chunk space
HDF5 reserved for them (:mod:`datawriter.direct_io`, which says why), others and compressed ones
(the bytes an hdf5plugin filter would store) with ``write_direct_chunk``. Blosc2 frames
(``blosc2-lz4``, ``blosc2-zstd``) are compressed by worker threads (:mod:`datawriter.compression`)
while the writer thread writes earlier ones: the caller submits a record with :meth:`Hdf5Sink.prepare`
and appends it with the Future's chunks once they are ready.
"""

from __future__ import annotations

import datetime as _dt
import errno
import getpass
import json
import os
import socket
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import h5py
import numpy as np
import pyarrow as pa

from . import direct_io
from .compression import (
    BLOSC2_CODECS,
    Blosc2FrameEncoder,
    CompressionPool,
    PageCacheDropper,
    check_compression,
    filter_kwargs,
)
from .compression import (
    COMPRESSIONS as COMPRESSIONS,  # re-exported: the values of the DataWriter property
)


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("tangodaq")
    except Exception:  # running from a source tree that is not installed
        return "unknown"


def _now_iso() -> str:
    return _dt.datetime.now(_dt.UTC).astimezone().isoformat()


def _group_name(text: str) -> str:
    """A device or attribute name as an HDF5/NeXus-friendly group name."""
    out = "".join(c if c.isalnum() or c == "_" else "_" for c in text.strip("/"))
    return out or "_"


def _device_group_name(device: str) -> str:
    """``tango://host:10000/lab/motor/1#dbase=no`` -> ``lab_motor_1``."""
    name = device.split("#", 1)[0]
    if "://" in name:
        name = name.split("://", 1)[1].split("/", 1)[-1]
    return _group_name(name)


def _filter_kwargs(compression: str) -> dict[str, Any]:
    return filter_kwargs(compression)


class ChunkCompressor:
    """Compresses one frame into the exact bytes the hdf5plugin filter would store.

    It pushes the frame through the filter of a one-chunk dataset in an in-memory HDF5 file and
    reads the stored chunk back, so the compressed chunks are bit-for-bit what HDF5 itself would
    write and no separate Python codec package is needed.
    """

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, compression: str) -> None:
        self._mem = h5py.File(f"chunkcompressor-{id(self)}", "w", driver="core", backing_store=False)
        self._ds = self._mem.create_dataset(
            "c", shape=(1, *shape), chunks=(1, *shape), dtype=dtype, **_filter_kwargs(compression)
        )
        self._origin = (0,) * (1 + len(shape))

    def compress(self, frame: np.ndarray) -> bytes:
        self._ds[0] = frame
        self._ds.id.flush()
        _, data = self._ds.id.read_direct_chunk(self._origin)
        return data

    def close(self) -> None:
        self._mem.close()


@dataclass
class StreamSpec:
    """What the sink needs to know about one ring: its name, schema and JSON description."""

    name: str
    schema: pa.Schema
    description: dict = field(default_factory=dict)

    @property
    def device(self) -> str:
        return str(self.description.get("producer_device") or self.name.rsplit(".", 1)[0])

    @property
    def label(self) -> str:
        return str(self.description.get("stream_label") or self.name.rsplit(".", 1)[-1])

    def is_frames(self) -> bool:
        return any(isinstance(f.type, pa.FixedShapeTensorType) for f in self.schema)


def _field_meta(f: pa.Field, key: str) -> str:
    md = f.metadata or {}
    return md.get(key.encode(), b"").decode("utf-8", "replace")


class _StreamDatasets:
    """The datasets of one stream (one dataset group) and the logic to append record batches.

    The per-record work is kept to what a frame needs: one ``H5Dset_extent`` when the frame
    dataset has to grow and one ``H5Dwrite_chunk`` per frame, fed straight from the record's
    memory (the ring slot). The small metadata columns (frame numbers, timestamps, samples) are
    copied into memory and written in one ``H5Dwrite`` per column per :meth:`settle`, i.e. per
    flush, instead of a resize and a write per column per record, which cost more than the frame
    itself. Datasets are referred to by path so they can be re-attached when the sink reopens the
    file to add a stream (HDF5 cannot create objects in SWMR mode).
    """

    def __init__(self, group: h5py.Group, spec: StreamSpec, compression: str, chunk_rows: int,
                 direct: direct_io.DirectChunkWriter | None = None) -> None:
        self.spec = spec
        self.direct: direct_io.DirectChunkWriter | None = None  # set for frames written with O_DIRECT
        self.group_path = group.name
        self.n = 0  # rows appended and kept (the frame dataset may temporarily hold one torn chunk more)
        self.lost = 0
        self.tensor: tuple[str, h5py.Dataset] | None = None
        self.columns: list[tuple[str, h5py.Dataset, bool]] = []  # (column, dataset, is_timestamp)
        self.compressor: ChunkCompressor | None = None  # HDF5's own filter, in the writer thread
        self.encoder: Blosc2FrameEncoder | None = None  # Blosc2, in worker threads (see prepare)
        self.raw_frame_bytes = 0  # frame bytes appended, and what they took in the file
        self.stored_frame_bytes = 0
        self._tensor_index = -1
        self._frame_shape: tuple[int, ...] = ()
        self._frame_dtype = np.dtype(np.uint8)
        self._frame_items = self._frame_bytes = 0
        self._extent = 0  # current first dimension of the frame dataset
        self._col_index: list[int] = []
        self._col_dtype: list[np.dtype] = []
        self._written = 0  # rows of the column datasets already in the file
        self._pending: list[list[np.ndarray]] = []  # per column: row blocks not written yet
        self._pending_rows = 0
        group.attrs["NX_class"] = "NXcollection"
        group.attrs["stream"] = spec.name
        group.attrs["stream_kind"] = str(spec.description.get("stream_kind", ""))
        if spec.description.get("description"):
            group.attrs["description"] = str(spec.description["description"])
        for i, f in enumerate(spec.schema):
            units, desc = _field_meta(f, "units"), _field_meta(f, "description")
            if isinstance(f.type, pa.FixedShapeTensorType):
                if self.tensor is not None:
                    raise ValueError(f"stream {spec.name!r}: only one tensor column is supported")
                shape = tuple(int(x) for x in f.type.shape)
                dtype = np.dtype(f.type.value_type.to_pandas_dtype())
                # the sink passes ``direct`` only for uncompressed recordings
                if direct is not None and direct.available and direct_io.suits(int(np.prod(shape)) * dtype.itemsize):
                    self.direct = direct
                ds = group.create_dataset(
                    "data",
                    shape=(0, *shape),
                    maxshape=(None, *shape),
                    chunks=(1, *shape),
                    dtype=dtype,
                    **_filter_kwargs(compression),
                    **(_reserve_chunks() if self.direct is not None else {}),
                )
                ds.attrs["column"] = f.name
                self.tensor = (f.name, ds)
                self._tensor_index = i
                self._frame_shape, self._frame_dtype = shape, dtype
                self._frame_items = int(np.prod(shape))
                self._frame_bytes = self._frame_items * dtype.itemsize
                if compression in BLOSC2_CODECS:
                    self.encoder = Blosc2FrameEncoder(compression, dtype.itemsize, self._frame_bytes)
                elif compression not in ("none", "", None):
                    self.compressor = ChunkCompressor(shape, dtype, compression)
            elif pa.types.is_timestamp(f.type):
                ds = group.create_dataset(f.name, shape=(0,), maxshape=(None,), chunks=(chunk_rows,), dtype=np.int64)
                units = "ns"
                ds.attrs["start"] = "1970-01-01T00:00:00Z"
                self.columns.append((f.name, ds, True))
                self._col_index.append(i)
                self._col_dtype.append(np.dtype(np.int64))
            elif pa.types.is_integer(f.type) or pa.types.is_floating(f.type):
                dtype = np.dtype(f.type.to_pandas_dtype())
                ds = group.create_dataset(f.name, shape=(0,), maxshape=(None,), chunks=(chunk_rows,), dtype=dtype)
                self.columns.append((f.name, ds, False))
                self._col_index.append(i)
                self._col_dtype.append(dtype)
            else:
                raise ValueError(f"stream {spec.name!r}: column {f.name!r} of type {f.type} cannot be recorded")
            if units:
                ds.attrs["units"] = units
            if desc:
                ds.attrs["long_name"] = desc
        self._pending = [[] for _ in self.columns]

    def attach(self, f: h5py.File) -> None:
        """Re-resolve the datasets in a reopened file (same paths)."""
        grp = f[self.group_path]
        if self.tensor is not None:
            self.tensor = (self.tensor[0], grp["data"])
        self.columns = [(name, grp[name], is_ts) for name, _, is_ts in self.columns]

    @property
    def signal(self) -> h5py.Dataset:
        if self.tensor is not None:
            return self.tensor[1]
        for name, ds, _ in self.columns:
            if name == "value":
                return ds
        return self.columns[-1][1]

    def frames(self, batch: pa.RecordBatch) -> list[pa.Buffer]:
        """The frames of a record, zero-copy (they alias the ring slot the batch lives in)."""
        storage = batch.column(self._tensor_index).storage  # FixedSizeListArray over the ring
        values = storage.values
        fb = self._frame_bytes
        base = (values.offset + storage.offset * self._frame_items) * self._frame_dtype.itemsize
        buf = values.buffers()[1]
        return [buf.slice(base + i * fb, fb) for i in range(batch.num_rows)]

    def append(self, batch: pa.RecordBatch, still_valid: Callable[[], bool] | None = None,
               chunks: list[bytes] | None = None) -> int:
        """Append all rows; returns the bytes handed to HDF5, or -1 if ``still_valid()`` said,
        after the frames were written and the columns copied, that the batch's memory was
        overwritten meanwhile (a torn ring record). A torn record's rows are not kept: its frame
        chunks are overwritten by the next record or cut off by :meth:`settle`. ``chunks``: the
        record's frames already compressed (:meth:`Hdf5Sink.prepare`), written instead of them."""
        k = batch.num_rows
        if k == 0:
            return 0
        n0 = self.n
        nbytes = 0
        if self.tensor is not None:
            ds_id = self.tensor[1].id
            if n0 + k > self._extent:
                self._extent = n0 + k
                ds_id.set_extent((self._extent, *self._frame_shape))
            fb = self._frame_bytes
            zeros = (0,) * len(self._frame_shape)
            if chunks is None and self.encoder is not None:
                chunks = [self.encoder.encode(f) for f in self.frames(batch)]  # not prepared: here
            if chunks is not None:
                if len(chunks) != k:
                    raise ValueError(f"{len(chunks)} compressed frames for a record of {k}")
                for i, chunk in enumerate(chunks):
                    ds_id.write_direct_chunk((n0 + i, *zeros), chunk)
                    nbytes += len(chunk)
                frames: list[Any] = []
            else:
                frames = self.frames(batch)  # zero-copy: the ring slot's pixels
            for i, chunk in enumerate(frames):
                if self.compressor is not None:
                    frame = np.frombuffer(chunk, self._frame_dtype).reshape(self._frame_shape)
                    chunk = self.compressor.compress(frame)
                elif self.direct is not None and self._write_direct(ds_id, (n0 + i, *zeros), chunk):
                    nbytes += fb
                    continue
                ds_id.write_direct_chunk((n0 + i, *zeros), chunk)
                nbytes += len(chunk)
        frame_nbytes = nbytes
        copies = []
        for idx, dt in zip(self._col_index, self._col_dtype, strict=True):
            col = batch.column(idx)
            data = np.frombuffer(col.buffers()[1], dtype=dt, count=col.offset + k)[col.offset :]
            copies.append(data.copy())  # own the values: the ring slot may be reused after this call
            nbytes += k * dt.itemsize
        if still_valid is not None and not still_valid():
            return -1
        for pend, c in zip(self._pending, copies, strict=True):
            pend.append(c)
        if self.tensor is not None:
            self.raw_frame_bytes += k * self._frame_bytes
            self.stored_frame_bytes += frame_nbytes
        self._pending_rows += k
        self.n = n0 + k
        return nbytes

    def _write_direct(self, ds_id: h5py.h5d.DatasetID, coord: tuple[int, ...], chunk: Any) -> bool:
        """Write one frame with O_DIRECT into the chunk space HDF5 reserved for it; False
        (nothing written) when that is not possible, for the caller to write it buffered."""
        assert self.direct is not None
        info = ds_id.get_chunk_info_by_coord(coord)
        offset = info.byte_offset
        if offset is None or info.size != self._frame_bytes or offset % direct_io.BLOCK:
            return False
        if self.direct.write(offset, chunk):
            return True
        self.direct = None  # the file system refused O_DIRECT after all: buffered from now on
        return False

    def settle(self) -> None:
        """Write the buffered column rows and cut a torn trailing frame: afterwards every dataset
        of the stream has exactly :attr:`n` rows (what a flush makes visible)."""
        if self.tensor is not None and self._extent != self.n:
            self._extent = self.n
            self.tensor[1].id.set_extent((self.n, *self._frame_shape))
        if self._pending_rows:
            n0, n1 = self._written, self._written + self._pending_rows
            for (_, ds, _), pend in zip(self.columns, self._pending, strict=True):
                arr = pend[0] if len(pend) == 1 else np.concatenate(pend)
                ds.resize(n1, axis=0)
                ds[n0:n1] = arr
                pend.clear()
            self._written = n1
            self._pending_rows = 0

    def truncate(self, n: int) -> None:
        """Forget rows from ``n`` on (a record found torn after it was appended)."""
        if n >= self.n:
            return
        if n >= self._written:
            keep = n - self._written
            for i, pend in enumerate(self._pending):
                arr = np.concatenate(pend) if pend else np.empty(0, self._col_dtype[i])
                self._pending[i] = [arr[:keep]] if keep else []
            self._pending_rows = keep
        else:
            for i, (_, ds, _) in enumerate(self.columns):
                ds.resize(n, axis=0)
                self._pending[i] = []
            self._pending_rows = 0
            self._written = n
        self.n = n
        if self.tensor is not None:
            self._extent = n
            self.tensor[1].id.set_extent((n, *self._frame_shape))

    def close(self) -> None:
        if self.compressor is not None:
            self.compressor.close()
            self.compressor = None


class DiskNearlyFull(OSError):
    """Raised by :class:`SpaceGuard` before the disk is full: the file is intact and can still
    be closed normally, with everything appended so far."""


class SpaceGuard:
    """Ends a recording shortly before its file system is full, so the file still closes cleanly.

    When the disk fills in the middle of HDF5's metadata flush, the file is left half-written
    and HDF5's handles in this process half-closed. Stopping while :attr:`reserve` plus twice
    the next record are still free leaves room for the final flush (which may allocate one new
    chunk per scalar column), the end time, loss counts and the end manifest. Free space is asked
    of the file system (``statvfs``) once a second and whenever the running estimate gets close
    to the limit, so other writers on the same disk are noticed too.
    """

    RESERVE_BYTES = 1024 * 1024  # metadata, manifest and slack; the sink adds its column chunks

    def __init__(self, path: str) -> None:
        self.folder = os.path.dirname(os.path.abspath(path))
        self.reserve = self.RESERVE_BYTES
        self._free = self._ask()
        self._asked = time.monotonic()

    def _ask(self) -> int:
        st = os.statvfs(self.folder)
        return st.f_bavail * st.f_frsize

    def take(self, nbytes: int) -> None:
        """Account for ``nbytes`` about to be written; raises ``OSError(ENOSPC)`` instead if that
        would leave less than the reserve."""
        needed = self.reserve + 2 * nbytes
        if self._free < 4 * needed or time.monotonic() - self._asked > 1.0:
            self._free = self._ask()
            self._asked = time.monotonic()
        if self._free < needed:
            raise DiskNearlyFull(
                errno.ENOSPC,
                f"No space left on device: the recording stopped with {self._free / 2**20:.1f} MiB free in "
                f"{self.folder} so that its file closes cleanly; free space there (or choose another "
                f"OutputDir) and start a new recording",
            )
        self._free -= nbytes


def _reserve_chunks() -> dict[str, Any]:
    """Dataset creation keywords that make HDF5 reserve a chunk's file space when the dataset
    grows, without writing fill values: the frames are then written there with O_DIRECT."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return {"dcpl": dcpl, "fill_time": "never"}


def _store_value(group: h5py.Group, name: str, value: Any) -> h5py.Dataset:
    """Store a manifest or metadata value as the most natural HDF5 dataset."""
    if value is None:
        return group.create_dataset(name, data="")
    if isinstance(value, str | bytes):
        return group.create_dataset(name, data=value)
    if isinstance(value, Mapping):
        return group.create_dataset(name, data=json.dumps(value, default=str))
    arr = np.asarray(value)
    if arr.dtype.kind in "OU":
        if arr.dtype.kind == "O" and not all(isinstance(x, str | bytes) for x in arr.ravel()):
            return group.create_dataset(name, data=json.dumps(value, default=str))
        return group.create_dataset(name, data=arr.astype(object), dtype=h5py.string_dtype())
    return group.create_dataset(name, data=arr)


def write_tree(group: h5py.Group, tree: Mapping[str, Any]) -> None:
    """Store a JSON-like tree (the recording's user metadata): mappings become NXcollection
    groups, everything else datasets."""
    for key, value in tree.items():
        name = _group_name(str(key))
        if isinstance(value, Mapping):
            sub = group.create_group(name)
            sub.attrs["NX_class"] = "NXcollection"
            write_tree(sub, value)
        else:
            _store_value(group, name, value)


def check_metadata(tree: Mapping[str, Any]) -> None:
    """Raise ValueError if ``tree`` cannot be stored as a recording's metadata: it is written
    into an in-memory HDF5 file first, so a value HDF5 refuses (two keys that become the same
    group name, text that is not UTF-8...) is refused before any file exists."""
    mem = h5py.File(f"metadata-check-{id(tree)}", "w", driver="core", backing_store=False)
    try:
        write_tree(mem, tree)
    except (TypeError, ValueError, UnicodeError, OverflowError, RuntimeError, OSError) as exc:
        raise ValueError(f"'metadata' cannot be stored in HDF5: {exc}") from None
    finally:
        mem.close()


class Hdf5Sink:
    """Writes one recording: create the layout, write the start manifest, switch to SWMR, append
    record batches, flush, and finish with ``close(manifest_end)``. Not thread-safe: one thread.

    OSErrors (disk full, folder not writable) propagate unchanged; call :meth:`abort` after one
    to release the file, which keeps everything up to the last :meth:`flush`.
    """

    def __init__(
        self,
        path: str,
        streams: list[StreamSpec],
        *,
        title: str = "",
        metadata: Mapping[str, Any] | None = None,
        compression: str = "none",
        chunk_rows: int = 16384,
        continues: str = "",
    ) -> None:
        """``continues``: the file of a crashed recording this one goes on from (stored as
        ``/entry/continues``; that file names this one in ``/entry/continued_in``)."""
        compression = check_compression(compression)  # ValueError naming the allowed values
        self.path = path
        self.compression = compression
        #: worker threads compressing Blosc2 frames (see :meth:`prepare`); None for other values
        self._pool: CompressionPool | None = CompressionPool() if compression in BLOSC2_CODECS else None
        self.chunk_rows = chunk_rows
        self.bytes_written = 0
        self._streams: dict[str, _StreamDatasets] = {}
        self._swmr = False
        self._closed = False
        self._direct: direct_io.DirectChunkWriter | None = None
        self._space = SpaceGuard(path)
        self._file = h5py.File(path, "w", libver="latest", **direct_io.FILE_ALIGNMENT)
        self._dropper: PageCacheDropper | None = None  # compressed frames: see PageCacheDropper
        try:
            if compression == "none":
                self._direct = direct_io.DirectChunkWriter(path)
            elif self._pool is not None:
                self._dropper = PageCacheDropper(path)
            self._build(streams, title, dict(metadata or {}), chunk_rows)
            if continues:
                entry = self._file["entry"]
                entry.attrs["continues"] = continues
                entry.create_dataset("continues", data=continues)
        except BaseException:
            self.abort()
            raise

    def _build(self, streams: list[StreamSpec], title: str, metadata: dict, chunk_rows: int) -> None:
        f = self._file
        now = _now_iso()
        f.attrs.update(
            NX_class="NXroot",
            default="entry",
            file_name=os.path.basename(self.path),
            file_time=now,
            creator=f"tangodaq DataWriter {package_version()}",
            HDF5_Version=h5py.version.hdf5_version,
            h5py_version=h5py.version.version,
        )
        entry = f.create_group("entry")
        entry.attrs.update(NX_class="NXentry", default="data")
        entry.create_dataset("title", data=title or os.path.splitext(os.path.basename(self.path))[0])
        entry.create_dataset("start_time", data=now)
        prog = entry.create_dataset("program_name", data="tangodaq DataWriter")
        prog.attrs.update(version=package_version(), host=socket.gethostname(), pid=os.getpid())
        try:
            prog.attrs["user"] = getpass.getuser()
        except Exception:  # no passwd entry in a container
            pass
        meta = entry.create_group("user_metadata")
        meta.attrs["NX_class"] = "NXcollection"
        self._write_tree(meta, metadata)
        instrument = entry.create_group("instrument")
        instrument.attrs["NX_class"] = "NXinstrument"
        for spec in streams:
            self._create_stream(spec)
        self._link_default_plot(f)

    def _create_stream(self, spec: StreamSpec, key: str | None = None, attrs: Mapping[str, Any] | None = None) -> str:
        """Create the dataset group of a stream (``<label>``, else ``<label>_2``, ``_3``, ...
        when the device group already has one) and return the key to append to."""
        instrument = self._file["entry/instrument"]
        dev_name = _device_group_name(spec.device)
        dev = instrument.require_group(dev_name)
        if "tango_device" not in dev.attrs:
            dev.attrs["tango_device"] = spec.device
            dev.attrs["NX_class"] = "NXsensor"
        if spec.is_frames():
            dev.attrs["NX_class"] = "NXdetector"
        base = _group_name(spec.label)
        name, i = base, 1
        while name in dev:
            i += 1
            name = f"{base}_{i}"
        if key is None:
            key, j = spec.name, 1
            while key in self._streams:
                j += 1
                key = f"{spec.name}#{j}"
        grp = dev.create_group(name)
        try:
            sd = _StreamDatasets(grp, spec, self.compression, self.chunk_rows, self._direct)
        except BaseException:
            del dev[name]
            raise
        for k, v in (attrs or {}).items():
            grp.attrs[k] = v
        self._streams[key] = sd
        self._space.reserve = SpaceGuard.RESERVE_BYTES + sum(
            ds.chunks[0] * ds.dtype.itemsize for st in self._streams.values() for _, ds, _ in st.columns
        )
        return key

    def _link_default_plot(self, f: h5py.File, relink: bool = False) -> None:
        """``/entry/data`` (NXdata, the default plot): links to the first frame stream's data,
        else to the first stream's values. Made when the first stream exists; ``relink`` (at
        close) moves it to a frame stream that appeared after a scalar one."""
        if not self._streams:
            return
        primary = next((s for s in self._streams.values() if s.tensor is not None), next(iter(self._streams.values())))
        entry = f["entry"]
        if "data" in entry:
            if not relink or entry["data"].attrs.get("stream") == primary.spec.name:
                return
            del entry["data"]
        data = entry.create_group("data")
        data.attrs.update(NX_class="NXdata", signal="data")
        base = primary.group_path
        names = [c for c, _, _ in primary.columns]
        if primary.tensor is not None:
            data["data"] = f[f"{base}/data"]
            if "frame_number" in names:
                data["frame_number"] = f[f"{base}/frame_number"]
                data.attrs["axes"] = ["frame_number"] + ["."] * len(primary._frame_shape)
                data.attrs["frame_number_indices"] = 0
        else:
            data["data"] = f[f"{base}/{'value' if 'value' in names else names[-1]}"]
            ts = next((c for c, _, t in primary.columns if t), None)
            if ts is not None:
                data["timestamp"] = f[f"{base}/{ts}"]
                data.attrs["axes"] = ["timestamp"]
                data.attrs["timestamp_indices"] = 0
        data.attrs["stream"] = primary.spec.name

    def add_stream(self, spec: StreamSpec, *, attrs: Mapping[str, Any] | None = None) -> str:
        """Add a stream during the recording (a ring that appeared, or was re-created with
        another frame shape); returns the key for :meth:`append`. ``attrs`` go on its group
        (e.g. why it exists). Raises ValueError for a schema that cannot be recorded.

        HDF5 cannot create objects in SWMR mode, so in SWMR mode the file is flushed, closed,
        reopened read/write, extended and switched back to SWMR (a few ms; SWMR readers keep
        their handle and see the new group after reopening the file).
        """
        if not self._swmr:
            key = self._create_stream(spec, attrs=attrs)
            self._link_default_plot(self._file)
            return key
        self._settle_all()
        self._file.close()
        self._file = _open_read_write(self.path)
        try:
            for sd in self._streams.values():
                sd.attach(self._file)
            key = self._create_stream(spec, attrs=attrs)
            self._link_default_plot(self._file)
        finally:
            self._file.swmr_mode = True
        return key

    def _write_tree(self, group: h5py.Group, tree: Mapping[str, Any]) -> None:
        write_tree(group, tree)

    def prepare(self, stream: str, batch: pa.RecordBatch) -> Future[list[bytes]] | None:
        """Start compressing the frames of a record in a worker thread; None when the stream's
        frames are not compressed that way (append the record as it is). The batch may alias a
        ring slot: once the Future is done, append the record with its result
        (``append_record(..., chunks=future.result())``), which checks the record is still valid
        (the compression read the slot), so a frame overwritten meanwhile is never kept."""
        sd = self._streams[stream]
        if self._pool is None or sd.encoder is None or batch.num_rows == 0:
            return None
        return self._pool.submit(sd.encoder, sd.frames(batch))

    @property
    def compression_workers(self) -> int:
        """Worker threads compressing frames (0: frames are written by the calling thread)."""
        return self._pool.workers if self._pool is not None else 0

    @property
    def compression_ratio(self) -> float:
        """Frame bytes appended / bytes they take in the file (1.0 for raw frames, 0 if none yet)."""
        raw = sum(sd.raw_frame_bytes for sd in self._streams.values())
        stored = sum(sd.stored_frame_bytes for sd in self._streams.values())
        return raw / stored if stored else 0.0

    @property
    def frame_io(self) -> str:
        """How frames reach the disk: "O_DIRECT (n frames, ...)", "buffered (reason)" or
        "compressed (filter)"."""
        if self._pool is not None:
            ratio = self.compression_ratio
            return (f"compressed ({self.compression} in {self._pool.workers} worker threads, write_direct_chunk"
                    + (f", ratio {ratio:.2f})" if ratio else ")"))
        if self.compression != "none":
            return f"compressed ({self.compression}, write_direct_chunk)"
        if self._direct is None:
            return "buffered"
        if self._direct.available and not any(sd.direct is not None for sd in self._streams.values()):
            return "buffered (no frames of whole 4 KiB blocks, 64 KiB or more)"
        return self._direct.describe()

    @property
    def stream_names(self) -> list[str]:
        return list(self._streams)

    def rows(self, stream: str) -> int:
        return self._streams[stream].n

    def progress(self) -> dict[str, dict[str, int]]:
        """Rows and losses of every dataset group, by HDF5 path (for the recovery journal)."""
        return {sd.group_path: {"rows": sd.n, "lost": sd.lost} for sd in self._streams.values()}

    def group_path(self, stream: str) -> str:
        """HDF5 path of the dataset group a stream key appends to."""
        return self._streams[stream].group_path

    def write_manifest(self, kind: str, manifest: Mapping[str, Mapping[str, Any]]) -> None:
        """Store ``{device: {attribute: {"value", "unit", "quality", "time", "error"}}}`` under
        ``/entry/instrument/manifest_<kind>``; a device entry ``{"error": text}`` records an
        unreachable device. Only before :meth:`start_swmr` or from :meth:`close`."""
        if self._swmr:
            raise RuntimeError("HDF5 cannot create the manifest while the file is in SWMR mode")
        self._write_manifest(self._file, kind, manifest)

    @staticmethod
    def _write_manifest(f: h5py.File, kind: str, manifest: Mapping[str, Any]) -> None:
        grp = f["entry/instrument"].create_group(f"manifest_{kind}")
        grp.attrs["NX_class"] = "NXcollection"
        grp.attrs["time"] = _now_iso()
        for device, attrs in manifest.items():
            dg = grp.require_group(_device_group_name(device))
            dg.attrs["NX_class"] = "NXcollection"
            dg.attrs["tango_device"] = device
            if isinstance(attrs, Mapping) and isinstance(attrs.get("error"), str) and "value" not in attrs:
                dg.attrs["error"] = attrs["error"]
                continue
            for aname, entry in attrs.items():
                entry = dict(entry) if isinstance(entry, Mapping) else {"value": entry}
                try:
                    ds = _store_value(dg, _group_name(aname), entry.get("value"))
                except (TypeError, ValueError) as exc:
                    ds = _store_value(dg, _group_name(aname), "")
                    entry["error"] = f"cannot store value in HDF5: {exc}"
                ds.attrs["tango_attribute"] = aname
                for key in ("unit", "quality", "time", "error", "description", "enum_labels"):
                    v = entry.get(key)
                    if v not in (None, ""):
                        ds.attrs["units" if key == "unit" else key] = v

    def start_swmr(self) -> None:
        """From now on readers may open the file with ``swmr=True`` while it grows."""
        self._file.swmr_mode = True
        self._swmr = True

    def append(self, stream: str, batch: pa.RecordBatch) -> tuple[int, int]:
        """Append a record batch; returns (rows before, bytes written) so a caller that finds the
        record torn afterwards can undo it with :meth:`truncate`."""
        s = self._streams[stream]
        n0 = s.n
        self._space.take(batch.nbytes)
        nbytes = s.append(batch)
        self.bytes_written += nbytes
        return n0, nbytes

    def append_record(self, stream: str, batch: pa.RecordBatch, still_valid: Callable[[], bool],
                      chunks: list[bytes] | None = None) -> bool:
        """Append a batch that aliases a ring slot; ``still_valid`` (the record's seqlock check)
        is called after its bytes were handed to HDF5. Returns False, keeping nothing of the
        batch, when the producer overwrote the slot meanwhile. ``chunks``: its frames compressed
        by :meth:`prepare`."""
        self._space.take(batch.nbytes)  # an upper bound for compressed frames
        nbytes = self._streams[stream].append(batch, still_valid, chunks)
        if nbytes < 0:
            return False
        self.bytes_written += nbytes
        if self._dropper is not None:
            self._dropper.wrote(nbytes)
        return True

    def truncate(self, stream: str, rows: int, nbytes: int = 0) -> None:
        self._streams[stream].truncate(rows)
        self.bytes_written -= nbytes

    def set_lost(self, stream: str, lost: int) -> None:
        self._streams[stream].lost = lost

    def flush(self) -> None:
        """Make everything appended so far visible to SWMR readers and durable against a crash."""
        self._settle_all()
        self._file.flush()

    def _settle_all(self) -> None:
        for sd in self._streams.values():
            sd.settle()

    def close(self, manifest_end: Mapping[str, Any] | None = None) -> None:
        """Finish the recording: close the SWMR session, then add end time, loss counts and the
        end manifest in ordinary read/write mode."""
        if self._closed:
            return
        self.flush()
        self._release()
        with _open_read_write(self.path) as f:
            entry = f["entry"]
            entry.create_dataset("end_time", data=_now_iso())
            for s in self._streams.values():
                grp = f[s.group_path]
                grp.create_dataset("lost_records", data=np.int64(s.lost))
                grp.attrs["records"] = s.n
            if manifest_end is not None:
                self._write_manifest(f, "end", manifest_end)
            self._link_default_plot(f, relink=True)

    def _release(self) -> None:
        self._closed = True
        if self._pool is not None:
            self._pool.close()
        if self._dropper is not None:
            self._dropper.close()
        for s in self._streams.values():
            s.close()
        if self._direct is not None:
            self._direct.close()
        try:
            self._file.close()
        except BaseException:
            self._disarm()
            raise

    def _disarm(self) -> None:
        """After a failed close (disk full) HDF5 has half-closed some objects; closing them again
        when their Python wrappers are garbage collected crashes the process (H5D_close on freed
        memory). Lock the wrappers so their deallocation leaves the HDF5 ids alone: the file's
        handle leaks, the process survives."""
        ids = [self._file.id]
        for s in self._streams.values():
            if s.tensor is not None:
                ids.append(s.tensor[1].id)
            ids.extend(ds.id for _, ds, _ in s.columns)
        for oid in ids:
            try:
                oid.locked = True
            except Exception:  # noqa: BLE001 - best effort on an already broken file
                pass

    def abort(self) -> None:
        """Release the file after an error, keeping what was flushed; never raises."""
        if self._closed:
            return
        try:
            self._release()
        except Exception:  # the disk is full or gone: HDF5 may fail to write its last metadata
            self._closed = True


def _open_read_write(path: str) -> h5py.File:
    """Reopen a recording read/write. SWMR readers in other processes (a live viewer) may hold
    a shared file lock that refuses a writer; then open without locking: those readers keep
    their handle and see the additions once they reopen the file."""
    try:
        return h5py.File(path, "r+", libver="latest", **direct_io.FILE_ALIGNMENT)
    except BlockingIOError:
        return h5py.File(path, "r+", libver="latest", locking=False, **direct_io.FILE_ALIGNMENT)


def open_recording(path: str) -> h5py.File:
    """Open a recording for reading, during or after the recording, or after a writer crash.
    Compressed frames decode as long as hdf5plugin is installed (imported here to register its
    filters: plain h5py does not know them)."""
    try:
        import hdf5plugin  # noqa: F401
    except ImportError:  # raw recordings need nothing; a compressed one then says which filter is missing
        pass
    return h5py.File(path, "r", libver="latest", swmr=True)

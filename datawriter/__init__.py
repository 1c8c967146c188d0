"""tangodaq data plane: shared-memory Arrow rings and the HDF5/NeXus DataWriter.

Open a live stream from any process on the producing host::

    import datawriter
    datawriter.list_streams()                      # ['lab.camera.1.frames', 'lab.powermeter.1.power']
    r = datawriter.open_reader("lab.powermeter.1.power", seconds_back=10)
    for rec in r.records(timeout=1.0):             # pyarrow RecordBatches, losses counted in r.lost
        print(rec.batch.to_pandas())

Producers (device servers) use :func:`create_frame_stream` / :func:`create_scalar_stream` and hand
numpy arrays to the returned writer. Importing this package does not import Tango or h5py.
"""

from .ring import (
    FrameStreamWriter,
    Record,
    RingError,
    RingInUseError,
    RingReader,
    RingWriter,
    ScalarStreamWriter,
    create_frame_stream,
    create_scalar_stream,
    list_streams,
    open_reader,
    remove_stream,
    stream_info,
    stream_name,
)


def open_recording(path: str):  # noqa: ANN201 - h5py is imported lazily
    """Open a DataWriter file for reading, while it is written or after a writer crash (SWMR)."""
    from .hdf5_sink import open_recording as _open

    return _open(path)


__all__ = [
    "FrameStreamWriter",
    "Record",
    "RingError",
    "RingInUseError",
    "RingReader",
    "RingWriter",
    "ScalarStreamWriter",
    "create_frame_stream",
    "create_scalar_stream",
    "list_streams",
    "open_reader",
    "open_recording",
    "remove_stream",
    "stream_info",
    "stream_name",
]

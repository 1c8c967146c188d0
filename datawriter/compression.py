"""Frame compression for the DataWriter: what each ``Compression`` value means, and Blosc2 frames
compressed in worker threads.

``Compression`` values (the DataWriter property, :class:`datawriter.hdf5_sink.Hdf5Sink`):

* ``none``: raw frames (``O_DIRECT`` straight from the ring where the file system allows it);
* ``bitshuffle-lz4``, ``lz4``, ``zstd``: hdf5plugin's Bitshuffle/LZ4/Zstd filters. Each frame is
  pushed through HDF5's own filter pipeline in the writer thread (h5py holds one global lock, so
  these cannot run in parallel): about 30 fps of 2048x2048 frames;
* ``blosc2-lz4`` (Blosc2, LZ4, bit shuffle: the fast one) and ``blosc2-zstd`` (Blosc2, zstd level
  1, bit shuffle, 1 MiB blocks: the dense one): each frame is compressed by python-blosc2 in a
  pool of worker threads that release the GIL while compressing, so compression runs on every
  core while the writer thread writes the previous frames.

  Why bit shuffle and 1 MiB blocks for zstd rather than byte shuffle and Blosc2's own block size:
  on camera frames (an offset with read noise, a beam with shot noise) the low byte of every
  pixel is mostly noise, which zstd chews through slowly after a byte shuffle; after a bit
  shuffle the noise is confined to a few bit planes and the rest are runs. Measured on one core
  of the development VM with the simulated Prime BSI's 2048x2048 frames: 13-14 ms and ratio 3.6
  (byte shuffle) against 7-8 ms and ratio 3.85 (bit shuffle, 1 MiB blocks) with a 150 px beam,
  14 ms / 5.2 against 5-6 ms / 4.8 with the lab's 12 px one. Larger blocks give zstd more
  history at no cost in speed; beyond 1 MiB nothing changes. The bytes written are a Blosc2 contiguous frame
  holding one chunk (the frame), which is exactly what the standard HDF5 Blosc2 filter (id
  32026, hdf5plugin's ``Blosc2``) decodes, so ``h5py`` + ``import hdf5plugin`` (or silx) open the
  frames with no tangodaq code.

The filter's parameters (``cd_values``) are set by HDF5 itself when the dataset is created with
``hdf5plugin.Blosc2(...)``: ``(filter revision, block size, type size, chunk bytes, clevel,
shuffle, codec, rank, chunk shape...)``, the layout hdf5plugin's filter reads back. They only
matter for the filter compressing data itself; to decompress it reads everything from the
Blosc2 frame.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

#: The registered HDF5 filter id of Blosc2 (https://github.com/HDFGroup/hdf5_plugins, hdf5plugin).
BLOSC2_FILTER_ID = 32026


@dataclass(frozen=True)
class Blosc2Codec:
    """One Blosc2 setting: codec name as hdf5plugin spells it, level and shuffle."""

    cname: str  # "lz4" or "zstd"
    clevel: int
    bitshuffle: bool  # bit shuffle, else byte shuffle
    blocksize: int = 0  # bytes per Blosc2 block (0: Blosc2 chooses for the codec and level)

    def hdf5plugin_filter(self) -> Any:
        """The dataset-creation arguments of hdf5plugin's Blosc2 filter for this setting."""
        import hdf5plugin

        shuffle = hdf5plugin.Blosc2.BITSHUFFLE if self.bitshuffle else hdf5plugin.Blosc2.SHUFFLE
        return hdf5plugin.Blosc2(cname=self.cname, clevel=self.clevel, filters=shuffle)


#: The Blosc2 values of ``Compression``, compressed in worker threads.
BLOSC2_CODECS: dict[str, Blosc2Codec] = {
    "blosc2-lz4": Blosc2Codec("lz4", 5, bitshuffle=True),
    "blosc2-zstd": Blosc2Codec("zstd", 1, bitshuffle=True, blocksize=1 << 20),
}
#: The values HDF5 compresses itself through its filter pipeline, in the writer thread.
PIPELINE_FILTERS = ("bitshuffle-lz4", "lz4", "zstd")
COMPRESSIONS = ("none", *PIPELINE_FILTERS, *BLOSC2_CODECS)


def check_compression(value: Any) -> str:
    """The compression value itself, or ValueError saying what the allowed values are and, for a
    codec whose package is missing, what to install."""
    if value in ("", None):
        return "none"
    if not isinstance(value, str) or value not in COMPRESSIONS:
        raise ValueError(f"unknown compression {value!r}: the Compression property must be one of "
                         f"{', '.join(COMPRESSIONS)}")
    if value in BLOSC2_CODECS:
        try:
            import blosc2  # noqa: F401
            import hdf5plugin  # noqa: F401
        except ImportError as exc:
            raise ValueError(f"compression {value!r} needs the python-blosc2 and hdf5plugin packages "
                             f"(pip install blosc2 hdf5plugin): {exc}") from exc
    elif value != "none":
        try:
            import hdf5plugin  # noqa: F401
        except ImportError as exc:
            raise ValueError(f"compression {value!r} needs the hdf5plugin package (pip install hdf5plugin): "
                             f"{exc}") from exc
    return value


def filter_kwargs(compression: str) -> dict[str, Any]:
    """``create_dataset`` arguments that declare the filter of a compressed frame dataset."""
    compression = check_compression(compression)
    if compression == "none":
        return {}
    if compression in BLOSC2_CODECS:
        return dict(BLOSC2_CODECS[compression].hdf5plugin_filter())
    import hdf5plugin

    if compression == "bitshuffle-lz4":
        return dict(hdf5plugin.Bitshuffle(cname="lz4"))
    if compression == "lz4":
        return dict(hdf5plugin.LZ4())
    return dict(hdf5plugin.Zstd())


def default_workers() -> int:
    """Worker threads for Blosc2: one per core (each compresses whole frames single-threaded,
    which scales better than Blosc2's own threads splitting one frame)."""
    return max(1, min(os.cpu_count() or 1, 8))


class Blosc2FrameEncoder:
    """Turns one frame (any buffer of ``frame_bytes``) into the bytes the HDF5 Blosc2 filter
    stores for one chunk: a Blosc2 contiguous frame (cframe) with the frame as its one chunk.

    Thread-safe: every call uses its own Blosc2 context, and python-blosc2 releases the GIL while
    compressing and serialising (:func:`blosc2.set_releasegil`)."""

    _gil_lock = threading.Lock()
    _gil_released = False

    def __init__(self, compression: str, typesize: int, frame_bytes: int) -> None:
        import blosc2

        codec = BLOSC2_CODECS[compression]
        with Blosc2FrameEncoder._gil_lock:
            if not Blosc2FrameEncoder._gil_released:
                blosc2.set_releasegil(True)  # process-wide; off by default in python-blosc2
                Blosc2FrameEncoder._gil_released = True
        self._blosc2 = blosc2
        self.compression = compression
        self.frame_bytes = frame_bytes
        self._cparams = blosc2.CParams(
            codec=blosc2.Codec.LZ4 if codec.cname == "lz4" else blosc2.Codec.ZSTD,
            clevel=codec.clevel,
            filters=[blosc2.Filter.BITSHUFFLE if codec.bitshuffle else blosc2.Filter.SHUFFLE],
            typesize=typesize,
            nthreads=1,
            blocksize=codec.blocksize,
        )

    def encode(self, frame: Any) -> bytes:
        """Compress one frame; ``frame`` is read once, during this call (a ring slot may be passed
        as long as its record is checked for validity afterwards).

        ``SChunk(data=...)`` compresses without the GIL into a buffer it owns and ``to_cframe``
        serialises without it too: the GIL is held only for one copy of the compressed bytes into
        the returned ``bytes`` (``compress2`` would also zero a frame-sized output buffer and copy
        the result twice while holding it, which stalls the writer thread)."""
        b2 = self._blosc2
        return b2.SChunk(chunksize=self.frame_bytes, data=frame, cparams=self._cparams).to_cframe()


_malloc_tuned = False


def keep_large_buffers() -> bool:
    """Make glibc keep freed frame-sized buffers for reuse (process-wide, once).

    Blosc2 allocates an output buffer the size of the frame for every frame it compresses. glibc
    serves allocations of that size with a fresh ``mmap`` and returns them with ``munmap``, so
    each frame costs a few thousand page faults and the kernel zeroing 8 MiB: measured here, that
    was a third of the recording's CPU time. With the mmap threshold above a frame and a high trim
    threshold the buffers come from the heap and are reused. Returns whether it could be set (not
    on a C library other than glibc).
    """
    global _malloc_tuned
    if _malloc_tuned:
        return True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = bool(libc.mallopt(m_mmap_threshold, 64 << 20)) and bool(libc.mallopt(m_trim_threshold, 512 << 20))
    except (OSError, AttributeError):
        return False
    _malloc_tuned = ok
    return ok


class PageCacheDropper:
    """Keeps a recording's written data out of the page cache, in a thread of its own.

    Compressed chunks vary in size, so they cannot go to disk with ``O_DIRECT`` into space HDF5
    reserved (:mod:`datawriter.direct_io`) and take the buffered path. Left alone, the page
    cache fills with their dirty, then clean, pages: each write lands in freshly allocated
    memory and the kernel throttles the writer when writeback falls behind. Measured here,
    2.4 MB buffered writes took 1.5-3.3 ms each that way and 0.6 ms when the file's pages were
    written back and dropped every ~60 MB (the freed pages are reused by the next writes). This
    thread does that (``fdatasync`` then ``POSIX_FADV_DONTNEED`` on its own descriptor of the
    file) whenever :meth:`wrote` has counted ``every_bytes``, outside the writer thread and
    without the GIL. It changes nothing in the file; it only makes the data durable sooner.
    """

    def __init__(self, path: str, every_bytes: int = 64 << 20) -> None:
        self.every_bytes = every_bytes
        self.error = ""  # why it stopped dropping ("" while it works)
        self._pending = 0
        self._cond = threading.Condition()
        self._closed = False
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        self._thread = threading.Thread(target=self._run, name=f"pagecache:{os.path.basename(path)}", daemon=True)
        self._thread.start()

    def wrote(self, nbytes: int) -> None:
        """Count bytes the writer handed to the kernel; wakes the thread every ``every_bytes``."""
        with self._cond:
            self._pending += nbytes
            if self._pending >= self.every_bytes:
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and self._pending < self.every_bytes:
                    self._cond.wait()
                if self._closed:
                    return
                self._pending = 0
            try:
                os.fdatasync(self._fd)
                os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError as exc:  # the recording's own writes report a failing disk
                self.error = str(exc)
                return

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()
        os.close(self._fd)


class CompressionPool:
    """Worker threads compressing frames for one recording (shared by its frame streams)."""

    def __init__(self, workers: int | None = None) -> None:
        keep_large_buffers()
        self.workers = workers or default_workers()
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="blosc2")

    def submit(self, encoder: Blosc2FrameEncoder, frames: list[Any]) -> Future[list[bytes]]:
        """Compress ``frames`` (the frames of one record) in a worker; the Future gives the chunks."""
        return self._pool.submit(lambda: [encoder.encode(f) for f in frames])

    def close(self) -> None:
        """Wait for running compressions (they may read ring memory a reader is about to close)
        and drop queued ones."""
        self._pool.shutdown(wait=True, cancel_futures=True)

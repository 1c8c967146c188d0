"""Frame chunks written with ``O_DIRECT`` at the file offsets HDF5 allocated for them.

Why: at 100 frames of 8 MiB per second, ordinary buffered writes go through the page cache.
Within seconds the dirty pages reach the kernel's limit and the writer is throttled to the
disk's writeback pace while the copy into the cache and the writeback compete for the CPU:
measured on the 2-core development VM, plain ``os.pwrite`` of 8 MiB blocks paced at 100/s held
80 fps at 98 % CPU over 30 s, the same with ``O_DIRECT`` held 100 fps at 6 % CPU (see
``benchmarks/bench_frames.py``, which prints both disk figures). ``O_DIRECT`` moves the bytes
from the ring's shared memory to the device without a copy and without dirty pages.

How, keeping a plain HDF5 file: the frame dataset is created with early allocation and no fill
(``H5D_ALLOC_TIME_EARLY``, ``H5D_FILL_TIME_NEVER``), so growing it reserves each chunk's space
in the file without writing anything; the file is opened with a 4 KiB alignment for large
objects, so every frame chunk starts on a block boundary; the chunk's address comes from
``H5Dget_chunk_info_by_coord`` and the frame is written there through a second, ``O_DIRECT``,
descriptor of the same file. HDF5 itself only writes metadata (index, extents) through its own
descriptor, flushed for SWMR readers as before. Readers see an ordinary chunked dataset.

``O_DIRECT`` needs the offset, the length and the memory address aligned to the block size:
offsets and lengths are by construction (frames whose size is not a multiple of 4 KiB, or
small ones, stay on the buffered ``write_direct_chunk`` path); a frame ring pads its slots so the
pixels are page aligned (:mod:`datawriter.ring_format`), and a misaligned buffer is copied into
an aligned bounce buffer first. A file system that refuses ``O_DIRECT`` (some network and FUSE
file systems) leaves the writer on the buffered path, with the reason in :attr:`unavailable`.
"""

from __future__ import annotations

import errno
import mmap
import os
from typing import Any

import numpy as np

BLOCK = 4096  # alignment of offsets, lengths and memory for O_DIRECT (>= any logical block size)
MIN_CHUNK = 64 * 1024  # smaller chunks are not worth it: buffered writes are fast for them
#: h5py.File keywords that place every object of MIN_CHUNK bytes or more on a BLOCK boundary
FILE_ALIGNMENT: dict[str, int] = {"alignment_threshold": MIN_CHUNK, "alignment_interval": BLOCK}


def suits(nbytes: int) -> bool:
    """Whether chunks of ``nbytes`` can be written with O_DIRECT."""
    return nbytes >= MIN_CHUNK and nbytes % BLOCK == 0


class DirectChunkWriter:
    """An ``O_DIRECT`` write descriptor of one file; :meth:`write` puts bytes at an offset."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.unavailable = ""  # why O_DIRECT is not used ("" while it is)
        self.frames_direct = 0
        self.frames_bounced = 0  # misaligned in memory: copied through the bounce buffer first
        self._bounce: mmap.mmap | None = None
        self._fd: int | None = None
        if not hasattr(os, "O_DIRECT"):
            self.unavailable = "this platform has no O_DIRECT"
            return
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC)
        except OSError as exc:
            self.unavailable = f"O_DIRECT refused by the file system ({exc.strerror})"

    @property
    def available(self) -> bool:
        return self._fd is not None

    def write(self, offset: int, data: Any) -> bool:
        """Write ``data`` (a buffer of a BLOCK multiple of bytes) at ``offset`` (a BLOCK
        multiple). Returns False, writing nothing, if the file system turns out to refuse
        O_DIRECT writes (the caller falls back to a buffered write); raises OSError for a real
        failure (disk full, I/O error)."""
        if self._fd is None:
            return False
        view = np.frombuffer(data, np.uint8)
        n = view.nbytes
        if offset % BLOCK or n % BLOCK:
            raise ValueError(f"O_DIRECT write of {n} bytes at {offset}: not {BLOCK}-byte aligned")
        if view.ctypes.data % BLOCK:
            if self._bounce is None or len(self._bounce) < n:
                self._bounce = mmap.mmap(-1, n)  # anonymous mappings are page aligned
            bounce = np.frombuffer(self._bounce, np.uint8, count=n)
            np.copyto(bounce, view)
            view = bounce
            self.frames_bounced += 1
        try:
            written = os.pwrite(self._fd, view, offset)
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # the file system accepted the open, not the write
                self.unavailable = f"O_DIRECT write refused by the file system ({exc.strerror})"
                self.close()
                return False
            raise
        if written != n:  # O_DIRECT short write: the device ran out of space part way
            raise OSError(errno.ENOSPC, f"short write of a frame chunk ({written} of {n} bytes)", self.path)
        self.frames_direct += 1
        return True

    def describe(self) -> str:
        if self._fd is None and self.unavailable:
            return f"buffered ({self.unavailable})"
        return f"O_DIRECT ({self.frames_direct} frames, {self.frames_bounced} through the bounce buffer)"

    def close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
        self._bounce = None

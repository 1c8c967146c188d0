"""A ring folder of a benchmark's own: rings made without a lab would otherwise go to the
default folder (``/dev/shm/tangodaq-10000`` when no database is configured), and that folder
stayed behind after the benchmark removed its rings."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator


@contextlib.contextmanager
def private_ring_folder(name: str) -> Iterator[str]:
    """``TANGODAQ_SHM_DIR`` set to a new folder under ``/dev/shm`` (processes started or forked
    meanwhile inherit it); the folder and whatever is left in it are removed afterwards."""
    folder = tempfile.mkdtemp(prefix=f"tangodaq-{name}-", dir="/dev/shm")
    old = os.environ.get("TANGODAQ_SHM_DIR")
    os.environ["TANGODAQ_SHM_DIR"] = folder
    try:
        yield folder
    finally:
        if old is None:
            os.environ.pop("TANGODAQ_SHM_DIR", None)
        else:
            os.environ["TANGODAQ_SHM_DIR"] = old
        shutil.rmtree(folder, ignore_errors=True)

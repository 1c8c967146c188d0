"""What Sardana's NeXus recorder wrote: the lab's scan file and its newest entry, as the system
tests read them back to check a scan against what the instruments and the GUI showed."""

from __future__ import annotations

from pathlib import Path

import h5py


def scan_file(lab) -> Path:
    """The lab's ScanFile (the MacroServer environment the lab's set-up seeds)."""
    return lab.home / "scans" / "scans.h5"


def last_entry(path: Path, locking: bool | None = None) -> dict:
    """The newest scan's measurement columns (the pre-scan snapshot left out), its ``title`` and
    whether it ``ended`` (Sardana writes ``end_time`` when a scan ends, stopped or not).
    ``locking=False`` reads a file the MacroServer still holds open (a paused scan)."""
    with h5py.File(path, "r", locking=locking) as f:
        name = sorted(f, key=lambda n: int(n.removeprefix("entry")))[-1]
        m = f[name]["measurement"]
        return ({k: m[k][()] for k in m if k != "pre_scan_snapshot"} | {"title": f[name]["title"][()].decode()}
                | {"ended": "end_time" in f[name]})

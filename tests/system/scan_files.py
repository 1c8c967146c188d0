"""What Sardana's NeXus recorder wrote: the lab's scan file and its newest entry, as the system
tests read them back to check a scan against what the instruments and the GUI showed."""

from __future__ import annotations

import json
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


def frames_of(references) -> list[tuple[str, str, int]]:
    """(file, dataset, index) of the camera channel's value references
    ``h5file://<file>::<dataset>#index=<i>`` (bytes as the scan file holds them, or str)."""
    out = []
    for ref in references:
        ref = ref.decode() if isinstance(ref, bytes) else str(ref)
        assert ref.startswith("h5file://") and "#index=" in ref, ref
        file, rest = ref.removeprefix("h5file://").split("::")
        dataset, index = rest.split("#index=")
        out.append((file, dataset, int(index)))
    return out


def set_camera_value_ref(lab, enabled: bool, group: str = "mg_camera") -> None:
    """Turn the camera channel's value referencing on or off in a measurement group, as a user
    does in Experiment Configuration (the 'Ref' column)."""
    mg = lab.proxy(group)
    conf = json.loads(mg.read_attribute("Configuration").value)
    for ctrl in conf["controllers"].values():
        for ch in ctrl["channels"].values():
            if ch["name"] == "camera":
                ch["value_ref_enabled"] = enabled
    mg.write_attribute("Configuration", json.dumps(conf))

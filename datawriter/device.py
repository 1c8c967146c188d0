"""The ``DataWriter`` Tango device: records shared-memory rings into HDF5/NeXus files.

A :class:`~deviceservers.common.device.ParameterDevice` like every instrument: the recordings,
their recovery and their counters live in :class:`~datawriter.component.DataWriterComponent`
(no Tango there); this class validates requests, reads the manifest devices, and maps the
component's Parameters (``Recording``, ``FilePath``, ``RecordsWritten``, ``BytesWritten``,
``WriteRate``, ``Backlog``, ``DroppedRecords``, ``LastRecovery``) to attributes with change and
archive events, and its derived state to State/Status, through the base device's one event thread.

States: ON idle, RUNNING recording (or finishing a recording), FAULT when a recording could not
start or ended on an error (disk full, unwritable folder) or the ``Compression`` property is not
usable, ALARM when a crashed recording could not be repaired; FAULT clears on the next successful
``StartRecording``. The device never lets an error escape into the server: command errors are
raised to the client as DevFailed with a reason, recorder errors become FAULT plus Status.

A recording whose server was killed is not lost silently: a journal next to the output
(:mod:`datawriter.recovery`) lets the restarted DataWriter repair the file (plainly readable,
end time, ``ended_abnormally``, losses), report it in Status and ``LastRecovery``, and continue
the recording in a new file linked both ways (``/entry/continued_in``, ``/entry/continues``).
``StartRecording`` refuses any argument it cannot honour exactly (``DataWriter_BadArgument``)
before anything is created.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import tango
from tango import AttrWriteType, DevState
from tango.server import attribute, command, device_property

from deviceservers.common import fault_log
from deviceservers.common.device import ParameterDevice
from tango_db.proxies import device_proxy

from .component import DataWriterComponent, RecordingRefused, WriterSettings
from .compression import COMPRESSIONS
from .hdf5_sink import check_metadata

STOP_WAIT_S = 2.0  # StopRecording and Init wait this long for the file to close (under the 3 s client time-out)
SHUTDOWN_WAIT_S = 10.0  # a server shutting down waits this long for the file to close before it exits


START_KEYS = {"name": "file name prefix and title (text, at most 200 characters)",
              "metadata": "JSON object stored under /entry/user_metadata",
              "pre_trigger_s": "seconds of ring history to include, 0..3600",
              "pre_trigger": "alias of pre_trigger_s"}
MAX_ARGUMENT_CHARS = 1 << 20
MAX_NAME_CHARS = 200  # with the date suffix the file name stays under the 255 bytes file systems allow
MAX_PRE_TRIGGER_S = 3600.0
MAX_METADATA_DEPTH = 16
MAX_METADATA_ITEMS = 1000


def _refuse_constant(text: str) -> float:
    raise ValueError(f"{text} is not a number a recording can use")


def _count_items(tree: Mapping[str, Any], depth: int = 1) -> int:
    if depth > MAX_METADATA_DEPTH:
        raise ValueError(f"'metadata' is nested deeper than {MAX_METADATA_DEPTH} levels")
    n = 0
    for value in tree.values():
        n += 1 + (_count_items(value, depth + 1) if isinstance(value, Mapping) else 0)
    return n


def parse_start_argument(argin: str) -> tuple[str, dict[str, Any], float]:
    """``StartRecording``'s JSON argument as (name, metadata, pre-trigger seconds).

    Raises ValueError for anything the recording cannot honour exactly: not a JSON object, an
    unknown key (a typo would otherwise give a file named ``recording_...``), NaN or infinite
    numbers, a name that is not text, too long for a file name or holds control characters
    (an embedded NUL cuts the file name short), metadata HDF5 cannot store, a pre-trigger that
    is not a finite number of seconds in range. Checked before anything is created, so a
    refusal has no side effect.
    """
    if len(argin) > MAX_ARGUMENT_CHARS:
        raise ValueError(f"the argument is longer than {MAX_ARGUMENT_CHARS} characters")
    try:
        params = json.loads(argin, parse_constant=_refuse_constant) if argin.strip() else {}
    except RecursionError:
        raise ValueError("the JSON is nested too deeply") from None
    if not isinstance(params, dict):
        raise ValueError("the argument must be a JSON object")
    unknown = sorted(set(params) - set(START_KEYS))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))}; the keys are "
                         + "; ".join(f"{k}: {v}" for k, v in START_KEYS.items()))
    name = params.get("name")
    if name is None:
        name = "recording"
    if not isinstance(name, str):
        raise ValueError(f"'name' must be text, not {type(name).__name__}")
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"'name' has {len(name)} characters; at most {MAX_NAME_CHARS}")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ValueError("'name' contains control characters (such as NUL or a line break)")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("'name' is not valid Unicode text (a lone surrogate)") from None
    name = name or "recording"
    metadata = params.get("metadata")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise ValueError("'metadata' must be a JSON object")
    if _count_items(metadata) > MAX_METADATA_ITEMS:
        raise ValueError(f"'metadata' has more than {MAX_METADATA_ITEMS} entries")
    check_metadata(metadata)
    if "pre_trigger_s" in params and "pre_trigger" in params:
        raise ValueError("give 'pre_trigger_s' or its alias 'pre_trigger', not both")
    pre = params.get("pre_trigger_s", params.get("pre_trigger"))
    if pre is None:
        pre = 0.0
    if isinstance(pre, bool) or not isinstance(pre, int | float):
        raise ValueError(f"'pre_trigger_s' must be a number of seconds, not {type(pre).__name__}")
    if not (0 <= pre <= MAX_PRE_TRIGGER_S):
        raise ValueError(f"'pre_trigger_s' must be between 0 and {MAX_PRE_TRIGGER_S:g} s, not {pre}")
    pre = float(pre)
    if not math.isfinite(pre):  # pragma: no cover - excluded by the range check
        raise ValueError("'pre_trigger_s' must be finite")
    return name, metadata, pre


def _plain(value: Any) -> Any:
    """A Tango attribute value as something HDF5 can store."""
    if isinstance(value, DevState):
        return str(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, list | tuple):
        return np.asarray(value)
    return value


def read_manifest(devices: list[str], timeout_ms: int = 2000) -> dict[str, dict[str, Any]]:
    """Value, unit, quality and time of every attribute of every device; errors are recorded,
    never raised (an unreachable device must not stop a recording)."""
    out: dict[str, dict[str, Any]] = {}
    for dev in devices:
        try:
            proxy = device_proxy(dev, timeout_ms)
            infos = {i.name: i for i in proxy.attribute_list_query_ex()}
            das = proxy.read_attributes(list(infos), extract_as=tango.ExtractAs.Numpy)
        except tango.DevFailed as exc:
            out[dev] = {"error": exc.args[0].desc.strip()}
            continue
        attrs: dict[str, Any] = {}
        for name, da in zip(infos, das, strict=True):
            info = infos[name]
            unit = "" if info.unit in ("No unit", "") else info.unit
            entry: dict[str, Any] = {"unit": unit, "description": "" if info.description == "No description" else info.description}
            if da.has_failed:
                errs = da.get_err_stack()
                entry["value"] = None
                entry["error"] = errs[0].desc.strip() if errs else "read failed"
            else:
                entry["value"] = _plain(da.value)
                entry["quality"] = str(da.quality)
                entry["time"] = da.time.totime()
                if info.data_type == tango.CmdArgType.DevEnum and info.enum_labels:
                    entry["enum_labels"] = list(info.enum_labels)
            attrs[name] = entry
        out[dev] = attrs
    return out


def manifest_devices_from_roles(own_name: str) -> list[str]:
    """Every instrument the lab's roles name (tango_db.roles), for an empty ManifestDevices:
    a renamed lab records its own devices with no list to keep in step. Sardana's servers and
    this DataWriter are left out."""
    from tango_db.roles import lab_roles

    out: list[str] = []
    for role, dev in sorted(lab_roles().items()):
        if role in {"pool", "macroserver", "door", "datawriter"} or dev.lower() == own_name.lower():
            continue
        if dev not in out:
            out.append(dev)
    return out


class DataWriter(ParameterDevice):
    """Records the lab's shared-memory data streams into HDF5/NeXus files (SWMR, readable while written)."""

    OutputDir = device_property(dtype=str, default_value="/tmp/tangodaq-data", doc="folder of the HDF5 files")
    Streams = device_property(dtype=(str,), default_value=[], doc="stream names to record (a stream whose ring does not exist yet is recorded from when it "
        "appears); empty: every ring, including rings that appear during the recording")
    ManifestDevices = device_property(
        dtype=(str,), default_value=[],
        doc="devices whose attributes are stored at start and end of each recording; "
        "empty: every instrument the lab's roles name (tango_db.roles)",
    )
    Compression = device_property(
        dtype=str, default_value="none",
        doc=f"frame compression, one of {', '.join(COMPRESSIONS)}: blosc2-lz4 (fast, Blosc2 LZ4 + bit shuffle) and "
        "blosc2-zstd (dense, Blosc2 zstd level 1 + bit shuffle) compress in worker threads at full frame rate; "
        "the other filters run in the writer thread (about 30 fps of full frames). All open with h5py + hdf5plugin",
    )

    component: DataWriterComponent

    def build_component(self) -> DataWriterComponent:
        """A new component, unless the one before an Init still finishes its recording: that one
        is kept with the new properties (for the next recording), so its end still reaches this
        device and its journal is never taken for a crash."""
        settings = WriterSettings(output_dir=self.OutputDir, streams=tuple(self.Streams), compression=self.Compression)
        finishing = getattr(self, "component", None)
        if isinstance(finishing, DataWriterComponent) and finishing.recording:
            finishing.configure(settings)
            return finishing
        return DataWriterComponent(
            self.get_name(), settings,
            manifest_devices=lambda: list(self.ManifestDevices) or manifest_devices_from_roles(self.get_name()),
            read_manifest=read_manifest,
            thread_context=tango.EnsureOmniThread,
            logger=self._log,
        )

    def delete_device(self) -> None:
        """Stop the recording (Init, server shutdown). An Init waits as long as a client waits for
        StopRecording and lets a longer stop finish in the background; a server shutting down
        waits longer, since its threads die with it."""
        component = getattr(self, "component", None)
        if component is not None:
            try:
                shutting_down = tango.Util.instance().is_svr_shutting_down()
            except tango.DevFailed:  # no Util (not in a server): treat as shutting down, wait longest
                shutting_down = True
            component.finish_wait_s = SHUTDOWN_WAIT_S if shutting_down else STOP_WAIT_S
        super().delete_device()

    # ------------------------------------------------------------------------- attributes

    @attribute(dtype=(str,), max_dim_x=1024, access=AttrWriteType.READ, doc="streams of the current/last recording, else those a recording would take")
    def StreamNames(self) -> list[str]:
        return [] if self.component is None else self.component.stream_names()

    # ------------------------------------------------------------------------- commands

    @command(dtype_in=str, doc_in='JSON {"name": str, "metadata": {...}, "pre_trigger_s": seconds}; '
             "any other key, or a value that cannot be honoured, is refused (DataWriter_BadArgument)",
             dtype_out=str, doc_out="file path")
    def StartRecording(self, argin: str) -> str:
        component = self.component
        if component is None:  # pragma: no cover - building the component does not fail on properties
            tango.Except.throw_exception("DataWriter_BadConfiguration", self.get_status(), "StartRecording")
        if component.recording:
            tango.Except.throw_exception(
                "DataWriter_Busy", f"already recording to {component.file_path}; call StopRecording first", "StartRecording"
            )
        try:
            name, metadata, pre = parse_start_argument(argin)
        except ValueError as exc:
            shown = argin if len(argin) <= 200 else argin[:200] + "..."
            fault_log.refused(self, "StartRecording", exc)
            tango.Except.throw_exception("DataWriter_BadArgument", f"bad StartRecording argument {shown!r}: {exc}",
                                         "StartRecording")
        try:
            return component.start_recording(name, metadata, pre)
        except RecordingRefused as exc:
            tango.Except.throw_exception(exc.reason, str(exc), "StartRecording")

    @command(dtype_out=str, doc_out="file path of the recording (also when it was already stopped)")
    def StopRecording(self) -> str:
        if self.component is None:  # pragma: no cover
            return ""
        return self.component.stop_recording(STOP_WAIT_S)


def main(args: list[str] | None = None, **kwargs: Any) -> None:
    """Console script ``DataWriter <instance>``."""
    DataWriter.run_server(args=args, **kwargs)


if __name__ == "__main__":
    main()

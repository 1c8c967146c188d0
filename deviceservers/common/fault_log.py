"""Fault history: every fault, alarm, recovery and refused command of a server, with its time.

A server's ordinary log shows "Ready to accept request" and little else, so after a night of
running nobody can tell when the meter lost its link, when the interlock opened or which
command was refused. This module keeps that history in one place for every device server:

* one line per event in a file per server, ``$TANGODAQ_LOG_DIR/<Server>_<instance>.faults.log``
  (``tangodaq up`` points TANGODAQ_LOG_DIR at the lab's logs folder; under Starter, set it in
  the server's environment); the file is rotated to ``.1`` at 5 MB;
* the same text through the device's Tango log streams (``error_stream`` for faults,
  ``warn_stream`` for alarms, recoveries and refusals), so it also reaches whatever log target
  Tango is configured with (Starter's log files, the LogViewer) when TANGODAQ_LOG_DIR is unset.

Events come from the shared layer, not from each instrument: state changes as the components
derive them (:func:`state_changed`, called by ``StateReporter``: FAULT, ALARM, DISABLE and the
return to a good state; interlocks and limit switches show up as the ALARM/FAULT they cause),
and refused commands and attribute writes (:func:`refused`, called by the base device). The
DataWriter reports its own faults and recoveries with :func:`record`.

Line format (UTC ISO time, device, event, text)::

    2026-11-28T08:41:47.602+00:00 lab/powermeter/1 FAULT No communication with ...
    2026-11-28T08:41:52.118+00:00 lab/powermeter/1 RECOVERED ON (after FAULT for 4.5 s): ...
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import sys
import threading
import time
from typing import Any

LOG_DIR_ENV = "TANGODAQ_LOG_DIR"
MAX_BYTES = 5 * 1024 * 1024
MAX_TEXT = 2000  # characters of one event (a refused write of a whole image stays one short line)
#: states that are a fault history event; leaving them for any other state is a recovery
BAD_STATES = {"FAULT": logging.ERROR, "UNKNOWN": logging.ERROR, "ALARM": logging.WARNING, "DISABLE": logging.WARNING}
#: a status that keeps changing within one bad state (a countdown...) is recorded at most this often
STATUS_REPEAT_S = 10.0

_lock = threading.Lock()
_since: dict[str, tuple[str, float, float]] = {}  # device -> (bad state, monotonic since, last status record)
_fallback = logging.getLogger("tangodaq.faults")


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


def server_name() -> str:
    """``<Server>_<instance>`` of this process (``Newport1830C_lab``), for the file name."""
    try:
        import tango

        name = tango.Util.instance(False).get_ds_name()
    except Exception:  # noqa: BLE001 - not a device server (tests, scripts): use the command line
        args = [a for a in sys.argv[1:] if not a.startswith("-")]
        name = os.path.splitext(os.path.basename(sys.argv[0] or "python"))[0] + (f"/{args[0]}" if args else "")
    return name.replace("/", "_").replace(os.sep, "_") or "server"


def log_path() -> str | None:
    """The fault history file of this server, or None when TANGODAQ_LOG_DIR is not set."""
    folder = os.environ.get(LOG_DIR_ENV, "").strip()
    if not folder:
        return None
    return os.path.join(folder, f"{server_name()}.faults.log")


def _append(line: str) -> None:
    path = log_path()
    if path is None:
        return
    with _lock:
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            try:
                if os.path.getsize(path) > MAX_BYTES:
                    os.replace(path, path + ".1")
            except FileNotFoundError:
                pass
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
        except OSError as exc:  # the history must never break the server; say it once per failure
            _fallback.warning("fault history not written to %s: %s", path, exc)


def record(device: str, event: str, text: str, level: int = logging.WARNING, log: Any = None) -> str:
    """Write one event to the server's fault history and to ``log`` (a logger forwarded to the
    device's Tango log streams, or a Tango device with ``error_stream``/``warn_stream``).
    Returns the line. Never raises."""
    text = " ".join(str(text).split())  # one line whatever the status looks like
    if len(text) > MAX_TEXT:
        text = text[:MAX_TEXT] + "..."
    line = f"{_now()} {device} {event} {text}"
    _append(line)
    try:
        if log is None:
            _fallback.log(level, "%s %s %s", device, event, text)
        elif isinstance(log, logging.Logger):
            log.log(level, "%s %s", event, text)
        elif level >= logging.ERROR:
            log.error_stream(f"{event} {text}")
        else:
            log.warn_stream(f"{event} {text}")
    except Exception:  # noqa: BLE001 - logging must never raise
        pass
    return line


def _device_of(log: logging.Logger | None) -> str:
    name = log.name if log is not None else "tangodaq"
    return name[len("tangodaq."):] if name.startswith("tangodaq.") else name


def state_changed(log: logging.Logger | None, old_state: Any, state: Any, status: str) -> None:
    """Called on every (state, status) change of a component: records entering a bad state,
    a new reason while in it, and the recovery. States are DeviceState members or names."""
    old = getattr(old_state, "value", str(old_state))
    new = getattr(state, "value", str(state))
    device = _device_of(log)
    now = time.monotonic()
    with _lock:
        since = _since.get(device)
        if new in BAD_STATES:
            if since is not None and since[0] == new:
                if now - since[2] < STATUS_REPEAT_S:
                    return  # same bad state, another wording of it: not a new event yet
                _since[device] = (new, since[1], now)
                event = new
            else:
                _since[device] = (new, now, now)
                event = new
        elif since is not None:
            del _since[device]
            event = "RECOVERED"
        else:
            return
    if event == "RECOVERED":
        assert since is not None
        record(device, event, f"{new} (after {since[0]} for {now - since[1]:.1f} s): {status}", logging.WARNING, log)
    else:
        prefix = f"(was {old}) " if old != new else ""
        record(device, event, prefix + status, BAD_STATES[new], log)


def refused(device: Any, origin: str, exc: BaseException) -> None:
    """Record a command or attribute write that raised: ``device`` is the Tango device."""
    try:
        name = device.get_name()
    except Exception:  # noqa: BLE001
        name = type(device).__name__
    reason = ""
    args = getattr(exc, "args", ())
    if args and hasattr(args[0], "reason"):  # a DevFailed raised by the command itself
        reason, text = args[0].reason, args[0].desc
    else:
        reason, text = type(exc).__name__, str(exc) or type(exc).__name__
    record(name, "REFUSED", f"{origin}: {reason}: {text}", logging.WARNING, device)

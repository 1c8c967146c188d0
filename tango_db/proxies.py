"""One way to reach a device from this tree: a ``DeviceProxy`` with the time-out its caller needs.

Every client in the project (the Sardana controllers, the macros, the launcher, the DataWriter's
snapshot, the laser lease) talks to devices through :func:`device_proxy`, so that a time-out is
always chosen on purpose and a device of another database is always named the same way. Tango's
default of 3 s is right for most calls; the named time-outs below say why a caller needs another.

This module imports nothing of the project but :mod:`tango`: servers, controllers and macros may
use it without pulling the launcher in.
"""

from __future__ import annotations

import tango

#: Tango's own default: a request answered from the device's cache, or one instrument exchange
DEFAULT_TIMEOUT_MS = 3000
#: a probe that must not hold up a listing of many devices (``tangodaq status``, the supervisor)
PROBE_TIMEOUT_MS = 1000
#: a command that confirms by readback behind a busy serial link (the Mai Tai's shutter: 2 s), or
#: a server that has just started and is still identifying its instrument
SLOW_COMMAND_TIMEOUT_MS = 10000


def full_name(name: str, tango_host: str = "") -> str:
    """``name`` on the database ``tango_host`` (``host:port``), as ``tango://host:port/name``; a
    name that already says its database, or no ``tango_host``, is returned as it is."""
    if not tango_host or "://" in name:
        return name
    return f"tango://{tango_host}/{name.lstrip('/')}"


def device_proxy(name: str, timeout_ms: int = DEFAULT_TIMEOUT_MS, tango_host: str = "") -> tango.DeviceProxy:
    """A proxy to ``name`` (on ``tango_host`` if given, else on this process's database) whose
    calls give up after ``timeout_ms``. Raises ``DevFailed`` if the name is unknown."""
    proxy = tango.DeviceProxy(full_name(name, tango_host))
    proxy.set_timeout_millis(int(timeout_ms))
    return proxy

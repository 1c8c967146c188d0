"""What this process's environment says: the Tango database it uses and where its programs are.

One reader of ``TANGO_HOST`` for the whole tree (the launcher, the rings' folder, the Sardana
set-up): the environment variable, else ``$HOME/.tangorc``, else ``/etc/tangorc``, as the Tango
C++ library finds it, so a server, its rings and a client of the lab agree on one database.
This module imports nothing of the project: any module may use it without an import cycle.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

SYSTEM_TANGORC = "/etc/tangorc"  # where the Tango C++ library looks last (its compiled-in TANGO_RC_FILE)
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 10000


def _rc_value(path: str, key: str) -> str:
    """``KEY=value`` from a tangorc file (``#`` comments), or "" if absent or unreadable."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.readlines()
    except OSError:
        return ""
    for line in lines:
        line = line.split("#", 1)[0].strip()
        name, sep, value = line.partition("=")
        if sep and name.strip() == key:
            return value.strip().strip("'\"")
    return ""


def tango_host(system_rc: str | None = None) -> str:
    """The Tango database this process uses, found as the Tango C++ library finds it: the
    ``TANGO_HOST`` environment variable, else ``$HOME/.tangorc``, else ``/etc/tangorc``
    (``system_rc`` replaces that path). "" when none of them names one.

    Debian's init scripts and Starter do not export TANGO_HOST (they rely on /etc/tangorc), so
    reading only the environment would put a server's rings and a client's view in different
    places.
    """
    value = os.environ.get("TANGO_HOST", "").strip()
    if value:
        return value
    home = os.environ.get("HOME")
    if home:
        value = _rc_value(os.path.join(home, ".tangorc"), "TANGO_HOST")
        if value:
            return value
    return _rc_value(system_rc or SYSTEM_TANGORC, "TANGO_HOST")


def split_tango_host(value: str) -> tuple[str, int]:
    """``host:port`` (also ``tango://host:port``, or a list ``h1:p1,h2:p2`` whose first entry is
    taken, as Tango does) -> (host, port); ValueError saying what is wrong."""
    text = value.split(",")[0].strip().removeprefix("tango://").rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{value!r} is not HOST:PORT (e.g. 127.0.0.1:10000)")
    return host, int(port)


RING_FOLDER_VARIABLE = "TANGODAQ_SHM_DIR"


def ring_folder(tango_host_value: str) -> str:
    """The folder of the shared-memory rings of the lab on the database ``tango_host_value``:
    ``$TANGODAQ_SHM_DIR`` if set, else ``/dev/shm/tangodaq-<database port>`` (10000 when no
    database is named or the value is malformed). Producers, readers and ``tangodaq down``
    all name it here (see :func:`datawriter.ring.shm_dir` for why one folder per database)."""
    explicit = os.environ.get(RING_FOLDER_VARIABLE)
    if explicit:
        return explicit
    try:
        port = split_tango_host(tango_host_value)[1]
    except ValueError:
        port = DEFAULT_PORT
    return os.path.join("/dev/shm", f"tangodaq-{port}")


def database_address() -> tuple[str, int]:
    """The (host, port) of the lab's database: :func:`tango_host` (first of a list), else
    127.0.0.1:10000. A malformed value stops the launcher with the fix to make."""
    value = tango_host()
    if not value:
        return DEFAULT_HOST, DEFAULT_PORT
    try:
        return split_tango_host(value)
    except ValueError:
        raise SystemExit(f"TANGO_HOST={value!r} is not host:port; fix it or unset it") from None


def find_executable(name: str) -> str:
    """A console script of this environment (next to the running Python first, then PATH)."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if found:
        return found
    raise SystemExit(
        f"cannot find the program {name!r}: install tangodaq in this environment "
        f"(pip install -e .) or check the server name in the configuration"
    )

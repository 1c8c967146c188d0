"""Where rings live and what they are called: one folder per Tango database, one file per stream.

Producers and readers of any process on a host find each other through these functions only.
"""

from __future__ import annotations

import os
import re

from tango_db import environment

RING_PREFIX = "tangodaq."
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


SYSTEM_TANGORC = "/etc/tangorc"  # where the Tango C++ library looks last (its compiled-in TANGO_RC_FILE)
RING_DIR_MODE = 0o2775  # group-writable, setgid: rings of any user of the folder's group
RING_FILE_MODE = 0o660  # readable and replaceable by the group, nobody else


def tango_host() -> str:
    """The Tango database this process uses (:func:`tango_db.environment.tango_host`: the
    environment, ``~/.tangorc``, then :data:`SYSTEM_TANGORC`); "" when none names one."""
    return environment.tango_host(SYSTEM_TANGORC)


def shm_dir() -> str:
    """Folder that holds the rings: ``$TANGODAQ_SHM_DIR``, else one folder per Tango database.

    Rings are named after devices (``lab.camera.1.frames``), and two labs on one host (a
    developer's and a test session's) have the same device names: the folder is therefore
    ``/dev/shm/tangodaq-<database port>`` (10000 when no database is configured), the database
    being the one the process really uses (:func:`tango_host`: environment, ``~/.tangorc``,
    ``/etc/tangorc``). Producers and readers call this same function, so a client of the lab
    finds the lab's rings with no further setting. ``TANGODAQ_SHM_DIR`` overrides it (tests,
    or a host whose servers and clients cannot agree on a database address).

    The folder is created by the first producer with mode 2775 (group-writable, setgid, so
    every ring in it belongs to the folder's group) and rings with mode 0660: servers run by a
    service user and readers of other users in the same group share it.
    """
    return environment.ring_folder(tango_host())


def ensure_shm_dir() -> str:
    """Create the ring folder for a producer (group-writable, setgid) and return it. A folder
    this user owns with narrower permissions (made by an older version) is widened; one owned
    by another user is left as it is (its owner's group decides who may produce there)."""
    folder = shm_dir()
    try:
        os.mkdir(folder, RING_DIR_MODE)
    except FileExistsError:
        pass
    except FileNotFoundError:  # a parent is missing (an explicit TANGODAQ_SHM_DIR)
        os.makedirs(folder, RING_DIR_MODE, exist_ok=True)
    st = os.stat(folder)
    if st.st_uid == os.geteuid() and (st.st_mode & 0o7777) != RING_DIR_MODE:
        os.chmod(folder, RING_DIR_MODE)  # mkdir's mode is masked by the umask
    return folder


def stream_name(device: str, stream: str) -> str:
    """``("lab/camera/1", "frames")`` -> ``"lab.camera.1.frames"``: the ring name of a device's stream."""
    name = f"{device.strip('/').replace('/', '.')}.{stream}" if device else stream
    check_name(name)
    return name


def check_name(name: str) -> None:
    if not _NAME_RE.match(name) or ".." in name:
        raise ValueError(f"invalid stream name {name!r}: use letters, digits, '_', '-' and '.' separators")


def ring_path(name: str) -> str:
    check_name(name)
    return os.path.join(shm_dir(), RING_PREFIX + name)


def list_streams() -> list[str]:
    """Names of all rings on this host (complete ones only: rings are published by an atomic rename)."""
    try:
        entries = os.listdir(shm_dir())
    except FileNotFoundError:
        return []
    return sorted(e[len(RING_PREFIX) :] for e in entries if e.startswith(RING_PREFIX) and _NAME_RE.match(e[len(RING_PREFIX) :]))


def remove_stream(name: str) -> bool:
    """Unlink a ring file. Open readers and the writer keep their mapping; returns whether it existed."""
    try:
        os.unlink(ring_path(name))
        return True
    except FileNotFoundError:
        return False


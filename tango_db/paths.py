"""Where the launcher keeps its files: one folder per lab.

``$TANGODAQ_HOME`` if set (tests use a temporary folder), else ``$XDG_DATA_HOME/tangodaq``, else
``~/.local/share/tangodaq``. Inside it:

- ``tango_database.db``  the embedded Tango database (SQLite, PyDatabaseds)
- ``state.json``         the running lab: TANGO_HOST, supervisor and child pids (read by
                         ``status``, ``down`` and a second ``up``)
- ``supervisor.lock``    held (flock) by the supervisor for its whole life: one lab per folder
- ``logs/``              one log per process (``Newport1830C_lab.log``, ``database.log``, ...)
                         plus ``supervisor.log``
"""

from __future__ import annotations

import os
from pathlib import Path


def data_dir() -> Path:
    home = os.environ.get("TANGODAQ_HOME")
    if home:
        path = Path(home).expanduser()
    else:
        xdg = os.environ.get("XDG_DATA_HOME")
        base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
        path = base / "tangodaq"
    path.mkdir(parents=True, exist_ok=True)
    return path


def logs_dir() -> Path:
    path = data_dir() / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


def state_file() -> Path:
    return data_dir() / "state.json"


def lock_file() -> Path:
    return data_dir() / "supervisor.lock"


def database_file() -> Path:
    return data_dir() / "tango_database.db"

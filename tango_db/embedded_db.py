"""The embedded Tango database: pytango-db's PyDatabaseds on an SQLite file in the data folder.

Only used when no Tango database answers at TANGO_HOST. Also home to the small network checks the
launcher needs: "does a database answer there?" and "who holds this port?".
"""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

from . import paths
from .environment import DEFAULT_HOST, DEFAULT_PORT, find_executable
from .environment import database_address as tango_host  # the launcher's name (cli.py, deploy.py)

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "database_answers", "database_argv", "database_env", "port_open",
           "speaks_giop", "tango_host"]


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def speaks_giop(host: str, port: int, timeout: float = 1.0) -> bool:
    """True when a CORBA (GIOP) server listens at host:port: a GIOP 1.2 LocateRequest gets a GIOP
    reply. Quick to say no where the Tango client would wait seconds (a busy port, a stuck peer)."""
    key = b"tangodaq-probe"
    body = struct.pack(">IhxxI", 1, 0, len(key)) + key
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(b"GIOP\x01\x02\x00\x03" + struct.pack(">I", len(body)) + body)
            return sock.recv(4) == b"GIOP"
    except OSError:
        return False


def database_answers(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when a Tango database device answers at host:port (quick GIOP check first)."""
    if not speaks_giop(host, port, timeout=min(timeout, 1.0)):
        return False
    import tango

    try:
        db = tango.Database(host, port)
        db.set_timeout_millis(int(timeout * 1000))
        db.get_info()
        return True
    except tango.DevFailed:
        return False


def database_argv(host: str, port: int) -> list[str]:
    """Command line of PyDatabaseds serving sys/database/2 on host:port."""
    return [find_executable("PyDatabaseds"), "--host", host, "--port", str(port), "--print-host-port", "2"]


def database_env(db_file: Path | None = None) -> dict[str, str]:
    return {"PYTANGO_DATABASE_NAME": str(db_file or paths.database_file())}


def who_listens(port: int) -> list[tuple[int, str]]:
    """(pid, command line) of the local processes listening on TCP ``port`` (from /proc; may be
    empty when the owner belongs to another user)."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    fields = line.split()
                    local, state, inode = fields[1], fields[3], fields[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(inode)
        except OSError:
            continue
    found: list[tuple[int, str]] = []
    if not inodes:
        return found
    targets = {f"socket:[{i}]" for i in inodes}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                if os.readlink(f"/proc/{entry}/fd/{fd}") in targets:
                    found.append((int(entry), cmdline(int(entry))))
                    break
        except OSError:
            continue
    return found


def cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return "?"


def port_busy_message(host: str, port: int) -> str:
    owners = who_listens(port)
    if owners:
        who = "\n".join(f"    pid {pid}: {' '.join(cmd.split())[:100]}" for pid, cmd in owners)
        hint = f"stop it (kill {owners[0][0]})"
    else:
        who = "    (a process this user cannot see)"
        hint = f"find it with `ss -ltnp 'sport = :{port}'` and stop it"
    return (
        f"port {port} on {host} is taken by another program, not a Tango database:\n{who}\n"
        f"  {hint}, or use another port: TANGO_HOST={host}:{port + 1} tangodaq up"
    )

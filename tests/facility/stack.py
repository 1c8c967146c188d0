"""A facility's Tango stack, started for the tests: MariaDB, Debian's C++ DataBaseds, Starter.

Everything lives in one temporary folder and on free ports; nothing of the machine's own
MariaDB or Tango configuration is used or changed. The daemons run as their service users
(MariaDB as ``mysql``, Starter and the servers it starts as ``tango``), as on a Debian host
where ``invoke-rc.d`` would start them; the container's ``policy-rc.d`` forbids that, so the
stack starts them itself.

Debian's packages (``mariadb-server``, ``tango-db``, ``tango-starter``) are installed by
``run.sh test`` (see ``FACILITY_DEBS`` there); without them, or without root, the facility tier
is skipped with that reason.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
from pathlib import Path

from tango_db.waiting import WaitTimeout, wait_until
from tests.ports import free_port_block

DATABASEDS = "/usr/lib/tango/DataBaseds"
STARTER = "/usr/lib/tango/Starter"
ACCESS_CONTROL = "/usr/lib/tango/TangoAccessControl"
TANGO_SQL = "/usr/share/dbconfig-common/data/tango-db/install/mysql"
SERVICE_USER = "tango"


def missing_requirements() -> str | None:
    """Why the facility stack cannot run here, or None."""
    if os.geteuid() != 0:
        return "the facility tier runs daemons as their service users: run the tests as root"
    for path in (DATABASEDS, STARTER, ACCESS_CONTROL, TANGO_SQL, shutil.which("mariadbd") or "/usr/sbin/mariadbd"):
        if not os.path.exists(path):
            return (f"{path} is missing: install Debian's mariadb-server tango-db tango-starter tango-accesscontrol "
                    "(run.sh test does)")
    try:
        pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return f"no {SERVICE_USER!r} user (Debian's tango-common creates it)"
    return None


def wait_for(check, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    """:func:`tango_db.waiting.wait_until`, ended early (RuntimeError with the end of ``log``) when
    ``proc``, the daemon being waited for, exits."""

    def log_tail() -> str:
        return log.read_text(errors="replace")[-2000:] if log and log.exists() else ""

    def check_alive():
        result = check()
        if not result and proc is not None and proc.poll() is not None:
            raise ProcessLookupError(f"{what}: the process exited with {proc.returncode}\n{log_tail()}")
        return result

    try:
        return wait_until(check_alive, timeout, interval=0.2, what=what)
    except ProcessLookupError as exc:
        raise RuntimeError(str(exc)) from None
    except WaitTimeout:
        raise RuntimeError(f"{what}: not ready after {timeout:.0f} s\n{log_tail()}") from None


class FacilityStack:
    """MariaDB + DataBaseds (+ Starter on demand) in ``base``, on a block of free ports.

    On a host of its own (``tests/facility/hosts.py``), ``on_host`` wraps each daemon's command
    line to run there, and the database listens on ``host``'s address at Tango's usual port."""

    def __init__(self, base: Path, on_host=None, host: str = "", address: str = "") -> None:
        self.base = Path(base)
        self.base.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base, 0o755)
        self.on_host = on_host or (lambda argv: argv)
        self.ports = 10000 if on_host else free_port_block()  # a host of its own has every port free
        self.db_port = self.ports  # Tango database
        self.mysql_port = self.ports + 5  # the bench uses +1..+4 and +9 in the simulated deploy
        self.address = address or "127.0.0.1"
        self.tango_host = f"{host or '127.0.0.1'}:{self.db_port}"
        self.hostname = socket.gethostname().split(".")[0]
        self.logs = self.base / "logs"
        self.logs.mkdir(exist_ok=True)
        os.chmod(self.logs, 0o777)
        self.procs: dict[str, subprocess.Popen] = {}
        self.password = "tangodaq-test"

    # --- MariaDB ---------------------------------------------------------------------------------

    def start_mariadb(self) -> None:
        data = self.base / "mysql"
        self.mysql_socket = data / "mysql.sock"
        if not data.exists():
            data.mkdir()
            shutil.chown(data, "mysql", "mysql")
            subprocess.run(
                ["mariadb-install-db", "--no-defaults", f"--datadir={data}", "--user=mysql",
                 "--auth-root-authentication-method=socket", "--skip-test-db"],
                check=True, capture_output=True, timeout=120,
            )
        log = self.logs / "mariadb.log"
        self.procs["mariadb"] = subprocess.Popen(self.on_host(
            ["mariadbd", "--no-defaults", f"--datadir={data}", f"--socket={self.mysql_socket}",
             f"--port={self.mysql_port}", "--bind-address=127.0.0.1", "--user=mysql",
             f"--pid-file={data / 'mysql.pid'}", "--skip-log-bin", "--innodb-buffer-pool-size=32M",
             "--innodb-log-file-size=8M", "--skip-name-resolve"]),
            stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        wait_for(self.mysql_answers, 60, "mariadbd", self.procs["mariadb"], log)

    def mysql_answers(self) -> bool:
        """MariaDB answers on its socket (a file: reachable from any host's network)."""
        try:
            return self.sql("SELECT 1").strip() == "1"
        except (RuntimeError, subprocess.TimeoutExpired):
            return False

    def sql(self, statements: str, database: str | None = None) -> str:
        argv = ["mariadb", f"--socket={self.mysql_socket}", "-uroot", "--batch", "--skip-column-names"]
        if database:
            argv.append(database)
        out = subprocess.run(argv, input=statements, text=True, capture_output=True, timeout=120)
        if out.returncode:
            raise RuntimeError(f"SQL failed: {out.stderr.strip()}")
        return out.stdout

    def create_tango_database(self) -> None:
        """What Debian's tango-db package does through dbconfig-common, on our server."""
        self.sql(
            "CREATE DATABASE IF NOT EXISTS tango;"
            f"CREATE USER IF NOT EXISTS 'tango'@'localhost' IDENTIFIED BY '{self.password}';"
            f"CREATE USER IF NOT EXISTS 'tango'@'127.0.0.1' IDENTIFIED BY '{self.password}';"
            "GRANT ALL ON tango.* TO 'tango'@'localhost'; GRANT ALL ON tango.* TO 'tango'@'127.0.0.1';"
        )
        # the package's script uses `source` with absolute paths: feed it to the client as is
        self.sql(Path(TANGO_SQL).read_text(), database="tango")

    # --- Tango database --------------------------------------------------------------------------

    def start_databaseds(self) -> None:
        log = self.logs / "DataBaseds.log"
        env = {
            "PATH": "/usr/bin:/bin",
            "MYSQL_USER": "tango",
            "MYSQL_PASSWORD": self.password,
            "MYSQL_HOST": f"127.0.0.1:{self.mysql_port}",
            "MYSQL_DATABASE": "tango",
            "TANGO_HOST": self.tango_host,
        }
        self.procs["DataBaseds"] = subprocess.Popen(
            self.on_host([DATABASEDS, "2", "-ORBendPoint", f"giop:tcp:{self.address}:{self.db_port}"]),
            env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        if self.address == "127.0.0.1":
            wait_for(self.database_answers, 60, "DataBaseds", self.procs["DataBaseds"], log)
        else:  # out of this process's reach: its own word
            wait_for(lambda: "Ready to accept request" in log.read_text(errors="replace"), 60, "DataBaseds",
                     self.procs["DataBaseds"], log)

    def database_answers(self) -> bool:
        from tango_db.embedded_db import database_answers

        return database_answers("127.0.0.1", self.db_port, 1.0)

    # --- TangoAccessControl -----------------------------------------------------------------------

    def start_access_control(self) -> None:
        """Debian's TangoAccessControl as Debian's init script starts it: as ``tango``, with
        ``SUPER_TANGO=true`` (it writes to the database before any access-control service can
        answer) and the database account. A system service, not a Starter server: Starter never
        starts TangoAccessControl (nor DataBaseds)."""
        log = self.logs / "TangoAccessControl.log"
        env = {
            "PATH": "/usr/bin:/bin", "TANGO_HOST": self.tango_host, "SUPER_TANGO": "true", "HOME": "/var/lib/tango",
            "MYSQL_USER": "tango", "MYSQL_PASSWORD": self.password, "MYSQL_HOST": f"127.0.0.1:{self.mysql_port}",
            "MYSQL_DATABASE": "tango",
        }
        self.procs["TangoAccessControl"] = subprocess.Popen(
            ["runuser", "-u", SERVICE_USER, "--", "env", "-i", *[f"{k}={v}" for k, v in env.items()],
             ACCESS_CONTROL, "1"],
            stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        # its line once the device is exported (a ping from this process would fix this process's
        # access rights before the service is registered)
        wait_for(lambda: "Ready to accept request" in log.read_text(errors="replace"), 60, "TangoAccessControl",
                 self.procs["TangoAccessControl"], log)

    # --- Starter ---------------------------------------------------------------------------------

    def start_starter(self, env: dict[str, str] | None = None) -> None:
        """Debian's Starter as the service user (Starter's device must exist: deploy creates it).

        In its own PID namespace, as on a host of its own: Starter decides whether a server runs by
        looking for a process of that name and instance in /proc, so a developer's laptop lab
        (``Esp300 lab``, same names) on this machine would otherwise look "already running".
        PID 1 of the namespace is ``init.py``, which reaps what dies, as a host's init does."""
        log = self.logs / "Starter.log"
        base_env = {"PATH": "/usr/bin:/bin", "TANGO_HOST": self.tango_host, "HOME": "/var/lib/tango"}
        self.procs["Starter"] = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
             "/usr/bin/python3", str(Path(__file__).with_name("init.py")),
             "runuser", "-u", SERVICE_USER, "--", "env", "-i", *[f"{k}={v}" for k, v in {**base_env, **(env or {})}.items()],
             STARTER, self.hostname],
            stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )

    def stop_starter(self) -> None:
        self._stop("Starter")

    # --- teardown --------------------------------------------------------------------------------

    def _stop(self, name: str, timeout: float = 10.0) -> None:
        proc = self.procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        with_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with_group(proc.pid, signal.SIGKILL)
            proc.wait(5)

    def stop(self) -> None:
        for name in ("Starter", "TangoAccessControl", "DataBaseds", "mariadb"):
            self._stop(name, timeout=30 if name == "mariadb" else 10)


def with_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass

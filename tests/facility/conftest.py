"""The facility tier: a pip-installed release deployed into Debian's Tango and run by Starter.

One facility for the module, built as a control engineer builds it:

1. a wheel of this tree installed (not editable) into a fresh virtual environment made with
   Debian's own Python, the way an operator installs a release (nothing of the source checkout
   or of the developer's environment is on its path);
2. MariaDB + Debian's C++ ``DataBaseds`` (``tests/facility/stack.py``), on free ports;
3. ``tangodaq deploy --simulated --write`` from the release (after its dry run), with a site file
   whose folders the deploy creates for the ``tango`` service user, and whose ``access_control``
   section names the roles: test accounts made here (:data:`TEST_USERS`) act as a viewer, an
   operator and a laser operator; the test process (root) is a laser operator too;
4. Debian's ``Starter`` as ``tango``, in a PID namespace of its own (a host of its own: Starter
   recognises servers by process name, and a laptop lab of the same names may run here).

Debian's TangoAccessControl runs before the deploy, as the system service it is (Starter never
starts it), so that deploy registers the access-control service.

The tests then act only through the Starter device (as Astor does), the Door and the database.
Teardown stops Starter (the namespace takes every server with it), the database and MariaDB.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.facility.stack import FacilityStack, missing_requirements
from tests.requirements import unavailable

ROOT = Path(__file__).resolve().parents[2]
DEBIAN_PYTHON = "/usr/bin/python3"
PIP_TIMEOUT_S = 600
#: accounts made for the access-control tests (removed at the end): role -> user name
TEST_USERS = {"viewer": "tdq-viewer", "operator": "tdq-operator", "laser_operator": "tdq-laser"}


class Facility:
    """The deployed facility: its stack, the release's environment and the site's folders."""

    def __init__(self, base: Path, stack: FacilityStack, venv: Path) -> None:
        self.base, self.stack, self.venv = base, stack, venv
        self.tango_host = stack.tango_host
        self.host = stack.hostname
        self.site_file = base / "site.json"
        self.data_dir = base / "site" / "data"
        self.log_dir = base / "site" / "logs"
        self.env = {
            "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
            "HOME": str(base),
            "TANGO_HOST": self.tango_host,
            "LANG": "C.UTF-8",
            # the database account, as DataBaseds and TangoAccessControl read it (deploy writes the
            # access-control rules with it)
            "MYSQL_USER": "tango",
            "MYSQL_PASSWORD": stack.password,
            "MYSQL_HOST": f"127.0.0.1:{stack.mysql_port}",
            "MYSQL_DATABASE": "tango",
        }
        self.users = dict(TEST_USERS)

    def as_user(self, user: str, script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """``script`` (Python, with the release's tango) as ``user``: a client of another account,
        which cppTango identifies by its effective UID when it asks TangoAccessControl."""
        path = self.base / "client.py"
        if not path.exists():
            path.write_text(CLIENT)
            path.chmod(0o644)
        env = [f"{k}={v}" for k, v in self.env.items() if not k.startswith("MYSQL")]
        return subprocess.run(
            ["runuser", "-u", user, "--", "env", "-i", *env, f"HOME={self.base}", str(self.venv / "bin" / "python"),
             str(path), script, *args],
            capture_output=True, text=True, timeout=timeout, cwd=self.base, stdin=subprocess.DEVNULL,
        )

    def tangodaq(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """The release's own ``tangodaq`` (run from a folder outside the source tree)."""
        return subprocess.run(
            [str(self.venv / "bin" / "tangodaq"), *args], env=self.env, cwd=self.base,
            capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
        )

    def proxy(self, name: str, timeout_ms: int = 10000):
        import tango

        proxy = tango.DeviceProxy(f"tango://{self.tango_host}/{name}")
        proxy.set_timeout_millis(timeout_ms)
        return proxy

    def database(self):
        import tango

        from tango_db.environment import split_tango_host

        return tango.Database(*split_tango_host(self.tango_host))

    def starter(self):
        return self.proxy(f"tango/admin/{self.host}", timeout_ms=20000)

    def server_pids(self) -> dict[str, int]:
        """``Server/instance`` -> pid of every server of the release running on this machine."""
        found = {}
        prefix = str(self.venv)
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            args = [a.decode(errors="replace") for a in argv if a]
            if len(args) >= 3 and args[1].startswith(prefix):
                found[f"{Path(args[1]).name}/{args[2]}"] = int(entry)
        return found

    def logs(self) -> str:
        return logs_under(self.base)

    def stack_dumps(self) -> str:
        """Every running server's thread stacks (``kill -USR1``, deviceservers/common/stack_dump.py),
        for the report of a server that runs but does not answer."""
        return stack_dumps_under(self.base, self.server_pids())


def stack_dumps_under(base: Path, pids: dict[str, int], timeout: float = 20.0) -> str:
    """Signal each ``Server/instance`` in ``pids`` to dump its stacks into its log under ``base``
    and return what each wrote."""
    import signal

    from tests.waiting import wait_until

    logs = {name: next(iter(base.rglob(f"{name.replace('/', '_')}.log")), None) for name in pids}
    sizes = {name: (log.stat().st_size if log else 0) for name, log in logs.items()}
    for pid in pids.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGUSR1)

    def dumped(name: str) -> str:
        log = logs[name]
        if log is None:
            return ""
        with open(log, "rb") as f:
            f.seek(sizes[name] if log.stat().st_size >= sizes[name] else 0)  # a log started anew: from its start
            return f.read(30000).decode(errors="replace")

    # faulthandler writes the threads newest first: the main thread, whose stack ends in the
    # launcher's <module>, comes last, so its <module> line means the dump is whole
    with contextlib.suppress(AssertionError):  # report what came, even if one server wrote nothing
        wait_until(lambda: all("in <module>" in dumped(n) for n in pids if logs[n]), timeout,
                   interval=0.2, what="every server's whole stack dump in its log")
    return "\n".join(f"===== stacks of {name} (pid {pids[name]})\n{dumped(name)}" for name in pids)


def logs_under(base: Path) -> str:
    """The tail of every log under ``base``, for a failure's report."""
    out = []
    for log in sorted(base.rglob("*.log")):
        with contextlib.suppress(OSError):
            out.append(f"----- {log}\n" + log.read_text(errors="replace")[-2500:])
    return "\n".join(out)


#: the client run as another user: ``client.py '<python statements>'``; ``attempt(label, fn)`` records
#: "ok" or the reason of a DevFailed, printed as JSON at the end
CLIENT = """import json, sys
import tango
results = {}
def attempt(label, fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
        results[label] = "ok"
    except tango.DevFailed as exc:
        results[label] = f"{exc.args[0].reason}: {exc.args[0].desc}"
    except Exception as exc:
        results[label] = f"{type(exc).__name__}: {exc}"
def proxy(name):
    p = tango.DeviceProxy(name)
    p.set_timeout_millis(10000)
    return p
exec(sys.argv[1])
print(json.dumps(results))
"""


def _test_users(made: list[str]) -> None:
    """Create the test accounts that do not exist (system accounts, no home, no login shell),
    listing each in ``made`` as soon as it exists, so a failure half-way leaves none behind."""
    for user in TEST_USERS.values():
        try:
            pwd.getpwnam(user)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", user],
                           check=True, capture_output=True, timeout=30)
            made.append(user)


def _release_venv(base: Path) -> Path:
    """A wheel of this tree in a fresh venv of Debian's Python (readable by the service user)."""
    wheels = base / "wheel"
    src = base / "src"  # built from a copy: setuptools leaves build/ and egg-info beside the sources
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "build", "*.egg-info"))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(wheels), str(src)],
        check=True, capture_output=True, timeout=PIP_TIMEOUT_S,
    )
    shutil.rmtree(src)
    wheel = next(wheels.glob("tangodaq-*.whl"))
    venv = base / "venv"
    subprocess.run([DEBIAN_PYTHON, "-m", "venv", str(venv)], check=True, capture_output=True, timeout=120)
    out = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", str(wheel)],
        capture_output=True, text=True, timeout=PIP_TIMEOUT_S,
    )
    if out.returncode:
        raise RuntimeError(f"pip install of the release failed:\n{out.stdout}\n{out.stderr}")
    return venv


def facility_requirements() -> str | None:
    why = missing_requirements()
    if why is None and not os.path.exists(DEBIAN_PYTHON):
        why = f"{DEBIAN_PYTHON} is missing: the release is installed with Debian's Python (apt-get install python3-venv)"
    return why


@pytest.fixture(scope="session")
def release():
    """The release's virtual environment, built once for the facility and several-hosts tiers."""
    why = facility_requirements()
    if why:
        unavailable(why)
    base = Path(tempfile.mkdtemp(prefix="tangodaq-release-", dir="/tmp"))
    os.chmod(base, 0o755)
    try:
        yield _release_venv(base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def facility(release):
    base = Path(tempfile.mkdtemp(prefix="tangodaq-facility-", dir="/tmp"))
    os.chmod(base, 0o755)
    stack = FacilityStack(base / "stack")
    the = None
    made_users: list[str] = []
    try:
        _test_users(made_users)
        venv = release
        stack.start_mariadb()
        stack.create_tango_database()
        stack.start_databaseds()
        stack.start_access_control()  # a system service, before deploy registers it and before Starter
        the = Facility(base, stack, venv)
        the.site_file.write_text(json.dumps({
            "service_user": "tango", "data_dir": str(the.data_dir), "log_dir": str(the.log_dir),
            "access_control": {  # lab_hosts: this host's addresses (the default)
                "operators": {"users": [TEST_USERS["operator"]]},
                "laser_operators": {"users": [TEST_USERS["laser_operator"], "root"]},
            },
        }))
        for folder in (base / "site",):
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o755)
        args = ("deploy", "--simulated", "--bench-fast", "--site", str(the.site_file))
        dry = the.tangodaq(*args)
        if dry.returncode != 0:
            raise RuntimeError(f"deploy's dry run failed:\n{dry.stdout}\n{dry.stderr}")
        the.dry_run_output = dry.stdout
        result = the.tangodaq(*args, "--write")
        if result.returncode != 0:
            raise RuntimeError(f"deploy failed:\n{result.stdout}\n{result.stderr}")
        the.deploy_output = result.stdout
        the.servers_before_start = sorted(the.database().get_host_server_list(the.host))
        # as a Starter unit would set it: the servers' fault histories go to the site's log folder;
        stack.start_starter(env={"TANGODAQ_LOG_DIR": str(the.log_dir)})
        yield the
    except Exception:
        if the is not None:
            print(the.logs())
        raise
    finally:
        stack.stop()
        for user in made_users:
            subprocess.run(["userdel", user], capture_output=True, timeout=30)
        ring_dirs = [p for p in Path("/dev/shm").glob(f"tangodaq*{stack.db_port}*")]
        for ring in ring_dirs:
            shutil.rmtree(ring, ignore_errors=True)
        shutil.rmtree(base, ignore_errors=True)


# --- several hosts ---------------------------------------------------------------------------------

#: the lab spread as a facility spreads it: host -> the servers its Starter runs
HOST_SERVERS = {
    "motion": ["Ell14/lab", "Esp300/lab", "MacroServer/lab", "MaiTai/lab", "Newport1830C/lab", "Pool/lab",
               "VirtualBench/lab"],
    "acq": ["DataWriter/lab", "Pvcam/lab"],
}


class HostsLab:
    """The release deployed over four hosts: ``db`` (MariaDB + DataBaseds), ``motion`` (the
    instruments but the camera, the virtual bench, Sardana), ``acq`` (camera + DataWriter, with
    the rings in its own /dev/shm) and ``client`` (where users sit)."""

    def __init__(self, base: Path, network, stack: FacilityStack, venv: Path) -> None:
        self.base, self.network, self.stack, self.venv = base, network, stack, venv
        self.tango_host = stack.tango_host
        self.site_file = base / "site.json"
        self.data_dir = base / "site" / "data"
        self.log_dir = base / "site" / "logs"
        self.env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(base), "TANGO_HOST": self.tango_host,
                    "LANG": "C.UTF-8"}
        self.starters: dict[str, subprocess.Popen] = {}
        self._client = None
        self._observer = None

    def tangodaq(self, host: str, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
        """The release's ``tangodaq`` on ``host``."""
        return self.network.run(host, ["env", "-i", *[f"{k}={v}" for k, v in self.env.items()],
                                       str(self.venv / "bin" / "tangodaq"), *args], timeout=timeout, cwd=self.base)

    def python(self, host: str, code: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """A fresh Python process of the release on ``host`` (a new client)."""
        return self.network.run(host, ["env", "-i", *[f"{k}={v}" for k, v in self.env.items()],
                                       str(self.venv / "bin" / "python"), "-c", code], timeout=timeout, cwd=self.base)

    def start_starter(self, host: str) -> None:
        """Debian's Starter on ``host`` as the service user, as the host's boot would start it."""
        from tests.facility.stack import STARTER

        env = {"PATH": "/usr/bin:/bin", "TANGO_HOST": self.tango_host, "HOME": "/var/lib/tango",
               "TANGODAQ_LOG_DIR": str(self.log_dir)}
        log = open(self.base / "logs" / f"Starter-{host}.log", "ab")
        self.starters[host] = self.network.popen(
            host, ["runuser", "-u", "tango", "--", "env", "-i", *[f"{k}={v}" for k, v in env.items()], STARTER, host],
            stdout=log, stderr=subprocess.STDOUT,
        )

    @property
    def client(self):
        """The users' long-lived client on the ``client`` host."""
        if self._client is None:
            from tests.facility.hosts import Client

            self._client = Client(self.network, "client", str(self.venv / "bin" / "python"), self.env,
                                  self.base / "logs" / "client.log")
            self._client.call("import json\nfrom tango_db.door_client import run_macro, MacroFailed")
        return self._client

    @property
    def observer(self):
        """A long-lived client on the ``motion`` host: sees the lab while a link elsewhere is cut."""
        if self._observer is None:
            from tests.facility.hosts import Client

            self._observer = Client(self.network, "motion", str(self.venv / "bin" / "python"), self.env,
                                    self.base / "logs" / "observer.log")
        return self._observer

    def logs(self) -> str:
        return logs_under(self.base)


@pytest.fixture(scope="module")
def hosts_lab(release):
    from tests.facility.hosts import Network
    from tests.facility.hosts import missing_requirements as network_missing

    why = network_missing()
    if why:
        unavailable(why)
    base = Path(tempfile.mkdtemp(prefix="tangodaq-hosts-", dir="/tmp"))
    os.chmod(base, 0o755)
    (base / "logs").mkdir()
    network = Network(base / "net", ["db", "motion", "acq", "client"])
    lab = None
    try:
        network.create()
        stack = FacilityStack(base / "stack", on_host=lambda argv: network.argv("db", argv), host="db",
                              address=network.address["db"])
        stack.start_mariadb()
        stack.create_tango_database()
        stack.start_databaseds()
        lab = HostsLab(base, network, stack, release)
        lab.site_file.write_text(json.dumps({
            "service_user": "tango", "data_dir": str(lab.data_dir), "log_dir": str(lab.log_dir),
            "hosts": {server.split("/")[0]: host for host, servers in HOST_SERVERS.items() for server in servers
                      if host != "motion"},
        }))
        (base / "site").mkdir(mode=0o755)
        # deployed from the motion host (the default Starter host: where deploy runs)
        result = lab.tangodaq("motion", "deploy", "--simulated", "--bench-fast", "--site", str(lab.site_file), "--write")
        if result.returncode != 0:
            raise RuntimeError(f"deploy failed:\n{result.stdout}\n{result.stderr}")
        lab.deploy_output = result.stdout
        for host in HOST_SERVERS:
            lab.start_starter(host)
        yield lab
    except Exception:
        if lab is not None:
            print(lab.logs())
        raise
    finally:
        for agent in (lab._client, lab._observer) if lab is not None else ():
            if agent is not None:
                agent.close()
        network.remove()  # every host's processes end with its PID 1
        stack.procs.clear()
        if os.environ.get("TANGODAQ_KEEP_TEST_FILES"):  # a developer reading the servers' logs
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)

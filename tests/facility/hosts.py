"""Several hosts on one machine: network namespaces on a private bridge, made and removed here.

Each host is a network namespace with one interface (``eth0``, 10.77.0.N/24) and a PID 1 of its
own (``hostinit.py``: host name, ``/etc/hosts``, private ``/dev/shm``). The hosts' interfaces are
the far ends of veth pairs whose near ends sit on a bridge in a further namespace, the switch,
so nothing is added to the machine's own network: no address, no route, no interface. Cutting a
host off (:meth:`Network.cut`) takes its switch port down: packets are dropped with no reset, as
when a cable is pulled or a switch dies, and TCP connections survive a short cut.

Processes run on a host through ``nsenter`` into its namespaces (:meth:`Network.popen`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SUBNET = "10.77.0"
HOSTINIT = Path(__file__).with_name("hostinit.py")


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=30)


def missing_requirements() -> str | None:
    """Why network namespaces cannot be made here, or None."""
    if os.geteuid() != 0:
        return "several hosts need network namespaces: run the tests as root"
    for tool in ("ip", "nsenter", "unshare"):
        if subprocess.run(["which", tool], capture_output=True).returncode:
            return f"{tool} is missing (Debian: iproute2, util-linux)"
    probe = f"tdqprobe{os.getpid()}"
    made = ip("netns", "add", probe, check=False)
    if made.returncode:
        return f"cannot make a network namespace here: {made.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    return None


class Network:
    """Hosts ``names`` (10.77.0.1, .2, ... in that order) on a private switch."""

    def __init__(self, base: Path, names: list[str]) -> None:
        self.base = Path(base)
        self.tag = f"tdq{os.getpid() % 100000}"
        self.names = list(names)
        self.address = {name: f"{SUBNET}.{i}" for i, name in enumerate(self.names, start=1)}
        self.hosts_file = self.base / "hosts"
        self.inits: dict[str, subprocess.Popen] = {}
        self.init_pid: dict[str, int] = {}
        self.procs: list[subprocess.Popen] = []

    def ns(self, name: str) -> str:
        return f"{self.tag}-{name}"

    def port(self, name: str) -> str:
        """The switch port of ``name`` (the near end of its veth pair)."""
        return f"p{self.names.index(name) + 1}"

    # --- making and removing ---------------------------------------------------------------------

    def create(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        lines = ["127.0.0.1 localhost"] + [f"{addr} {name}" for name, addr in self.address.items()]
        self.hosts_file.write_text("\n".join(lines) + "\n")
        self.hosts_file.chmod(0o644)
        switch = self.ns("switch")
        ip("netns", "add", switch)
        ip("-n", switch, "link", "add", "br0", "type", "bridge")
        ip("-n", switch, "link", "set", "br0", "up")
        for name in self.names:
            ns = self.ns(name)
            ip("netns", "add", ns)
            ip("-n", switch, "link", "add", self.port(name), "type", "veth", "peer", "name", "eth0", "netns", ns)
            ip("-n", switch, "link", "set", self.port(name), "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"{self.address[name]}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            ip("-n", ns, "link", "set", "lo", "up")
            self._start_host(name)

    def _start_host(self, name: str) -> None:
        log = open(self.base / f"host-{name}.log", "ab")
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns(name), "unshare", "--uts", "--mount", "--pid", "--fork",
             "--mount-proc", "--kill-child", sys.executable, str(HOSTINIT), name, str(self.hosts_file)],
            stdout=subprocess.PIPE, stderr=log, start_new_session=True,
        )
        self.inits[name] = proc
        line = proc.stdout.readline().decode().strip()
        if line != "ready":
            raise RuntimeError(f"host {name} did not start: {(self.base / f'host-{name}.log').read_text()}")
        # PID 1 of the host, as this machine sees it: unshare's only child
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        self.init_pid[name] = int(children[0])

    def remove(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                _kill_group(proc.pid, signal.SIGKILL)
        for proc in self.inits.values():  # PID 1 leaves: the kernel ends the host's processes
            if proc.poll() is None:
                _kill_group(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    _kill_group(proc.pid, signal.SIGKILL)
                    proc.wait(5)
        for name in [*self.names, "switch"]:
            ip("netns", "del", self.ns(name), check=False)

    # --- running on a host -----------------------------------------------------------------------

    def argv(self, name: str, argv: list[str]) -> list[str]:
        """``argv`` run on host ``name`` (its network, host name, mounts and processes)."""
        return ["nsenter", "-t", str(self.init_pid[name]), "-n", "-u", "-m", "-p", "--", *argv]

    def popen(self, name: str, argv: list[str], **kwargs) -> subprocess.Popen:
        kwargs.setdefault("start_new_session", True)
        proc = subprocess.Popen(self.argv(name, argv), **kwargs)
        self.procs.append(proc)
        return proc

    def run(self, name: str, argv: list[str], timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("capture_output", True)
        kwargs.setdefault("text", True)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.run(self.argv(name, argv), timeout=timeout, **kwargs)

    def reaches(self, name: str, other: str) -> bool:
        """Whether ``name`` reaches ``other``: a TCP connection to a closed port is refused (an
        answer) rather than left unanswered."""
        probe = ("import socket, sys\n"
                 "try:\n    socket.create_connection((sys.argv[1], 9), timeout=1)\n"
                 "except ConnectionRefusedError:\n    sys.exit(0)\n"
                 "except OSError:\n    sys.exit(1)\n")
        return self.run(name, [sys.executable, "-c", probe, self.address[other]], timeout=10).returncode == 0

    # --- faults ----------------------------------------------------------------------------------

    def cut(self, name: str) -> None:
        """Cut ``name`` off the network (its switch port down: packets dropped, no reset)."""
        ip("-n", self.ns("switch"), "link", "set", self.port(name), "down")

    def restore(self, name: str) -> None:
        ip("-n", self.ns("switch"), "link", "set", self.port(name), "up")
        # the bridge port forwards again once it has left the listening/learning states (no STP:
        # at once); wait until the host reaches the switch's other ports
        deadline = time.monotonic() + 10
        other = next(n for n in self.names if n != name)
        while time.monotonic() < deadline:
            if self.reaches(name, other):
                return
        raise RuntimeError(f"{name} does not reach {other} after its link came back")


def _kill_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


class Client:
    """A long-lived Tango client process on a host (``agent.py``), driven request by request."""

    def __init__(self, network: Network, host: str, python: str, env: dict[str, str], log: Path) -> None:
        import queue
        import threading

        self.host = host
        self._log = open(log, "ab")
        self.proc = network.popen(
            host, ["env", "-i", *[f"{k}={v}" for k, v in env.items()], python, str(Path(__file__).with_name("agent.py"))],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, bufsize=1,
        )
        self._replies: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self._replies.put(line)
        self._replies.put(None)

    def call(self, code: str, timeout: float = 60) -> object:
        """Run ``code`` in the client; its ``result``, or AssertionError with the client's error."""
        answer = self.ask(code, timeout)
        if not answer["ok"]:
            raise AssertionError(f"on {self.host}: {answer['error']}\n{answer.get('traceback', '')}")
        return answer["result"]

    def ask(self, code: str, timeout: float = 60) -> dict:
        """Run ``code``; the whole answer ({"ok", "result"} or {"ok": False, "error"})."""
        import json
        import queue

        self.proc.stdin.write(json.dumps({"code": code}) + "\n")
        self.proc.stdin.flush()
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the client on {self.host} did not answer within {timeout} s: {code}") from None
        if line is None:
            raise AssertionError(f"the client on {self.host} exited ({self.proc.poll()})")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                _kill_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()

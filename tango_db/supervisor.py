"""Start, watch and stop the lab's processes (what Starter does in a facility).

- Start level by level (``ProcessSpec.level``): a level starts when every process of the lower
  levels is ready (its ``ready()`` check passes); one-shot steps (``action``) run in their level.
- Every child runs in its own session / process group (``killpg`` reaches anything it spawned),
  with the parent-death signal set, so even a SIGKILLed supervisor leaves nothing behind.
- Logs: ``logs/<server>_<instance>.log`` per process, appended, with a header per start.
- Supervision: a child that exits is restarted after a back-off (1 s, doubling to 30 s; reset
  after 60 s of good running); it is reported again once it answers.
- ``state.json`` (pids, start times, TANGO_HOST, devices) lets ``status``, ``down`` and a second
  ``up`` find the running lab; ``supervisor.lock`` (flock) makes one lab per data folder.
- Stop (SIGINT, SIGTERM, SIGHUP): levels in reverse order, SIGTERM to each group, SIGKILL after
  a grace period, then the state file is removed.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from deviceservers.common.procfs import alive  # noqa: F401 - also imported by tango_db.cli
from deviceservers.common.procfs import start_time as proc_starttime

from . import environment, paths
from .invocation import command
from .processes import ProcessSpec

GRACE_S = 5.0
BACKOFF_MIN_S = 1.0
BACKOFF_MAX_S = 30.0
STABLE_S = 60.0
LOG_MAX_BYTES = 5_000_000  # a log this big moves to <name>.log.1 at the next start
PR_SET_PDEATHSIG = 1

_libc = None
with contextlib.suppress(OSError):
    _libc = ctypes.CDLL(None, use_errno=True)


_supervisor_pid = os.getpid()


def _child_setup() -> None:  # runs in the child between fork and exec
    if _libc is not None:
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != _supervisor_pid:  # the supervisor died before prctl took effect
        os._exit(1)


# --- /proc helpers (no psutil) ------------------------------------------------------------------


def kill_group(pgid: int, sig: int) -> bool:
    try:
        os.killpg(pgid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def group_members(pgid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    out.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return out


# --- state file ---------------------------------------------------------------------------------


def read_state() -> dict | None:
    try:
        return json.loads(paths.state_file().read_text())
    except (OSError, ValueError):
        return None


def running_state() -> dict | None:
    """The state of the lab whose supervisor still runs, else None."""
    state = read_state()
    if state and alive(state.get("supervisor_pid"), state.get("supervisor_starttime")):
        return state
    return None


def _write_state(state: dict) -> None:
    path = paths.state_file()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2))
    tmp.replace(path)


class AlreadyRunning(RuntimeError):
    pass


# --- the supervisor -----------------------------------------------------------------------------


class Child:
    def __init__(self, spec: ProcessSpec) -> None:
        self.spec = spec
        self.proc: subprocess.Popen | None = None
        self.starttime: int | None = None
        self.started_at = 0.0
        self.restarts = 0
        self.backoff = BACKOFF_MIN_S
        self.restart_at: float | None = None
        self.ready = False
        self.detail = ""
        self.log = paths.logs_dir() / spec.log_name

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Supervisor:
    def __init__(
        self,
        specs: list[ProcessSpec],
        meta: dict,
        env: dict[str, str] | None = None,
        say: Callable[[str], None] | None = None,
    ) -> None:
        self.children = [Child(s) for s in specs]
        self.meta = meta
        self.env = env or {}
        self._say = say or (lambda msg: print(msg, flush=True))
        self.stop_event = threading.Event()
        self.phase = "starting"
        self._lock_fd: int | None = None
        self._t0 = time.monotonic()

    # -- output
    def say(self, msg: str, stamp: bool = False) -> None:
        if stamp:
            msg = f"{datetime.now():%H:%M:%S} {msg}"
        self._say(msg)

    # -- lock and state
    def acquire_lock(self) -> None:
        fd = os.open(paths.lock_file(), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunning(str(paths.data_dir())) from None
        self._lock_fd = fd

    def release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def write_state(self) -> None:
        _write_state(
            {
                **self.meta,
                "supervisor_pid": os.getpid(),
                "supervisor_starttime": proc_starttime(os.getpid()),
                "phase": self.phase,
                "data_dir": str(paths.data_dir()),
                "updated": datetime.now().isoformat(timespec="seconds"),
                "processes": [
                    {
                        "name": c.spec.name,
                        "level": c.spec.level,
                        "pid": c.pid if c.running() else None,
                        "pgid": c.pid,
                        "starttime": c.starttime,
                        "started": c.started_at
                        and datetime.fromtimestamp(c.started_at).isoformat(timespec="seconds"),
                        "restarts": c.restarts,
                        "ready": c.ready,
                        "log": str(c.log),
                        "devices": c.spec.devices,
                    }
                    for c in self.children
                    if c.spec.action is None
                ],
            }
        )

    # -- signals
    def _on_signal(self, signum, _frame) -> None:
        self.stop_event.set()

    def install_signal_handlers(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    # -- processes
    def spawn(self, child: Child) -> None:
        global _supervisor_pid
        _supervisor_pid = os.getpid()
        spec = child.spec
        env = {**os.environ, **self.env, **spec.env}
        env.setdefault("TANGODAQ_LOG_DIR", str(paths.logs_dir()))  # each server's fault history
        with contextlib.suppress(OSError):
            if child.log.stat().st_size > LOG_MAX_BYTES:
                child.log.replace(child.log.with_suffix(".log.1"))
        with open(child.log, "ab") as log:
            log.write(
                f"\n===== {datetime.now().isoformat(timespec='seconds')} start {' '.join(spec.argv)}\n".encode()
            )
            log.flush()
            child.proc = subprocess.Popen(
                spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_child_setup,
            )
        child.starttime = proc_starttime(child.proc.pid)
        child.started_at = time.time()
        child.ready = False
        child.restart_at = None

    def log_tail(self, child: Child, lines: int = 15) -> str:
        try:
            text = child.log.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        # only this run's lines
        for i in range(len(text) - 1, -1, -1):
            if text[i].startswith("===== "):
                text = text[i + 1 :]
                break
        return "\n".join("    | " + line for line in text[-lines:])

    def _stop_child_group(self, children: list[Child], grace: float) -> None:
        for c in children:
            if c.proc is not None:
                kill_group(c.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for c in children:
            if c.proc is None:
                continue
            try:
                c.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.say(f"  {c.spec.name} did not stop within {grace:.0f} s: killing it")
            # whatever the leader left in its group goes too
            kill_group(c.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                c.proc.wait(2.0)

    @staticmethod
    def check(c: Child) -> tuple[bool, str]:
        if c.spec.ready is None:
            return True, "running"
        try:
            return c.spec.ready()
        except Exception as exc:  # noqa: BLE001 - a failing check means "not ready yet"
            return False, f"{type(exc).__name__}: {exc}"

    # -- start
    def start_all(self, timeout: float) -> bool:
        """Start level by level; False (with the reason printed) when something fails."""
        deadline = time.monotonic() + timeout
        for level in sorted({c.spec.level for c in self.children}):
            batch = [c for c in self.children if c.spec.level == level]
            for c in batch:
                if self.stop_event.is_set():
                    return False
                t0 = time.monotonic()
                if c.spec.action is not None:
                    try:
                        result = c.spec.action()
                    except Exception as exc:  # noqa: BLE001 - report any failure to the user
                        self.say(f"  {c.spec.name} … FAILED: {exc}")
                        return False
                    c.ready = True
                    self.say(f"  {c.spec.name} … {result} ({time.monotonic() - t0:.1f} s)")
                else:
                    try:
                        self.spawn(c)
                    except OSError as exc:
                        self.say(f"  {c.spec.name} … FAILED: cannot start {c.spec.argv[0]}: {exc}")
                        return False
            self.write_state()
            if not self._wait_ready([c for c in batch if c.spec.action is None], deadline):
                return False
        return True

    def _wait_ready(self, batch: list[Child], deadline: float) -> bool:
        t0 = time.monotonic()
        next_progress = t0 + 5.0
        pending = list(batch)
        while pending:
            for c in list(pending):
                code = c.proc.poll()
                if code is not None:
                    self.say(f"  {c.spec.name} … FAILED: exited with code {code} while starting")
                    tail = self.log_tail(c)
                    if tail:
                        self.say(f"  last lines of {c.log}:\n{tail}")
                    self.say(f"  fix the cause (see {c.log}) and run `{command('up')}` again")
                    return False
                ok, detail = self.check(c)
                c.detail = detail
                if ok:
                    c.ready = True
                    pending.remove(c)
                    self.say(f"  {c.spec.name} … {detail} ({time.monotonic() - t0:.1f} s)")
            if not pending:
                break
            now = time.monotonic()
            if now > deadline:
                for c in pending:
                    self.say(f"  {c.spec.name} … TIMEOUT: not ready ({c.detail}); log: {c.log}")
                    tail = self.log_tail(c, 8)
                    if tail:
                        self.say(tail)
                self.say(f"  raise the limit with `{command('up --timeout S')}` if the machine is just slow")
                return False
            if now > next_progress:
                names = ", ".join(c.spec.name for c in pending)
                self.say(f"  … waiting for {names} ({now - t0:.0f} s)")
                next_progress = now + 5.0
            if self.stop_event.wait(0.2):
                return False
        return True

    # -- supervise
    def supervise_once(self) -> None:
        changed = False
        for c in self.children:
            if c.spec.action is not None or c.proc is None:
                continue
            if c.restart_at is not None:
                if time.time() >= c.restart_at:
                    try:
                        self.spawn(c)
                    except OSError as exc:
                        c.restart_at = time.time() + c.backoff
                        self.say(
                            f"{c.spec.name} cannot be restarted ({exc}); retrying in {c.backoff:.0f} s",
                            stamp=True,
                        )
                        c.backoff = min(c.backoff * 2, BACKOFF_MAX_S)
                        continue
                    c.restarts += 1
                    changed = True
                    self.say(f"{c.spec.name} restarted (pid {c.pid}, restart #{c.restarts})", stamp=True)
                continue
            code = c.proc.poll()
            if code is not None:
                kill_group(c.proc.pid, signal.SIGKILL)  # whatever it spawned goes with it
                if not c.spec.restart:
                    continue
                ran = time.time() - c.started_at
                if ran > STABLE_S:
                    c.backoff = BACKOFF_MIN_S
                c.restart_at = time.time() + c.backoff
                self.say(
                    f"{c.spec.name} (pid {c.pid}) exited with code {code} after {ran:.0f} s; "
                    f"restarting in {c.backoff:.0f} s (log: {c.log})",
                    stamp=True,
                )
                c.backoff = min(c.backoff * 2, BACKOFF_MAX_S)
                changed = True
            elif not c.ready and c.spec.ready is not None:
                ok, detail = self.check(c)
                if ok:
                    c.ready = True
                    changed = True
                    self.say(f"{c.spec.name} answers again ({detail})", stamp=True)
        if changed:
            self.write_state()

    def supervise(self) -> None:
        while not self.stop_event.wait(0.5):
            self.supervise_once()

    # -- stop
    def stop_all(self, grace: float = GRACE_S) -> None:
        self.phase = "stopping"
        with contextlib.suppress(OSError):
            self.write_state()
        running = [c for c in self.children if c.proc is not None]
        if not running:
            return
        t0 = time.monotonic()
        self.say("stopping the lab …", stamp=self.meta.get("stamp", False))
        for level in sorted({c.spec.level for c in running}, reverse=True):
            self._stop_child_group([c for c in running if c.spec.level == level], grace)
        freed = remove_rings(self.env.get("TANGO_HOST", ""))
        self.say(f"lab stopped ({len(running)} processes, {time.monotonic() - t0:.1f} s)"
                 + (f"; {freed / 2**20:.0f} MiB of shared-memory rings freed" if freed else ""))

    # -- all of it
    def run(self, timeout: float, on_ready: Callable[[], None] | None = None) -> int:
        """Start, call ``on_ready``, supervise until a stop signal, stop. Returns an exit code."""
        self.acquire_lock()
        self.install_signal_handlers()
        try:
            self.write_state()
            if not self.start_all(timeout):
                if self.stop_event.is_set():
                    self.say("interrupted")
                self.phase = "failed"
                return 130 if self.stop_event.is_set() else 1
            self.say(f"lab is up in {time.monotonic() - self._t0:.1f} s")
            self.phase = "running"
            self.write_state()
            if on_ready is not None:
                on_ready()
            self.meta["stamp"] = True
            self.supervise()
            return 0
        finally:
            self.stop_all()
            with contextlib.suppress(OSError):
                paths.state_file().unlink()
            self.release_lock()


def remove_rings(tango_host: str) -> int:
    """Delete the lab's shared-memory ring folder (it holds RAM); returns the bytes freed."""
    import shutil

    if os.environ.get(environment.RING_FOLDER_VARIABLE):
        return 0  # an explicit ring folder is the user's to manage
    folder = Path(environment.ring_folder(tango_host or environment.tango_host()))
    if not folder.is_dir():
        return 0
    freed = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    shutil.rmtree(folder, ignore_errors=True)
    return freed


def stop_lab(state: dict, timeout: float = 30.0, say: Callable[[str], None] = print) -> bool:
    """Ask the running supervisor to stop; kill whatever is left if it does not. True if clean."""
    pid, st = state.get("supervisor_pid"), state.get("supervisor_starttime")
    if alive(pid, st):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while alive(pid, st) and time.monotonic() < deadline:
            time.sleep(0.1)
        if alive(pid, st):
            say(f"the supervisor (pid {pid}) did not stop within {timeout:.0f} s: killing it")
            os.kill(pid, signal.SIGKILL)
    clean = True
    for p in state.get("processes", []):
        pgid = p.get("pgid")
        if pgid and group_members(pgid):
            clean = False
            say(f"  {p['name']}: killing what is left of process group {pgid}")
            kill_group(pgid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        Path(paths.state_file()).unlink()
    remove_rings(state.get("tango_host", ""))
    return clean

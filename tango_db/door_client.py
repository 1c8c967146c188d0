"""Run a Sardana macro through a Door, as spock does, from plain PyTango (no Taurus needed).

Why events and not reads: the Door publishes a macro's output lines and its result only as
change events (``Output``, ``Info``, ``Warning``, ``Error``, ``Result``); reading ``Result``
always returns an empty list (sardana's ``Door.read_Result``), and reading ``Output`` returns
a buffer cleared at each ``RunMacro``. So, like spock's Door, we subscribe before starting the
macro. The end is the Door's ``State`` event leaving RUNNING: the MacroServer sends it after the
result (the ``MacroStatus`` "finish" comes *before* the result, so it cannot be the end); the
last ``MacroStatus`` of *our* macro (its id comes back from ``RunMacro``) tells a normal end from
a stop or an abort, and the Door's ALARM an error.

    from tango_db.door_client import run_macro
    fit = json.loads(run_macro("door/lab/1", "polarization_scan", "hwp", 0, 180, 36, 0.2, say=print))

A macro whose end nobody saw did not succeed: if the MacroServer dies (``kill -9``, a crash) the
Door comes back ON after its restart with no status of our macro, and an old version of this
client took that silence for "finish". Now success needs our macro's own end status; a Door
that answers again without it, or stays unreachable for ``LOST_AFTER_S``, raises ``MacroLost``.
The Door's state is also read every ``STATE_READ_EVERY_S`` while waiting, because the events of
a dead server simply stop (their heartbeat error comes only after ~10 s). A Door back to ON from
the *same* MacroServer (pid and start date in the database unchanged) means this client's own
link was down while the macro ended: its events are late, not lost (TCP resends them once the
link is back, after its back-off), so the end status is waited for ``LATE_END_STATUS_S`` more;
after an outage longer than the events' heartbeat (~10 s) cppTango reconnects the subscription and
what was sent meanwhile is gone: ``MacroEndUnknown`` says so rather than calling the macro lost.

Ctrl-C while waiting stops the macro (``StopMacro``: the macro's ``on_stop`` closes the shutter)
and re-raises ``KeyboardInterrupt``.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from xml.etree import ElementTree

import tango

from .proxies import SLOW_COMMAND_TIMEOUT_MS, device_proxy

LOG_STREAMS = ("Error", "Warning", "Info", "Output")
END_STATES = {"finish", "stop", "abort", "exception"}
START_TIMEOUT_S = 10.0  # from RunMacro to the macro's first status event
STATE_READ_EVERY_S = 1.0  # the Door's state is read this often when no event came
END_STATUS_GRACE_S = 2.0  # the end status precedes the Door's ON; allow event threads to trail
LOST_AFTER_S = 30.0  # the MacroServer unreachable this long while our macro ran: it is lost
LATE_END_STATUS_S = 30.0  # the same MacroServer still runs: our end status may be on its way (a network outage)


class MacroFailed(RuntimeError):
    """The macro ended in an error, or was stopped or aborted (``how``: exception, stop, abort)."""

    def __init__(self, name: str, how: str, lines: list[str]) -> None:
        self.name, self.how, self.lines = name, how, lines
        detail = ("\n" + "\n".join(lines)) if lines else ""
        super().__init__(f"macro {name} ended with {how}{detail}")


class MacroLost(MacroFailed):
    """The MacroServer died or restarted while the macro ran: nobody saw it end, so it did not succeed."""

    def __init__(self, name: str, door: str, detail: str, lines: list[str]) -> None:
        self.name, self.how, self.lines = name, "lost", lines
        RuntimeError.__init__(
            self, f"macro {name} was lost: {detail}. The MacroServer behind {door} stopped or restarted while it "
                  "ran, so it did not finish; check what it left (a laser shutter it held open is closed by the "
                  "laser server when its lease runs out)" + (("\n" + "\n".join(lines)) if lines else ""))


class MacroEndUnknown(MacroFailed):
    """The MacroServer kept running, but the macro's end never reached this client: its link was
    down long enough for the Door's events to be dropped (not merely delayed). Not a success,
    and not a failure either: the client cannot tell."""

    def __init__(self, name: str, door: str, waited_s: float, lines: list[str]) -> None:
        self.name, self.how, self.lines = name, "unknown", lines
        RuntimeError.__init__(
            self, f"the end of macro {name} did not reach this client: the MacroServer behind {door} kept running, "
                  f"but this client's link to it was down while the macro ended and its events were lost (none "
                  f"within {waited_s:.0f} s after the Door answered again); see the Door's output (spock, the GUI) "
                  "or the scan file for how it ended" + (("\n" + "\n".join(lines)) if lines else ""))


@dataclass
class _Run:
    """What the Door's events told about one run (filled by the event thread)."""

    say: Callable[[str], None]
    macro_id: str | None = None
    result: list[str] | None = None
    errors: list[str] = field(default_factory=list)
    statuses: dict[str, str] = field(default_factory=dict)  # macro id -> its last end-like status
    states: queue.Queue = field(default_factory=queue.Queue)  # the Door's State events
    armed: bool = False  # events delivered while subscribing (the current values) are not ours
    status_seen: threading.Event = field(default_factory=threading.Event)  # an end status arrived

    def on_log(self, event: tango.EventData) -> None:
        if not self.armed or event.err or event.attr_value is None:
            return
        stream = event.attr_name.rsplit("/", 1)[-1].lower()
        lines = [str(line) for line in (event.attr_value.value or ())]
        if stream == "error":
            self.errors.extend(lines)
        for line in lines:
            self.say(line)

    def on_result(self, event: tango.EventData) -> None:
        if self.armed and not event.err and event.attr_value is not None:
            self.result = [str(v) for v in (event.attr_value.value or ())]

    def on_state(self, event: tango.EventData) -> None:
        if self.armed and not event.err and event.attr_value is not None:
            self.states.put(event.attr_value.value)

    def on_status(self, event: tango.EventData) -> None:
        if not self.armed or event.err or event.attr_value is None or event.attr_value.value is None:
            return
        _fmt, data = event.attr_value.value
        try:
            statuses = json.loads(data) if data else []
        except (TypeError, ValueError):
            return
        for status in statuses if isinstance(statuses, list) else [statuses]:
            if isinstance(status, dict) and status.get("state") in END_STATES:
                self.statuses[str(status.get("id"))] = status["state"]
                self.status_seen.set()


def _top_macro_id(xml_text: str) -> str | None:
    root = ElementTree.fromstring(xml_text)
    node = root if root.tag == "macro" else root.find("macro")
    return None if node is None else node.get("id")


def run_macro(door_name: str, name: str, *args: object, say: Callable[[str], None] = print,
              timeout: float | None = None) -> str | list[str] | None:
    """Run macro ``name`` with ``args`` on the Door and wait for its end, printing its output
    lines through ``say`` as they come.

    Returns the macro's result: the one string for a macro with one result (our macros return
    JSON), a list for several, None for a macro without a result. Raises ``MacroFailed`` if it
    ends in an error (the Door's error lines attached) or is stopped/aborted by someone else,
    ``TimeoutError`` after ``timeout`` seconds (the macro is then stopped)."""
    door = device_proxy(door_name, SLOW_COMMAND_TIMEOUT_MS)
    run = _Run(say=say)
    subscriptions = [(stream, run.on_log) for stream in LOG_STREAMS]
    subscriptions += [("Result", run.on_result), ("MacroStatus", run.on_status), ("State", run.on_state)]
    event_ids = []
    try:
        for attr, callback in subscriptions:
            event_ids.append(door.subscribe_event(attr, tango.EventType.CHANGE_EVENT, callback))
        run.armed = True
        try:
            reply = door.command_inout("RunMacro", [name, *(str(a) for a in args)])
        except tango.DevFailed as exc:  # unknown macro, wrong parameters, door busy
            raise MacroFailed(name, "refused", [e.desc.strip() for e in exc.args[:1]]) from None
        run.macro_id = _top_macro_id(reply[0]) if reply else None
        how = _wait_end(door, run, name, timeout)
    finally:
        for eid in event_ids:
            try:
                door.unsubscribe_event(eid)
            except tango.DevFailed:
                pass
    if how != "finish":
        raise MacroFailed(name, how, run.errors)
    if not run.result:
        return None
    return run.result[0] if len(run.result) == 1 else run.result


def _wait_end(door: tango.DeviceProxy, run: _Run, name: str, timeout: float | None) -> str:
    """Wait for the Door to go RUNNING and back; how our macro ended: finish, stop, abort or
    exception. Raises ``MacroLost`` when the end is not *our* macro's (see the module docstring)."""
    t0 = time.monotonic()
    running = False
    last_read = t0
    server = _server_identity(door)  # to tell a restarted MacroServer from delayed events
    unreachable_since: float | None = None
    unreachable_why = ""
    try:
        while True:
            try:
                state = run.states.get(timeout=0.25)
            except queue.Empty:
                state = None
            now = time.monotonic()
            if state is None and now - last_read >= STATE_READ_EVERY_S:
                last_read = now
                try:
                    state = door.state()  # no event: follow the state by reading it
                    unreachable_since = None
                except tango.DevFailed as exc:
                    unreachable_why = exc.args[0].desc.strip().splitlines()[0] if exc.args else str(exc)
                    unreachable_since = unreachable_since or now
                    if now - unreachable_since > LOST_AFTER_S:
                        raise MacroLost(name, door.dev_name(), f"the Door did not answer for {LOST_AFTER_S:.0f} s "
                                                               f"({unreachable_why})", run.errors) from None
            if state in BUSY:
                running = True
            elif state is not None and (running or now - t0 > START_TIMEOUT_S) and state in (
                    tango.DevState.ON, tango.DevState.ALARM):
                how = _end_status(run)
                if how is None and server is not None and _server_identity(door) == server:
                    # The MacroServer did not restart: this client's link was down while the macro
                    # ended (events are delayed by TCP's back-off after an outage, not lost).
                    how = _end_status(run, LATE_END_STATUS_S)
                    if how is None:
                        raise MacroEndUnknown(name, door.dev_name(), LATE_END_STATUS_S, run.errors)
                if how is None:
                    detail = "the Door went back to ON without any end status of this macro"
                    if unreachable_why:
                        detail += f" after being unreachable ({unreachable_why})"
                    raise MacroLost(name, door.dev_name(), detail, run.errors)
                return "exception" if state == tango.DevState.ALARM and how == "finish" else how
            if timeout is not None and time.monotonic() - t0 > timeout:
                how = stop_macro(door)
                raise TimeoutError(f"macro {name} did not end within {timeout:.0f} s: {how}")
    except KeyboardInterrupt:
        run.say(f"stopping {name} …")
        stop_macro(door, say=run.say)
        raise


def _server_identity(door: tango.DeviceProxy) -> tuple[int, str] | None:
    """The Door's server as the database knows it (pid, start date), None if it cannot say:
    another identity after the macro means the MacroServer restarted while it ran."""
    try:
        info = door.get_device_db().get_device_info(door.dev_name())
        return int(info.pid), str(info.started_date)
    except (tango.DevFailed, AttributeError):
        return None


def _end_status(run: _Run, grace: float = END_STATUS_GRACE_S) -> str | None:
    """Our macro's end status; it precedes the Door's ON, but give trailing event threads a moment."""
    deadline = time.monotonic() + grace
    while True:
        run.status_seen.clear()
        how = run.statuses.get(str(run.macro_id))
        left = deadline - time.monotonic()
        if how is not None or left <= 0:
            return how
        run.status_seen.wait(left)


BUSY = (tango.DevState.RUNNING, tango.DevState.STANDBY)  # STANDBY: paused


def stop_macro(door: tango.DeviceProxy, abort_after: float = 10.0, timeout: float = 30.0,
               say: Callable[[str], None] | None = None) -> str:
    """Stop the Door's macro the way spock does, and make sure it happened.

    ``StopMacro`` first (the macro's ``on_stop`` runs: our macros close the shutter), re-sent
    every second while the Door stays busy, because Sardana ignores a Stop (and an Abort) that
    arrives before the macro has really started. After ``abort_after`` seconds without an end,
    ``AbortMacro``, re-sent the same way. Returns "stopped", "aborted" or "still running"
    (after ``timeout``; then ``ReleaseMacro`` or a MacroServer restart is the next step).

    Call it once the Door is busy: Sardana queues a macro and sets the Door RUNNING only when
    its thread starts it, so right after ``RunMacro`` an idle Door does not mean a stopped macro
    (``run_macro`` stops only a macro it has seen start or whose time is up)."""
    t0 = time.monotonic()
    command, sent_at = "StopMacro", -1.0
    while time.monotonic() - t0 < timeout:
        if door.state() not in BUSY:
            return "stopped" if command == "StopMacro" else "aborted"
        now = time.monotonic() - t0
        if command == "StopMacro" and now > abort_after:
            command, sent_at = "AbortMacro", -1.0
            if say:
                say(f"the macro did not stop within {abort_after:.0f} s: aborting it")
        if now - sent_at >= 1.0:
            door.command_inout(command)
            sent_at = now
        time.sleep(0.05)  # polling the Door's state between (re-)sends
    return "still running"

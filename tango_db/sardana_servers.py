"""Sardana's MacroServer, started with two of its abort races closed.

Sardana aborts a macro by raising ``AbortException`` in the macro's thread from another thread
(``PyThreadState_SetAsyncExc``). Python delivers such an exception at the next bytecode
boundary, which can fall between acquiring a lock and the ``try`` that would release it; the
lock then stays held by a thread that has moved on, and the next thread that needs it waits for
ever. Two such places decide whether a Door survives an abort:

- ``logging.Handler.handle`` (Python 3.11 and 3.12) calls ``self.acquire()`` and only then
  enters ``try``/``finally``. The Door logs through one handler per stream attribute; when the
  macro thread is waiting for that handler's lock at the moment of the abort, it leaves with the
  lock, and the abort job's own "aborting" debug line blocks for ever: the Door stays RUNNING
  and a Tango thread that logs while holding the Door's monitor takes the whole device with it
  (``API_CommandTimedOut``, then ``IMP_LIMIT`` on every client call). Reproduced here by
  aborting ``ascan`` within 0.3 s of its start on a loaded machine (one Door in ~40 aborts,
  ``benchmarks``-style script in the closing note of the CI failure); Python 3.13 changed
  ``handle`` to ``with self.lock:`` for this reason.
- ``tango.AutoTangoMonitor.__enter__`` is a Python function that calls ``_acquire()`` and then
  returns: an exception delivered at that return leaves the device's serialization monitor
  held. Sardana takes that monitor in every event push from the macro thread.

The fix is the same for both: acquire in C through a ``with`` statement on the C lock object,
so that no Python bytecode runs between acquiring and entering the protected block. Both
patches keep the public behaviour (same return values, same locks).

The MacroServer's environment file survives the MacroServer being killed while it writes it
(``tango_db.environment_file``). The Pool stores its motors' set points in the database without
making motion wait for it (``tango_db.set_point_recorder``): a database host that goes away
mid-scan no longer fails the scan's moves.

Run as ``python -m tango_db.sardana_servers MacroServer|Pool <instance> [options]``;
``tango_db.processes`` starts the lab's MacroServer this way. Under Starter, which runs a server
by its name from ``StartDsPath``, ``tangodaq deploy`` writes a launcher file named ``MacroServer``
(and ``Pool``) that calls ``main`` here, so the facility gets the same hardened server under the
same server name.

The deployed lab: ``tangodaq deploy`` stores the Pool's elements and the MacroServer's
environment in the database (free property ``tangodaq/Sardana``). A Pool or MacroServer started
through this module creates what is missing of it once its own device answers (in a thread: the
server is serving by then), exactly as ``tangodaq up``'s one-shot steps do; on the laptop, where
``up`` runs those steps itself, the property is absent and nothing more happens.
"""

from __future__ import annotations

import logging
import os
import sys

from deviceservers.common.stack_dump import enable_stack_dumps
from deviceservers.MaiTai.lease import LASER_DOOR_ENV, UNKNOWN_LASER_DOOR, plain_name

_PATCHED = "_tangodaq_async_safe"


def _handle(self: logging.Handler, record: logging.LogRecord) -> logging.LogRecord | bool:
    """``logging.Handler.handle`` with the handler lock taken by ``with`` (as Python 3.13 does)."""
    rv = self.filter(record)
    if isinstance(rv, logging.LogRecord):
        record = rv
    if rv:
        lock = self.lock
        if lock is None:
            self.emit(record)
        else:
            with lock:
                self.emit(record)
    return rv


def harden_logging() -> None:
    """Make every ``logging.Handler`` take its lock without an async-exception window."""
    if not getattr(logging.Handler.handle, _PATCHED, False):
        setattr(_handle, _PATCHED, True)
        logging.Handler.handle = _handle  # type: ignore[method-assign]


def harden_tango_monitor() -> None:
    """Make ``with AutoTangoMonitor(dev):`` acquire the monitor in C.

    ``_acquire`` is the C++ binding itself; as ``__enter__`` it returns None instead of the
    monitor object, and no caller binds it (``with ... as``) in Sardana or in this project.
    """
    import tango

    monitor = tango.AutoTangoMonitor
    if not getattr(monitor, _PATCHED, False):
        monitor.__enter__ = monitor._acquire
        setattr(monitor, _PATCHED, True)


FAULT_MESSAGE = "Measurement group ended acquisition with Fault state"


def explain_acquisition_faults() -> None:
    """Make a scan that fails on a channel say which channel and why.

    Sardana's client side raises only "Measurement group ended acquisition with Fault state";
    the reason (a camera whose host is cut off: ``lab/camera/1: ... TRANSIENT_CallTimedout``) sits
    in the group's Status, which the Pool fills from each channel's StateOne. It is added here."""
    from sardana.taurus.core.tango.sardana.pool import MeasurementGroup

    if getattr(MeasurementGroup, _PATCHED, False):
        return

    def explained(original):
        def run(self, *args, **kwargs):
            try:
                return original(self, *args, **kwargs)
            except Exception as exc:
                if str(exc) != FAULT_MESSAGE:
                    raise
                raise Exception(f"{FAULT_MESSAGE}: {_fault_reasons(self)}") from None

        return run

    for method in ("count_raw", "count", "count_continuous"):  # step scans call count_raw, ct calls count
        setattr(MeasurementGroup, method, explained(getattr(MeasurementGroup, method)))
    setattr(MeasurementGroup, _PATCHED, True)


def _fault_reasons(group) -> str:
    """The channels of ``group`` in Fault, each with its own Status (the controller's reason)."""
    from .proxies import device_proxy

    try:
        status = str(group.status()).strip()
    except Exception as why:  # noqa: BLE001 - the reason could not be read: say so
        return f"its Status could not be read ({why})"
    reasons = []
    for line in status.splitlines():
        name, _, state = line.strip().rpartition(" is ")
        if state.strip().lower() != "fault" or not name:
            continue
        try:
            device = group.getChannelInfo(name)[0]
            proxy = device_proxy(device)
            reasons.append(f"{name}: {proxy.status().strip()}")
        except Exception:  # noqa: BLE001 - keep the group's word for it
            reasons.append(line.strip())
    return "; ".join(reasons) or status


def harden() -> None:
    harden_logging()
    harden_tango_monitor()


# ---------------------------------------------------------------- macros that run as the service
# Sardana's expert macros (sardana/macroserver/macros/expert.py) change the Pool's controllers,
# elements and code, as the service account that may write the laser: on a deployment with a
# laser Door they run only there. These few only define measurement groups or print.
HARMLESS_EXPERT_MACROS = frozenset({"defm", "defmeas", "udefmeas", "prdef", "sar_info"})


class MacroRefused(Exception):
    """A macro this Door may not run."""


def check_macro_door(macro: str, library: str, door: str, laser_door: str) -> None:
    """Refuse a Pool-changing expert macro outside the laser Door (when the lab has one)."""
    if not laser_door or library != "expert" or macro in HARMLESS_EXPERT_MACROS:
        return
    if laser_door == UNKNOWN_LASER_DOOR or plain_name(door) != plain_name(laser_door):
        where = ("the laser Door (unknown: the lab's roles could not be read when the MacroServer "
                 "started; restart it once the database answers)" if laser_door == UNKNOWN_LASER_DOOR
                 else f"the laser Door {laser_door}")
        raise MacroRefused(f"{macro} changes the Pool's controllers, elements or code as the service account: it runs "
                           f"only on {where}, for laser operators; this Door is {door}")


def read_laser_door() -> str:
    """The lab's laser Door, read once at the MacroServer's start ("" when the lab has none,
    UNKNOWN_LASER_DOOR when the database could not tell): a database that stops answering later
    cannot make the check silently pass."""
    from .roles import ROLES_OBJECT, ROLES_PROPERTY, decode

    try:
        import tango

        lines = tango.Database().get_property(ROLES_OBJECT, ROLES_PROPERTY)[ROLES_PROPERTY]
    except Exception:  # noqa: BLE001 - any failure: refuse light rather than guess
        logging.getLogger("tangodaq.sardana").exception("cannot read the lab's roles: no Door may make light")
        return UNKNOWN_LASER_DOOR
    return decode(lines).get("laser_door", "")


def guard_macros(laser_door: str) -> None:
    """Check every macro a client asks a Door for (not the macros a running macro calls)."""
    if not laser_door:
        return  # no access control deployed (a laptop lab): every Door runs every macro
    from sardana.macroserver.msmacromanager import MacroExecutor

    original = MacroExecutor._createMacroObj

    def _createMacroObj(self, macro_name_or_meta, pars, init_opts={}):  # noqa: B006 - Sardana's signature
        if init_opts.get("parent_macro") is None:
            meta = macro_name_or_meta
            if isinstance(meta, str):
                meta = self.macro_manager.getMacro(meta)
            library = getattr(getattr(meta, "lib", None), "name", "")
            check_macro_door(meta.name, library, str(getattr(self.door, "name", "")), laser_door)
        return original(self, macro_name_or_meta, pars, init_opts)

    MacroExecutor._createMacroObj = _createMacroObj


SERVERS = {"MacroServer": "sardana.tango.macroserver", "Pool": "sardana.tango.pool"}
SETUP_TIMEOUT_S = 120.0  # how long the deployed set-up waits for this server's devices
DESCRIPTION_RETRY_S = 1.0  # between two reads of the description while the database does not answer


def deployed_description() -> dict | None:
    """The Sardana description ``tangodaq deploy`` stored in the database, or None (a laptop lab:
    ``tangodaq up`` sets its Pool and MacroServer up itself). A database that does not answer
    raises DevFailed: that is not "nothing deployed"."""
    import json

    import tango

    from .deploy import SARDANA_PROPERTY

    lines = tango.Database().get_property("tangodaq", SARDANA_PROPERTY)[SARDANA_PROPERTY]
    text = "".join(lines)
    return json.loads(text) if text else None


def _wait_serving(deadline: float) -> None:
    """Until this process's Tango server has started (its ``Util`` exists and is past start-up).

    A client call made from this thread while the server initialises its ORB races with it: the
    server shuts down the ORB the client call started (``BAD_INV_ORDER_ORBHasShutdown``, seen on
    every few starts under Starter), and a read could come back empty; before, that read as
    "nothing deployed" and the Pool silently created no elements."""
    import time

    import tango

    while time.monotonic() < deadline:
        try:
            if not tango.Util.instance(False).is_svr_starting():
                return
        except tango.DevFailed:
            pass  # the server has not created its Util yet
        time.sleep(0.05)  # cppTango gives no event for "server started" to a thread of its own


def _read_description(log: logging.Logger) -> dict | None:
    """:func:`deployed_description` once the server serves, asked again while the database does
    not answer."""
    import time

    import tango

    deadline = time.monotonic() + SETUP_TIMEOUT_S
    _wait_serving(deadline)
    while True:
        try:
            return deployed_description()
        except tango.DevFailed as exc:
            reason = exc.args[0].desc.strip() if exc.args else str(exc)
            if time.monotonic() > deadline:
                raise RuntimeError(f"the deployed Sardana description could not be read: {reason}") from None
            log.warning("deployed Sardana description not read yet (%s): asking again", reason)
            time.sleep(DESCRIPTION_RETRY_S)  # the database gives no event to wait for


def _apply_deployed(server: str, instance: str) -> None:
    """Create the deployed elements (Pool) or environment (MacroServer) once this server answers."""
    import tango

    from . import sardana_setup

    log = logging.getLogger("tangodaq.sardana")
    try:
        description = _read_description(log)
        if not description:
            return
        db = tango.Database()
        tango_host = f"{db.get_db_host()}:{db.get_db_port()}"
        mine = description["pool"] if server == "Pool" else description["macroserver"]
        if db.get_device_info(mine).ds_full_name.lower() != f"{server}/{instance}".lower():
            log.info("deployed Sardana set-up: %s belongs to %s, not to %s/%s", mine,
                     db.get_device_info(mine).ds_full_name, server, instance)
            return  # another Pool/MacroServer of the facility: not ours to set up
        sardana_setup.wait_answers(mine, tango_host, SETUP_TIMEOUT_S)
        if server == "Pool":
            result = sardana_setup.create_elements(None, tango_host, description, planned=True)
        else:
            result = sardana_setup.set_environment(tango_host, description)
        log.info("deployed Sardana set-up of %s/%s: %s", server, instance, result)
    except Exception:  # noqa: BLE001 - the server keeps running; the reason goes to its log
        log.exception("deployed Sardana set-up of %s/%s failed", server, instance)


def start_deployed_setup(server: str, instance: str) -> None:
    import threading

    def run() -> None:
        import tango

        # Tango calls from a Python thread of a server need an omniORB identity (pytango's
        # EnsureOmniThread); without it they race with the server's own threads.
        with tango.EnsureOmniThread():
            _apply_deployed(server, instance)

    threading.Thread(target=run, name="tangodaq-setup", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SERVERS:
        print(f"usage: python -m tango_db.sardana_servers {{{'|'.join(SERVERS)}}} INSTANCE [options]", file=sys.stderr)
        return 2
    server = argv[0]
    enable_stack_dumps()
    harden()
    if server == "Pool":  # motion must not wait for the database (tango_db/set_point_recorder.py)
        from .set_point_recorder import record_motor_set_points_in_background

        record_motor_set_points_in_background()
    if server == "MacroServer":
        from .environment_file import install as keep_environment_whole_across_kills

        keep_environment_whole_across_kills()
        explain_acquisition_faults()
        laser_door = read_laser_door()
        os.environ[LASER_DOOR_ENV] = laser_door
        guard_macros(laser_door)
    instance = next((a for a in argv[1:] if not a.startswith("-")), "")
    if instance:
        start_deployed_setup(server, instance)
    import importlib

    module = importlib.import_module(SERVERS[server])
    # Tango takes the server name from argv[0]: keep Sardana's own names (MacroServer/lab).
    sys.argv = [server, *argv[1:]]
    result = module.main()
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())

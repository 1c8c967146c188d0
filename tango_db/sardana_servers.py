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

Run as ``python -m tango_db.sardana_servers MacroServer <instance> [options]``;
``tango_db.processes`` starts the lab's MacroServer this way. The Pool raises no asynchronous
exceptions and runs Sardana's own script. A facility deployment that
starts Sardana's own ``MacroServer`` script from Starter does not get these patches.
"""

from __future__ import annotations

import logging
import sys

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


def harden() -> None:
    harden_logging()
    harden_tango_monitor()


SERVERS = {"MacroServer": "sardana.tango.macroserver"}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SERVERS:
        print(f"usage: python -m tango_db.sardana_servers {{{'|'.join(SERVERS)}}} INSTANCE [options]", file=sys.stderr)
        return 2
    server = argv[0]
    harden()
    import importlib

    module = importlib.import_module(SERVERS[server])
    # Tango takes the server name from argv[0]: keep Sardana's own names (MacroServer/lab).
    sys.argv = [server, *argv[1:]]
    result = module.main()
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())

"""The MacroServer's abort hardening: a lock taken while an abort lands is not leaked.

Sardana aborts a macro by raising an exception asynchronously in its thread. Here a thread waits
for a logging handler's lock, the exception is set while it waits, and the lock is then freed:
the thread takes the lock and receives the exception at once. Python 3.11's own
``Handler.handle`` leaves the handler locked for ever at that point (the Door hang reproduced
on the lab); the hardened one releases it.
"""

from __future__ import annotations

import ctypes
import linecache
import logging
import sys
import threading

import pytest

from tango_db import sardana_servers
from tests.waiting import wait_until


class Aborted(Exception):
    pass


class _Quiet(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        pass


def _abort_while_waiting_for_the_lock(handle) -> bool:  # noqa: ANN001
    """Run ``handle`` in a thread that is aborted while it waits for the handler lock; return
    whether the lock is free afterwards."""
    handler = _Quiet()
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "aborting…", None, None)
    outcome: list[BaseException | None] = []

    def log() -> None:
        try:
            handle(handler, record)
            outcome.append(None)
        except Aborted as exc:
            outcome.append(exc)

    handler.lock.acquire()  # another thread is emitting
    thread = threading.Thread(target=log)
    thread.start()
    wait_until(lambda: _blocked_on_the_lock(thread), 10, what="the logging thread to wait for the handler lock")
    assert _set_async_exc(thread.ident, Aborted) == 1
    handler.lock.release()
    thread.join(5)
    assert not thread.is_alive()
    assert outcome and isinstance(outcome[0], Aborted), outcome
    free = handler.lock.acquire(timeout=1)
    if free:
        handler.lock.release()
    return free


def _set_async_exc(ident: int, exc: type[BaseException]) -> int:
    """``PyThreadState_SetAsyncExc`` through a function object of our own: Sardana sets
    ``argtypes`` on the shared ``ctypes.pythonapi`` one when it is imported."""
    func = ctypes.PyDLL(None).PyThreadState_SetAsyncExc
    func.argtypes = (ctypes.c_ulong, ctypes.py_object)
    func.restype = ctypes.c_int
    return func(ident, exc)


def _blocked_on_the_lock(thread: threading.Thread) -> bool:
    """Whether ``thread`` is inside the C acquire of the handler lock (its innermost Python frame
    is ``Handler.acquire`` or the ``with lock:`` line of the hardened handle)."""
    frame = sys._current_frames().get(thread.ident)
    if frame is None:
        return False
    line = linecache.getline(frame.f_code.co_filename, frame.f_lineno).strip()
    return frame.f_code.co_name == "acquire" or line == "with lock:"


def test_the_hardened_handler_releases_its_lock_when_aborted() -> None:
    assert _abort_while_waiting_for_the_lock(sardana_servers._handle)


@pytest.mark.skipif(
    logging.Handler.handle.__code__.co_names.count("acquire") == 0,
    reason="this Python's logging already takes the handler lock with `with`",
)
def test_pythons_own_handler_leaks_its_lock_there() -> None:
    """The hazard the hardening removes (documents why it exists; Python < 3.13)."""
    assert not getattr(logging.Handler.handle, sardana_servers._PATCHED, False), "logging hardened in the test process"
    assert not _abort_while_waiting_for_the_lock(logging.Handler.handle)


def test_harden_patches_logging_once_and_keeps_behaviour(monkeypatch) -> None:
    monkeypatch.setattr(logging.Handler, "handle", logging.Handler.handle)
    sardana_servers.harden_logging()
    patched = logging.Handler.handle
    sardana_servers.harden_logging()
    assert logging.Handler.handle is patched is sardana_servers._handle
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    handler = Keep()
    handler.addFilter(lambda r: "secret" not in r.getMessage())
    log = logging.getLogger("tangodaq.test.hardening")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("shown")
        log.warning("secret")
    finally:
        log.removeHandler(handler)
    assert seen == ["shown"]


def test_expert_macros_that_change_the_pool_run_only_on_the_laser_door():
    from tango_db.sardana_servers import MacroRefused, check_macro_door

    laser = "door/lab/laser"
    for macro in ("defctrl", "commit_ctrllib", "relctrllib", "send2ctrl", "defelem", "udefctrl"):
        with pytest.raises(MacroRefused, match=f"{macro} changes the Pool.*only on the laser Door door/lab/laser"):
            check_macro_door(macro, "expert", "door/lab/1", laser)
        check_macro_door(macro, "expert", "tango://db:10000/Door/Lab/Laser", laser)  # the laser Door: allowed
        check_macro_door(macro, "expert", "door/lab/1", "")  # no access control deployed: allowed
    check_macro_door("defmeas", "expert", "door/lab/1", laser)  # defines a group of existing channels
    check_macro_door("ascan", "scan", "door/lab/1", laser)
    with pytest.raises(MacroRefused, match="could not be read"):  # roles unknown at start: refuse
        check_macro_door("defctrl", "expert", "door/lab/laser", "?")


def test_the_laser_door_is_the_one_read_at_the_macroservers_start(monkeypatch):
    from deviceservers.MaiTai import lease

    monkeypatch.setenv(lease.LASER_DOOR_ENV, "?")
    with pytest.raises(lease.LightRefused, match="could not be read"):
        lease.check_light_door("door/lab/laser", lease.laser_door())
    monkeypatch.setenv(lease.LASER_DOOR_ENV, "door/lab/laser")
    assert lease.laser_door() == "door/lab/laser"  # no database read: a later outage cannot change it
    with pytest.raises(lease.LightRefused, match="only from the laser Door"):
        lease.check_light_door("door/lab/1", lease.laser_door())

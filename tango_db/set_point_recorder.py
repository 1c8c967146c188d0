"""The Pool's motor set points, recorded in the database without making motion wait for it.

Sardana's Tango ``Motor.write_Position`` stores every written position in the database (the
``DialPosition`` attribute property ``__value``/``__value_ts``, through
``Motor.set_write_dial_position_to_db``) after the motion has started and while the device's
monitor is held. With the database host unreachable, that call waits for the database's
time-out, longer than the MacroServer's 3 s on the motor: every move of a running scan then
fails with ``API_DeviceTimedOut`` although the motor, its controller and the instrument all
work (found by cutting the database host off mid-scan, ``tests/facility/test_hosts.py``). The
record only serves to restore the set point after a Pool restart.

Here the Pool hands the record to one writer thread that keeps the newest value per motor and
writes it as soon as the database answers, retrying every ``RETRY_S``: motion never waits for
the database, and the last set point still reaches it when the database comes back. A Pool that
dies while the database is away loses only set points it could not have stored anyway.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from deviceservers.MaiTai.lease import describe  # a DevFailed's description, else the exception

RETRY_S = 2.0
PROBE_TIMEOUT_S = 1.0  # a database that gives no GIOP reply within this is taken as away
WRITE_TIMEOUT_MS = 2000

log = logging.getLogger("tangodaq.sardana")


class SetPointRecorder:
    """Writes ``(device, data)`` records with ``write`` in a thread of its own: the newest record
    per device, devices in the order they last changed."""

    def __init__(self, write: Callable[[str, dict], None], retry_s: float = RETRY_S) -> None:
        self._write = write
        self._retry_s = retry_s
        self._pending: dict[str, dict] = {}
        self._cond = threading.Condition()
        self._busy = False
        self._failing = False
        threading.Thread(target=self._run, name="tangodaq-set-points", daemon=True).start()

    def record(self, device: str, data: dict) -> None:
        """Queue ``data`` for ``device`` (replacing a record not yet written); never blocks on I/O."""
        with self._cond:
            self._pending.pop(device, None)  # re-inserted last: devices are written in order of change
            self._pending[device] = data
            self._cond.notify_all()

    def wait_written(self, timeout: float) -> bool:
        """Until every queued record is written (tests); False on time-out."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._pending and not self._busy, timeout)

    def _run(self) -> None:
        import tango

        with tango.EnsureOmniThread():  # database calls from a Python thread of the Pool's server
            self._record_loop()

    def _record_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending)
                device = next(iter(self._pending))
                data = self._pending.pop(device)
                self._busy = True
            try:
                self._write(device, data)
            except Exception as exc:  # noqa: BLE001 - any database failure: keep it, retry
                with self._cond:
                    self._busy = False
                    self._pending.setdefault(device, data)  # unless a newer set point came meanwhile
                    if not self._failing:
                        log.warning("motor set points not stored in the database (%s): kept, retried every %g s",
                                    describe(exc), self._retry_s)
                    self._failing = True
                    self._cond.wait(self._retry_s)
                continue
            with self._cond:
                self._busy = False
                if self._failing:
                    log.warning("motor set points stored in the database again")
                self._failing = False
                self._cond.notify_all()


def record_motor_set_points_in_background() -> SetPointRecorder:
    """Patch Sardana's Tango ``Motor`` so its set-point record goes through a :class:`SetPointRecorder`.

    Each write first asks the database's port for a GIOP reply with a plain socket (``speaks_giop``,
    one second at most): PyTango's database calls keep the interpreter lock while they wait (seen
    with py-spy on the Pool, every thread stopped behind a write to a cut-off database for the
    ~45 s cppTango takes to give up), so the recorder only calls the database once it answers, and
    with a time-out of its own."""
    import tango
    from sardana.tango.pool.Motor import Motor

    from .embedded_db import speaks_giop

    database: list = []  # the recorder's own Database client, made at the first write

    def write(device: str, data: dict) -> None:
        if not database:
            server_db = tango.Util.instance().get_database()
            host, port = server_db.get_db_host(), int(server_db.get_db_port_num())
            database.append((host, port, None))
        host, port, db = database[0]
        if not speaks_giop(host, port, timeout=PROBE_TIMEOUT_S):
            raise ConnectionError(f"the Tango database at {host}:{port} does not answer")
        if db is None:
            db = tango.Database(host, port)
            db.set_timeout_millis(WRITE_TIMEOUT_MS)
            database[0] = (host, port, db)
        db.put_device_attribute_property(device, data)

    recorder = SetPointRecorder(write)

    def set_write_dial_position_to_db(self) -> None:
        dial = self.motor.get_dial_position_attribute()
        if dial.has_write_value():
            recorder.record(self.get_name(),
                            {"DialPosition": {"__value": str(dial.w_value), "__value_ts": dial.w_timestamp}})

    Motor.set_write_dial_position_to_db = set_write_dial_position_to_db  # type: ignore[method-assign]
    return recorder

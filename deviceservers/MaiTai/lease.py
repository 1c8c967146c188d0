"""The client's side of the Mai Tai's shutter lease: open under a lease, renew it from a thread.

Used by every program that needs light for a while (the lab macros' ``ShutterHold``, the demo
experiment in ``tango_db/experiment.py``), so that all of them behave alike
(docs/laser-safety.md):

* the shutter is opened with ``OpenShutterWithLease(lease_s)``, and a daemon thread renews it
  with ``RenewShutterLease(lease_s)`` every ``renew_every_s`` while the owner is alive. If the
  owner's process dies, nothing renews, and the laser server closes the shutter when the lease
  runs out;
* whatever goes wrong in the thread (a refused renewal, a proxy that cannot be made, a bug) is
  caught, logged and kept in :attr:`ShutterLease.lost`. :meth:`ShutterLease.check` raises when
  the light is lost or the thread is dead, so its owner stops instead of measuring in the dark;
* the thread never reopens a closed shutter. Only the owner's own thread does, through
  :meth:`ShutterLease.reopen` (after a pause, see ``paused``).

No Tango device is named here: the caller passes the laser's name (``tango_db.roles``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable

import tango

from tango_db.proxies import device_proxy

#: the laser server closes the shutter this long after the last renewal. It covers a renewal
#: stuck ~2 s behind another client's shutter command on the laser server, and bounds the light
#: after the owner's death to ~6 s (lease + the laser server's poll + the shutter's travel)
DEFAULT_LEASE_S = 5.0
RENEW_EVERY_S = 1.0
CLIENT_TIMEOUT_MS = 10000  # a shutter command confirms by readback (2 s) and may wait behind another

log = logging.getLogger("tangodaq.shutter_lease")


class LeaseLost(RuntimeError):
    """The light this owner asked for is gone (or nobody renews it any more): stop measuring."""


class LightRefused(PermissionError):
    """A program asked for light from a Door that may not make it (docs/laser-safety.md)."""


def plain_name(name: str) -> str:
    """``tango://host:port/a/b/c`` or ``a/b/c`` -> ``a/b/c`` (lower case)."""
    name = name.strip().lower()
    if name.startswith("tango://"):
        name = name[len("tango://"):].split("/", 1)[-1]
    return name


LASER_DOOR_ENV = "TANGODAQ_LASER_DOOR"  # set by the MacroServer's launcher (tango_db.sardana_servers)
UNKNOWN_LASER_DOOR = "?"  # the launcher could not read the roles: no Door may make light


def laser_door() -> str:
    """The lab's laser Door as the MacroServer read it at its start, so a database that stops
    answering later cannot turn the check off; outside that launcher (unit fakes), the roles."""
    fixed = os.environ.get(LASER_DOOR_ENV)
    if fixed is not None:
        return fixed
    from tango_db.roles import lab_roles

    return lab_roles().get("laser_door", "")


def check_light_door(door: str, laser_door: str) -> None:
    """Refuse light to a macro that does not run on the laser Door.

    A macro runs as the MacroServer's user, whoever asked the Door for it: the asking user's TAC
    rights on the laser never reach the laser. What TAC does check is who may run macros on which
    Door (``RunMacro`` needs write access to the Door), so a deployment with access control has a
    Door that only laser operators may use (the ``laser_door`` role), and a program that makes
    light must run on it. Without that role (a laptop lab, no access control) anything goes."""
    if laser_door == UNKNOWN_LASER_DOOR:
        raise LightRefused("light is refused: the lab's roles could not be read when the MacroServer started, so "
                           "the laser Door is unknown; restart the MacroServer once the database answers")
    if laser_door and plain_name(door) != plain_name(laser_door):
        raise LightRefused(f"light is made only from the laser Door {laser_door} (laser operators); this macro runs "
                           f"on {door or 'no Door'}: run it there, or ask a laser operator")


def laser_proxy(name: str) -> tango.DeviceProxy:
    """A proxy with a time-out that outlasts a shutter command's confirmation."""
    return device_proxy(name, CLIENT_TIMEOUT_MS)


def describe(exc: BaseException) -> str:
    """The text an operator needs: a DevFailed's description, else the exception itself."""
    if isinstance(exc, tango.DevFailed) and exc.args:
        return str(exc.args[0].desc).strip()
    return f"{type(exc).__name__}: {exc}"


class ShutterLease:
    """The laser shutter held open for one owner by a lease the laser server enforces.

    ``alive()`` says whether the owner still wants the light (a macro: still on its Door's
    stack); when it returns False the thread stops renewing and the lease runs out. ``paused()``
    says whether the owner is paused: the thread then closes the shutter and renews nothing until
    the owner calls :meth:`reopen`. Both are called from the renewing thread and must not raise
    into it (an exception there counts as a lost lease)."""

    def __init__(
        self,
        laser: str,
        *,
        owner: str,
        lease_s: float = DEFAULT_LEASE_S,
        renew_every_s: float = RENEW_EVERY_S,
        alive: Callable[[], bool] | None = None,
        paused: Callable[[], bool] | None = None,
        connect: Callable[[str], tango.DeviceProxy] = laser_proxy,
        logger: logging.Logger | None = None,
    ) -> None:
        self.laser = laser
        self.owner = owner
        self.lease_s = lease_s
        self.renew_every_s = renew_every_s
        self._alive = alive or (lambda: True)
        self._paused = paused or (lambda: False)
        self._connect = connect
        self.log = logger or log
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.closed_for_pause = False
        self.lost = ""  # why the light is gone (a renewal refused, the thread failed), for the owner
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ owner's thread
    def open(self) -> None:
        """OpenShutterWithLease, then start renewing. Raises (DevFailed) when the laser refuses."""
        self._connect(self.laser).command_inout("OpenShutterWithLease", self.lease_s)
        self._thread = threading.Thread(target=self._renew, name=f"shutter lease {self.owner}", daemon=True)
        self._thread.start()

    def check(self) -> None:
        """Raise :class:`LeaseLost` when the light is gone or nobody renews the lease any more."""
        with self._lock:
            lost = self.lost
        if lost:
            raise LeaseLost(f"the laser shutter held open for {self.owner} was closed or lost ({lost}): "
                            "stopping instead of measuring in the dark")
        thread = self._thread
        if thread is None or (not thread.is_alive() and not self._stop.is_set()):
            raise LeaseLost(f"nobody renews the laser shutter's lease of {self.owner} any more (its renewing thread "
                            "has ended): the laser server closes the shutter when the lease runs out; "
                            "stopping instead of measuring in the dark")

    def reopen(self) -> bool:
        """Before a measurement: check, and reopen after a pause; True when it reopened."""
        self.check()
        with self._lock:
            reopen = self.closed_for_pause
        if not reopen:
            return False
        self._connect(self.laser).command_inout("OpenShutterWithLease", self.lease_s)
        with self._lock:
            self.closed_for_pause = False
        return True

    def release(self) -> None:
        """Stop renewing (the caller then closes the shutter, or leaves the lease to run out)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(self.renew_every_s + CLIENT_TIMEOUT_MS / 1000 + 1)  # one renewal in flight at most

    def close(self) -> None:
        """Stop renewing and close the shutter (CloseShutter, confirmed by the laser server); raises
        when the close fails (the lease, no longer renewed, then closes it within ``lease_s``)."""
        self.release()
        self._connect(self.laser).command_inout("CloseShutter")

    def close_for_pause(self, laser: tango.DeviceProxy | None = None) -> None:
        """The owner is paused: close now, renew nothing until :meth:`reopen` (idempotent)."""
        with self._lock:
            if self.closed_for_pause:
                return
            self.closed_for_pause = True  # no renewal while paused, even if the close fails
            try:
                (laser or self._connect(self.laser)).command_inout("CloseShutter")
                self.log.warning("%s paused: laser shutter closed (reopened by it on resume)", self.owner)
            except Exception as exc:  # noqa: BLE001 - not renewing any more: the lease closes it
                self.log.error("%s paused but CloseShutter failed (the lease closes it): %s", self.owner, describe(exc))

    # ------------------------------------------------------------------ renewing thread
    def _renew(self) -> None:
        with tango.EnsureOmniThread():  # Tango client calls from a Python thread of a server (the MacroServer)
            self._renew_loop()

    def _renew_loop(self) -> None:
        """Renew until released or the owner is gone; any failure is a lost lease, never a silent death."""
        try:
            laser = self._connect(self.laser)
            while not self._stop.wait(self.renew_every_s):
                if not self._alive():
                    self.log.warning("%s is no longer running: its shutter lease is left to expire", self.owner)
                    return
                if self._paused():
                    self.close_for_pause(laser)
                with self._lock:
                    if self.closed_for_pause:
                        continue
                try:
                    laser.command_inout("RenewShutterLease", self.lease_s)
                except tango.DevFailed as exc:
                    with self._lock:
                        if self.closed_for_pause:  # a pause closed it meanwhile: nothing is lost
                            continue
                        self.lost = describe(exc)
                    self.log.error("shutter lease of %s refused: %s", self.owner, self.lost)
                    return
        except Exception as exc:  # noqa: BLE001 - whatever it is, the owner must hear that nobody renews
            with self._lock:
                self.lost = f"the lease renewal failed: {describe(exc)}"
            self.log.exception("shutter lease of %s: renewing thread failed", self.owner)

"""The one way a device test builds what it tests: simulator → device server → devices → ready.

The shape of ska-tango-testing's ``TangoTestHarness`` (and PaSD's harness on top of it), on
pytango's own test contexts:

- the simulator is served on a real TCP socket (:class:`SimulatorServer`), so the device reaches
  it over ``socket://`` as it reaches a terminal server in the lab; a property whose value is
  :data:`SIMULATOR_URL` gets that address;
- the devices run in a server process of their own (``process=True``: timing as in the lab, and a
  crash of the server is not a crash of the tests);
- :func:`served` returns only when the server answers and every device is ready (by default:
  out of INIT, so it has met its instrument), with proxies on Tango's default time-out.

A server just started may refuse its first connection for a moment, and a proxy whose first
connection failed refuses to try again for a second ("The connection request was delayed"):
the server is asked with a fresh proxy until it answers, never through one that failed.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import tango
from tango.test_context import MultiDeviceTestContext

from deviceservers.common.simulator import Simulator
from deviceservers.common.tcp_server import SimulatorServer
from tango_db.proxies import DEFAULT_TIMEOUT_MS, device_proxy
from tests.waiting import wait_until

#: stands for the address of the harness's simulator in a device property
SIMULATOR_URL = "<the harness's simulator>"
#: Tango's default: a test that checks a command answers within a client's patience keeps it
PROXY_TIMEOUT_MS = DEFAULT_TIMEOUT_MS

Ready = Callable[[tango.DeviceProxy], bool]


def out_of_init(proxy: tango.DeviceProxy) -> bool:
    """The device has met its instrument (or said why it could not): any state but INIT."""
    return proxy.State() != tango.DevState.INIT


def in_state(*states: tango.DevState) -> Ready:
    return lambda proxy: proxy.State() in states


def _die_with_parent(parent: int) -> None:
    """In a forked server: be killed when the test process ``parent`` ends, however it ends. A
    test run stopped by kill, a CI time-out or a crash of the interpreter otherwise left its
    forked servers running for ever (re-parented, still holding their ports and rings).

    Linux sends the signal when the *thread* that forked ends: :func:`served` must be called
    from the tests' own thread, never from a worker thread that ends before the server should."""
    import ctypes

    pr_set_pdeathsig = 1
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != parent:  # the parent was already gone before the line above
        os._exit(1)


class _Context(MultiDeviceTestContext):
    """pytango's context whose connection to the new server survives a first refusal, whose exit
    accepts a server that a test killed, and whose forked server never outlives the tests."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._tests_pid = os.getpid()  # before the fork: the server compares its parent with it
        super().__init__(*args, **kwargs)

    def target(self, runserver, process=False):  # noqa: ANN001, ANN201 - pytango's signature
        if process:
            _die_with_parent(self._tests_pid)
        return super().target(runserver, process)

    def stop(self) -> None:
        if self._process and not self.thread.is_alive():
            self.server = None  # gone (killed by the test): nobody to send Kill to
        super().stop()

    def connect(self) -> None:
        try:
            super().connect()
        except tango.DevFailed:
            def answers() -> tango.DeviceProxy:
                proxy = tango.DeviceProxy(self.get_server_access())  # fresh: see the module's docstring
                proxy.ping()
                return proxy

            self.server = wait_until(answers, self.timeout, interval=0.2, what=f"{self.get_server_access()} to answer")


@dataclass
class Served:
    """The running server: its devices' proxies by name, the simulator's server if any."""

    context: MultiDeviceTestContext
    simulator_server: SimulatorServer | None = None
    proxies: dict[str, tango.DeviceProxy] = field(default_factory=dict)

    def __getitem__(self, name: str) -> tango.DeviceProxy:
        return self.proxies[name]

    def access(self, name: str) -> str:
        """The device's full name (``tango://host:port/name#dbase=no``) for other clients."""
        return self.context.get_device_access(name)

    def kill(self) -> None:
        """``kill -9`` the server process (a crash), and wait until it is gone."""
        os.kill(self.context.thread.pid, signal.SIGKILL)
        self.context.thread.join(10)

    @property
    def only(self) -> tango.DeviceProxy:
        """The one device of a one-device server."""
        (proxy,) = self.proxies.values()
        return proxy


def _resolve(properties: Mapping[str, Any], url: str | None) -> dict[str, Any]:
    out = {}
    for key, value in properties.items():
        if value == SIMULATOR_URL:
            if url is None:
                raise ValueError(f"property {key} asks for the simulator's address, but no simulator was given")
            value = url
        out[key] = value
    return out


@contextlib.contextmanager
def served(
    classes: Mapping[type, Mapping[str, Mapping[str, Any]]],
    *,
    simulator: Simulator | None = None,
    ready: Ready | None = out_of_init,
    timeout_s: float = 20.0,
    proxy_timeout_ms: int = PROXY_TIMEOUT_MS,
    server_name: str | None = None,
    **context_kwargs: Any,
) -> Iterator[Served]:
    """Serve ``classes`` = {device class: {device name: properties}} in one server process.

    ``simulator`` is served on TCP first (``SIMULATOR_URL`` in a property becomes its address);
    ``ready`` (None: do not wait) must hold for every device within ``timeout_s``.
    ``context_kwargs`` go to pytango's context (``db`` for a server with memorized attributes
    that is restarted, ``host``/``port`` for a fixed address).
    """
    with contextlib.ExitStack() as stack:
        sim_server = stack.enter_context(SimulatorServer(simulator)) if simulator is not None else None
        url = sim_server.url if sim_server is not None else None
        info = [{"class": cls, "devices": [{"name": name, "properties": _resolve(props, url)}
                                           for name, props in devices.items()]}
                for cls, devices in classes.items()]
        if server_name is None:
            server_name = next(iter(classes)).__name__
        context = stack.enter_context(_Context(info, process=True, timeout=timeout_s, server_name=server_name,
                                               **context_kwargs))
        result = Served(context, sim_server)
        for devices in classes.values():
            for name in devices:
                result.proxies[name] = device_proxy(context.get_device_access(name), proxy_timeout_ms)
        if ready is not None:
            for name, proxy in result.proxies.items():
                try:
                    wait_until(lambda proxy=proxy: ready(proxy), timeout_s, what=f"{name} to be ready")
                except AssertionError as exc:
                    raise AssertionError(f"{exc}; the device says {_state_of(proxy)}") from None
        yield result


def _state_of(proxy: tango.DeviceProxy) -> str:
    try:
        return f"{proxy.State()}: {proxy.Status().strip()}"
    except tango.DevFailed as exc:
        return exc.args[0].desc.strip()

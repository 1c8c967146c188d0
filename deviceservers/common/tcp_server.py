"""Serve a simulator on a TCP port, as a terminal server serves a real serial line.

Device servers then reach it with ``socket://127.0.0.1:<port>``: the same pyserial code path
as a Moxa or Lantronix box in a lab. Used by the virtual bench and by the tests that prove the
``socket://`` path. Unplugging the simulator closes every client socket, and new clients are
closed at once until it is plugged back in.
"""

from __future__ import annotations

import logging
import socket
import threading

from .simulator import SimConnection, SimConnectionLost, Simulator

log = logging.getLogger(__name__)


class SimulatorServer:
    """A listening socket on ``host:port`` (port 0 picks a free one) in front of ``simulator``."""

    def __init__(self, simulator: Simulator, host: str = "127.0.0.1", port: int = 0, name: str = "") -> None:
        self.simulator = simulator
        self.name = name or type(simulator).__name__
        self._sock = socket.create_server((host, port), reuse_port=False)
        self._sock.settimeout(0.2)
        self.host, self.port = self._sock.getsockname()[:2]
        self._stop = threading.Event()
        self._clients: list[socket.socket] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept_loop, name=f"tcp {self.name}", daemon=True)

    @property
    def url(self) -> str:
        return f"socket://{self.host}:{self.port}"

    def start(self) -> SimulatorServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._sock.close()
        self.drop_clients()

    def drop_clients(self) -> None:
        """Close every client socket (the terminal server lost the line)."""
        with self._lock:
            clients, self._clients = self._clients, []
        for c in clients:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                conn = self.simulator.connect()
            except SimConnectionLost:
                client.close()
                continue
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._clients.append(client)
            threading.Thread(target=self._rx, args=(client, conn), daemon=True, name=f"rx {self.name}").start()
            threading.Thread(target=self._tx, args=(client, conn), daemon=True, name=f"tx {self.name}").start()

    def _rx(self, client: socket.socket, conn: SimConnection) -> None:
        try:
            while not self._stop.is_set():
                data = client.recv(4096)
                if not data:
                    break
                conn.write(data)
        except (OSError, SimConnectionLost):
            pass
        finally:
            conn.close()
            self._forget(client)

    def _tx(self, client: socket.socket, conn: SimConnection) -> None:
        try:
            while not self._stop.is_set() and not conn.closed:
                data = conn.read(4096, 0.2)
                if data:
                    client.sendall(data)
        except (OSError, SimConnectionLost):
            pass
        finally:
            self._forget(client)

    def _forget(self, client: socket.socket) -> None:
        with self._lock:
            if client in self._clients:
                self._clients.remove(client)
        try:
            client.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        client.close()

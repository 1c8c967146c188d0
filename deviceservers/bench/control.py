"""The bench's control port: fault injection and the camera's scene, one JSON line per request.

Why a socket and not Tango: the bench plays the *hardware*. Tests and the camera server talk to
it from other processes the way a technician pulls a cable or a camera sees light, and the
device servers under test must not be able to tell it apart from real instruments.

Requests are JSON objects on one line; each gets one JSON line back: ``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import json
import socket
import socketserver
import threading
from collections.abc import Callable
from typing import Any

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class ControlServer:
    """Serve ``handler(request) -> reply`` on ``host:port`` (0 = a free port)."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0) -> None:
        outer = self

        class _RequestHandler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                for line in self.rfile:
                    if not line.strip():
                        continue
                    try:
                        reply = {"ok": True, **outer._handler(json.loads(line))}
                    except Exception as exc:  # noqa: BLE001 - report to the client, keep serving
                        reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
                    self.wfile.write(json.dumps(reply).encode() + b"\n")
                    self.wfile.flush()

        class _Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._handler = handler
        self._server = _Server((host, port), _RequestHandler)
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever, name="bench control", daemon=True)

    def start(self) -> ControlServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class BenchClient:
    """Talk to a running bench: ``BenchClient(port).call("unplug", instrument="maitai")``."""

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 5.0) -> None:
        self._sock = socket.create_connection((host, port), timeout=timeout)
        self._file = self._sock.makefile("rwb")
        self._lock = threading.Lock()

    def call(self, cmd: str, **args: Any) -> dict[str, Any]:
        with self._lock:
            self._file.write(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            self._file.flush()
            line = self._file.readline()
        if not line:
            raise ConnectionError("the bench closed the control connection")
        reply = json.loads(line)
        if not reply.pop("ok", False):
            raise RuntimeError(f"bench refused {cmd}: {reply.get('error')}")
        return reply

    def close(self) -> None:
        self._file.close()
        self._sock.close()

    def __enter__(self) -> BenchClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

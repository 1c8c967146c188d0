"""The camera's view of the virtual bench, fetched from the bench's control port.

The simulated camera runs in the Pvcam server's process and the optics in the bench's, so the
camera asks the bench for the scene (spot centre, width, power) at a bounded rate on a
background thread and renders frames from the latest answer; the frame loop never waits on the
network. If the bench is away the camera sees darkness, as a camera with no light would.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from .control import BenchClient

log = logging.getLogger(__name__)


class BenchScene:
    """``scene(t) -> (x_px, y_px, sigma_px, peak_adu) | None`` for the simulated camera.

    ``exposure_s`` returns the exposure of the frame being rendered: the spot's peak counts are
    the bench's counts per second times the exposure, so longer exposures give brighter spots.
    """

    def __init__(self, address: str, exposure_s: Callable[[], float], refresh_hz: float = 20.0) -> None:
        host, _, port = address.rpartition(":")
        self._host, self._port = host or "127.0.0.1", int(port)
        self._exposure_s = exposure_s
        self._period = 1.0 / refresh_hz
        self._latest: dict | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench scene", daemon=True)
        self._thread.start()

    def __call__(self, t: float) -> tuple[float, float, float, float] | None:
        s = self._latest
        if s is None or s["power_w"] <= 0:
            return None
        return s["spot_x_px"], s["spot_y_px"], s["sigma_px"], s["peak_adu_per_s"] * self._exposure_s()

    def latest(self) -> dict | None:
        return self._latest

    def close(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        client: BenchClient | None = None
        while not self._stop.is_set():
            try:
                if client is None:
                    client = BenchClient(self._port, self._host, timeout=2.0)
                self._latest = client.call("scene")
            except (OSError, ConnectionError, RuntimeError, ValueError) as exc:
                if self._latest is not None:
                    log.warning("bench scene unavailable (%s): the camera sees darkness", exc)
                self._latest = None
                if client is not None:
                    client.close()
                client = None
                self._stop.wait(1.0)
                continue
            self._stop.wait(self._period)
        if client is not None:
            client.close()

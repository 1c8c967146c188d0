"""The tables `up` and `status` print: devices (state, status) and processes (pid, restarts)."""

from __future__ import annotations

import time
from datetime import datetime


def _first_line(text: str, width: int = 60) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= width else line[: width - 1] + "…"


def device_rows(tango_host: str, devices: dict[str, tuple[str, str]]) -> list[tuple[str, str, str, str, str]]:
    """(device, class, server, state, status) for ``devices`` = {device: (class, server)}."""
    import tango

    from .proxies import device_proxy

    rows = []
    for dev, (cls, server) in devices.items():
        try:
            proxy = device_proxy(dev, 1500, tango_host)
            state = str(proxy.state())
            status = _first_line(proxy.status())
        except tango.DevFailed as exc:
            reason = exc.args[0].reason
            state = (
                "DOWN"
                if reason in ("API_DeviceNotExported", "API_CantConnect", "DB_DeviceNotDefined")
                else "?"
            )
            status = _first_line(exc.args[0].desc)
        rows.append((dev, cls, server, state, status))
    return rows


def format_table(header: tuple[str, ...], rows: list[tuple]) -> str:
    cols = [header, *[tuple(str(x) for x in r) for r in rows]]
    widths = [max(len(r[i]) for r in cols) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in cols]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def devices_of_state(state: dict) -> dict[str, tuple[str, str]]:
    out = {}
    for p in state.get("processes", []):
        if p["name"] == "database":
            continue
        for dev, cls in p.get("devices", {}).items():
            out[dev] = (cls, p["name"])
    return out


def device_table(tango_host: str, devices: dict[str, tuple[str, str]]) -> str:
    return format_table(("DEVICE", "CLASS", "SERVER", "STATE", "STATUS"), device_rows(tango_host, devices))


def _uptime(started: str | None) -> str:
    if not started:
        return "-"
    secs = time.time() - datetime.fromisoformat(started).timestamp()
    if secs < 120:
        return f"{secs:.0f} s"
    if secs < 7200:
        return f"{secs / 60:.0f} min"
    return f"{secs / 3600:.1f} h"


def process_table(state: dict) -> str:
    rows = [
        (
            p["name"],
            p.get("pid") or "restarting",
            # "starting": running, not answering yet (a MacroServer still loading its Pool's elements)
            "starting" if p.get("pid") and p.get("ready") is False else _uptime(p.get("started")),
            p.get("restarts", 0),
            p.get("log", ""),
        )
        for p in state.get("processes", [])
    ]
    return format_table(("PROCESS", "PID", "UP", "RESTARTS", "LOG"), rows)


def lab_report(state: dict) -> str:
    host = state["tango_host"]
    db = "embedded database" if state.get("embedded") else "existing database"
    head = (
        f"lab at TANGO_HOST={host} ({db}; supervisor pid {state.get('supervisor_pid')}, {state.get('phase')})"
    )
    return "\n".join([head, "", device_table(host, devices_of_state(state)), "", process_table(state)])

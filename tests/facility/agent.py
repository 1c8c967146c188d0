"""A long-lived Tango client on another host, driven by the test over its stdin and stdout.

One JSON request per line, ``{"code": "<python statements>"}``, run in one namespace kept across
requests (so a client can subscribe to events in one request and read what arrived in a later
one, or start a macro in a thread and collect its result later); the statements leave their
answer in ``result``. One JSON line answers each request: ``{"ok": true, "result": ...}``, or
``{"ok": false, "error": "<reason>: <description>"}`` for a DevFailed or any other exception.

The namespace offers ``tango``, ``proxy(name)`` (a DeviceProxy with a 10 s time-out), ``events``
(name -> list of (attribute, value) received by ``subscribe``), ``subscribe(device, attribute)``
and ``background(key, fn, *args)`` / ``outcome(key)`` for work that outlives a request.
"""

import json
import sys
import threading
import traceback

import tango

events: dict[str, list] = {}
outcomes: dict[str, dict] = {}
_lock = threading.Lock()


_proxies: dict[str, tango.DeviceProxy] = {}


def proxy(name: str, timeout_ms: int = 10000) -> tango.DeviceProxy:
    """One proxy per device for the client's life, as a GUI holds them: once made, it reaches its
    device without the database."""
    with _lock:
        p = _proxies.get(name.lower())
        if p is None:
            p = _proxies[name.lower()] = tango.DeviceProxy(name)
    p.set_timeout_millis(timeout_ms)
    return p


def describe(exc: BaseException) -> str:
    if isinstance(exc, tango.DevFailed):
        return "; ".join(f"{e.reason}: {e.desc.strip()}" for e in exc.args)
    return f"{type(exc).__name__}: {exc}"


def subscribe(device: str, attribute: str, kind=tango.EventType.CHANGE_EVENT) -> int:
    key = f"{device}/{attribute}".lower()
    events.setdefault(key, [])

    def received(ev) -> None:
        with _lock:
            if ev.err:
                events[key].append(("error", ev.errors[0].reason if ev.errors else "?"))
            else:
                events[key].append(("value", ev.attr_value.value if ev.attr_value is not None else None))

    return proxy(device).subscribe_event(attribute, kind, received)


def background(key: str, fn, *args, **kwargs) -> None:
    def work() -> None:
        try:
            outcomes[key] = {"ok": True, "result": fn(*args, **kwargs)}
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            outcomes[key] = {"ok": False, "error": describe(exc)}

    outcomes.pop(key, None)
    threading.Thread(target=work, name=key, daemon=True).start()


def outcome(key: str):
    return outcomes.get(key)


def main() -> int:
    space = {"tango": tango, "proxy": proxy, "events": events, "subscribe": subscribe, "background": background,
             "outcome": outcome, "describe": describe, "lock": _lock}
    for line in sys.stdin:
        request = json.loads(line)
        space["result"] = None
        try:
            exec(request["code"], space)
            answer = {"ok": True, "result": space.get("result")}
        except Exception as exc:  # noqa: BLE001 - reported to the test
            answer = {"ok": False, "error": describe(exc), "traceback": traceback.format_exc()}
        print(json.dumps(answer, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""SerialLink against simulators over sim:// and a real TCP socket (socket://)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from deviceservers.common import protocol_sim
from deviceservers.common.serial_link import (
    LinkDown,
    LinkSettings,
    LinkTimeout,
    ProtocolError,
    SerialLink,
    acquire_link,
    release_link,
    wait_connected,
)
from deviceservers.common.simulator import Simulator
from deviceservers.common.tcp_server import SimulatorServer
from tests.waiting import wait_until


class SlowSim(Simulator):
    """Answers ``ECHO <text>``; ``SLOW`` answers after 0.3 s; ``!x`` is silent."""

    input_terminators = (b"\n",)
    reply_terminator = b"\n"

    def on_bytes(self, conn, data, now):
        if data.strip() == b"SLOW":
            self._record(data.strip(), now)
            self.reply(conn, "SLOW DONE", delay=0.3)
            return
        super().on_bytes(conn, data, now)

    def handle(self, command: str, now: float):
        if command.startswith("!"):
            return None
        return f"ECHO {command}"


def settings(url: str, **kw) -> LinkSettings:
    kw.setdefault("timeout_s", 0.3)
    kw.setdefault("reconnect_min_s", 0.05)
    kw.setdefault("reconnect_max_s", 0.2)
    return LinkSettings(url=url, **kw)


@pytest.fixture
def served():
    sim = SlowSim()
    with SimulatorServer(sim) as server:
        yield sim, server


@pytest.fixture
def link_factory():
    links: list[SerialLink] = []

    def make(s: LinkSettings) -> SerialLink:
        link = SerialLink(s)
        links.append(link)
        link.start()
        assert wait_connected(link, 5), link.health.down_reason
        return link

    yield make
    for link in links:
        link.close()


def test_sim_url_reaches_the_in_process_simulator(link_factory):
    link = link_factory(settings("sim://newport1830c?reply_delay_s=0&reading_delay_s=0"))
    # echo is on until E0: the first line is the echo
    assert link.query("W?") in ("W?", "800")
    link.send("E0")
    assert link.query("W?") == "800"
    assert protocol_sim.get_simulator("sim://newport1830c?reply_delay_s=0&reading_delay_s=0").echo is False


def test_unknown_sim_instrument_is_a_clear_error():
    link = SerialLink(settings("sim://nosuchthing"))
    link.start()
    try:
        wait_until(lambda: "unknown simulated instrument" in link.health.down_reason, 5)
        with pytest.raises(LinkDown, match="nosuchthing"):
            link.query("X")
    finally:
        link.close()


def test_socket_url_and_queries_never_interleave(served, link_factory):
    sim, server = served
    link = link_factory(settings(server.url))
    results: dict[int, list[str]] = {}

    def worker(k: int) -> None:
        results[k] = [link.query(f"T{k}-{i}") for i in range(30)]

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k, replies in results.items():
        assert replies == [f"ECHO T{k}-{i}" for i in range(30)]
    assert link.health.requests == 120


def test_timeout_then_retry_for_idempotent_queries_only(served, link_factory):
    sim, server = served
    link = link_factory(settings(server.url, retries=2, timeouts_before_down=10))
    with pytest.raises(LinkTimeout):
        link.query("!silent", idempotent=False)
    assert link.health.retries == 0
    with pytest.raises(LinkTimeout):
        link.query("!silent", idempotent=True)
    assert link.health.retries == 2
    assert link.health.timeouts == 4
    assert link.query("again") == "ECHO again"  # the link is still usable


def test_garbled_reply_is_retried(served, link_factory):
    sim, server = served
    link = link_factory(settings(server.url))

    def parse(port):
        reply = port.query("hello")
        if reply != "ECHO hello":
            raise ProtocolError(f"garbled {reply!r}")
        return reply

    sim.faults.garble_next = 1
    assert link.run(parse, idempotent=True) == "ECHO hello"
    assert link.health.retries == 1 and link.health.error_count == 1
    sim.faults.garble_next = 5
    with pytest.raises(ProtocolError):
        link.run(parse, idempotent=False)


def test_instrument_that_stops_answering_takes_the_link_down_and_back(served, link_factory):
    sim, server = served
    link = link_factory(settings(server.url, retries=0, timeouts_before_down=2))
    # Like every driver, prove the instrument answers before calling the link up.
    link.add_connect_hook(lambda port: port.query("ping"))
    assert link.query("ping") == "ECHO ping"  # queued after the hook's first run: it is done
    transitions: list[bool] = []
    link.add_health_listener(lambda h: transitions.append(h.connected))
    sim.faults.mute = True
    with pytest.raises(LinkTimeout):
        link.query("a")
    with pytest.raises(LinkDown, match="stopped answering"):
        link.query("b")
    with pytest.raises(LinkDown):  # fails at once while down: nothing piles up
        link.query("c")
    sim.faults.mute = False
    assert wait_connected(link, 5)
    assert link.query("d") == "ECHO d"
    # Down, then up once: the first reconnection may still find the instrument silent (its
    # identification sent before the test unmuted it), which reports down once more.
    assert transitions[0] is False and transitions[-1] is True and not any(transitions[:-1]), transitions
    assert link.health.reconnects == 1


def test_unplugged_port_goes_down_and_reconnects_with_backoff(served, link_factory):
    sim, server = served
    link = link_factory(settings(server.url))
    sim.unplug()
    wait_until(lambda: not link.connected or _query_fails(link), 5)
    with pytest.raises(LinkDown):
        link.query("x")
    sim.plug()
    # Over TCP the kernel completes a connection before the server accepts it: a reconnection made
    # while unplugged reads as "connected" until the server drops it. Wait for a connection the
    # plugged-in simulator holds: the server accepts in order, so the link's current one is good.
    wait_until(lambda: link.connected and sim.connection_count > 0, 5, what="a connection to the plugged-in port")
    assert link.query("y") == "ECHO y"


def _query_fails(link: SerialLink) -> bool:
    try:
        link.query("probe")
    except (LinkDown, LinkTimeout):
        return True
    return False


@contextlib.contextmanager
def terminal_server(first: Callable[[socket.socket], None]) -> Iterator[tuple[SerialLink, list[socket.socket]]]:
    """A TCP terminal server whose first connection ``first`` handles (and closes); later ones
    answer each line with ``OK <line>``. Yields a started link to it and the accepted sockets."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()
    accepted: list[socket.socket] = []

    def echo(conn: socket.socket) -> None:
        buf = b""
        conn.settimeout(0.1)
        while not stop.is_set():
            try:
                data = conn.recv(100)
            except TimeoutError:
                continue
            if not data:
                break
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                conn.sendall(b"OK " + line + b"\n")

    def serve() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            accepted.append(conn)
            (first if len(accepted) == 1 else echo)(conn)
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    link = SerialLink(settings(f"socket://127.0.0.1:{listener.getsockname()[1]}", retries=0))
    link.start()
    try:
        yield link, accepted
    finally:
        link.close()
        stop.set()
        t.join(2)
        listener.close()


def test_a_connection_the_far_end_closes_while_idle_is_remade_by_itself():
    """A terminal server that drops an idle TCP connection (an idle time-out, its "alive check"):
    the link notices without a request and connects again, so it is never shown connected on a
    dead socket and the next request goes through."""
    drop = threading.Event()
    with terminal_server(lambda conn: drop.wait(5)) as (link, accepted):  # then dropped, nothing said
        assert wait_connected(link, 5)
        drop.set()
        wait_until(lambda: len(accepted) >= 2 and link.connected, 5, what="the link to connect again")
        assert "closed" in link.health.last_error or "lost" in link.health.last_error
        assert link.query("after") == "OK after"


def test_a_request_that_finds_the_connection_closed_is_sent_on_a_new_one(served, link_factory):
    """Nothing of the request reached the wire: it is safe to send, once, after reconnecting,
    even a request that moves something. Once a byte is out, it is not sent again."""
    sim, server = served
    link = link_factory(settings(server.url, retries=0))
    calls: list[int] = []

    def found_closed_first(port):
        calls.append(1)
        if len(calls) == 1:
            raise LinkDown("port lost: read failed: socket disconnected")
        return port.query("move")

    assert link.run(found_closed_first, idempotent=False, description="move") == "ECHO move"
    assert len(calls) == 2 and link.health.reconnects == 1 and link.connected

    def lost_after_writing(port):
        calls.append(2)
        port.write("move again")
        raise LinkDown("port lost while reading: connection reset")

    with pytest.raises(LinkDown):
        link.run(lost_after_writing, idempotent=False, description="move again")
    assert calls.count(2) == 1


def test_far_end_closing_mid_reply():
    """A terminal server that sends half a line and hangs up: LinkDown, then reconnection."""

    def half_a_line(conn: socket.socket) -> None:
        conn.recv(100)
        conn.sendall(b"HAL")

    with terminal_server(half_a_line) as (link, _):
        assert wait_connected(link, 5)
        with pytest.raises(LinkDown):
            link.query("first")
        assert wait_connected(link, 5)
        assert link.query("second") == "OK second"


def test_missing_device_path_reports_how_to_fix():
    link = SerialLink(settings("/dev/serial/by-id/usb-does-not-exist"))
    link.start()
    try:
        wait_until(lambda: "cannot open" in link.health.down_reason, 5)
    finally:
        link.close()


def test_urgent_write_overtakes_a_slow_query(served, link_factory):
    sim, server = served
    link = link_factory(settings(server.url, timeout_s=2.0))
    arrivals: dict[bytes, float] = {}
    sim.add_rx_listener(lambda t, raw: arrivals.setdefault(raw.strip(), t))
    fut = link.submit(lambda port: port.query("SLOW"))
    wait_until(lambda: b"SLOW" in arrivals, 2)
    t0 = time.monotonic()
    link.send_urgent("STOP")
    wait_until(lambda: b"STOP" in arrivals, 2)
    assert arrivals[b"STOP"] - t0 < 0.25  # well before SLOW's answer (0.3 s): it did not wait for it
    assert not fut.done()  # the slow query was still waiting when STOP reached the wire
    assert fut.result(2) == "SLOW DONE"


def test_priority_request_jumps_the_queue(served, link_factory):
    sim, server = served
    link = link_factory(settings(server.url, timeout_s=2.0))
    order: list[str] = []
    first = link.submit(lambda port: port.query("SLOW"))
    queued = [link.submit(lambda port, i=i: order.append(port.query(f"n{i}"))) for i in range(3)]
    urgent = link.submit(lambda port: order.append(port.query("urgent")), priority=True)
    for f in [first, urgent, *queued]:
        f.result(5)
    assert order[0] == "ECHO urgent"


def test_shared_links_by_url():
    s = settings("sim://newport1830c?reply_delay_s=0")
    a = acquire_link(s)
    b = acquire_link(s)
    try:
        assert a is b
        with pytest.raises(ValueError, match="already open with other settings"):
            acquire_link(settings("sim://newport1830c?reply_delay_s=0", baudrate=19200))
    finally:
        release_link(a)
        assert a.connected or a._thread is not None  # still held by b
        release_link(b)


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="FlowControl"):
        LinkSettings(url="sim://x", flow_control="hardware")
    with pytest.raises(ValueError, match="SerialURL is empty"):
        LinkSettings(url="")


def test_garbled_and_truncated_replies_are_reported_with_their_bytes_not_as_time_outs(served, link_factory):
    from deviceservers.common.serial_link import GarbledReply, IncompleteReply

    sim, server = served
    link = link_factory(settings(server.url, retries=0, timeouts_before_down=10))
    sim.faults.garble_next = 1
    with pytest.raises(GarbledReply, match=r"garbled reply b'"):
        link.query("hello")
    assert link.health.timeouts == 0 and "garbled reply" in link.health.last_error
    sim.faults.truncate_next = 1
    with pytest.raises(IncompleteReply, match=r"incomplete reply b'EC"):
        link.query("hello")
    assert link.query("again") == "ECHO again"


def test_first_connection_is_not_a_failure_until_it_failed():
    """INIT while the first connection is under way; FAULT only once it really failed."""
    from deviceservers.common.component import Component, DeviceState
    from tests.ports import free_port_block

    # A port below the ephemeral range: links are shared per URL in a process, and an ephemeral
    # port another test's (still registered) link used would hand this test that old link.
    listener = socket.socket()
    port = free_port_block(1)
    listener.bind(("127.0.0.1", port))
    listener.listen(1)  # accepts the TCP connection but never answers: the hook waits
    comp = Component(settings(f"socket://127.0.0.1:{port}", timeout_s=0.5, retries=0))
    states: list[DeviceState] = []
    comp.add_state_listener(lambda s, _status: states.append(s))
    comp.on_connect = lambda p: p.query("IDN?")  # type: ignore[method-assign]
    try:
        comp.start()
        assert comp.state == DeviceState.INIT, comp.status
        assert "Connecting" in comp.status
        wait_until(lambda: DeviceState.FAULT in states, 5)  # listeners hear it just after the state is set
        assert DeviceState.FAULT not in states[: states.index(DeviceState.FAULT)]
        assert comp.link is not None and comp.link.health.connect_failures >= 1
    finally:
        comp.stop()
        listener.close()


def test_a_reply_that_comes_after_its_time_out_is_not_read_as_the_next_ones(served, link_factory):
    """A serial line never reorders replies: a late reply, read by the next request as its own,
    would put every reply after it one request late."""
    sim, server = served
    link = link_factory(settings(server.url, timeout_s=0.2, retries=0))
    assert link.query("ping") == "ECHO ping"
    with pytest.raises(LinkTimeout):
        link.query("SLOW")  # answered 0.3 s later, 0.1 s after its time-out
    assert link.query("x") == "ECHO x"
    assert link.query("y") == "ECHO y"


def test_a_reply_that_never_comes_delays_the_next_request_by_one_time_out_at_most(served, link_factory):
    sim, server = served
    link = link_factory(settings(server.url, timeout_s=0.5, retries=0, timeouts_before_down=5))
    with pytest.raises(LinkTimeout):
        link.query("!silent")
    start = time.monotonic()
    assert link.query("x") == "ECHO x"
    assert time.monotonic() - start < 0.5 + 0.35  # the wait for the lost reply, then the answer (not two)

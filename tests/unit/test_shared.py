"""The one per-key registry behind shared serial links, ELL14 buses and ESP300 controllers."""

from __future__ import annotations

import threading

import pytest

from deviceservers.common.shared import Shared


class Port:
    def __init__(self, baud: int) -> None:
        self.baud = baud
        self.users: list[str] = []


def test_the_first_user_creates_later_ones_join_and_the_last_one_closes():
    ports: Shared[Port] = Shared()
    created = []
    a, new_a = ports.acquire("socket://h:1", lambda: created.append(1) or Port(9600), lambda p: p.users.append("a"))
    b, new_b = ports.acquire("socket://h:1", lambda: created.append(1) or Port(9600), lambda p: p.users.append("b"))
    assert a is b and (new_a, new_b) == (True, False) and created == [1] and a.users == ["a", "b"]
    assert ports.users("socket://h:1") == 2
    assert ports.release("socket://h:1", a) is False, "one user left: keep it open"
    assert ports.release("socket://h:1", a) is True, "the last user: close it"
    assert ports.users("socket://h:1") == 0
    c, new_c = ports.acquire("socket://h:1", lambda: Port(9600))
    assert new_c and c is not a, "after the last release the next user opens it again"


def test_a_refused_newcomer_changes_nothing():
    ports: Shared[Port] = Shared()
    port, _ = ports.acquire("socket://h:1", lambda: Port(9600))

    def same_baud(p: Port) -> None:
        if p.baud != 19200:
            raise ValueError("socket://h:1 is already open with other settings")

    with pytest.raises(ValueError, match="other settings"):
        ports.acquire("socket://h:1", lambda: Port(19200), same_baud)
    assert ports.users("socket://h:1") == 1
    with pytest.raises(ValueError):
        ports.acquire("socket://h:2", lambda: Port(9600), same_baud)
    assert ports.users("socket://h:2") == 0, "a creator refused by its own check is not registered"


def test_an_object_that_is_not_the_registered_one_is_closed_by_its_owner():
    ports: Shared[Port] = Shared()
    registered, _ = ports.acquire("socket://h:1", lambda: Port(9600))
    assert ports.release("socket://h:1", Port(9600)) is True
    assert ports.users("socket://h:1") == 1


def test_concurrent_users_get_one_object():
    ports: Shared[Port] = Shared()
    got: list[Port] = []
    start = threading.Barrier(8)

    def user() -> None:
        start.wait()
        got.append(ports.acquire("socket://h:1", lambda: Port(9600))[0])

    threads = [threading.Thread(target=user) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({id(p) for p in got}) == 1 and ports.users("socket://h:1") == 8

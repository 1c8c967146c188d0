"""Test-wide fixtures: fresh in-process simulators for every test."""

from __future__ import annotations

import pytest

from deviceservers.common import protocol_sim


@pytest.fixture(autouse=True)
def fresh_simulators():
    """Each test gets new sim:// instruments (state does not leak between tests)."""
    protocol_sim.forget_simulators()
    yield
    protocol_sim.forget_simulators()

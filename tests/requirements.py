"""What a tier needs of the machine, and what happens when it is missing.

A developer's laptop may lack root, Debian's Tango stack or network namespaces: the tiers that
need them are skipped there, with the reason and the command that provides it. CI sets
``TANGODAQ_REQUIRE_ALL_TIERS=1`` (``.ci/run``): there a missing requirement fails the run, so a
broken installation can never turn the facility tier into a silent skip.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

REQUIRE_ALL = "TANGODAQ_REQUIRE_ALL_TIERS"


def unavailable(why: str) -> NoReturn:
    """Skip the test for ``why``, or fail it where every tier must run."""
    if os.environ.get(REQUIRE_ALL, "") not in ("", "0"):
        pytest.fail(f"{why} ({REQUIRE_ALL} is set: every tier must run here)", pytrace=False)
    pytest.skip(why)

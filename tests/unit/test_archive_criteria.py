"""Archive-event criteria: what an HDB++ archiver subscribed to an attribute stores. A noisy
reading declares its own on its Parameter; other numeric scalars get the type's default; arrays
get no archive events. The system tier checks the events themselves
(tests/system/test_gui.py::test_archive_events_follow_the_configured_change)."""

from __future__ import annotations

import numpy as np

from deviceservers.common.device import ARCHIVE_PERIOD_MS, archive_criteria
from deviceservers.common.parameter import Parameter
from deviceservers.common.serial_link import LinkSettings
from deviceservers.MaiTai.component import MaiTaiComponent
from deviceservers.Newport1830C.component import Newport1830CComponent


def test_a_parameter_declares_its_own_criteria_and_keeps_the_keep_alive_period():
    noisy = Parameter("Power", float, archive_rel_change=5)
    assert archive_criteria(noisy) == {"archive_rel_change": "5", "archive_period": ARCHIVE_PERIOD_MS}
    slow = Parameter("Level", float, archive_abs_change=0.5, archive_period_ms=10000)
    assert archive_criteria(slow) == {"archive_abs_change": "0.5", "archive_period": "10000"}


def test_numbers_get_the_type_default_and_other_kinds_archive_every_change_or_never():
    assert archive_criteria(Parameter("Position", float)) == {"archive_rel_change": "1",
                                                             "archive_period": ARCHIVE_PERIOD_MS}
    assert archive_criteria(Parameter("Count", int)) == {"archive_abs_change": "1", "archive_period": ARCHIVE_PERIOD_MS}
    assert archive_criteria(Parameter("Shutter", bool)) == {}
    assert archive_criteria(Parameter("Mode", int, choices=["a", "b"])) == {}
    assert archive_criteria(Parameter("Image", np.uint16, shape=(4, 4))) is None


def test_the_instruments_noisy_readings_declare_theirs():
    """The meter's power jitters by a few per mille at every poll: archived on 5 %, not on every poll."""
    meter = Newport1830CComponent(LinkSettings(url="sim://newport1830c?seed=5"))
    laser = MaiTaiComponent(LinkSettings(url="sim://maitai?seed=5"))
    try:
        assert archive_criteria(meter.parameters["Power"])["archive_rel_change"] == "5"
        assert archive_criteria(meter.parameters["PowerDbm"])["archive_abs_change"] == "0.2"
        assert archive_criteria(laser.parameters["Power"])["archive_rel_change"] == "5"
        assert archive_criteria(laser.parameters["Humidity"])["archive_abs_change"] == "1"
    finally:
        meter.stop()
        laser.stop()

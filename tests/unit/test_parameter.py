"""Parameter semantics: validation, commit-after-write, listeners, driver publishing."""

from __future__ import annotations

import math
import threading

import pytest

from deviceservers.common.parameter import Parameter, ParameterError, Quality


def test_float_validation_rejects_nan_inf_and_out_of_range():
    p = Parameter("Wavelength", float, unit="nm", minimum=300, maximum=1100, writable=True)
    assert p.set(800) == 800.0
    for bad in (math.nan, math.inf, -math.inf):
        with pytest.raises(ParameterError, match="not a finite number"):
            p.set(bad)
    with pytest.raises(ParameterError, match="above the maximum 1100 nm"):
        p.set(5000)
    with pytest.raises(ParameterError, match="below the minimum"):
        p.set(299.9)
    with pytest.raises(ParameterError, match="expected a number"):
        p.set("eight hundred")
    assert p.value == 800.0


def test_enum_accepts_index_or_label_and_rejects_others():
    p = Parameter("Range", int, choices=("AUTO", "R1", "R2"), writable=True)
    assert p.set(2) == 2
    assert p.set("R1") == 1
    with pytest.raises(ParameterError, match="not one of 0=AUTO"):
        p.set(9)
    with pytest.raises(ParameterError, match="expected an integer"):
        p.set(1.5)
    with pytest.raises(TypeError):
        Parameter("Bad", float, choices=("a",))


def test_bool_and_str_validation():
    b = Parameter("Attenuator", bool, writable=True)
    assert b.set(1) is True
    with pytest.raises(ParameterError):
        b.set(2)
    s = Parameter("Name", str, writable=True)
    with pytest.raises(ParameterError):
        s.set(3)


def test_value_committed_only_after_hardware_write_succeeds():
    written = []

    def writer(v: float) -> None:
        if v > 10:
            raise OSError("instrument refused")
        written.append(v)

    p = Parameter("Velocity", float, writable=True, writer=writer, initial=1.0)
    p.set(5)
    with pytest.raises(OSError):
        p.set(20)
    assert p.value == 5.0 and written == [5.0]


def test_read_only_refuses_clients_but_driver_can_publish():
    p = Parameter("Power", float, unit="W")
    with pytest.raises(ParameterError, match="read-only"):
        p.set(1.0)
    p.publish(1.5e-6)
    assert p.value == 1.5e-6 and p.quality is Quality.VALID


def test_listeners_called_on_change_only_and_unsubscribe():
    p = Parameter("Power", float)
    seen = []
    unsubscribe = p.subscribe(lambda r: seen.append((r.value, r.quality)))
    p.publish(1.0)
    p.publish(1.0)  # no change, no event
    p.publish(1.0, Quality.ALARM)  # quality change is a change
    p.publish(2.0, Quality.ALARM)
    p.invalidate()
    unsubscribe()
    p.publish(3.0)
    assert seen == [(1.0, Quality.VALID), (1.0, Quality.ALARM), (2.0, Quality.ALARM), (2.0, Quality.INVALID)]


def test_reader_refresh_and_dynamic_limits():
    source = iter([1.0, 2.0])
    p = Parameter("Position", float, reader=lambda: next(source), writable=True, minimum=0, maximum=10)
    assert p.polled
    assert p.refresh() == 1.0 and p.value == 1.0
    p.set_limits(0, 1.5)
    with pytest.raises(ParameterError):
        p.set(2.0)


def test_concurrent_listeners_and_publishers_are_safe():
    p = Parameter("Counter", int)
    count = [0]
    lock = threading.Lock()

    def listener(_r):
        with lock:
            count[0] += 1

    p.subscribe(listener)

    def work(base: int) -> None:
        for i in range(500):
            p.publish(base + i)

    threads = [threading.Thread(target=work, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert count[0] >= 1999  # every publish of a new value notified (values are distinct per thread)


def test_a_settings_set_point_follows_the_instrument_but_a_targets_does_not():
    setting = Parameter("Filter", int, choices=("SLOW", "MEDIUM", "FAST"), writable=True)
    setting.set(0)
    setting.publish(2)  # changed on the front panel
    assert setting.setpoint == 2
    target = Parameter("Position", float, writable=True, publish_on_write=False)
    target.set(10.0)
    target.publish(3.5)  # on its way
    assert target.setpoint == 10.0 and target.value == 3.5


def test_refused_hardware_write_keeps_the_last_accepted_setpoint():
    accepted: list[int] = []

    def writer(v: int) -> None:
        if v == 3:
            raise ValueError("binning 3x3 is not offered")
        accepted.append(v)

    p = Parameter("Binning", int, minimum=1, writable=True, writer=writer)
    p.set(2)
    with pytest.raises(ValueError):
        p.set(3)
    assert p.setpoint == 2 and p.value == 2 and accepted == [2]
    # also for setpoint-style parameters (a stage target) and arrays (an ROI)
    target = Parameter("Position", float, writable=True, publish_on_write=False,
                       writer=lambda v: (_ for _ in ()).throw(RuntimeError("motor off")) if v > 5 else None)
    target.set(1.0)
    with pytest.raises(RuntimeError):
        target.set(9.0)
    assert target.setpoint == 1.0
    import numpy as np

    def roi_writer(v) -> None:
        if len(v) != 4:
            raise ValueError("4 values")

    roi = Parameter("Roi", np.int32, shape=(4,), writable=True, writer=roi_writer)
    good = np.array([0, 0, 8, 8], dtype=np.int32)
    roi.set(good)
    with pytest.raises(ValueError):
        roi.set(np.array([1, 2], dtype=np.int32))
    assert roi.setpoint is good


def test_huge_numbers_are_refused_as_values_not_overflow():
    f = Parameter("Exposure", float, writable=True)
    i = Parameter("Frames", int, writable=True)
    with pytest.raises(ParameterError, match="too large"):
        f.set(10**400)
    for bad in (math.inf, 10.0**308 * 10, -math.inf):
        with pytest.raises(ParameterError):
            i.set(bad)


def test_local_parameters_survive_a_link_loss():
    from deviceservers.common.parameter import ParameterSet

    ps = ParameterSet()
    remote = ps.add(Parameter("Power", float, initial=1.0))
    local = ps.add(Parameter("Streaming", bool, writable=True, initial=True, local=True))
    ps.invalidate_all()
    assert remote.quality == Quality.INVALID
    assert local.quality == Quality.VALID and local.value is True

"""Every test serves its devices through one harness (tests/harness.py: simulator → server →
devices → ready), not through pytango's test contexts built by hand in each module."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_no_test_module_builds_its_own_test_context():
    offenders = [str(p.relative_to(TESTS)) for p in sorted(TESTS.rglob("*.py"))
                 if p.name != "harness.py" and p.name != Path(__file__).name
                 and "tango.test_context" in p.read_text(encoding="utf-8")]
    assert not offenders, f"serve devices with tests.harness.served: {offenders}"

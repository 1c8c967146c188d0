"""Every test and benchmark serves its devices through one harness (tests/harness.py: simulator →
server → devices → ready), not through pytango's test contexts built by hand in each module."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent


def test_no_test_or_benchmark_builds_its_own_test_context():
    files = sorted(TESTS.rglob("*.py")) + sorted((ROOT / "benchmarks").glob("*.py"))
    offenders = [str(p.relative_to(ROOT)) for p in files
                 if p.name != "harness.py" and p.name != Path(__file__).name
                 and "tango.test_context" in p.read_text(encoding="utf-8")]
    assert not offenders, f"serve devices with tests.harness.served: {offenders}"

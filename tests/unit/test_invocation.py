"""The commands tangodaq's hints name work where they are read: a fresh clone runs tangodaq
through ``./run.sh`` with the virtual environment not activated (``tangodaq`` is not on its PATH)."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
from pathlib import Path

from tango_db import invocation

ROOT = Path(__file__).resolve().parents[2]


def test_hints_name_run_sh_when_it_passed_its_name(monkeypatch):
    monkeypatch.setenv(invocation.VARIABLE, "./run.sh")
    assert invocation.command("down") == "./run.sh down"


def test_hints_name_the_script_path_when_tangodaq_is_not_on_the_path(monkeypatch, tmp_path):
    script = tmp_path / "venv" / "bin" / "tangodaq"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.delenv(invocation.VARIABLE, raising=False)
    monkeypatch.setattr(sys, "argv", [str(script), "demo"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert invocation.command("down") == os.path.join("venv", "bin", "tangodaq") + " down"
    monkeypatch.chdir(ROOT)  # not below the current folder: the whole path
    assert invocation.command("down") == f"{script} down"
    monkeypatch.setenv("PATH", f"{script.parent}:/usr/bin:/bin")  # an activated environment
    assert invocation.command("down") == "tangodaq down"


def test_run_sh_passes_the_labs_commands_to_tangodaq_and_names_itself(tmp_path):
    """``./run.sh down`` used to print the usage and leave the lab running; it now runs
    ``tangodaq down`` from the project's environment, telling it to name ``./run.sh`` in its hints.
    (A stand-in environment whose ``tangodaq`` prints what it was given: the set-up step sees it
    installed for this pyproject.toml, so nothing is installed.)"""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    tangodaq = venv / "bin" / "tangodaq"
    tangodaq.write_text('#!/bin/sh\necho "tangodaq $* (hints: $TANGODAQ_CLI) in $PWD"\n')
    tangodaq.chmod(tangodaq.stat().st_mode | stat.S_IXUSR)
    (venv / ".tangodaq-installed").write_text(hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest() + "\n")
    env = {k: v for k, v in os.environ.items() if k != invocation.VARIABLE} | {"TANGODAQ_VENV": str(venv)}
    for command in ("down", "status"):
        done = subprocess.run(["./run.sh", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"tangodaq {command} (hints: ./run.sh) in {ROOT}"
    # from another folder: its relative paths stay the caller's (deploy --config hardware.json)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run([str(ROOT / "run.sh"), "deploy", "--config", "hardware.json"], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == f"tangodaq deploy --config hardware.json (hints: {ROOT}/run.sh) in {elsewhere}"
    wrong = subprocess.run(["./run.sh", "stop"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert wrong.returncode == 2 and "./run.sh status|down" in wrong.stderr

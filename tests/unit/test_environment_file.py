"""The MacroServer's environment file across a MacroServer killed while writing it.

Each case runs the writer in a child process that dies (``os._exit``: the files are left as a
SIGKILL leaves them) at a chosen point of a write, then opens the environment again as the
restarted MacroServer does."""

from __future__ import annotations

import dbm.dumb
import logging
import shelve
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tango_db.environment_file import EnvironmentStore, install, open_environment

SETUP = {"ScanDir": "/data/scans", "ActiveMntGrp": "mg_power", "ScanID": 4}
HISTORY = [{"serialno": 4, "title": "ascan hwp 0 180 36 0.1", "deadtime": 0.31}]


def run_child(body: str) -> int:
    """Run ``body`` in a fresh interpreter; its exit code (9: it died where it was told to)."""
    prologue = textwrap.dedent("""
        import os, shelve, sys
        import dbm.dumb
        from tango_db import environment_file

        def die_when_dumb_index_is_opened():
            original = dbm.dumb._Database._chmod
            def _chmod(self, file):
                if getattr(self, "armed", False) and file.endswith(b".dir"):
                    os._exit(9)   # the index has just been truncated for writing: killed here
                return original(self, file)
            dbm.dumb._Database._chmod = _chmod
        """)
    done = subprocess.run([sys.executable, "-c", prologue + textwrap.dedent(body)], cwd=Path(__file__).parents[2],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode in (0, 9), done.stderr
    return done.returncode


def kill_stock_dumb_file_as_a_scan_starts(env: Path, *, grow: str = "") -> None:
    """Sardana's file without this module: the set-up, then a kill inside ``sync()`` of the next change."""
    code = run_child(f"""
        die_when_dumb_index_is_opened()
        db = dbm.dumb.open({str(env)!r}, "c")
        s = shelve.Shelf(db)
        for k, v in {SETUP!r}.items():
            s[k] = v; s.sync()
        s["ScanHistory"] = {HISTORY!r}; s.sync()
        {grow}
        db.armed = True
        s["ScanID"] = 5; s.sync()       # a scan starts: ScanID written in place, then the index
        """)
    assert code == 9


def test_python_s_dumb_dbm_loses_the_whole_environment_when_killed_mid_sync(tmp_path):
    """Why this module exists (what CI saw: ScanID back at 0, then "entry1 already exists")."""
    env = tmp_path / "environment"
    kill_stock_dumb_file_as_a_scan_starts(env)
    with shelve.Shelf(dbm.dumb.open(str(env), "c")) as stock:
        assert dict(stock) == {}, "Python's dumb dbm kept its index: the reason for environment_file is gone"


def test_a_dumb_environment_broken_that_way_is_read_back_from_its_backup_index(tmp_path, caplog):
    env = tmp_path / "environment"
    kill_stock_dumb_file_as_a_scan_starts(env)
    with caplog.at_level(logging.INFO, logger="tangodaq.sardana"):
        shelf = open_environment(str(env))
    try:
        assert dict(shelf) == {**SETUP, "ScanHistory": HISTORY, "ScanID": 5}, "ScanID as written before the kill"
    finally:
        shelf.close()
    assert "restored 4 variables from environment.bak" in caplog.text
    assert (tmp_path / "environment.pickle").exists()
    assert open_environment(str(env))["ScanID"] == 5, "read from the new file from now on"


def test_a_dumb_value_cut_by_the_kill_is_dropped_with_a_warning_not_read_as_garbage(tmp_path, caplog):
    env = tmp_path / "environment"
    # ScanHistory grows within its 512-byte block (overwritten in place) and the kill comes
    # before the index records its new length.
    kill_stock_dumb_file_as_a_scan_starts(env, grow=(
        "db.armed = True\n"
        "        s['ScanHistory'] = " + repr(HISTORY * 2) + "; s.sync()"))
    with caplog.at_level(logging.WARNING, logger="tangodaq.sardana"):
        shelf = open_environment(str(env))
    try:
        assert "ScanHistory" not in shelf
        assert {k: shelf[k] for k in SETUP} == SETUP
    finally:
        shelf.close()
    assert "ScanHistory was cut by the kill: dropped (set it again with senv)" in caplog.text


@pytest.mark.parametrize("killed", ["while writing the new file", "before the rename"])
def test_the_environment_is_whole_wherever_a_write_is_killed(tmp_path, killed):
    env = tmp_path / "environment"
    trap = "fsync" if killed == "while writing the new file" else "replace"
    code = run_child(f"""
        shelf = environment_file.open_environment({str(env)!r})
        for k, v in {SETUP!r}.items():
            shelf[k] = v; shelf.sync()
        shelf["ScanHistory"] = {HISTORY!r}; shelf.sync()
        setattr(environment_file.os, {trap!r}, lambda *a: os._exit(9))
        shelf["ScanHistory"] = {HISTORY * 2!r}
        shelf["ScanID"] = 5
        shelf.sync()
        """)
    assert code == 9
    shelf = open_environment(str(env))
    try:
        assert dict(shelf) == {**SETUP, "ScanHistory": HISTORY}, "the environment as of the last whole write"
    finally:
        shelf.close()


def test_sardana_s_shelve_backend_keeps_its_environment_in_the_crash_safe_file(tmp_path):
    install()
    from sardana.macroserver import msenvmanager

    uri = str(tmp_path / "ms" / "environment")
    backend = msenvmanager.ShelveEnvironmentBackend()
    backend.init_backend(uri)
    backend.set_env("ScanID", 7, None, None)
    backend.set_env("ScanFile", ["scans.h5"], "door/lab/1", None)
    assert isinstance(backend._env.dict, EnvironmentStore)
    assert EnvironmentStore.load(Path(uri + ".pickle"))[b"ScanID"], "written at set_env, before any close"
    backend.close_backend()
    again = msenvmanager.ShelveEnvironmentBackend()
    again.init_backend(uri)
    try:
        assert again.get_env("ScanID", None, None) == 7
        assert again.get_env("ScanFile", "door/lab/1", None) == ["scans.h5"]
    finally:
        again.close_backend()

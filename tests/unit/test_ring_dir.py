"""The rings' folder: named after the database the process really uses (as the Tango library
finds it, not only the environment), shared by the service user and readers of its group."""

from __future__ import annotations

import grp
import os
import pwd
import random
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

from datawriter import ring_names
from tests.requirements import unavailable

ROOT = Path(__file__).resolve().parents[2]


def _rc(path: Path, host: str) -> None:
    path.write_text(f"# written by a test\nTANGO_HOST = {host}\n")


def test_folder_follows_environment_then_home_then_system_tangorc(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("TANGODAQ_SHM_DIR", raising=False)
    monkeypatch.delenv("TANGO_HOST", raising=False)
    home = tmp_path / "home"
    home.mkdir()
    system = tmp_path / "tangorc"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setattr(ring_names, "SYSTEM_TANGORC", str(system))
    assert ring_names.shm_dir() == "/dev/shm/tangodaq-10000"  # no database configured anywhere
    _rc(system, "control.example.org:24567")  # Debian's /etc/tangorc
    assert ring_names.tango_host() == "control.example.org:24567"
    assert ring_names.shm_dir() == "/dev/shm/tangodaq-24567"
    _rc(home / ".tangorc", "127.0.0.1:23456")  # the user's own file wins over the system's
    assert ring_names.shm_dir() == "/dev/shm/tangodaq-23456"
    monkeypatch.setenv("TANGO_HOST", "db1:21000,db2:21000")  # the environment wins over both
    assert ring_names.shm_dir() == "/dev/shm/tangodaq-21000"
    monkeypatch.setenv("TANGODAQ_SHM_DIR", str(tmp_path / "explicit"))
    assert ring_names.shm_dir() == str(tmp_path / "explicit")


# The interpreter may live where other users cannot run it (a root-owned pyenv), so each script
# starts as root, imports what it needs, then becomes its user (uid gid from argv) for good.
_BECOME = """
import os, sys, time, numpy as np, datawriter
uid, gid = int(sys.argv[1]), int(sys.argv[2])
os.setgroups([gid]); os.setgid(gid); os.setuid(uid)
os.umask(0o022)  # the usual default: the code, not the umask, must make the folder shared
assert os.geteuid() == uid
"""

_PRODUCER = _BECOME + """
w = datawriter.create_scalar_stream("test/users/a", "power", units="W", rows_per_record=4)
for i in range(5):
    w.write(time.time() + np.arange(4) * 1e-3, np.full(4, float(i)))
print(datawriter.ring.shm_dir(), flush=True)
sys.stdin.readline()  # keep producing until the test has read
w.close()
"""

_READER = _BECOME + """
assert "test.users.a.power" in datawriter.list_streams(), datawriter.list_streams()
r = datawriter.open_reader("test.users.a.power", start="oldest")
values = [float(rec.batch.column("value")[0].as_py()) for rec in r.records(timeout=0.5)]
assert values == [0.0, 1.0, 2.0, 3.0, 4.0], values
w = datawriter.create_scalar_stream("test/users/b", "power", rows_per_record=1)  # a second producer
w.write(time.time(), 1.0)
w.close()
print("ok", flush=True)
"""


def _free_id(taken) -> int:  # noqa: ANN001
    while True:
        n = random.randint(61000, 64000)
        try:
            taken(n)
        except KeyError:
            return n


def test_service_user_and_reader_of_the_same_group_share_the_folder() -> None:
    if os.geteuid() != 0:
        unavailable("running processes as two other users needs root (CI runs as root)")
    gid = _free_id(grp.getgrgid)
    service, reader = _free_id(pwd.getpwuid), _free_id(pwd.getpwuid)
    port = next(p for p in iter(lambda: random.randint(20000, 32000), None)
                if not Path(f"/dev/shm/tangodaq-{p}").exists())  # a folder no lab uses
    folder = Path(f"/dev/shm/tangodaq-{port}")
    homes = Path(tempfile.mkdtemp(prefix="tangodaq-users-"))
    os.chmod(homes, 0o755)
    try:
        env = {k: v for k, v in os.environ.items() if k not in ("TANGO_HOST", "TANGODAQ_SHM_DIR")}
        env.update(PYTHONDONTWRITEBYTECODE="1", PYTHONPATH=str(ROOT))
        envs = []
        for user in ("service", "reader"):  # no TANGO_HOST: each finds the database in its ~/.tangorc
            home = homes / user
            home.mkdir()
            _rc(home / ".tangorc", f"127.0.0.1:{port}")
            os.chmod(home, 0o755)
            envs.append({**env, "HOME": str(home)})
        prod = subprocess.Popen([sys.executable, "-c", _PRODUCER, str(service), str(gid)], cwd=homes, env=envs[0], text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            line = prod.stdout.readline().strip()
            assert line == str(folder), (line, prod.stderr.read() if prod.poll() is not None else "")
            st = folder.stat()
            assert stat.S_IMODE(st.st_mode) == 0o2775 and st.st_uid == service and st.st_gid == gid
            ring_file = folder / "tangodaq.test.users.a.power"
            assert stat.S_IMODE(ring_file.stat().st_mode) == 0o660 and ring_file.stat().st_gid == gid
            res = subprocess.run([sys.executable, "-c", _READER, str(reader), str(gid)], cwd=homes, env=envs[1], text=True,
                                 capture_output=True, timeout=60)
            assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr
            assert (folder / "tangodaq.test.users.b.power").stat().st_gid == gid
        finally:
            prod.stdin.close()
            prod.wait(10)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(homes, ignore_errors=True)

"""The MacroServer's environment file, made to survive the MacroServer being killed.

Sardana keeps the environment (ScanID, ScanDir, ActiveMntGrp, ScanHistory...) in a ``shelve``
on a ``dbm`` file and calls ``sync()`` after every change. Where Python has no ``dbm.gnu`` (the
pyenv and python.org builds without libgdbm) that file is ``dbm.dumb``, which is not safe
against a kill:

- its ``sync()`` renames the index ``.dir`` to ``.bak`` and then writes a new ``.dir``; a
  MacroServer killed in between leaves an empty or missing index, and the next start sees an
  empty environment (or cannot open it);
- a changed value that still fits its blocks is overwritten in place in ``.dat`` before the index
  records its new length; killed in between, the old length cuts the new value.

Seen in CI: a MacroServer killed as a scan started came back with ScanID at 0, and every
following ``ascan`` failed with Sardana's "entry1 already exists in .../scans.h5 ... wrong
ScanID", one entry at a time.

The environment is small (Sardana keeps at most 20 scans of history), so it is kept whole in one
file, ``<EnvironmentDb>.pickle``, rewritten to a temporary file, synced and renamed over the old
one at every ``sync()``: on disk there is always the whole environment before or after a change.
An existing ``dbm.dumb`` environment is read once into it (mended from ``.bak`` if a kill broke
its index) and left in place untouched. :func:`install` makes Sardana's shelve backend use it.
"""

from __future__ import annotations

import ast
import dbm
import dbm.dumb
import logging
import os
import pickle
import shelve
import threading
from collections.abc import Iterator, MutableMapping
from pathlib import Path

log = logging.getLogger("tangodaq.sardana")

STORE_SUFFIX = ".pickle"


class EnvironmentStore(MutableMapping[bytes, bytes]):
    """The ``dict`` under Sardana's shelve: every key and pickled value, in one file.

    ``sync()`` (Sardana calls it after each change) and ``close()`` write the file atomically;
    a lock keeps a Door thread's change out of another thread's write."""

    def __init__(self, path: Path, items: dict[bytes, bytes] | None = None) -> None:
        self.path = path
        self._items = dict(items or {})
        self._lock = threading.Lock()
        self._modified = False

    @classmethod
    def load(cls, path: Path) -> EnvironmentStore:
        with open(path, "rb") as f:
            items = pickle.load(f)
        if not isinstance(items, dict):
            raise ValueError(f"{path} does not hold an environment (a {type(items).__name__})")
        return cls(path, items)

    def __getitem__(self, key: bytes) -> bytes:
        return self._items[key]

    def __setitem__(self, key: bytes, value: bytes) -> None:
        with self._lock:
            self._items[key] = bytes(value)
            self._modified = True

    def __delitem__(self, key: bytes) -> None:
        with self._lock:
            del self._items[key]
            self._modified = True

    def __iter__(self) -> Iterator[bytes]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def sync(self) -> None:
        with self._lock:
            if self._modified or not self.path.exists():
                write_atomically(self.path, pickle.dumps(self._items, protocol=pickle.HIGHEST_PROTOCOL))
                self._modified = False

    def close(self) -> None:
        self.sync()


def write_atomically(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data``: a reader (or a process started after a kill) sees the old
    content or the new one, never a part."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself, for a power cut
    finally:
        os.close(folder)


def _index_entries(path: Path) -> list[tuple[str, tuple[int, int]]] | None:
    """The entries of a ``dbm.dumb`` index file, or None when it is missing, empty or cut."""
    try:
        text = path.read_text(encoding="Latin-1")
    except OSError:
        return None
    entries = []
    for line in text.splitlines():
        try:
            key, (pos, siz) = ast.literal_eval(line.rstrip())
        except (ValueError, SyntaxError, TypeError):
            return None
        entries.append((key, (int(pos), int(siz))))
    return entries or None


def repair_dumb(base: str | os.PathLike[str]) -> str | None:
    """Mend the index of the ``dbm.dumb`` file ``base`` if a killed process broke it.

    Returns what was done (for the log), or None when there was nothing to mend. An index that
    is missing, empty or cut mid-line while ``.bak`` (the index before the last change) is whole
    is replaced by ``.bak``."""
    base = Path(base)
    dat, index, backup = (base.with_name(base.name + ext) for ext in (".dat", ".dir", ".bak"))
    if not dat.exists() or dat.stat().st_size == 0 or _index_entries(index) is not None:
        return None
    previous = _index_entries(backup)
    if previous is None:
        return (f"the environment index {index} was missing or broken and no whole {backup.name} was left: "
                "the environment starts empty (set ScanDir, ActiveMntGrp... again with senv)")
    write_atomically(index, "".join(f"{key!r}, {pair!r}\n" for key, pair in previous).encode("Latin-1"))
    return (f"the environment index {index} was missing or broken (a MacroServer was killed while writing it): "
            f"restored {len(previous)} variables from {backup.name}")


def _read_dumb(base: str, mended: bool) -> dict[bytes, bytes]:
    """Every variable of a ``dbm.dumb`` environment (after a repair, only those that still load)."""
    db = dbm.dumb.open(base, "r")
    try:
        items = {key: db[key] for key in db.keys()}
    finally:
        db.close()
    if mended:
        for key, value in list(items.items()):
            try:
                pickle.loads(value)
            except Exception:  # noqa: BLE001 - a value cut by the kill: unusable whatever the reason
                log.warning("environment variable %s was cut by the kill: dropped (set it again with senv)",
                            key.decode("Latin-1"))
                del items[key]
    return items


def open_environment(uri: str) -> shelve.Shelf:
    """The shelve Sardana keeps its environment in, on an :class:`EnvironmentStore` next to ``uri``."""
    path = Path(uri + STORE_SUFFIX)
    if path.exists():
        store = EnvironmentStore.load(path)
    elif Path(uri + ".dat").exists():
        done = repair_dumb(uri)
        if done:
            log.warning(done)
        store = EnvironmentStore(path, _read_dumb(uri, mended=bool(done)))
        store._modified = True
        log.info("environment %s (dbm.dumb) now kept in %s; the old files are left as they were", uri, path)
    else:
        store = EnvironmentStore(path)
    store.sync()  # a folder the server may not write is found now, not at the first scan
    return shelve.Shelf(store)


def install() -> None:
    """Make Sardana's shelve environment backend keep its file through :func:`open_environment`.

    A file Sardana keeps in ``dbm.gnu`` (a Python built with it, or ``MS_ENV_SHELVE_BACKEND``
    set to ``gnu``) stays Sardana's: that backend does not lose its index on a kill."""
    from sardana.macroserver import msenvmanager
    from sardana.macroserver.environment.shelve import ShelveEnvironmentBackend

    if getattr(msenvmanager.ShelveEnvironmentBackend, "crash_safe", False):
        return

    class CrashSafeShelveBackend(ShelveEnvironmentBackend):
        crash_safe = True

        def init_backend(self, uri: str) -> None:
            if _sardana_uses_gnu(uri):
                super().init_backend(uri)
                return
            Path(uri).parent.mkdir(parents=True, exist_ok=True)
            self._env = open_environment(uri)

    msenvmanager.ShelveEnvironmentBackend = CrashSafeShelveBackend


def _sardana_uses_gnu(uri: str) -> bool:
    """Whether Sardana's own backend keeps ``uri`` in ``dbm.gnu`` (its first choice)."""
    if os.path.exists(uri):
        return dbm.whichdb(uri) == "dbm.gnu"  # a gnu file is the path itself; dumb adds .dat/.dir
    if os.path.exists(uri + STORE_SUFFIX) or os.path.exists(uri + ".dat"):
        return False
    from sardana import sardanacustomsettings

    chosen = getattr(sardanacustomsettings, "MS_ENV_SHELVE_BACKEND", None)
    if chosen in ("gnu", "dumb"):
        return chosen == "gnu"
    import importlib.util

    return importlib.util.find_spec("_gdbm") is not None  # dbm.gnu's C module: only whether it exists

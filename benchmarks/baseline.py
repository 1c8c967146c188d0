"""``--baseline GIT_REV`` for the benchmarks: the same benchmark, with one package of the project
taken from an older revision, in a subprocess, so that before and after are measured side by
side in one run on the same machine (these machines are shared and noisy).

The benchmark runs itself again with its own arguments plus a flag of its choosing, with the
package of ``rev`` first on ``PYTHONPATH``; that run prints one JSON object as its last line,
which must name the directory it imported the package from under the package's name (so a
baseline that silently measured the current tree is caught).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def run_at_revision(rev: str, package: str, script: str, args: list[str]) -> dict[str, Any]:
    """Run ``script args`` with ``package`` as it was at git revision ``rev``; its JSON result."""
    with tempfile.TemporaryDirectory(prefix=f"bench-baseline-{package}-") as tmp:
        archive = subprocess.run(["git", "archive", rev, package], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        env = dict(os.environ, PYTHONPATH=tmp + os.pathsep + os.environ.get("PYTHONPATH", ""))
        done = subprocess.run([sys.executable, os.path.abspath(script), *args], env=env, capture_output=True,
                              text=True)
        if done.returncode != 0:
            raise SystemExit(f"the baseline run of {rev} failed:\n{done.stderr}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        imported = result.pop(package, "")
        if not str(imported).startswith(tmp):
            raise SystemExit(f"the baseline run imported {package} from {imported!r}, not from revision {rev}")
        return result


def package_dir(module: Any) -> str:
    """Where a package was imported from, for the baseline run's JSON."""
    return os.path.dirname(module.__file__)

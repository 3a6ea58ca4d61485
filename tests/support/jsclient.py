"""The `@cloudcontainer/api` package (clients/js), installed from its lockfile and built: for
the tests that run its suites and the benchmark that measures it."""

from __future__ import annotations

import subprocess
from pathlib import Path

JS = Path(__file__).resolve().parent.parent.parent / "clients" / "js"


def built_js_client() -> Path:
    """`npm ci` when its node_modules are missing, then `tsc`; returns the package folder."""
    if not (JS / "node_modules" / ".package-lock.json").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=JS, check=True, timeout=600)
    subprocess.run(["npm", "run", "--silent", "build"], cwd=JS, check=True, timeout=300)
    return JS

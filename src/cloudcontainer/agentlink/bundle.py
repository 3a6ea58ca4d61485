"""Build `agent.pyz`: the agent package and its pure-Python dependencies, as one zipapp.

The file is named by the hash of its contents, so a restarted gateway reuses it and running
sandboxes keep the copy they mounted. Compiled extension modules are left out (websockets
falls back to pure Python), so the same file runs on any python3 >= 3.9 in any image.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import io
import marshal
import os
import tempfile
import zipfile
from pathlib import Path

import inotify_simple
import websockets

import cloudcontainer

__all__ = ["build_agent_zipapp"]

# Memory per sandbox matters (hundreds per host): the agent serves plain ws:// only, so it
# keeps OpenSSL out entirely: no `ssl`, and hashlib falls back to its built-in SHA-1 (all the
# WebSocket handshake needs) instead of loading libcrypto through `_hashlib`. ~5 MiB of RSS.
# It also closes every descriptor it did not open: whatever the runtime's spawner let leak
# (uvloop does not close them) must not reach the sandbox's processes.
# A listening socket handed over as `--listen fd:N` is the one descriptor kept.
MAIN = b"""import os, sys
keep = [int(a[3:]) for a in sys.argv[1:] if a[:3] == "fd:" and a[3:].isdigit()]
low = 3
for fd in sorted(keep):
    os.closerange(low, fd)
    low = fd + 1
os.closerange(low, 65536)
sys.modules.setdefault("ssl", None)
sys.modules.setdefault("_hashlib", None)
from cloudcontainer.agent.main import main
main()
"""


def _trimmed(name: str, source: bytes) -> bytes:
    """Leave out imports the agent never needs: websockets' version module imports
    importlib.metadata (and with it email, zipfile, csv...) only to describe a development
    checkout, which costs every sandbox ~2 MiB of memory."""
    if name == "websockets/version.py" and b"\nreleased = True\n" in source:
        return source.replace(b"\nimport importlib.metadata\n", b"\n", 1)
    return source


def _sources() -> list[tuple[str, Path]]:
    package_root = Path(cloudcontainer.__file__).parent
    files: list[tuple[str, Path]] = [("cloudcontainer/__init__.py", package_root / "__init__.py")]
    for path in sorted((package_root / "agent").rglob("*.py")):
        files.append((f"cloudcontainer/agent/{path.relative_to(package_root / 'agent')}", path))
    websockets_root = Path(websockets.__file__).parent
    for path in sorted(websockets_root.rglob("*.py")):
        files.append((f"websockets/{path.relative_to(websockets_root)}", path))
    files.append(("inotify_simple.py", Path(inotify_simple.__file__)))
    return files


def _bytecode(source: bytes, name: str) -> bytes:
    """A legacy-location .pyc that zipimport loads without compiling the source again.

    Compiled by this interpreter and marked unchecked-hash, so zipimport skips the mtime
    check; an agent on another Python version sees a foreign magic number and falls back to
    the source. Without it every agent start compiles websockets (~400 ms).
    """
    code = compile(source, name, "exec", dont_inherit=True, optimize=0)
    flags = 0b01  # hash-based, unchecked
    header = importlib.util.MAGIC_NUMBER + flags.to_bytes(4, "little")
    return header + importlib.util.source_hash(source) + marshal.dumps(code)


def _entry(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    info.external_attr = 0o644 << 16
    archive.writestr(info, data)


def _archive() -> bytes:
    """The zipapp's bytes, built once per process for the same sources: compiling them is
    most of the ~0.2 s a build takes, and a process that builds again (every test's gateway,
    the warm path of `serve`'s start) would get the same bytes."""
    sources = _sources()
    return _build(tuple((name, path, path.stat().st_mtime_ns) for name, path in sources))


@functools.lru_cache(maxsize=2)
def _build(sources: tuple[tuple[str, Path, int], ...]) -> bytes:
    """`sources` carries each file's mtime so that an edited source builds anew."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, path, _ in sources:
            source = _trimmed(name, path.read_bytes())
            _entry(archive, name, source)
            _entry(archive, name[:-3] + ".pyc", _bytecode(source, name))
        _entry(archive, "__main__.py", MAIN)
    return b"#!/usr/bin/env python3\n" + buffer.getvalue()


def build_agent_zipapp(directory: Path) -> Path:
    """Write the zipapp into `directory` (once per content) and return its path."""
    data = _archive()
    target = directory / f"agent-{hashlib.sha256(data).hexdigest()[:16]}.pyz"
    if target.exists():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, suffix=".tmp")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, target)
    return target

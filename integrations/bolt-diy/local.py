#!/usr/bin/env python3
"""`make bolt`: bolt.diy on a local cloudcontainer, in one command.

Starts, in the foreground until Ctrl-C:
- `cloudcontainer serve` on 127.0.0.1:8080 with the embedded defaults (DATA_DIR
  .cloudcontainer), allowing bolt's origin to call it (`cors_origins`);
- the scripted LLM (llm.py) on 127.0.0.1:8788, or your own OpenAI-compatible endpoint with
  `--llm URL` (then give bolt its key in its settings);
- bolt.diy on http://127.0.0.1:5173/, switched by kit.py from BOLT_SOURCE (default: the pinned
  archive in ../shared/thirdparty, or $BOLT_DIY_ARCHIVE) into .cloudcontainer/bolt.diy the
  first time.

bolt's server gets an API key of the local account `bolt@cloudcontainer.example` (made on
first use; its password is in .cloudcontainer/bolt-account). The key is revoked when this
stops.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPOSITORY = HERE.parent.parent
DATA = REPOSITORY / ".cloudcontainer"
CLI = REPOSITORY / ".venv" / "bin" / "cloudcontainer"
SERVER = "http://127.0.0.1:8080"
BOLT_PORT = 5173
EMAIL = "bolt@cloudcontainer.example"
MODEL = "cloudcontainer-scripted"  # what llm.py lists


def default_source() -> Path:
    for candidate in (
        os.environ.get("BOLT_DIY_ARCHIVE", ""),
        str(REPOSITORY.parent / "shared" / "thirdparty" / "bolt.diy.tar.gz"),
        "/work/shared/thirdparty/bolt.diy.tar.gz",
    ):
        if candidate and Path(candidate).exists():
            return Path(candidate)
    raise SystemExit("Give bolt.diy's source: BOLT_SOURCE=/path/to/bolt.diy make bolt")


def call(method: str, path: str, token: str | None = None, body: object = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(SERVER + path, data=data, method=method)
    request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=30) as answer:
        raw = answer.read()
    return json.loads(raw) if raw else None


def serving() -> bool:
    try:
        with urllib.request.urlopen(SERVER + "/readyz", timeout=2) as answer:
            return bool(answer.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def account_password() -> str:
    """The local bolt account's password, made (with the account) on first use."""
    saved = DATA / "bolt-account"
    if saved.is_file():
        return saved.read_text().strip()
    password = secrets.token_urlsafe(24)
    subprocess.run([str(CLI), "user", "create", EMAIL, "--password-stdin"],
                   input=password, text=True, check=True, cwd=REPOSITORY)  # fmt: skip
    DATA.mkdir(exist_ok=True)
    saved.write_text(password + "\n")
    saved.chmod(0o600)
    return password


def main() -> int:
    parser = argparse.ArgumentParser(prog="make bolt", description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", type=Path, default=os.environ.get("BOLT_SOURCE") or None)
    parser.add_argument("--llm", help="an OpenAI-compatible endpoint instead of the scripted one")
    args = parser.parse_args()
    if serving():
        raise SystemExit(f"A server already answers at {SERVER}: stop it (make bolt runs its own)")
    tree = DATA / "bolt.diy"
    if not (tree / "node_modules").is_dir():
        source = args.source or default_source()
        subprocess.run([sys.executable, str(HERE / "kit.py"), "prepare", str(source), str(tree)],
                       check=True)  # fmt: skip
    password = account_password()
    children: list[subprocess.Popen[bytes]] = []
    env = {**os.environ, "CLOUDCONTAINER_CORS_ORIGINS": json.dumps([f"http://127.0.0.1:{BOLT_PORT}",
           f"http://localhost:{BOLT_PORT}"])}  # fmt: skip
    key_id = None
    try:
        children.append(subprocess.Popen([str(CLI), "serve"], env=env, cwd=REPOSITORY))
        deadline = time.monotonic() + 60
        while not serving():
            if time.monotonic() > deadline or children[0].poll() is not None:
                raise SystemExit("cloudcontainer serve did not start (see its output above)")
            time.sleep(0.2)
        login = call("POST", "/api/auth/login", body={"email": EMAIL, "password": password})
        key = call("POST", "/api/auth/keys", login["access_token"], {"name": "bolt.diy"})
        key_id = key["id"]
        llm = args.llm
        if llm is None:
            children.append(subprocess.Popen([sys.executable, str(HERE / "llm.py")]))
            llm = "http://127.0.0.1:8788/v1"
        children.append(subprocess.Popen([
            sys.executable, str(HERE / "kit.py"), "run", str(tree), "--server", SERVER,
            "--api-key", key["key"], "--llm", llm, "--port", str(BOLT_PORT),
        ]))  # fmt: skip
        print(f"\nbolt.diy: http://127.0.0.1:{BOLT_PORT}/ (model: OpenAILike, "
              f"{MODEL}; ask for a counter app). Ctrl-C stops.\n", flush=True)  # fmt: skip
        children[-1].wait()
    except KeyboardInterrupt:
        pass
    finally:
        if key_id is not None and serving():
            login = call("POST", "/api/auth/login", body={"email": EMAIL, "password": password})
            call("DELETE", f"/api/auth/keys/{key_id}", login["access_token"])
        for child in reversed(children):
            child.send_signal(signal.SIGINT)
        for child in reversed(children):
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())

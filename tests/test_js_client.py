"""`@cloudcontainer/api` (clients/js): its own node:test suites, run by Node against a real
gateway with real sandboxes on each runtime. Each suite file is one test here, so a failure
names the suite and carries Node's report."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Api
from tests.sandbox_helpers import live_server
from tests.support.jsclient import JS, built_js_client

SUITES = sorted(path.name for path in (JS / "test").glob("*.test.mjs"))
SUITE_SECONDS = 600  # an upper bound, never a timing


@pytest.fixture(scope="session")
def js_client() -> Path:
    """The package, installed from its lockfile and built (tsc) once per session."""
    return built_js_client()


@pytest.mark.timeout(SUITE_SECONDS + 60)
@pytest.mark.parametrize("suite", SUITES)
async def test_js_client_suite(sandbox_api: Api, js_client: Path, suite: str) -> None:
    user = await sandbox_api.user()
    key = await sandbox_api.client.post(
        "/api/auth/keys", json={"name": "js client tests"}, headers=user.headers
    )
    assert key.status_code == 201, key.text
    async with live_server(sandbox_api) as base:
        env = {
            **os.environ,
            "CLOUDCONTAINER_URL": "http" + base.removeprefix("ws"),
            "CLOUDCONTAINER_TOKEN": key.json()["key"],
        }
        node = await asyncio.create_subprocess_exec(
            "node", "--test", "--test-force-exit", "--test-reporter=spec", f"test/{suite}",
            cwd=js_client, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            async with asyncio.timeout(SUITE_SECONDS):
                report, _ = await node.communicate()
        finally:
            if node.returncode is None:
                node.kill()
                await node.wait()
    assert node.returncode == 0, report.decode(errors="replace")

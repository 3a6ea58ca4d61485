"""Schemathesis fuzzes the OpenAPI schema of a real server: no 5xx, every answer as documented.

The server is uvicorn on a loopback port with cheap argon2, once on SQLite and once on PostgreSQL
(which refuses text that SQLite stores). Requests carry a real user's access token; when a fuzzed
call ends that session (logout, password reset), the token is fetched again and the request
replayed. Every operation in the schema is fuzzed with every schemathesis check.

The schema is loaded at import, not through `schemathesis.pytest.from_fixture`: that path sets
`request.node._nodeid`, which pytest 9 no longer has.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
import uvicorn

from cloudcontainer.app import create_app
from cloudcontainer.config import Settings
from cloudcontainer.internals.uvicorn import CoalescingHttpProtocol
from cloudcontainer.state import open_services
from tests.conftest import PASSWORD, _truncate_all, make_settings
from tests.support.net import free_port

EMAIL = "fuzzer@example.com"
CONFIG = schemathesis.Config.from_str(
    """
[generation]
max-examples = 25

# Two answers no schema can foretell, added to schemathesis's defaults:
# - 413: a body over max_body_bytes is refused whatever it holds. JSON Schema cannot bound a whole
#   body, and some schemas (exec's args and env) allow bodies far larger.
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "413", "429", "5xx"]
[checks.negative_data_rejection]
expected-statuses = [
    "400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx",
]

# - 400 invalid_token: a single-use token is valid only once it was mailed to someone, so a
#   made-up one is well formed and still names nothing.
[[operations]]
include-path = ["/api/auth/verify-email", "/api/auth/password-reset/confirm"]
[operations.checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "400", "401", "403", "404", "409", "413", "429", "5xx"]
"""
)


@dataclass
class Server:
    url: str


async def _create_account(settings: Settings) -> None:
    async with open_services(settings) as services:
        await _truncate_all(services)  # PostgreSQL is shared with the other tests
        await services.accounts.create_user(EMAIL, PASSWORD)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    tmp_path: Path = tmp_path_factory.mktemp("fuzz")
    if request.param == "sqlite":
        database_url = f"sqlite+aiosqlite:///{tmp_path / 'fuzz.db'}"
    else:
        database_url = request.getfixturevalue("postgres_url")
    port = free_port()
    settings = make_settings(
        tmp_path,
        database_url,
        smtp_port=1,
        smtp_host="",  # mail goes to DATA_DIR/outbox
        host="127.0.0.1",
        port=port,
        # One fuzzing client sends every login from one address, with made-up credentials: the
        # throttle would soon refuse the fixture's own logins. Throttling has its own tests.
        login_max_attempts_per_ip=1_000_000,
        login_max_failures_per_account=1_000_000,
        warm_pool_size=0,  # no sandboxes started ahead of a container the fuzzer cannot make
    )
    asyncio.run(_create_account(settings))
    uv = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=port, log_config=None,
            lifespan="on", access_log=False, timeout_graceful_shutdown=10,
            http=CoalescingHttpProtocol,  # as `cloudcontainer serve`
        )
    )  # fmt: skip
    thread = threading.Thread(target=uv.run, name="uvicorn-fuzz", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield Server(url=f"http://127.0.0.1:{port}")
    finally:
        uv.should_exit = True
        thread.join(timeout=30)
        # A server still running would close its event loop (and sockets) at some later test.
        assert not thread.is_alive(), "the fuzzed server did not shut down"


# The running server, once the `server` fixture has started it.
_running: list[Server] = []
# Schemathesis builds its coverage-phase cases, credentials included, while pytest collects the
# tests: before any server runs. Those cases carry this token; the server answers 401 and
# schemathesis then fetches a real token (LoginAuth.get) and replays the request.
NOT_YET_LOGGED_IN = "not-yet-logged-in"


class LoginAuth:
    """A fresh access token from /api/auth/login, fetched again after any 401 (a fuzzed logout)."""

    def get(self, case: Any, context: Any) -> str:
        if not _running:
            return NOT_YET_LOGGED_IN
        response = requests.post(
            f"{_running[0].url}/api/auth/login",
            json={"email": EMAIL, "password": PASSWORD},
            timeout=10,
        )
        response.raise_for_status()
        token: str = response.json()["access_token"]
        return token

    def set(self, case: Any, data: str, context: Any) -> None:
        case.headers = {**(case.headers or {}), "Authorization": f"Bearer {data}"}


def _app_schema() -> Any:
    """The app's OpenAPI schema, built without a server: pytest collects a test per operation.

    `test_fuzzed_schema_is_the_one_the_server_serves` checks it equals the served /openapi.json.
    """
    settings = Settings(data_dir=Path(tempfile.gettempdir()) / "cloudcontainer-fuzz-unused")
    loaded = schemathesis.openapi.from_dict(create_app(settings).openapi(), config=CONFIG)
    loaded.auth()(LoginAuth)
    return loaded


schema = _app_schema()


@pytest.fixture(scope="module")
def base_url(server: Server) -> Iterator[str]:
    _running.append(server)
    try:
        yield server.url
    finally:
        _running.clear()


def test_fuzzed_schema_is_the_one_the_server_serves(server: Server) -> None:
    served = requests.get(f"{server.url}/openapi.json", timeout=10)
    assert served.status_code == 200
    assert served.json() == schema.raw_schema


@schema.parametrize()
def test_api_answers_every_generated_request_as_documented(case: Any, base_url: str) -> None:
    # All of schemathesis's checks: not_a_server_error, status code, content type, headers and
    # response body conformance, positive/negative data handling, auth, unsupported methods.
    case.call_and_validate(base_url=base_url)

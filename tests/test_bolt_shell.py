"""bolt.diy's `BoltShell.executeCommand` against `/bin/jsh --osc`, agent to WebSocket client.

The harness (tests/support/boltshell.py) is bolt's algorithm with its hazards: Ctrl-C then wait
for a prompt, type, wait for the exit; the first marker of each chunk only; a second reader while
a dev server runs. Both runtimes. `python -m bench --only BOLT` runs the same session 50 times.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

from tests.conftest import Api, TestUser
from tests.sandbox_helpers import live_server, new_container, run
from tests.support.boltshell import MARKER, BoltShell, connected

WAIT = 60.0  # an upper bound for things that must happen, never a measured timing
PREEMPT_SECONDS = 5.0  # the bound: the next command runs within 5 s of a dev server
DEV_SERVER_DELAY = 2.0  # bolt's action runner waits this long after starting a dev server
TICKER = "node -e \"setInterval(() => console.log('tick ' + Date.now()), 3)\""


@asynccontextmanager
async def bolt_shell(api: Api, user: TestUser, cid: str) -> AsyncIterator[BoltShell]:
    created = await api.client.post(
        f"/api/containers/{cid}/terminals", headers=user.headers,
        json={"command": "/bin/jsh", "args": ["--osc"], "cols": 80, "rows": 15},
    )  # fmt: skip
    assert created.status_code == 201, created.text
    path = f"/api/containers/{cid}/terminals/{created.json()['id']}"
    ticket = (
        await api.client.post("/api/auth/ws-ticket", json={"path": path}, headers=user.headers)
    ).json()["ticket"]
    async with live_server(api) as base:
        url = f"{base}{path}?ticket={ticket}"
        async with asyncio.timeout(WAIT * 3), connected(url) as shell:
            yield shell


async def preempt_dev_server(shell: BoltShell, command: str, ready: str) -> None:
    """Start `command` as bolt starts a dev server (not awaited), then run `echo ok`: it must
    finish within PREEMPT_SECONDS, and the dev server's execution must end with 130."""
    server = asyncio.ensure_future(shell.execute(command))
    with explained(shell, f"{command} to print {ready!r}"):
        async with asyncio.timeout(WAIT):
            while ready not in "".join(shell.transcript):
                await asyncio.sleep(0.05)
    await asyncio.sleep(DEV_SERVER_DELAY)
    with explained(shell, "echo ok to end"):
        async with asyncio.timeout(PREEMPT_SECONDS):
            ok = await shell.execute("echo ok")
    assert ok.exit_code == 0, ok
    assert "ok\r\n" in ok.output, ok
    with explained(shell, "the dev server's execution to end"):
        assert (await asyncio.wait_for(server, PREEMPT_SECONDS)).exit_code == 130


@contextmanager
def explained(shell: BoltShell, what: str) -> Iterator[None]:
    """A timeout names what did not happen and shows the chunks the shell received."""
    try:
        yield
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}; last chunks: "
                             f"{shell.transcript[-12:]!r}") from None  # fmt: skip


async def test_bolt_runs_commands_in_jsh_and_preempts_a_dev_server(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    container = await new_container(sandbox_api, user)
    async with bolt_shell(sandbox_api, user, container["id"]) as shell:
        for step in range(20):
            result = await shell.execute(f"echo step-$(({step}*2))")
            assert (result.exit_code, f"step-{step * 2}\r\n" in result.output) == (0, True)
        assert (await shell.execute("false")).exit_code == 1
        unknown = await shell.execute("nosuch-tool --version")
        assert unknown.exit_code == 127, unknown
        assert "command not found" in unknown.output, unknown
        assert (await shell.execute("")).exit_code == 0
        assert (await shell.execute("cd /tmp && pwd")).exit_code == 0
        assert (await shell.execute("pwd")).output.count("/tmp\r\n") == 1  # one shell throughout
        await preempt_dev_server(shell, TICKER, "tick ")
        assert (await shell.execute("exit_status=3; (exit $exit_status)")).exit_code == 3
        assert not [c for c in shell.controls if c.get("type") == "lagged"]
    for chunk in shell.transcript:  # R6, the replay on attach included
        found = MARKER.findall(chunk)
        assert len(found) <= 1, chunk
        assert not found or chunk.endswith("\x07"), chunk
    history = await sandbox_api.client.get(
        f"/api/projects/{container['project_id']}/history", params={"q": "nosuch-tool"},
        headers=user.headers,
    )  # fmt: skip
    assert [(h["command"], h["source"], h["exit_code"]) for h in history.json()] == [
        ("nosuch-tool --version", "shell", 127)
    ]


async def test_bolt_preempts_a_real_vite_dev_server(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    container = await new_container(sandbox_api, user)
    installed = await run(
        sandbox_api, user, container["id"], "npm", "install", "vite@5", "--no-audit",
        "--no-fund", "--loglevel=error", timeout=300,
    )  # fmt: skip
    assert installed.code == 0, installed.stderr
    async with bolt_shell(sandbox_api, user, container["id"]) as shell:
        await preempt_dev_server(shell, "npx vite --port 5173", "ready in")
        assert (await shell.execute("echo after-vite")).exit_code == 0


async def test_a_new_container_of_the_project_starts_with_its_shell_history(
    sandbox_api: Api,
) -> None:
    """The up arrow in a new container's terminal finds what ran in the project before."""
    user = await sandbox_api.user()
    first = await new_container(sandbox_api, user)
    assert (await run(sandbox_api, user, first["id"], "echo", "from-the-first")).code == 0
    second = await new_container(sandbox_api, user, project_id=first["project_id"])
    async with bolt_shell(sandbox_api, user, second["id"]) as shell:
        listed = await shell.execute("history")
    assert "echo from-the-first" in listed.output

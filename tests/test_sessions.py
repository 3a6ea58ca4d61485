"""Ending a credential ends its WebSockets (issue 9): logout, key revocation, password reset,
account deletion and a revocation made behind this gateway's back (another gateway) each close
the open terminal and event sockets of what they ended, and only those. Real sandboxes, a real
server, real sockets, both runtimes."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import pytest
from sqlalchemy import func, select, update
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from cloudcontainer.db import ApiKey, AuthSession, Container, Project, User, WsTicket
from cloudcontainer.db.types import utcnow
from tests.conftest import PASSWORD, Api, ApiFactory, TestUser
from tests.sandbox_helpers import live_server, new_container

CLOSE_WITHIN = 5.0  # seconds: "within seconds", with room for a loaded machine
WAIT = 30.0


@dataclass
class Sockets:
    terminal: ClientConnection
    events: ClientConnection

    def both(self) -> tuple[ClientConnection, ClientConnection]:
        return self.terminal, self.events


async def ticket(api: Api, headers: dict[str, str], path: str) -> str:
    response = await api.client.post("/api/auth/ws-ticket", json={"path": path}, headers=headers)
    assert response.status_code == 200, response.text
    return str(response.json()["ticket"])


async def new_terminal(api: Api, user: TestUser, cid: str) -> str:
    response = await api.client.post(
        f"/api/containers/{cid}/terminals", json={"command": "bash"}, headers=user.headers
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


@asynccontextmanager
async def opened(
    api: Api, base: str, headers: dict[str, str], cid: str, tid: str
) -> AsyncIterator[Sockets]:
    """A terminal socket and an event socket, opened with tickets asked for with `headers`."""
    terminal_path = f"/api/containers/{cid}/terminals/{tid}"
    events_path = f"/api/containers/{cid}/events"
    async with AsyncExitStack() as stack:
        terminal = await stack.enter_async_context(
            connect(f"{base}{terminal_path}?ticket={await ticket(api, headers, terminal_path)}")
        )
        assert json.loads(await terminal.recv())["type"] == "attached"
        events = await stack.enter_async_context(
            connect(f"{base}{events_path}?ticket={await ticket(api, headers, events_path)}")
        )
        assert json.loads(await events.recv())["type"] == "status"
        yield Sockets(terminal, events)


async def closed_by_server(socket: ClientConnection, within: float = CLOSE_WITHIN) -> str:
    """Wait for the server to close `socket` (frames before that are skipped); its reason."""
    async with asyncio.timeout(within):
        with contextlib.suppress(ConnectionClosed):
            async for _ in socket:
                pass
    assert socket.close_code == 1008, (socket.close_code, socket.close_reason)
    return str(socket.close_reason)


async def still_open(socket: ClientConnection) -> None:
    """`socket` answers: a ping comes back (the server has not closed it)."""
    async with asyncio.timeout(WAIT):
        await (await socket.ping())
    assert socket.close_code is None


async def setup(api: Api) -> tuple[TestUser, str, str]:
    user = await api.user()
    cid = (await new_container(api, user))["id"]
    return user, cid, await new_terminal(api, user, cid)


async def second_session(api: Api, user: TestUser) -> dict[str, str]:
    response = await api.client.post(
        "/api/auth/login", json={"email": user.email, "password": PASSWORD}
    )
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def new_key(api: Api, user: TestUser) -> tuple[str, dict[str, str]]:
    response = await api.client.post("/api/auth/keys", json={"name": "ci"}, headers=user.headers)
    created = response.json()
    return created["id"], {"Authorization": f"Bearer {created['key']}"}


async def test_logout_closes_the_sockets_of_that_session_only(sandbox_api: Api) -> None:
    api = sandbox_api
    user, cid, tid = await setup(api)
    other_session = await second_session(api, user)
    async with (
        live_server(api) as base,
        opened(api, base, user.headers, cid, tid) as mine,
        opened(api, base, other_session, cid, tid) as others,
    ):
        response = await api.client.post("/api/auth/logout", headers=user.headers)
        assert response.status_code == 204
        for socket in mine.both():
            assert await closed_by_server(socket) == "session ended: logout"
        for socket in others.both():
            await still_open(socket)


async def test_revoking_a_key_closes_the_sockets_opened_with_it(sandbox_api: Api) -> None:
    api = sandbox_api
    user, cid, tid = await setup(api)
    key_id, key = await new_key(api, user)
    async with (
        live_server(api) as base,
        opened(api, base, key, cid, tid) as by_key,
        opened(api, base, user.headers, cid, tid) as by_session,
    ):
        response = await api.client.delete(f"/api/auth/keys/{key_id}", headers=user.headers)
        assert response.status_code == 204
        for socket in by_key.both():
            assert await closed_by_server(socket) == "API key revoked"
        for socket in by_session.both():
            await still_open(socket)


async def test_a_password_reset_closes_every_socket_of_the_account(sandbox_api: Api) -> None:
    api = sandbox_api
    user, cid, tid = await setup(api)
    _, key = await new_key(api, user)
    stranger = await api.user()
    stranger_cid = (await new_container(api, stranger))["id"]
    stranger_tid = await new_terminal(api, stranger, stranger_cid)
    async with (
        live_server(api) as base,
        opened(api, base, user.headers, cid, tid) as by_session,
        opened(api, base, key, cid, tid) as by_key,
        opened(api, base, stranger.headers, stranger_cid, stranger_tid) as strangers,
    ):
        await api.client.post("/api/auth/password-reset/request", json={"email": user.email})
        await api.services.tasks.drain()
        token = api.mailbox.token_in(user.email, "Reset your cloudcontainer password")
        response = await api.client.post(
            "/api/auth/password-reset/confirm",
            json={"token": token, "password": "another long passphrase"},
        )
        assert response.status_code == 204
        for socket in (*by_session.both(), *by_key.both()):
            assert await closed_by_server(socket) == "password reset"
        for socket in strangers.both():
            await still_open(socket)


async def test_deleting_the_account_closes_its_sockets_and_removes_everything(
    sandbox_api: Api,
) -> None:
    api = sandbox_api
    user, cid, tid = await setup(api)
    _, key = await new_key(api, user)
    stranger = await api.user()
    stranger_cid = (await new_container(api, stranger))["id"]
    async with (
        live_server(api) as base,
        opened(api, base, user.headers, cid, tid) as by_session,
        opened(api, base, key, cid, tid) as by_key,
    ):
        wrong = await api.client.request(
            "DELETE", "/api/auth/me", json={"password": "not the password"}, headers=user.headers
        )
        assert wrong.status_code == 403, wrong.text
        assert wrong.json()["error"]["code"] == "wrong_password"
        for socket in (*by_session.both(), *by_key.both()):
            await still_open(socket)
        assert (await api.client.get(f"/api/containers/{cid}", headers=user.headers)).is_success

        response = await api.client.request(
            "DELETE", "/api/auth/me", json={"password": PASSWORD}, headers=user.headers
        )
        assert response.status_code == 204, response.text
        for socket in (*by_session.both(), *by_key.both()):
            assert await closed_by_server(socket) == "account deleted"

    sandboxes = {info.sandbox_id for info in await api.services.runtime.list()}
    assert cid not in sandboxes
    assert stranger_cid in sandboxes
    async with api.services.database.session() as session:
        for model, column in ((User, User.id), (Container, Container.owner_id),
                              (Project, Project.owner_id), (AuthSession, AuthSession.user_id),
                              (ApiKey, ApiKey.user_id), (WsTicket, WsTicket.user_id)):  # fmt: skip
            count = await session.scalar(
                select(func.count()).select_from(model).where(column == user.id)
            )
            assert count == 0, model.__name__
    assert (await api.client.get("/api/auth/me", headers=user.headers)).status_code == 401
    assert (await api.client.get("/api/auth/me", headers=key)).status_code == 401
    login = await api.client.post(
        "/api/auth/login", json={"email": user.email, "password": PASSWORD}
    )
    assert login.status_code == 401
    theirs = await api.client.get(f"/api/containers/{stranger_cid}", headers=stranger.headers)
    assert theirs.json()["status"] == "running"


async def test_a_session_ended_elsewhere_closes_its_sockets_at_revalidation(
    sandbox_api_factory: ApiFactory,
) -> None:
    """Another gateway sharing the database revoked the session: this one finds out at its
    next revalidation pass."""
    api = await sandbox_api_factory(ws_revalidate_seconds=0.5)
    user, cid, tid = await setup(api)
    other_session = await second_session(api, user)
    async with (
        live_server(api) as base,
        opened(api, base, user.headers, cid, tid) as mine,
        opened(api, base, other_session, cid, tid) as others,
    ):
        principal = await api.services.credentials.authenticate(user.tokens["access_token"])
        ended = principal.session_id
        async with api.services.database.session() as session:
            await session.execute(
                update(AuthSession).where(AuthSession.id == ended).values(revoked_at=utcnow())
            )
        for socket in mine.both():
            assert await closed_by_server(socket) == "session ended"
        for socket in others.both():
            await still_open(socket)


async def test_a_ticket_opens_only_the_socket_it_was_asked_for(sandbox_api: Api) -> None:
    api = sandbox_api
    user, cid, tid = await setup(api)
    events_path = f"/api/containers/{cid}/events"
    for_events = await ticket(api, user.headers, events_path)
    async with live_server(api) as base:
        for elsewhere in (f"/api/containers/{cid}/terminals/{tid}", f"{events_path}/"):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(f"{base}{elsewhere}?ticket={for_events}"):
                    pass
            assert refused.value.response.status_code == 403, elsewhere
        # Refused elsewhere, it is not used up: it opens its own socket, once.
        async with connect(f"{base}{events_path}?ticket={for_events}") as events:
            assert json.loads(await events.recv())["type"] == "status"
        with pytest.raises(InvalidStatus):
            async with connect(f"{base}{events_path}?ticket={for_events}"):
                pass

"""Previews through the gateway, on both runtimes: port events with URLs, stable external
ports, the proxy over the agent's tunnel (servers on 127.0.0.1 or ::1 alone included),
tokens and cookies, public ports, the starting page, waking a stopped container, injection,
and a 100 MB download that holds up nothing else."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloudcontainer.agent.protocol import PROC_OUTPUT
from cloudcontainer.agentlink.client import AgentClient
from cloudcontainer.agentlink.status import listening_ports
from tests.conftest import PASSWORD, Api, TestUser, make_settings, running_api
from tests.sandbox_helpers import new_container, sh, wait_for_status
from tests.support.smtp import Mailbox

# A server that answers every request with what it received (path, headers), and serves
# /big (BIG_BYTES of a known pattern) for the download test.
ECHO_SERVER = r"""
import json, sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        if self.path == "/big":
            size = int(sys.argv[3])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            block = bytes(range(256)) * 256
            for _ in range(size // len(block)):
                self.wfile.write(block)
            return
        if self.path == "/page":
            body = b"<!doctype html><html><head><title>t</title></head><body>hi</body></html>"
            kind = "text/html"
        else:
            body = json.dumps({"path": self.path, "headers": dict(self.headers)}).encode()
            kind = "application/json"
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Frame-Options", "DENY")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
class Server(ThreadingHTTPServer):
    address_family = __import__("socket").AF_INET6 if ":" in sys.argv[1] else __import__("socket").AF_INET
Server((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()
"""
BIG_BYTES = 100 * 1024 * 1024
DOCUMENT = {"Sec-Fetch-Dest": "document", "Accept": "text/html"}


async def next_event(queue: asyncio.Queue[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    async with asyncio.timeout(60):
        while True:
            event = await queue.get()
            if all(event.get(k) == v for k, v in fields.items()):
                return event


async def start_server(
    api: Api, user: TestUser, cid: str, bind: str = "127.0.0.1", port: int = 8123
) -> tuple[AgentClient, int]:
    link = await api.services.containers.agent(user.id, cid)
    await sh(api, user, cid, f"cat > /home/project/echo_server.py <<'EOF'\n{ECHO_SERVER}\nEOF")
    spawned = await link.call(
        "proc.spawn",
        command="python3",
        args=["/home/project/echo_server.py", bind, str(port), str(BIG_BYTES)],
    )
    return link, int(spawned["proc_id"])


@asynccontextmanager
async def preview_of(
    api: Api, user: TestUser, bind: str = "127.0.0.1", port: int = 8123
) -> AsyncIterator[tuple[str, dict[str, Any], int]]:
    """A container with the echo server on `port`: (its id, its `server-ready` event, the
    server's proc id)."""
    cid = (await new_container(api, user))["id"]
    async with api.services.events.subscribe(cid) as queue:
        _, proc_id = await start_server(api, user, cid, bind, port)
        opened = await next_event(queue, type="port", port=port, state="open")
        ready = await next_event(queue, type="server-ready", port=port)
    assert ready["url"] == opened["url"]
    yield cid, ready, proc_id


def client(**options: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=30, follow_redirects=False, **options)


async def test_a_port_gets_a_private_url_and_its_token_becomes_a_cookie(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    async with preview_of(sandbox_api, user) as (cid, ready, _):
        url, origin = ready["url"], ready["origin"]
        assert url.startswith(f"{origin}/?cc_token=")
        listing = await sandbox_api.client.get(f"/api/containers/{cid}/previews",
                                               headers=user.headers)  # fmt: skip
        [preview] = listing.json()
        assert preview | {"url": url} == {
            "port": 8123, "url": url, "origin": origin, "status": "ready", "public": False,
            "protocol": "http", "external_port": int(origin.rsplit(":", 1)[1]),
        }  # fmt: skip
        async with client() as http:
            refused = await http.get(f"{origin}/x")
            assert refused.status_code == 401
            assert refused.json()["error"]["code"] == "preview_private"
            # A navigation with the token: redirected without it, with the port's cookie.
            first = await http.get(url.replace("/?", "/here?a=1&"), headers=DOCUMENT)
            assert first.status_code == 302
            assert first.headers["location"] == "/here?a=1"
            cookie = first.headers["set-cookie"]
            name = f"cc_pt_{preview['external_port']}"
            assert cookie.startswith(f"{name}=")
            assert "HttpOnly" in cookie
            assert "SameSite=Lax" in cookie
            value = cookie.split(";")[0].split("=", 1)[1]
            echoed = await http.get(
                f"{origin}/here?a=1",
                headers={"Cookie": f"app=1; {name}={value}; cc_other=x", "X-Test": "kept"},
            )
        assert echoed.status_code == 200
        seen = echoed.json()
        assert seen["path"] == "/here?a=1"
        headers = {name.lower(): value for name, value in seen["headers"].items()}
        assert headers["cookie"] == "app=1"  # every cc_* cookie stripped
        assert headers["x-test"] == "kept"
        assert headers["host"] == origin.removeprefix("http://")
        assert headers["x-forwarded-host"] == origin.removeprefix("http://")
        assert headers["x-forwarded-proto"] == "http"
        assert headers["x-forwarded-for"] == "127.0.0.1"
        assert echoed.headers["cross-origin-resource-policy"] == "cross-origin"


async def test_a_token_or_cookie_opens_only_its_own_port(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    async with preview_of(sandbox_api, user) as (cid, ready, _):
        async with sandbox_api.services.events.subscribe(cid) as queue:
            await start_server(sandbox_api, user, cid, port=8124)
            other = await next_event(queue, type="server-ready", port=8124)
        token = ready["url"].split("cc_token=")[1]
        async with client() as http:
            with_a_token = await http.get(f"{other['origin']}/?cc_token={token}")
            assert with_a_token.status_code == 401
            login = await http.get(ready["url"])
            port_a = ready["origin"].rsplit(":", 1)[1]
            value = login.headers["set-cookie"].split(";")[0].split("=", 1)[1]
            borrowed = await http.get(f"{other['origin']}/", headers={
                "Cookie": f"cc_pt_{other['origin'].rsplit(':', 1)[1]}={value}; cc_pt_{port_a}={value}"
            })  # fmt: skip
            assert borrowed.status_code == 401
            assert (await http.get(other["url"])).status_code == 200


async def test_a_public_port_needs_no_token_and_can_be_made_private_again(
    sandbox_api: Api,
) -> None:
    user, stranger = await sandbox_api.user(), await sandbox_api.user()
    async with preview_of(sandbox_api, user) as (cid, ready, _):
        path = f"/api/containers/{cid}/previews/8123"
        assert (
            await sandbox_api.client.patch(path, json={"public": True}, headers=stranger.headers)
        ).status_code == 404
        made_public = await sandbox_api.client.patch(path, json={"public": True},
                                                     headers=user.headers)  # fmt: skip
        assert made_public.json()["public"] is True
        assert made_public.json()["url"] == ready["origin"] + "/"
        async with client() as http:
            assert (await http.get(ready["origin"] + "/")).status_code == 200
            await sandbox_api.client.patch(path, json={"public": False}, headers=user.headers)
            assert (await http.get(ready["origin"] + "/")).status_code == 401
        for bad in ({"public": "yes"}, {}, {"public": True, "x": 1}):
            response = await sandbox_api.client.patch(path, json=bad, headers=user.headers)
            assert response.status_code == 422
        missing = await sandbox_api.client.patch(f"/api/containers/{cid}/previews/9999",
                                                 json={"public": True}, headers=user.headers)  # fmt: skip
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "preview_not_found"
        listing = await sandbox_api.client.get(f"/api/containers/{cid}/previews",
                                               headers=stranger.headers)  # fmt: skip
        assert listing.status_code == 404
    admin = await sandbox_api.user(admin=True)
    audit = await sandbox_api.client.get("/api/admin/audit?action=port_made_public",
                                         headers=admin.headers)  # fmt: skip
    [made_public_event] = audit.json()["items"]
    assert made_public_event["actor_id"] == user.id
    assert made_public_event["detail"] == {"port": 8123, "url": ready["origin"]}


async def test_a_server_on_ipv6_loopback_alone_is_reached(sandbox_api: Api) -> None:
    """Node resolves `localhost` to ::1 where a sandbox has IPv6 (Vite's default bind)."""
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    probe = await sh(sandbox_api, user, cid, "python3 -c \"import socket; "
                     "socket.socket(socket.AF_INET6).bind(('::1', 0))\"")  # fmt: skip
    if probe.code != 0:
        pytest.skip("this runtime's sandboxes have no IPv6 loopback (Docker's default)")
    async with preview_of(sandbox_api, user, bind="::1", port=5173) as (_, ready, _):
        async with client() as http:
            answer = await http.get(ready["url"], follow_redirects=True)
        assert answer.status_code == 200
        assert answer.json()["path"] == "/"


async def test_a_server_on_every_ipv6_address_is_reached_with_or_without_ipv6_loopback(
    sandbox_api: Api,
) -> None:
    """Node's `listen(port)` binds `::`. A Docker sandbox has IPv6 disabled, so no ::1 to
    dial: the dual-stack socket is reached on 127.0.0.1 instead (probe and proxy alike)."""
    user = await sandbox_api.user()
    async with preview_of(sandbox_api, user, bind="::", port=3001) as (_, ready, _):
        async with client() as http:
            answer = await http.get(ready["url"], follow_redirects=True)
        assert answer.status_code == 200
        assert answer.json()["path"] == "/"


async def test_the_external_port_is_stable_and_freed_with_the_container(
    sandbox_api_factory: Any,
) -> None:
    api = await sandbox_api_factory()
    user = await api.user()
    async with preview_of(api, user) as (cid, ready, proc_id):
        origin = ready["origin"]
        link = await api.services.containers.agent(user.id, cid)
        async with api.services.events.subscribe(cid) as queue:
            await link.call("proc.kill", proc_id=proc_id)
            closed = await next_event(queue, type="port", port=8123, state="close")
        assert closed["origin"] == origin
        async with client() as http:
            starting = await http.get(ready["url"], headers=DOCUMENT, follow_redirects=True)
        assert starting.status_code == 503
        assert starting.headers["x-cloudcontainer-preview"] == "starting"
        assert "8123" in starting.text
        async with api.services.events.subscribe(cid) as queue:
            await start_server(api, user, cid)
            again = await next_event(queue, type="server-ready", port=8123)
        assert again["origin"] == origin
        response = await api.client.delete(f"/api/containers/{cid}", headers=user.headers)
        assert response.status_code == 204
    port = int(origin.rsplit(":", 1)[1])
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", port))


async def test_previews_survive_a_gateway_restart_at_the_same_port(
    request: pytest.FixtureRequest, runtime_name: str, tmp_path: Path,
    smtp: tuple[Mailbox, int], mailbox: Mailbox,
) -> None:  # fmt: skip
    image = {}
    if runtime_name == "docker":
        image["sandbox_image"] = request.getfixturevalue("built_image").tag
    settings = make_settings(
        tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'gateway.db'}", smtp[1],
        runtime=runtime_name, health_interval_seconds=0.2, **image,
    )  # fmt: skip
    async with running_api(settings, mailbox) as first:
        user = await first.user()
        async with preview_of(first, user) as (cid, ready, _):
            pass
    # The sandbox and its server kept running; a new gateway adopts it and listens again on
    # the same port, with the same token.
    async with running_api(settings, mailbox) as second:
        login = await second.client.post(
            "/api/auth/login", json={"email": user.email, "password": PASSWORD}
        )
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        async with asyncio.timeout(60):
            while True:
                listing = (await second.client.get(f"/api/containers/{cid}/previews",
                                                    headers=headers)).json()  # fmt: skip
                if listing and listing[0]["status"] == "ready":
                    break
                await asyncio.sleep(0.2)
        assert listing[0]["origin"] == ready["origin"]
        assert listing[0]["url"] == ready["url"]
        async with client() as http:
            assert (await http.get(ready["url"], follow_redirects=True)).status_code == 200
        await second.client.delete(f"/api/containers/{cid}", headers=headers)


async def test_a_visit_to_a_stopped_container_starts_it(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    async with preview_of(sandbox_api, user) as (cid, ready, _):
        # Public, so the visit needs no cookie.
        await sandbox_api.client.patch(f"/api/containers/{cid}/previews/8123",
                                       json={"public": True}, headers=user.headers)  # fmt: skip
        # Stopped for inactivity: its dev servers are kept and come back with it.
        await sandbox_api.services.containers.idle_stop(cid, "idle for a test")
        await wait_for_status(sandbox_api, user, cid, "stopped")
        async with client() as http:
            page = await http.get(ready["origin"] + "/", headers=DOCUMENT)
            assert page.status_code == 503
            assert "starting" in page.text.lower()
            await wait_for_status(sandbox_api, user, cid, "running")
            async with asyncio.timeout(60):
                while (answer := await http.get(ready["origin"] + "/")).status_code != 200:
                    await asyncio.sleep(0.3)
        assert answer.json()["path"] == "/"


async def test_the_registered_script_and_the_error_shim_are_injected_into_documents(
    sandbox_api: Api,
) -> None:
    user = await sandbox_api.user()
    async with preview_of(sandbox_api, user) as (cid, ready, _):
        registered = await sandbox_api.client.put(
            f"/api/containers/{cid}/previews:script",
            json={"script": "window.__registered = 42;", "forward_errors": True},
            headers=user.headers,
        )
        assert registered.status_code == 204
        async with client() as http:
            await http.get(ready["url"])
            page = await http.get(ready["origin"] + "/page", headers=DOCUMENT)
            script = await http.get(ready["origin"] + "/__cloudcontainer/preview.js")
            data = await http.get(ready["origin"] + "/page", headers={"Sec-Fetch-Dest": "empty"})
        assert page.text.startswith(
            '<!doctype html><html><head><script src="/__cloudcontainer/preview.js"></script>'
        )
        assert "x-frame-options" not in page.headers
        assert page.headers["cross-origin-embedder-policy"] == "credentialless"
        assert "window.__registered = 42;" in script.text
        assert "PREVIEW_UNCAUGHT_EXCEPTION" in script.text
        assert "preview.js" not in data.text  # only navigations get it
        too_big = await sandbox_api.client.put(
            f"/api/containers/{cid}/previews:script",
            json={"script": "x" * (256 * 1024 + 1)}, headers=user.headers,
        )  # fmt: skip
        assert too_big.status_code == 422


async def test_a_100_mb_download_holds_up_no_keystroke_and_no_other_request(
    sandbox_api: Api,
) -> None:
    """The browser reads a 100 MB download slowly: the tunnel holds a window of it, and the
    same agent link keeps echoing keystrokes and answering the app's other requests."""
    user = await sandbox_api.user()
    async with preview_of(sandbox_api, user) as (cid, ready, _):
        await sandbox_api.client.patch(f"/api/containers/{cid}/previews/8123",
                                       json={"public": True}, headers=user.headers)  # fmt: skip
        link = await sandbox_api.services.containers.agent(user.id, cid)
        shell = await link.call("proc.spawn", command="cat", pty=True)
        echoed = bytearray()
        link.on_stream(PROC_OUTPUT, shell["proc_id"], lambda _, data: echoed.extend(data))
        host, port = ready["origin"].removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port), limit=1 << 16)
        writer.write(f"GET /big HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        received = len(await reader.read(65536))
        async with client() as http:
            for round_trip in range(10):
                word = f"key-{round_trip}".encode()
                await link.send_input(shell["proc_id"], word)
                async with asyncio.timeout(30):
                    while word not in echoed:
                        await asyncio.sleep(0.01)
                other = await http.get(f"{ready['origin']}/other-{round_trip}")
                assert other.json()["path"] == f"/other-{round_trip}"
                received += len(await reader.read(65536))  # a trickle meanwhile
        assert received < BIG_BYTES // 4  # still mid-download when all of that was answered
        while chunk := await reader.read(1 << 20):
            received += len(chunk)
            if received >= BIG_BYTES:
                break
        writer.close()
        assert received == BIG_BYTES


async def test_events_carry_json_the_client_can_use(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    async with preview_of(sandbox_api, user) as (_, ready, _):
        assert json.loads(json.dumps(ready)) == ready
        assert not ready["origin"].endswith("/")


async def test_one_container_cannot_take_the_whole_preview_range(sandbox_api: Api) -> None:
    """The ports a sandbox reports are its tenant's to make up: 40 listeners get 32
    previews, and the range stays for everyone else."""
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    link = await sandbox_api.services.containers.agent(user.id, cid)
    script = (
        "import socket, time\n"
        "held = []\n"
        "for port in range(9000, 9040):\n"
        "    s = socket.socket(); s.bind(('127.0.0.1', port)); s.listen(); held.append(s)\n"
        "time.sleep(600)\n"
    )
    await link.call("proc.spawn", command="python3", args=["-c", script])
    async with asyncio.timeout(60):
        while len(await listening_ports(link, timeout=10)) < 40:
            await asyncio.sleep(0.2)
        while True:
            listing = (await sandbox_api.client.get(f"/api/containers/{cid}/previews",
                                                    headers=user.headers)).json()  # fmt: skip
            if len(listing) >= 32:
                break
            await asyncio.sleep(0.2)
    await asyncio.sleep(1)  # every port event of the 40 has been handled by now
    listing = (await sandbox_api.client.get(f"/api/containers/{cid}/previews",
                                            headers=user.headers)).json()  # fmt: skip
    assert len(listing) == 32
    assert {preview["port"] for preview in listing} < set(range(9000, 9040))

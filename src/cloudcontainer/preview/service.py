"""Previews: every port a sandbox listens on, served at `http://PUBLIC_HOST:EXTERNAL_PORT/`.

`PreviewService` turns the agents' `port` events into allocations and listeners:
- a port that opens gets an external port from `preview_ports` — the lowest one no other
  allocation has and this host can bind — persisted (`preview_ports` table), so it stays the
  same for the container's life and across gateway restarts, and freed with the container;
- each allocation has a `PreviewListener` (the proxy engine, `proxy.py`) for as long as the
  container exists, running or not: a request to a stopped container starts it and gets the
  "starting…" page meanwhile;
- the container's event stream says `port` (open/close, with the URL) and `server-ready` once
  the port answers HTTP (`probe.py`), as WebContainer does.

The gate (`_admit`) decides for each request: the rate limit, the port's token and cookie
(`access.py`), the service's own paths under `/__cloudcontainer/`, and what the proxy
injects into documents (`shim.py`). The dial reaches the server through the agent's tunnel,
which reaches servers bound to 127.0.0.1 or ::1 alone as well as on every address.
"""

from __future__ import annotations

import asyncio
import secrets
import ssl
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError

from cloudcontainer.agentlink.client import AgentClient
from cloudcontainer.agentlink.errors import AgentOpError, AgentUnavailable
from cloudcontainer.agentlink.status import listening_ports
from cloudcontainer.agentlink.tunnels import open_tunnel
from cloudcontainer.config import Settings
from cloudcontainer.db import Container, Database, PreviewPort
from cloudcontainer.errors import NotFound
from cloudcontainer.events import EventBus
from cloudcontainer.preview import access, pages, shim
from cloudcontainer.preview.probe import probe_protocol
from cloudcontainer.preview.proxy import PreviewListener
from cloudcontainer.preview.types import Forward, ProxyRequest, Reply, UpstreamUnavailable
from cloudcontainer.sandbox.service import ContainerService, Status
from cloudcontainer.tasks import TaskSet

__all__ = ["Preview", "PreviewService"]

log = structlog.get_logger(__name__)

SERVICE_PREFIX = "/__cloudcontainer/"
PROBE_ATTEMPTS = 60  # a dev server may take a while to answer its first request
PROBE_INTERVAL = 0.5
MAX_PORTS_PER_CONTAINER = 32  # previews one container may hold, of the whole range


@dataclass(eq=False)
class Preview:
    """One allocated port of a container and its listener."""

    container_id: str
    owner_id: str
    port: int
    external_port: int
    public: bool
    secret: str
    listener: PreviewListener | None = None
    status: str = "closed"  # open (listening), ready (answers HTTP), closed (nothing listens)
    address: str | None = None  # what the server is bound to, as the agent saw it
    protocol: str | None = None  # http, websocket or tcp, once probed
    probe: asyncio.Task[None] | None = None
    held: AbstractContextManager[None] | None = None  # the container's activity, while used
    token: str = ""  # what its URL carries while private, derived from `secret` (access.py)
    cookie: str = ""  # what its cookie holds, likewise


@dataclass
class ContainerPreviews:
    """What a container's previews share: its ports, the script its client registered."""

    ports: dict[int, Preview] = field(default_factory=dict)
    script: str = ""
    forward_errors: bool = False


class PreviewService:
    def __init__(
        self, *, settings: Settings, database: Database, containers: ContainerService,
        events: EventBus, tasks: TaskSet, signing_key: str,
    ) -> None:  # fmt: skip
        self.settings = settings
        self._db = database
        self.containers = containers
        self.events = events
        self.tasks = tasks
        self._key = signing_key.encode()
        self._bind_host = settings.preview_host or settings.host
        self._ssl = _tls_context(settings)
        self._scheme = "https" if self._ssl is not None else "http"
        self._by_container: dict[str, ContainerPreviews] = {}
        self._limiter = access.RateLimiter(settings.preview_rate_limit, settings.preview_rate_burst)
        self._allocating = asyncio.Lock()
        self._closed = False
        # Called with (container id, port) when a port first answers HTTP (services.py).
        self.ready_listeners: list[Callable[[str, int], None]] = []

    # -- lifetime -------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen again on every port allocated before a restart (the URL stays the same; a
        port another program took meanwhile gets a new one) and follow the containers."""
        hooks = self.containers.hooks
        hooks.adopted.append(self._adopted)
        hooks.destroyed.append(self.forget)
        async with self._db.session() as session:
            rows = (await session.execute(
                select(PreviewPort, Container.owner_id).join(Container)
            )).all()  # fmt: skip
        for row, owner_id in rows:
            preview = self._preview(row.container_id, owner_id, row.port, row.external_port,
                                    row.public, row.secret)  # fmt: skip
            self._previews(row.container_id).ports[row.port] = preview
            await self._listen(preview)

    async def close(self) -> None:
        self._closed = True
        for previews in list(self._by_container.values()):
            for preview in list(previews.ports.values()):
                await self._stop_listening(preview)

    def _preview(self, container_id: str, owner_id: str, port: int, external_port: int,
                 public: bool, secret: str) -> Preview:  # fmt: skip
        """A preview with its token and cookie derived once, not on every request."""
        return Preview(
            container_id, owner_id, port, external_port, public, secret,
            token=access.token(self._key, secret), cookie=access.cookie_value(self._key, secret),
        )  # fmt: skip

    def _previews(self, container_id: str) -> ContainerPreviews:
        return self._by_container.setdefault(container_id, ContainerPreviews())

    # -- following the agents -------------------------------------------------------------

    def _adopted(self, container: Container, link: AgentClient) -> None:
        """A container's agent is connected: follow its ports from now on, and learn the
        ones already open (a gateway restart finds dev servers still running)."""
        container_id, owner_id = container.id, container.owner_id

        def on_event(name: str, data: dict[str, Any]) -> None:
            if name == "port" and link is self.containers.links.get(container_id):
                self.tasks.spawn(self._port_changed(container_id, owner_id, link, data),
                                 name="preview port")  # fmt: skip
            elif name == "link.closed":  # stopped, crashed or deleted: nothing listens now
                previews = self._by_container.get(container_id)
                for preview in list(previews.ports.values()) if previews else ():
                    self._closed_port(preview)

        link.on_event(on_event)
        self.tasks.spawn(self._sync(container_id, owner_id, link), name="preview sync")

    async def _sync(self, container_id: str, owner_id: str, link: AgentClient) -> None:
        try:
            listening = {p["port"]: p["address"] for p in await listening_ports(link, timeout=10)}
        except (AgentUnavailable, AgentOpError):
            return
        known = self._previews(container_id).ports
        for port, address in listening.items():
            if known.get(port) is None or known[port].status == "closed":
                await self._opened(container_id, owner_id, link, port, address)
        for port, preview in list(known.items()):
            if port not in listening and preview.status != "closed":
                self._closed_port(preview)

    async def _port_changed(self, container_id: str, owner_id: str, link: AgentClient,
                            data: dict[str, Any]) -> None:  # fmt: skip
        port, state = int(data["port"]), data["state"]
        if state == "open":
            await self._opened(container_id, owner_id, link, port, str(data["address"]))
        elif (preview := self._previews(container_id).ports.get(port)) is not None:
            self._closed_port(preview)

    async def _opened(self, container_id: str, owner_id: str, link: AgentClient, port: int,
                      address: str) -> None:  # fmt: skip
        preview = await self._allocate(container_id, owner_id, port)
        if preview is None:
            return
        preview.address, preview.status, preview.protocol = address, "open", None
        self._publish_port(preview, "open")
        if preview.probe is not None:
            preview.probe.cancel()
        preview.probe = asyncio.create_task(self._probe(preview, link), name="preview probe")

    def _closed_port(self, preview: Preview) -> None:
        if preview.probe is not None:
            preview.probe.cancel()
            preview.probe = None
        if preview.status != "closed":
            preview.status = "closed"
            self._publish_port(preview, "close")

    async def _probe(self, preview: Preview, link: AgentClient) -> None:
        """Announce `server-ready` once the port answers HTTP; remember what it speaks."""
        for _ in range(PROBE_ATTEMPTS):
            protocol = await probe_protocol(
                lambda factory: _open_tunnel(link, preview.port, factory, _tunnel_hosts(preview)),
                preview.port,
            )
            if protocol is not None:
                preview.protocol = protocol
                if protocol == "http" and preview.status == "open":
                    preview.status = "ready"
                    self.events.publish(preview.container_id, {
                        "type": "server-ready", "port": preview.port, "url": self.url(preview),
                        "origin": self.origin(preview),
                    })  # fmt: skip
                    for listener in self.ready_listeners:
                        listener(preview.container_id, preview.port)
                return
            await asyncio.sleep(PROBE_INTERVAL)

    def _publish_port(self, preview: Preview, state: str) -> None:
        self.events.publish(preview.container_id, {
            "type": "port", "port": preview.port, "state": state, "url": self.url(preview),
            "origin": self.origin(preview), "address": preview.address or "",
        })  # fmt: skip

    # -- allocation -----------------------------------------------------------------------

    async def reserve(self, container_id: str, owner_id: str, port: int) -> Preview | None:
        """The port's preview before anything listens on it (a service that declares its
        port gets its URL, and the others theirs, in its environment); None when the range
        is used up."""
        return await self._allocate(container_id, owner_id, port)

    async def _allocate(self, container_id: str, owner_id: str, port: int) -> Preview | None:
        """The container port's preview, allocating an external port the first time."""
        known = self._previews(container_id).ports.get(port)
        if known is not None:
            if known.listener is None and not self._closed:
                await self._listen(known)
            return known
        async with self._allocating:
            if (known := self._previews(container_id).ports.get(port)) is not None:
                return known
            if len(self._previews(container_id).ports) >= MAX_PORTS_PER_CONTAINER:
                # The ports a sandbox reports are its tenant's to make up: one container
                # must not take the range every other container's previews come from.
                log.warning("preview ports per container used up", container_id=container_id,
                            port=port, limit=MAX_PORTS_PER_CONTAINER)  # fmt: skip
                return None
            preview = self._preview(container_id, owner_id, port, 0, False, secrets.token_hex(16))
            if not await self._bind_free_port(preview):
                log.warning("no preview port left", container_id=container_id, port=port,
                            range=self.settings.preview_ports)  # fmt: skip
                return None
            async with self._db.session() as session:
                session.add(PreviewPort(
                    container_id=container_id, port=port, external_port=preview.external_port,
                    public=False, secret=preview.secret,
                ))  # fmt: skip
            self._previews(container_id).ports[port] = preview
            return preview

    async def _bind_free_port(self, preview: Preview) -> bool:
        """Bind the lowest external port that no allocation holds and no other program
        listens on (binding is the only honest test of the latter)."""
        async with self._db.session() as session:
            taken = set(await session.scalars(select(PreviewPort.external_port)))
        for candidate in self.settings.preview_port_range:
            if candidate in taken:
                continue
            preview.external_port = candidate
            try:
                await self._start_listener(preview)
            except OSError:
                continue
            return True
        return False

    async def _listen(self, preview: Preview) -> None:
        """Listen on the preview's external port, or move it to a free one (another program
        took it while this gateway was down)."""
        try:
            await self._start_listener(preview)
            return
        except OSError as exc:
            old = preview.external_port
            log.warning("preview port taken; moving it", port=old, problem=str(exc))
        async with self._allocating:
            if not await self._bind_free_port(preview):
                return
            try:
                async with self._db.session() as session:
                    await session.execute(update(PreviewPort).where(
                        PreviewPort.container_id == preview.container_id,
                        PreviewPort.port == preview.port,
                    ).values(external_port=preview.external_port))  # fmt: skip
            except IntegrityError:
                await self._stop_listening(preview)

    async def _start_listener(self, preview: Preview) -> None:
        listener = PreviewListener(
            gate=lambda request: self._admit(preview, request),
            dial=lambda factory: self._dial(preview, factory),
            upstream_port=preview.port, ssl=self._ssl,
            on_connection=lambda count: self._connections(preview, count),
        )  # fmt: skip
        await listener.start(self._bind_host, preview.external_port)
        preview.listener = listener

    async def _stop_listening(self, preview: Preview) -> None:
        if preview.probe is not None:
            preview.probe.cancel()
        self._connections(preview, 0)
        if preview.listener is not None:
            listener, preview.listener = preview.listener, None
            await listener.close()

    async def forget(self, container_id: str) -> None:
        """The container was deleted: close its listeners; its ports are free again."""
        previews = self._by_container.pop(container_id, None)
        for preview in previews.ports.values() if previews else ():
            await self._stop_listening(preview)
        async with self._db.session() as session:
            await session.execute(delete(PreviewPort).where(
                PreviewPort.container_id == container_id
            ))  # fmt: skip

    def _connections(self, preview: Preview, count: int) -> None:
        """Open preview connections keep their container from being idle-stopped."""
        if count and preview.held is None:
            preview.held = self.containers.hold(preview.container_id)
            preview.held.__enter__()
        elif not count and preview.held is not None:
            held, preview.held = preview.held, None
            held.__exit__(None, None, None)

    # -- what the API shows ---------------------------------------------------------------

    def origin(self, preview: Preview) -> str:
        return f"{self._scheme}://{self.settings.public_host}:{preview.external_port}"

    def url(self, preview: Preview) -> str:
        """The URL to open: a private port's carries its token (once opened, a cookie
        takes over and the address bar loses it)."""
        base = f"{self.origin(preview)}/"
        if preview.public:
            return base
        return f"{base}?{access.TOKEN_PARAM}={preview.token}"

    def find(self, container_id: str, port: int) -> Preview | None:
        """The container port's preview, if it has one (no ownership check: for services)."""
        previews = self._by_container.get(container_id)
        return previews.ports.get(port) if previews else None

    async def list(self, owner_id: str, container_id: str) -> list[Preview]:
        await self.containers.get(owner_id, container_id)
        ports = self._previews(container_id).ports
        return [ports[port] for port in sorted(ports)]

    async def get(self, owner_id: str, container_id: str, port: int) -> Preview:
        await self.containers.get(owner_id, container_id)
        preview = self._previews(container_id).ports.get(port)
        if preview is None:
            raise NotFound(f"Port {port} of this container has no preview.",
                           code="preview_not_found")  # fmt: skip
        return preview

    async def set_public(self, owner_id: str, container_id: str, port: int,
                         public: bool) -> Preview:  # fmt: skip
        preview = await self.get(owner_id, container_id, port)
        async with self._db.session() as session:
            await session.execute(update(PreviewPort).where(
                PreviewPort.container_id == container_id, PreviewPort.port == port,
            ).values(public=public))  # fmt: skip
        preview.public = public
        self.events.publish(container_id, {"type": "preview", **self.describe(preview)})
        return preview

    async def set_script(self, owner_id: str, container_id: str, script: str,
                         forward_errors: bool) -> None:  # fmt: skip
        """What `setPreviewScript` and `boot({forwardPreviewErrors})` ask for: injected at
        the start of every later document of every port of the container."""
        await self.containers.get(owner_id, container_id)
        previews = self._previews(container_id)
        previews.script, previews.forward_errors = script, forward_errors

    def describe(self, preview: Preview) -> dict[str, Any]:
        return {
            "port": preview.port, "url": self.url(preview), "origin": self.origin(preview),
            "external_port": preview.external_port, "status": preview.status,
            "public": preview.public, "protocol": preview.protocol,
        }  # fmt: skip

    # -- the gate and the dial ------------------------------------------------------------

    async def _admit(self, preview: Preview, request: ProxyRequest) -> Forward | Reply:
        if not self._limiter.allow(request.client_ip):
            return _reply(429, "rate_limited", "Too many requests to previews from this address.",
                          request.document, retry_after="1")  # fmt: skip
        self.containers.touch(preview.container_id)
        set_cookie: tuple[tuple[str, str], ...] = ()
        target = request.target
        if not preview.public:
            target, given = access.split_token(request.target)
            if access.same_secret(given, preview.token):
                header = access.cookie_header(preview.external_port, preview.cookie,
                                              secure=self._ssl is not None)  # fmt: skip
                set_cookie = (("set-cookie", header),)
                if request.document and request.method == "GET":
                    # The address bar, `location` and Referer never keep the token.
                    return Reply(302, (("location", target), ("cache-control", "no-store"),
                                       *set_cookie), b"")  # fmt: skip
            elif not access.same_secret(
                access.find_cookie(request.headers, access.cookie_name(preview.external_port)),
                preview.cookie,
            ):
                return _reply(
                    401,
                    "preview_private",
                    "This preview is private: open it from its "
                    "link (with its token) or make the port public.",
                    request.document,
                )
        if request.path.startswith(SERVICE_PREFIX):
            return self._service_path(preview, request, set_cookie)
        previews = self._previews(preview.container_id)
        inject = shim.snippet() if previews.script or previews.forward_errors else None
        coep = self.settings.preview_coep
        return Forward(
            target=None if target == request.target else target,
            response_headers=set_cookie, inject=inject,
            coep=None if coep == "none" else coep,
            cors_origins=frozenset(self.origin(p) for p in previews.ports.values()),
        )  # fmt: skip

    def _service_path(self, preview: Preview, request: ProxyRequest,
                      set_cookie: tuple[tuple[str, str], ...]) -> Reply:  # fmt: skip
        """What the proxy answers itself: the injected script, and the login a client page
        does with `fetch(origin + '/__cloudcontainer/auth?cc_token=…', {credentials:
        'include'})` so an iframe of the same site gets the cookie without a redirect."""
        previews = self._previews(preview.container_id)
        if request.path == shim.SCRIPT_PATH:
            body = shim.script(previews.script, previews.forward_errors, preview.port)
            return Reply(200, (("content-type", "text/javascript; charset=utf-8"),
                               ("cache-control", "no-store")), body)  # fmt: skip
        if request.path == f"{SERVICE_PREFIX}auth":
            origin = next((v for k, v in request.headers if k == "origin"), None)
            headers = [*set_cookie, ("cache-control", "no-store")]
            if origin is not None:
                headers += [
                    ("access-control-allow-origin", origin),
                    ("access-control-allow-credentials", "true"),
                    ("vary", "Origin"),
                ]
            return Reply(204, tuple(headers), b"")
        return _reply(404, "not_found", "No such path.", request.document)

    async def _dial(
        self, preview: Preview, factory: Callable[[], asyncio.Protocol]
    ) -> tuple[Any, asyncio.Protocol]:
        link = self.containers.links.get(preview.container_id)
        if link is None or link.closed.is_set():
            await self._wake(preview)
        assert link is not None
        try:
            return await _open_tunnel(link, preview.port, factory, _tunnel_hosts(preview))
        except AgentOpError as exc:
            raise UpstreamUnavailable(
                f"Nothing is listening on port {preview.port} yet."
                if exc.errno == "ECONNREFUSED"
                else f"Port {preview.port} cannot be reached: {exc.message}"
            ) from None
        except AgentUnavailable:
            raise UpstreamUnavailable("The container's agent is not connected.") from None

    async def _wake(self, preview: Preview) -> None:
        """No agent: start a stopped container (a preview visit counts as use) and say so
        on the starting page, which retries by itself."""
        try:
            container = await self.containers.get(None, preview.container_id)
        except NotFound:
            raise UpstreamUnavailable("This container no longer exists.") from None
        if container.status in (Status.STOPPED, Status.STOPPING):
            await self.containers.start(preview.owner_id, preview.container_id)
            raise UpstreamUnavailable("The container is starting.")
        if container.status == Status.FAILED:
            raise UpstreamUnavailable(f"The container failed: {container.status_reason}")
        raise UpstreamUnavailable(f"The container is {container.status}.")


def _tunnel_hosts(preview: Preview) -> tuple[str | None, ...]:
    """Where the agent dials, in order: the server's own loopback address when it is bound to
    one (::1 alone is common: Node resolves `localhost` to it), else 127.0.0.1 (None).

    A server on `::` (Node's `listen(port)`, so every Express app) gets ::1 and then
    127.0.0.1: the socket is dual-stack (Linux's and Node's default), and a sandbox without
    IPv6 (Docker's default, `disable_ipv6=1`) has no ::1 to dial (EADDRNOTAVAIL). An unknown
    address gets 127.0.0.1 and then ::1."""
    address = preview.address or ""
    if address == "::1" or address.startswith("127."):
        return (address,)
    if address == "::":
        return ("::1", None)
    return (None, "::1")


async def _open_tunnel(
    link: AgentClient, port: int, factory: Callable[[], asyncio.Protocol],
    hosts: tuple[str | None, ...],
) -> tuple[Any, asyncio.Protocol]:  # fmt: skip
    """`open_tunnel` to the first of `hosts` that answers. When none does, the error says
    ECONNREFUSED if any did (nothing listens yet), else the first host's."""
    errors: list[AgentOpError] = []
    for host in hosts:
        try:
            return await open_tunnel(link, port, factory, host=host)
        except AgentOpError as exc:
            errors.append(exc)
    refused = [exc for exc in errors if exc.errno == "ECONNREFUSED"]
    raise (refused or errors)[0]


def _reply(status: int, code: str, message: str, document: bool,
           retry_after: str | None = None) -> Reply:  # fmt: skip
    """A refusal the gate answers itself: a small page for a document, else the API's JSON
    error (the proxy's own `pages`)."""
    if document:
        headers = [("content-type", "text/html; charset=utf-8"), ("cache-control", "no-store")]
        body = pages.message_page(status, message)
    else:
        _, headers, body = pages.json_error(status, code, message)
    if retry_after is not None:
        headers.append(("retry-after", retry_after))
    return Reply(status, tuple(headers), body)


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    """TLS on the preview listeners with the operator's certificate: the only way a private
    preview's cookie works when the page embedding it is another site (docs/previews.md)."""
    if settings.preview_tls_cert is None or settings.preview_tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.preview_tls_cert, settings.preview_tls_key)
    return context

"""One browser connection: its requests parsed and served in order, its responses relayed.

Requests are served by one task (`Connection._serve`), as the gate and the dialer are
coroutines; response bytes go from the upstream protocol's callbacks straight to the client
transport, never through the task.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal, cast

import httptools

from cloudcontainer.preview import headers as h
from cloudcontainer.preview.pages import json_error, render, starting_page
from cloudcontainer.preview.response import ResponseRelay, UpstreamMalformed
from cloudcontainer.preview.streams import (
    IncomingRequest,
    Refusal,
    UpstreamProtocol,
    is_document,
)
from cloudcontainer.preview.types import Forward, ProxyRequest, Reply, UpstreamUnavailable

if TYPE_CHECKING:
    from cloudcontainer.preview.proxy import PreviewListener

log = logging.getLogger(__name__)

# A request body held while the upstream is dialled; more pauses the client's reads.
_BODY_BUFFER = 256 * 1024
# A closing client gets this long to take what is still buffered for it.
_LINGER = 10.0

Outcome = Literal["keep", "upgraded", "failed", "retry"]


class _DialFailed(Exception):
    pass


class Connection(asyncio.Protocol):
    """One browser connection: parses requests, serves them in order, relays responses."""

    def __init__(self, listener: PreviewListener) -> None:
        self.listener = listener
        self.limits = listener.limits
        self.transport: asyncio.Transport | None = None
        self.client_ip = ""
        self._parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self._parsing: IncomingRequest | None = None
        self._queue: deque[IncomingRequest | Refusal] = deque()
        self._wakeup = asyncio.Event()
        self._upstream: UpstreamProtocol | None = None
        self._relay: ResponseRelay | None = None
        self._turn_done: asyncio.Future[Outcome] | None = None
        self._pauses: set[str] = set()
        self._reading_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._spliced = False
        self._head_error = 0
        self._gone = False
        self._client_eof = False
        self._client_full = False
        self._busy = False  # a request is being served
        self._retryable = False  # the request in flight may be sent again on a fresh connection

    # -- asyncio.Protocol (client side) ----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.client_ip = str(peer[0]) if isinstance(peer, tuple) else ""
        self.listener.opened(self)
        self._task = asyncio.get_running_loop().create_task(self._serve())

    def data_received(self, data: bytes) -> None:
        if self._spliced:
            if self._upstream is not None:
                self._upstream.write(data)
            return
        if self._parser is None:
            if self._parsing is not None:
                self._parsing.early += data
            return
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            self._upgrade_parsed(data[int(upgrade.args[0]) :])
            return
        except httptools.HttpParserError as exc:
            self._refused(exc)
            return
        req = self._parsing
        if req is not None and not req.head_done:
            # httptools holds a header until it is whole: bound what it may hold.
            req.partial += len(data)
            if req.partial > self.limits.max_head_bytes:
                self._head_error = 431
                self._refused(ValueError("request head too large"))

    def eof_received(self) -> bool:
        if self._spliced:
            return False
        req = self._parsing
        if req is not None and not req.complete:
            self._abort()  # a request cut short: nothing to answer
            return False
        # A client that half-closes after its request still gets its answers.
        self._client_eof = True
        self._wakeup.set()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone = True
        self._cancel_timers()
        if self._upstream is not None:
            self._upstream.close(abort=not self._spliced)
        if self._task is not None and not self._task.done():
            self._task.cancel()
        self._wakeup.set()
        self.listener.closed(self)

    def pause_writing(self) -> None:
        self._client_full = True
        if self._upstream is not None:
            self._upstream.pause_reading()

    def resume_writing(self) -> None:
        self._client_full = False
        if self._upstream is not None:
            self._upstream.resume_reading()

    # -- httptools request callbacks --------------------------------------------------------

    def on_message_begin(self) -> None:
        self._parsing = IncomingRequest()
        self._cancel_timer()
        self._head_timer = self._later(self.limits.head_timeout, self._head_timed_out)

    def on_url(self, url: bytes) -> None:
        assert self._parsing is not None
        self._parsing.url += url
        self._count_head(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        req = self._parsing
        assert req is not None
        req.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))
        self._count_head(len(name) + len(value) + 4)
        if len(req.headers) > self.limits.max_headers:
            self._head_error = 431
            raise ValueError("too many headers")

    def on_headers_complete(self) -> None:
        req, parser = self._parsing, self._parser
        assert req is not None
        assert parser is not None
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        req.head_done = True
        req.method = parser.get_method().decode("latin-1")
        req.http10 = parser.get_http_version() == "1.0"
        req.keep_alive = parser.should_keep_alive()
        req.upgrade = parser.should_upgrade()
        req.chunked = "chunked" in (h.get(req.headers, "transfer-encoding") or "").lower()
        self._timer = self._later(self.limits.body_idle_timeout, self._body_timed_out)
        self._queue.append(req)
        self._wakeup.set()

    def on_body(self, body: bytes) -> None:
        req = self._parsing
        assert req is not None
        self._cancel_timer()
        self._timer = self._later(self.limits.body_idle_timeout, self._body_timed_out)
        req.body(body)
        if req.held_bytes > _BODY_BUFFER:
            self.pause_reading("body-held")

    def on_message_complete(self) -> None:
        req = self._parsing
        assert req is not None
        self._cancel_timer()
        req.end()
        if not req.upgrade:
            self._parsing = None
        if self._busy or self._queue:
            # Pipelined requests wait in the socket while one is answered. (A body that ends
            # after its answer, one the gate refused, must not pause: no turn would resume.)
            self.pause_reading("turn")

    def _count_head(self, n: int) -> None:
        req = self._parsing
        assert req is not None
        req.head_bytes += n
        if req.head_bytes > self.limits.max_head_bytes:
            self._head_error = 431
            raise ValueError("request head too large")

    # -- parse outcomes ----------------------------------------------------------------------

    def _upgrade_parsed(self, early: bytes) -> None:
        """An Upgrade request's head is in: the parser is done with this connection."""
        self._parser = None
        if self._parsing is not None:
            self._parsing.early = early
        self.pause_reading("upgrade")

    def _refused(self, exc: Exception) -> None:
        status = self._head_error or 400
        message = "request head too large" if status == 431 else f"malformed request: {exc}"
        self._parser = None
        self._cancel_timers()
        self.pause_reading("refused")
        if self._parsing is not None and self._parsing.head_done:
            # The head was taken already: the body broke. Nothing sensible can follow.
            self._abort()
            return
        self._queue.append(Refusal(status, message))
        self._wakeup.set()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._busy:
            # A pipelined head waits behind a request in flight; not the client's fault.
            self._head_timer = self._later(self.limits.head_timeout, self._head_timed_out)
            return
        self._parser = None
        self.pause_reading("refused")
        self._queue.append(Refusal(408, "request head not received in time"))
        self._wakeup.set()

    def _body_timed_out(self) -> None:
        self._timer = None
        if self._reading_paused:
            # The proxy stopped reading (upstream is slow, or not dialled yet): not a stall.
            self._timer = self._later(self.limits.body_idle_timeout, self._body_timed_out)
            return
        log.info("preview request body stalled; closing")
        self._abort()

    def _idle_timed_out(self) -> None:
        self._timer = None
        self._close()

    # -- the task: one request after the other ----------------------------------------------

    async def _serve(self) -> None:
        try:
            while True:
                item = await self._next()
                if item is None:
                    self._close()
                    return
                if isinstance(item, Refusal):
                    code = _FAILURE_CODES.get(item.status, "bad_request")
                    status, headers, body = json_error(item.status, code, item.message)
                    self._reply(status, headers, body, close=True)
                    self._close()
                    return
                self._busy = True
                keep = await self._turn(item)
                self._busy = False
                if not keep:
                    self._close()
                    return
                self.resume_reading("turn")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("preview connection failed")
            self._abort()

    async def _next(self) -> IncomingRequest | Refusal | None:
        while not self._queue:
            if self._gone or self._client_eof:
                return None
            self._wakeup.clear()
            if self._parsing is None and self._timer is None:
                self._timer = self._later(self.limits.idle_timeout, self._idle_timed_out)
            self.resume_reading("turn")
            await self._wakeup.wait()
        return self._queue.popleft()

    async def _turn(self, req: IncomingRequest) -> bool:
        """Serve one request; whether the connection can take another."""
        request = self._proxy_request(req)
        keep = req.keep_alive and not req.http10 and not req.upgrade
        try:
            decision = await self.listener.gate(request)
        except Exception:
            log.exception("preview gate failed for %s %s", request.method, request.path)
            self._discard(req)
            status, headers, body = json_error(500, "internal", "the preview gate failed")
            self._reply(status, headers, body, close=not keep, method=req.method)
            return keep
        if isinstance(decision, Reply):
            self._discard(req)
            self._reply(
                decision.status,
                list(decision.headers),
                decision.body,
                close=not keep,
                method=req.method,
            )
            return keep
        origin = request.header("origin")
        if self._preflight(request, origin, decision):
            self._discard(req)
            self._preflight_reply(request, origin or "", close=not keep)
            return keep
        return await self._forward(req, request, decision, keep)

    def _discard(self, req: IncomingRequest) -> None:
        """The request is answered here: its body goes nowhere."""
        req.drop_body()
        self.resume_reading("body-held")

    async def _forward(
        self, req: IncomingRequest, request: ProxyRequest, forward: Forward, keep: bool
    ) -> bool:
        for _ in range(2):
            try:
                upstream = await self._ensure_upstream()
            except _DialFailed as exc:
                self._discard(req)
                self._unavailable(request, str(exc), close=not keep or request.websocket)
                return keep and not request.websocket
            outcome = await self._exchange(upstream, req, request, forward, keep)
            if outcome != "retry":
                break
        relay, self._relay = self._relay, None
        if outcome == "upgraded":
            return await self._splice(req)
        if outcome in ("failed", "retry") or relay is None:
            return False
        if not relay.reusable or not req.complete:
            self._drop_upstream()
        return keep and relay.client_keep and req.complete

    async def _exchange(
        self,
        upstream: UpstreamProtocol,
        req: IncomingRequest,
        request: ProxyRequest,
        forward: Forward,
        keep: bool,
    ) -> Outcome:
        """Send the request on `upstream`; how its response ended."""
        # Sent again on a fresh connection if a reused one turns out closed before any answer
        # (the dev server's keep-alive timeout, e.g. Node's 5 s, racing this request).
        self._retryable = upstream.requests > 0 and req.replayable()
        upstream.requests += 1
        self._relay = ResponseRelay(
            method=req.method,
            http10=req.http10,
            close=not keep,
            forward=forward,
            origin=request.header("origin"),
            document=request.document,
            write=self._write,
        )
        done: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._turn_done = done
        upstream.write(self._upstream_head(req, request, forward))
        req.attach(upstream.write)
        self.resume_reading("body-held")
        head_timer = self._later(self.limits.upstream_head_timeout, self._upstream_slow)
        try:
            return await done
        finally:
            head_timer.cancel()
            self._turn_done = None

    async def _ensure_upstream(self) -> UpstreamProtocol:
        if self._upstream is not None and self._upstream.usable():
            return self._upstream
        self._drop_upstream()
        try:
            _, protocol = await self.listener.dial(lambda: UpstreamProtocol(self))
        except (UpstreamUnavailable, OSError) as exc:
            raise _DialFailed(_reason(exc)) from exc
        assert isinstance(protocol, UpstreamProtocol)
        if self._gone:
            protocol.close(abort=True)
            raise asyncio.CancelledError
        self._upstream = protocol
        if self._client_full:
            protocol.pause_reading()
        return protocol

    def _upstream_head(
        self, req: IncomingRequest, request: ProxyRequest, forward: Forward
    ) -> bytes:
        target = forward.target if forward.target is not None else request.target
        identity = request.document and req.method == "GET" and forward.inject is not None
        out = h.upstream_request_headers(
            request.headers,
            path=request.path,
            client_ip=request.client_ip,
            scheme=self.listener.scheme,
            upstream_port=self.listener.upstream_port,
            identity=identity,
            websocket=request.websocket,
        )
        if req.chunked:
            out.append(("transfer-encoding", "chunked"))
        return h.encode_head(f"{req.method} {target} HTTP/1.1", out)

    async def _splice(self, req: IncomingRequest) -> bool:
        """Raw bytes both ways until either side closes; no timeout (Vite pings every 30 s)."""
        self._spliced = True
        self._cancel_timers()
        if self._upstream is None:
            return False  # upstream hung up right after its 101
        if req.early:
            self._upstream.write(req.early)
        self._pauses.difference_update({"turn", "upgrade", "body-held"})
        self._apply_pauses()
        await asyncio.get_running_loop().create_future()  # cancelled when the client goes
        return False

    # -- upstream callbacks ------------------------------------------------------------------

    def upstream_data(self, upstream: UpstreamProtocol, data: bytes) -> None:
        relay = self._relay
        if upstream is not self._upstream:
            return
        if self._spliced:
            self._write(data)
            return
        if relay is None:
            self._drop_upstream()  # nobody asked: it cannot be trusted with the next request
            return
        try:
            relay.feed(data)
        except (UpstreamMalformed, ValueError, zlib.error) as exc:
            log.info("preview upstream sent a malformed response: %s", exc)
            self._upstream_broke(relay, "the dev server sent a malformed response")
            return
        self._settle(relay)

    def upstream_lost(self, upstream: UpstreamProtocol) -> None:
        if upstream is not self._upstream:
            return
        self._upstream = None
        if self._spliced:
            self._close()
            return
        relay = self._relay
        if relay is None:
            return
        if relay.feed_eof():
            if not relay.upgraded:
                relay.reusable = False
                self._settle(relay)
            return
        if self._retryable and relay.untouched():
            self._finish_turn("retry")
            return
        self._upstream_broke(relay, "the dev server closed the connection mid-response")

    def _settle(self, relay: ResponseRelay) -> None:
        done = self._turn_done
        if done is None or done.done():
            return
        if relay.upgraded:
            done.set_result("upgraded")
        elif relay.done:
            done.set_result("keep")

    def _upstream_broke(self, relay: ResponseRelay, message: str) -> None:
        self._drop_upstream()
        if relay.head_sent:
            # Never let a truncated body look complete.
            self._abort()
        else:
            status, headers, body = json_error(502, "upstream_unavailable", message)
            self._reply(status, headers, body, close=True)
        self._finish_turn("failed")

    def _upstream_slow(self) -> None:
        relay = self._relay
        if relay is None or relay.head_sent:
            return
        self._drop_upstream()
        status, headers, body = json_error(
            504, "upstream_timeout", "the dev server did not answer in time"
        )
        self._reply(status, headers, body, close=True)
        self._finish_turn("failed")

    def _finish_turn(self, outcome: Outcome) -> None:
        if self._turn_done is not None and not self._turn_done.done():
            self._turn_done.set_result(outcome)

    def _drop_upstream(self) -> None:
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            upstream.close(abort=True)
        self.resume_reading("upstream-full")

    # -- answers the proxy writes itself ------------------------------------------------------

    def _preflight(self, request: ProxyRequest, origin: str | None, forward: Forward) -> bool:
        return (
            request.method == "OPTIONS"
            and origin is not None
            and origin in forward.cors_origins
            and request.header("access-control-request-method") is not None
        )

    def _preflight_reply(self, request: ProxyRequest, origin: str, *, close: bool) -> None:
        headers = h.cors_headers(origin)
        headers.append(
            ("access-control-allow-methods", request.header("access-control-request-method") or "")
        )
        asked = request.header("access-control-request-headers")
        if asked:
            headers.append(("access-control-allow-headers", asked))
        headers.append(("access-control-max-age", "600"))
        self._reply(204, headers, b"", close=close)

    def _unavailable(self, request: ProxyRequest, reason: str, *, close: bool) -> None:
        if request.document and not request.websocket:
            status, headers, body = starting_page(self.listener.upstream_port, reason)
        else:
            message = f"nothing answers on port {self.listener.upstream_port}: {reason}"
            status, headers, body = json_error(502, "upstream_unavailable", message)
        self._reply(status, headers, body, close=close, method=request.method)

    def _reply(
        self,
        status: int,
        headers: h.Headers,
        body: bytes,
        *,
        close: bool,
        method: str = "GET",
    ) -> None:
        self._write(render(status, headers, body, close=close, head_only=method == "HEAD"))

    # -- plumbing ------------------------------------------------------------------------------

    def _proxy_request(self, req: IncomingRequest) -> ProxyRequest:
        target = req.url.decode("latin-1")
        path, _, query = target.partition("?")
        upgrade = (h.get(req.headers, "upgrade") or "").lower()
        return ProxyRequest(
            method=req.method,
            target=target,
            path=path,
            query=query,
            headers=tuple(req.headers),
            client_ip=self.client_ip,
            websocket=req.upgrade and "websocket" in upgrade,
            document=is_document(req),
        )

    def _write(self, data: bytes) -> None:
        if self.transport is not None and not self._gone and data:
            self.transport.write(data)

    def pause_reading(self, reason: str) -> None:
        self._pauses.add(reason)
        self._apply_pauses()

    def resume_reading(self, reason: str) -> None:
        self._pauses.discard(reason)
        self._apply_pauses()

    def _apply_pauses(self) -> None:
        transport = self.transport
        if transport is None or self._gone or transport.is_closing():
            return
        want = bool(self._pauses)
        if want != self._reading_paused:
            self._reading_paused = want
            if want:
                transport.pause_reading()
            else:
                transport.resume_reading()

    def buffered_bytes(self) -> int:
        total = self.transport.get_write_buffer_size() if self.transport is not None else 0
        upstream = self._upstream
        if upstream is not None and upstream.transport is not None:
            total += upstream.transport.get_write_buffer_size()
        if self._parsing is not None:
            total += self._parsing.held_bytes
        return total

    def _later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(delay, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _cancel_timers(self) -> None:
        self._cancel_timer()
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _close(self) -> None:
        """Close after what is buffered is sent; a client that never takes it is aborted."""
        self._cancel_timers()
        self._drop_upstream()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.close()
            if not self._gone:
                self._timer = self._later(_LINGER, self._abort)

    def _abort(self) -> None:
        self._drop_upstream()
        if self.transport is not None:
            self.transport.abort()

    def abort(self) -> asyncio.Task[None] | None:
        """End at once (the listener is closing); the serve task, to wait for."""
        self._abort()
        self._cancel_timers()
        if self._task is not None and not self._task.done():
            self._task.cancel()
        return self._task


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    return str(exc) or type(exc).__name__


_FAILURE_CODES = {400: "bad_request", 408: "request_timeout", 431: "request_head_too_large"}

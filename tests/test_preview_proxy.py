"""The preview engine on real sockets: upstreams, listener and clients all on loopback."""

from __future__ import annotations

import asyncio
import gzip
import inspect
import socket
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
import uvloop
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from cloudcontainer.preview import (
    Forward,
    PreviewListener,
    ProxyLimits,
    ProxyRequest,
    Reply,
    UpstreamUnavailable,
)
from tests.support.upstream import (
    Scope,
    asgi_server,
    dialer,
    echo_app,
    raw_server,
    read_body,
    read_head,
    ws_server,
)

DOC = {"sec-fetch-dest": "document", "accept": "text/html"}

GateFn = Callable[[ProxyRequest], Awaitable[Forward | Reply]]


def forward_all(forward: Forward | None = None) -> GateFn:
    async def gate(request: ProxyRequest) -> Forward | Reply:
        return forward or Forward()

    return gate


@asynccontextmanager
async def proxy(
    port: int,
    gate: GateFn | None = None,
    *,
    limits: ProxyLimits | None = None,
    dial: Any = None,
    counts: list[int] | None = None,
) -> AsyncIterator[PreviewListener]:
    listener = PreviewListener(
        gate=gate or forward_all(),
        dial=dial or dialer(port),
        upstream_port=port,
        limits=limits or ProxyLimits(),
        on_connection=counts.append if counts is not None else None,
    )
    await listener.start("127.0.0.1", 0)
    try:
        yield listener
    finally:
        await listener.close()


def client(listener: PreviewListener) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{listener.port}", timeout=10)


async def raw_exchange(port: int, data: bytes) -> bytes:
    """Send `data` on a fresh connection; everything received until the proxy closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(-1), 10)
    finally:
        writer.close()


def header(record: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in record["headers"] if k == name]


# -- 1. connections, keep-alive, bodies, pipelining ---------------------------------------


async def test_keep_alive_reuses_one_upstream_connection_and_strips_cookies_every_turn() -> None:
    seen: list[dict[str, Any]] = []
    async with (
        asgi_server(echo_app(seen)) as up,
        proxy(up.port) as listener,
        client(listener) as http,
    ):
        for i in range(5):
            cookie = f"a=1; cc_pt_{up.port}=secret; b={i}"
            r = await http.get(f"/n/{i}?x={i}", headers={"cookie": cookie})
            assert r.status_code == 200
            assert r.json()["query"] == f"x={i}"
    assert len({record["client_port"] for record in seen}) == 1
    assert [header(record, "cookie") for record in seen] == [[f"a=1; b={i}"] for i in range(5)]


async def test_cookie_header_with_only_cc_cookies_is_dropped() -> None:
    seen: list[dict[str, Any]] = []
    async with (
        asgi_server(echo_app(seen)) as up,
        proxy(up.port) as listener,
        client(listener) as http,
    ):
        await http.get("/", headers={"cookie": "cc_pt_1=x; cc_other=y"})
    assert header(seen[0], "cookie") == []


async def test_upstream_closing_between_requests_is_dialled_again() -> None:
    async def one_shot(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()

    async with (
        raw_server(one_shot) as up,
        proxy(up.port) as listener,
        client(listener) as http,
    ):
        for _ in range(3):
            r = await http.get("/")
            assert r.text == "ok"
            await asyncio.sleep(0.05)
    assert up.connections == 3


async def test_request_bodies_stream_upstream_with_length_and_chunked() -> None:
    seen: list[dict[str, Any]] = []

    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"one,", b"two,", b"three"):
            yield part

    async with (
        asgi_server(echo_app(seen)) as up,
        proxy(up.port) as listener,
        client(listener) as http,
    ):
        r1 = await http.post("/a", content=b"x" * 100_000)
        r2 = await http.post("/b", content=chunks())
    assert r1.json()["body"] == "x" * 100_000
    assert r2.json()["body"] == "one,two,three"
    assert header(seen[1], "transfer-encoding") == ["chunked"]


async def test_pipelined_requests_are_answered_in_order() -> None:
    seen: list[dict[str, Any]] = []
    async with asgi_server(echo_app(seen)) as up, proxy(up.port) as listener:
        data = (
            b"GET /first HTTP/1.1\r\nHost: h\r\n\r\n"
            b"POST /second HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
            b"GET /third HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        )
        out = await raw_exchange(listener.port, data)
    assert out.count(b"HTTP/1.1 200") == 3
    assert out.index(b"/first") < out.index(b"/second") < out.index(b"/third")
    assert [record["path"] for record in seen] == ["/first", "/second", "/third"]
    assert seen[1]["body"] == "abc"


# -- 2. response framing ----------------------------------------------------------------------


async def bodiless_app(scope: Scope, receive: Any, send: Any) -> None:
    await read_body(receive)
    status = {"/204": 204, "/304": 304}.get(scope["path"], 200)
    headers = [(b"content-type", b"text/plain")]
    if status == 200:
        headers.append((b"content-length", b"5"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": b"hello" if status == 200 else b""})


async def test_head_204_and_304_on_keep_alive_do_not_hang() -> None:
    async with (
        asgi_server(bodiless_app) as up,
        proxy(up.port) as listener,
        client(listener) as http,
    ):
        head = await http.head("/")
        assert head.headers["content-length"] == "5"
        assert (await http.get("/204")).status_code == 204
        assert (await http.get("/304")).status_code == 304
        assert (await http.head("/x")).status_code == 200
        assert (await http.get("/")).text == "hello"


async def test_head_on_raw_keep_alive_then_get() -> None:
    async with asgi_server(bodiless_app) as up, proxy(up.port) as listener:
        data = (
            b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\n"
            b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        )
        out = await raw_exchange(listener.port, data)
    assert out.count(b"HTTP/1.1 200") == 2
    assert out.endswith(b"\r\n\r\nhello")


async def test_response_ending_at_upstream_eof_ends_the_client_connection() -> None:
    async def eof_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\npart one, ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"part two")
        await writer.drain()

    async with raw_server(eof_body) as up, proxy(up.port) as listener:
        out = await raw_exchange(listener.port, b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
    head, _, body = out.partition(b"\r\n\r\n")
    assert body == b"part one, part two"
    assert b"connection: close" in head.lower()


async def test_client_connection_close_is_honoured() -> None:
    seen: list[dict[str, Any]] = []
    async with asgi_server(echo_app(seen)) as up, proxy(up.port) as listener:
        out = await raw_exchange(
            listener.port, b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        )
    assert b"connection: close" in out.lower()
    assert b'"/x"' in out


async def test_sse_events_arrive_one_by_one_before_the_response_ends() -> None:
    gates = [asyncio.Event() for _ in range(3)]

    async def sse(scope: Scope, receive: Any, send: Any) -> None:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for i, gate in enumerate(gates):
            await send(
                {"type": "http.response.body", "body": f"data: {i}\n\n".encode(), "more_body": True}
            )
            await gate.wait()
        await send({"type": "http.response.body", "body": b""})

    async with (
        asgi_server(sse) as up,
        proxy(up.port) as listener,
        client(listener) as http,
        http.stream("GET", "/events") as r,
    ):
        lines = r.aiter_lines()
        for i, gate in enumerate(gates):
            line = await anext(lines)
            while not line:
                line = await anext(lines)
            assert line == f"data: {i}"
            gate.set()


# -- 3. request header rules --------------------------------------------------------------


async def test_host_and_forwarded_headers() -> None:
    seen: list[dict[str, Any]] = []
    async with (
        asgi_server(echo_app(seen)) as up,
        proxy(up.port) as listener,
        client(listener) as http,
    ):
        await http.get("/", headers={"x-forwarded-for": "10.0.0.9"})
    host = f"127.0.0.1:{listener.port}"
    assert header(seen[0], "host") == [host]
    assert header(seen[0], "x-forwarded-for") == ["10.0.0.9, 127.0.0.1"]
    assert header(seen[0], "x-forwarded-proto") == ["http"]
    assert header(seen[0], "x-forwarded-host") == [host]


async def test_document_get_asks_identity_encoding_when_injecting() -> None:
    seen: list[dict[str, Any]] = []
    gate = forward_all(Forward(inject=b"<script></script>"))
    async with (
        asgi_server(echo_app(seen)) as up,
        proxy(up.port, gate) as listener,
        client(listener) as http,
    ):
        await http.get("/", headers={**DOC, "accept-encoding": "gzip, br"})
        await http.get("/api", headers={"accept-encoding": "gzip, br"})
    assert header(seen[0], "accept-encoding") == ["identity"]
    assert header(seen[1], "accept-encoding") == ["gzip, br"]


@pytest.mark.parametrize(
    ("path", "own_origin", "rewritten"),
    [
        ("/_next/webpack-hmr", True, True),
        ("/app/__nextjs_original-stack-frame", True, True),
        ("/_next/static/chunks/a.js", True, True),
        ("/_next/image?url=x", True, False),
        ("/_next/static/media/font.woff2", True, False),
        ("/api/action", True, False),
        ("/_next/webpack-hmr", False, False),
    ],
)
async def test_next_dev_origin_is_rewritten_only_on_its_paths(
    path: str, own_origin: bool, rewritten: bool
) -> None:
    seen: list[dict[str, Any]] = []
    async with asgi_server(echo_app(seen)) as up, proxy(up.port) as listener:
        origin = f"http://127.0.0.1:{listener.port}" if own_origin else "http://evil.example"
        async with client(listener) as http:
            await http.get(path, headers={"origin": origin})
    expected = f"http://localhost:{up.port}" if rewritten else origin
    assert header(seen[0], "origin") == [expected]


# -- 4. response header rules and CORS ----------------------------------------------------


def fixed_response(head: bytes, body: bytes = b"") -> Callable[..., Awaitable[None]]:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_head(reader)
            writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
            await writer.drain()

    return handler


async def test_framing_and_isolation_headers_are_fixed() -> None:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
        b"X-Frame-Options: DENY\r\nCross-Origin-Resource-Policy: same-origin\r\n"
        b"Content-Security-Policy: default-src 'self'; frame-ancestors 'none'\r\n"
        b"Content-Security-Policy: frame-ancestors 'self'\r\n"
    )
    gate = forward_all(Forward(response_headers=(("set-cookie", "cc_pt=1; HttpOnly"),)))
    async with (
        raw_server(fixed_response(head, b"<p>")) as up,
        proxy(up.port, gate) as listener,
        client(listener) as http,
    ):
        r = await http.get("/")
    assert r.headers["cross-origin-resource-policy"] == "cross-origin"
    assert r.headers["cross-origin-embedder-policy"] == "credentialless"
    assert "x-frame-options" not in r.headers
    assert r.headers.get_list("content-security-policy") == ["default-src 'self'"]
    assert r.headers["set-cookie"] == "cc_pt=1; HttpOnly"


async def test_coep_only_on_html_and_none_leaves_it() -> None:
    json_head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
    async with (
        raw_server(fixed_response(json_head, b"{}")) as up,
        proxy(up.port) as listener,
        client(listener) as http,
    ):
        r = await http.get("/")
    assert "cross-origin-embedder-policy" not in r.headers
    assert r.headers["cross-origin-resource-policy"] == "cross-origin"
    html_head = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nCross-Origin-Embedder-Policy: x\r\n"
    gate = forward_all(Forward(coep=None))
    async with (
        raw_server(fixed_response(html_head)) as up,
        proxy(up.port, gate) as listener,
        client(listener) as http,
    ):
        r = await http.get("/")
    assert r.headers["cross-origin-embedder-policy"] == "x"


async def test_cors_between_own_ports() -> None:
    seen: list[dict[str, Any]] = []
    other = "http://127.0.0.1:40001"
    gate = forward_all(Forward(cors_origins=frozenset({other})))
    async with (
        asgi_server(echo_app(seen)) as up,
        proxy(up.port, gate) as listener,
        client(listener) as http,
    ):
        r = await http.get("/", headers={"origin": other})
        assert r.headers["access-control-allow-origin"] == other
        assert r.headers["access-control-allow-credentials"] == "true"
        assert r.headers["vary"] == "Origin"
        stranger = await http.get("/", headers={"origin": "http://evil.example"})
        assert "access-control-allow-origin" not in stranger.headers
        pre = await http.options(
            "/api",
            headers={
                "origin": other,
                "access-control-request-method": "PUT",
                "access-control-request-headers": "content-type, x-a",
            },
        )
    assert pre.status_code == 204
    assert pre.headers["access-control-allow-methods"] == "PUT"
    assert pre.headers["access-control-allow-headers"] == "content-type, x-a"
    assert pre.headers["access-control-max-age"] == "600"
    assert pre.headers["access-control-allow-origin"] == other
    assert [record["method"] for record in seen] == ["GET", "GET"]


async def test_upstream_cors_answer_is_left_alone() -> None:
    other = "http://127.0.0.1:40001"
    head = b"HTTP/1.1 200 OK\r\nAccess-Control-Allow-Origin: *\r\n"
    gate = forward_all(Forward(cors_origins=frozenset({other})))
    async with (
        raw_server(fixed_response(head)) as up,
        proxy(up.port, gate) as listener,
        client(listener) as http,
    ):
        r = await http.get("/", headers={"origin": other})
    assert r.headers.get_list("access-control-allow-origin") == ["*"]
    assert "access-control-allow-credentials" not in r.headers


# -- 5. WebSocket ---------------------------------------------------------------------------


async def test_websocket_query_and_subprotocol_reach_upstream_and_bytes_splice() -> None:
    async with ws_server() as up, proxy(up.port) as listener:
        url = f"ws://127.0.0.1:{listener.port}/hmr?token=abc123"
        async with ws_connect(url, subprotocols=["vite-hmr"]) as ws:  # type: ignore[list-item]
            assert ws.subprotocol == "vite-hmr"
            payload = bytes(range(256)) * 300
            await ws.send(payload)
            assert await ws.recv() == payload
            await ws.send("hello")
            assert await ws.recv() == "hello"
    assert up.requests[0]["path"] == "/hmr?token=abc123"
    assert up.requests[0]["subprotocol"] == "vite-hmr"


async def test_websocket_refused_by_upstream_is_relayed() -> None:
    head = b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\n"
    async with raw_server(fixed_response(head, b"no")) as up, proxy(up.port) as listener:
        with pytest.raises(InvalidStatus) as caught:
            async with ws_connect(f"ws://127.0.0.1:{listener.port}/hmr"):
                pass
    assert caught.value.response.status_code == 403
    assert caught.value.response.body == b"no"


async def test_websocket_with_no_server_is_502() -> None:
    port = _unused_port()
    async with proxy(port) as listener:
        with pytest.raises(InvalidStatus) as caught:
            async with ws_connect(f"ws://127.0.0.1:{listener.port}/hmr"):
                pass
    assert caught.value.response.status_code == 502


# -- 6. HTML injection ----------------------------------------------------------------------

SNIPPET = b'<script src="/__cc/inspector.js"></script>'


def chunked_html(parts: list[bytes], encoding: bytes = b"") -> Callable[..., Awaitable[None]]:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        extra = b"Content-Encoding: " + encoding + b"\r\n" if encoding else b""
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nTransfer-Encoding: chunked\r\n"
            + extra
            + b"\r\n"
        )
        for part in parts:
            writer.write(b"%x\r\n%b\r\n" % (len(part), part))
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        await reader.read()

    return handler


async def fetch_injected(parts: list[bytes], encoding: bytes = b"") -> httpx.Response:
    gate = forward_all(Forward(inject=SNIPPET))
    async with (
        raw_server(chunked_html(parts, encoding)) as up,
        proxy(up.port, gate) as listener,
        client(listener) as http,
    ):
        return await http.get("/", headers={**DOC, "accept-encoding": "identity"})


async def test_injection_after_head_split_across_chunks() -> None:
    r = await fetch_injected([b"<!doctype html><html><HE", b'ad lang="x"', b"><title>t</title>"])
    assert r.content == b'<!doctype html><html><HEad lang="x">' + SNIPPET + b"<title>t</title>"
    assert r.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in r.headers


async def test_injection_without_head_goes_after_doctype() -> None:
    r = await fetch_injected([b"<!DOCTYPE html>\n", b"<header>x</header><p>y"])
    assert r.content == b"<!DOCTYPE html>\n" + SNIPPET + b"<header>x</header><p>y"


async def test_injection_gives_up_looking_for_head_after_64_kib() -> None:
    filler = b"<p>" + b"a" * 70_000
    late = b"<head></head>"
    r = await fetch_injected([b"<!doctype html>", filler[:30_000], filler[30_000:], late])
    assert r.content == b"<!doctype html>" + SNIPPET + filler + late


async def test_injection_into_deflate_response() -> None:
    body = zlib.compress(b"<html><head></head>deflated")
    r = await fetch_injected([body], b"deflate")
    assert r.content == b"<html><head>" + SNIPPET + b"</head>deflated"


async def test_injection_into_gzip_response() -> None:
    body = gzip.compress(b"<html><head><title>z</title></head><body>" + b"a" * 50_000)
    r = await fetch_injected([body[:10], body[10:200], body[200:]], b"gzip")
    assert r.content.startswith(b"<html><head>" + SNIPPET + b"<title>z</title>")
    assert r.content.endswith(b"a" * 50_000)
    assert "content-encoding" not in r.headers


async def test_brotli_passes_through_untouched() -> None:
    r = await fetch_injected([b"\x8b\x02\x80<head>not really brotli"], b"br")
    assert r.headers["content-encoding"] == "br"
    assert SNIPPET not in r.content


async def test_no_injection_for_non_documents() -> None:
    gate = forward_all(Forward(inject=SNIPPET))
    parts = [b"<html><head></head>"]
    async with (
        raw_server(chunked_html(parts)) as up,
        proxy(up.port, gate) as listener,
        client(listener) as http,
    ):
        r = await http.get("/", headers={"sec-fetch-dest": "script"})
    assert r.content == b"<html><head></head>"


async def test_injection_streams_before_the_body_ends() -> None:
    release = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: 26\r\n\r\n")
        writer.write(b"<html><head></head><b")
        await writer.drain()
        await release.wait()
        writer.write(b"ody>x")
        await writer.drain()
        await reader.read()

    gate = forward_all(Forward(inject=SNIPPET))
    async with (
        raw_server(slow) as up,
        proxy(up.port, gate) as listener,
        client(listener) as http,
        http.stream("GET", "/", headers=DOC) as r,
    ):
        chunks = r.aiter_raw()
        first = await anext(chunks)
        assert first.startswith(b"<html><head>" + SNIPPET)
        release.set()
        rest = b"".join([chunk async for chunk in chunks])
    assert first + rest == b"<html><head>" + SNIPPET + b"</head><body>x"


# -- 7. backpressure --------------------------------------------------------------------------


async def test_slow_reader_of_100_mb_keeps_proxy_buffers_small() -> None:
    sent = 0
    block = b"x" * 65536
    total = 100 * 1024 * 1024

    async def big(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        while sent < total:
            writer.write(block)
            await writer.drain()
            sent += len(block)

    async with raw_server(big) as up, proxy(up.port) as listener:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", listener.port))
        sock.send(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        try:
            last = -1
            while sent != last:  # until the upstream is stalled by the reader who never reads
                last = sent
                await asyncio.sleep(0.3)
            assert sent < total
            assert listener.buffered_bytes() < 1024 * 1024
        finally:
            sock.close()


# -- 8. errors --------------------------------------------------------------------------------


async def test_malformed_request_is_400_and_closed() -> None:
    async with proxy(_unused_port()) as listener:
        out = await raw_exchange(listener.port, b"GET / HTTP/1.1\r\nHost h\x00\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 400")


async def test_head_too_large_is_431() -> None:
    async with proxy(_unused_port(), limits=ProxyLimits(max_head_bytes=4096)) as listener:
        big = b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n"
        out = await raw_exchange(listener.port, big)
        many = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n"
        out2 = await raw_exchange(listener.port, many)
    assert out.startswith(b"HTTP/1.1 431")
    assert out2.startswith(b"HTTP/1.1 431")


async def test_slowloris_head_gets_408() -> None:
    async with proxy(_unused_port(), limits=ProxyLimits(head_timeout=0.3)) as listener:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"GET / HTTP/1.1\r\n")
        for _ in range(4):  # a trickle, each line well within the timeout
            await asyncio.sleep(0.05)
            writer.write(b"X: y\r\n")
        out = await asyncio.wait_for(reader.read(-1), 5)
        writer.close()
    assert out.startswith(b"HTTP/1.1 408")


async def test_idle_keep_alive_closes_quietly() -> None:
    seen: list[dict[str, Any]] = []
    limits = ProxyLimits(idle_timeout=0.2)
    async with asgi_server(echo_app(seen)) as up, proxy(up.port, limits=limits) as listener:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        out = await asyncio.wait_for(reader.read(-1), 5)
        writer.close()
    assert out.count(b"HTTP/1.1") == 1
    assert out.startswith(b"HTTP/1.1 200")


async def test_dial_failure_shows_starting_page_to_documents_and_502_to_others() -> None:
    async def refuse(factory: Any) -> Any:
        raise UpstreamUnavailable("the container is starting")

    async with (
        proxy(5173, dial=refuse) as listener,
        client(listener) as http,
    ):
        page = await http.get("/", headers=DOC)
        api = await http.get("/api")
    assert page.status_code == 503
    assert page.headers["retry-after"] == "1"
    assert page.headers["x-cloudcontainer-preview"] == "starting"
    assert page.headers["cross-origin-resource-policy"] == "cross-origin"
    assert page.headers["cross-origin-embedder-policy"] == "credentialless"
    assert b"the container is starting" in page.content
    assert b"5173" in page.content
    assert b"fetch(" in page.content
    assert b"http" not in page.content.split(b"<script>")[0].lower().replace(b"http-", b"")
    assert api.status_code == 502
    assert api.json()["error"]["code"] == "upstream_unavailable"


async def test_nothing_listening_is_502_json() -> None:
    async with proxy(_unused_port()) as listener, client(listener) as http:
        r = await http.get("/x.js")
    assert r.status_code == 502
    assert r.json()["error"]["code"] == "upstream_unavailable"


async def test_upstream_reset_before_head_is_502() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.transport.abort()

    async with raw_server(reset) as up, proxy(up.port) as listener, client(listener) as http:
        r = await http.get("/")
    assert r.status_code == 502


async def test_upstream_reset_mid_body_aborts_the_client() -> None:
    async def truncate(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"a" * 100)
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()

    async with raw_server(truncate) as up, proxy(up.port) as listener, client(listener) as http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get("/")
        # The listener serves on.
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get("/")


async def test_malformed_upstream_response_is_502() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()
        await reader.read()

    async with raw_server(garbage) as up, proxy(up.port) as listener, client(listener) as http:
        r = await http.get("/")
    assert r.status_code == 502
    assert r.headers["connection"] == "close"


async def test_gate_failure_is_500_and_the_listener_serves_on() -> None:
    seen: list[dict[str, Any]] = []

    async def gate(request: ProxyRequest) -> Forward | Reply:
        if request.path == "/boom":
            raise RuntimeError("gate bug")
        return Forward()

    async with (
        asgi_server(echo_app(seen)) as up,
        proxy(up.port, gate) as listener,
        client(listener) as http,
    ):
        assert (await http.get("/boom")).status_code == 500
        assert (await http.get("/fine")).status_code == 200


async def test_gate_reply_and_target_rewrite() -> None:
    seen: list[dict[str, Any]] = []

    async def gate(request: ProxyRequest) -> Forward | Reply:
        if request.query == "t=bad":
            return Reply(401, (("content-type", "text/plain"),), b"no")
        return Forward(target=request.path)

    async with (
        asgi_server(echo_app(seen)) as up,
        proxy(up.port, gate) as listener,
        client(listener) as http,
    ):
        denied = await http.get("/p?t=bad")
        ok = await http.get("/p?t=good")
    assert (denied.status_code, denied.text) == (401, "no")
    assert ok.json()["query"] == ""
    assert len(seen) == 1


# -- 9. close ---------------------------------------------------------------------------------


async def test_close_ends_every_connection_and_counts_them() -> None:
    counts: list[int] = []
    async with ws_server() as up:
        listener_cm = proxy(up.port, counts=counts)
        listener = await listener_cm.__aenter__()
        try:
            ws = await ws_connect(
                f"ws://127.0.0.1:{listener.port}/hmr",
                subprotocols=["vite-hmr"],  # type: ignore[list-item]
            )
            reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
            writer.write(b"GET / HTTP/1.1\r\n")  # half a head
            await writer.drain()
            await asyncio.sleep(0.05)
            assert listener.connections == 2
        finally:
            await listener_cm.__aexit__(None, None, None)
        assert await asyncio.wait_for(reader.read(-1), 5) == b""
        writer.close()
        await asyncio.wait_for(ws.wait_closed(), 5)
    assert counts[:2] == [1, 2]
    assert counts[-1] == 0


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- more edges ---------------------------------------------------------------------------------


async def test_http10_client_gets_injected_body_close_delimited() -> None:
    gate = forward_all(Forward(inject=SNIPPET))
    parts = [b"<html><he", b"ad></head>x"]
    async with raw_server(chunked_html(parts)) as up, proxy(up.port, gate) as listener:
        out = await raw_exchange(
            listener.port, b"GET / HTTP/1.0\r\nHost: h\r\nSec-Fetch-Dest: document\r\n\r\n"
        )
    head, _, body = out.partition(b"\r\n\r\n")
    assert body == b"<html><head>" + SNIPPET + b"</head>x"
    assert b"transfer-encoding" not in head.lower()
    assert b"connection: close" in head.lower()


async def test_stalled_request_body_closes_the_connection() -> None:
    seen: list[dict[str, Any]] = []
    limits = ProxyLimits(body_idle_timeout=0.2)
    async with asgi_server(echo_app(seen)) as up, proxy(up.port, limits=limits) as listener:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 100\r\n\r\nabc")
        out = await asyncio.wait_for(reader.read(-1), 5)
        writer.close()
    assert out == b""  # closed without an answer; upstream saw a cut request


async def test_upstream_that_never_answers_gets_504() -> None:
    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await reader.read()

    limits = ProxyLimits(upstream_head_timeout=0.2)
    async with (
        raw_server(mute) as up,
        proxy(up.port, limits=limits) as listener,
        client(listener) as http,
    ):
        r = await http.get("/")
    assert r.status_code == 504


async def test_fast_upload_to_a_slow_upstream_keeps_proxy_buffers_small() -> None:
    got_head = asyncio.Event()

    async def never_reads(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        got_head.set()
        await asyncio.sleep(3600)

    async with raw_server(never_reads) as up, proxy(up.port) as listener:
        _reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        total = 100 * 1024 * 1024
        writer.write(b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % total)
        await got_head.wait()
        block = b"y" * 65536
        sent = 0
        try:
            while sent < total:
                writer.write(block)
                sent += len(block)
                try:
                    await asyncio.wait_for(writer.drain(), 0.5)
                except TimeoutError:
                    break  # the proxy stopped reading: backpressure reached the uploader
            assert sent < total
            assert listener.buffered_bytes() < 1024 * 1024
        finally:
            writer.transport.abort()


async def test_upstream_connection_close_is_not_reused() -> None:
    async def closes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
        await reader.read()  # upstream waits for the proxy to hang up

    async with raw_server(closes) as up, proxy(up.port) as listener, client(listener) as http:
        assert (await http.get("/")).text == "ok"
        assert (await http.get("/")).text == "ok"
    assert up.connections == 2


async def test_reused_connection_closed_before_answering_is_retried_for_gets_only() -> None:
    async def stale(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = up.connections == 1
        await read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        if first:
            await read_head(reader)  # a keep-alive timeout racing the next request
            writer.transport.abort()
            return
        while True:
            await read_head(reader)
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async with raw_server(stale) as up, proxy(up.port) as listener, client(listener) as http:
        assert (await http.get("/")).text == "ok"
        assert (await http.get("/")).text == "ok"
    assert up.connections == 2

    async with raw_server(stale) as up, proxy(up.port) as listener, client(listener) as http:
        assert (await http.get("/")).text == "ok"
        assert (await http.post("/", content=b"x")).status_code == 502


async def test_gate_refusing_a_large_body_keeps_the_connection_usable() -> None:
    seen: list[dict[str, Any]] = []

    async def gate(request: ProxyRequest) -> Forward | Reply:
        await asyncio.sleep(0.05)  # the body arrives and is held meanwhile
        if request.method == "POST":
            return Reply(401, (), b"no")
        return Forward()

    async with (
        asgi_server(echo_app(seen)) as up,
        proxy(up.port, gate) as listener,
        client(listener) as http,
    ):
        assert (await http.post("/", content=b"z" * 2_000_000)).status_code == 401
        assert (await http.get("/after")).json()["path"] == "/after"


async def test_https_listener_forwards_proto_https(tmp_path: Any) -> None:
    import ssl
    import subprocess

    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    seen: list[dict[str, Any]] = []
    async with asgi_server(echo_app(seen)) as up:
        listener = PreviewListener(
            gate=forward_all(), dial=dialer(up.port), upstream_port=up.port, ssl=context
        )
        await listener.start("127.0.0.1", 0)
        try:
            base = f"https://127.0.0.1:{listener.port}"
            async with httpx.AsyncClient(base_url=base, verify=False, timeout=10) as http:
                r = await http.get("/_next/webpack-hmr", headers={"origin": base})
        finally:
            await listener.close()
    assert r.status_code == 200
    assert header(seen[0], "x-forwarded-proto") == ["https"]
    assert header(seen[0], "origin") == [f"http://localhost:{up.port}"]


async def test_interim_100_continue_is_relayed_before_the_answer() -> None:
    async def continues(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, headers = await read_head(reader)
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
        body = await reader.readexactly(int(headers["content-length"]))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body))
        await writer.drain()

    async with raw_server(continues) as up, proxy(up.port) as listener:
        reader, writer = await asyncio.open_connection("127.0.0.1", listener.port)
        writer.write(
            b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        writer.write(b"body")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        body = await asyncio.wait_for(reader.readexactly(4), 5)
        writer.close()
    assert interim.startswith(b"HTTP/1.1 100")
    assert head.startswith(b"HTTP/1.1 200")
    assert body == b"body"


async def test_hop_by_hop_headers_are_not_forwarded() -> None:
    seen: list[dict[str, Any]] = []
    async with (
        asgi_server(echo_app(seen)) as up,
        proxy(up.port) as listener,
        client(listener) as http,
    ):
        await http.get(
            "/", headers={"connection": "keep-alive, x-private", "x-private": "1", "te": "trailers"}
        )
    names = {name for name, _ in seen[0]["headers"]}
    assert not names & {"x-private", "te", "keep-alive"}


# -- the same stories on uvloop, which the gateway runs on (its transports differ) ---------------

_ON_UVLOOP = [
    pytest.param(function, id=name)
    for name, function in list(globals().items())
    if name.startswith("test_")
    and inspect.iscoroutinefunction(function)
    and not inspect.signature(function).parameters
]


@pytest.mark.parametrize("story", _ON_UVLOOP)
def test_on_uvloop(story: Callable[[], Awaitable[None]]) -> None:
    async def run() -> None:
        await story()

    uvloop.run(run())

"""PROXY: small GET requests through the preview engine vs direct to the same upstream.

`python -m bench.proxy_engine [--requests N]` prints p50/p95 latency and requests per second of
one keep-alive client, direct and proxied, on uvloop, all in one process on loopback (the
upstream, the listener and the client share the CPU, as in PREVIEWS.md E's micro-benchmark).
Not part of `python -m bench`'s table yet.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

import uvloop

from bench.stats import Summary
from cloudcontainer.preview import Forward, PreviewListener, ProxyRequest, Reply

_BODY = b"x" * 1024
_RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n%b" % (
    len(_BODY),
    _BODY,
)


class _Upstream(asyncio.Protocol):
    """The cheapest keep-alive server: one fixed 1 KiB answer per request head."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(_RESPONSE * data.count(b"\r\n\r\n"))


async def _gate(request: ProxyRequest) -> Forward | Reply:
    return Forward()


async def _client(port: int, requests: int) -> list[float]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = b"GET /x HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAccept: */*\r\n\r\n" % port
    times = []
    try:
        for _ in range(requests):
            started = time.perf_counter()
            writer.write(request)
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(len(_BODY))
            times.append(time.perf_counter() - started)
    finally:
        writer.close()
    return times


async def _run(requests: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    upstream = await loop.create_server(_Upstream, "127.0.0.1", 0)
    port = upstream.sockets[0].getsockname()[1]

    async def dial(factory: Any) -> Any:
        return await loop.create_connection(factory, "127.0.0.1", port)

    listener = PreviewListener(gate=_gate, dial=dial, upstream_port=port)
    await listener.start("127.0.0.1", 0)
    results: dict[str, Any] = {}
    try:
        for name, target in (("direct", port), ("proxied", listener.port)):
            await _client(target, requests // 10)  # warm-up
            started = time.perf_counter()
            times = await _client(target, requests)
            elapsed = time.perf_counter() - started
            results[name] = {"summary": Summary.of(times).__dict__, "req_per_s": requests / elapsed}
    finally:
        await listener.close()
        upstream.close()
        await upstream.wait_closed()
    return results


def proxy_overhead(requests: int = 5000) -> dict[str, Any]:
    """Latency and request rate of 1 KiB keep-alive GETs, direct and through the listener."""
    return uvloop.run(_run(requests))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.proxy_engine")
    parser.add_argument("--requests", type=int, default=5000)
    args = parser.parse_args()
    results = proxy_overhead(args.requests)
    for name, figure in results.items():
        summary = figure["summary"]
        print(
            f"{name:8} p50 {summary['p50'] * 1e6:7.0f} µs  p95 {summary['p95'] * 1e6:7.0f} µs  "
            f"{figure['req_per_s']:8.0f} req/s"
        )


if __name__ == "__main__":
    main()

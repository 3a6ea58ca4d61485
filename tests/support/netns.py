"""A host on a private network, made by the test: a network namespace behind a veth pair.

Egress tests need a server at a private-range address that the host can route to, like a
machine on the LAN. Sending packets to a real one is off limits, so this makes one: the
namespace holds `PEER` (10.199.<n>.2/30), the host end of the pair holds 10.199.<n>.1/30, and
an HTTP server answers "private" inside. The namespace has no default route: nothing in it
reaches past this host. Everything is removed afterwards (deleting the
namespace deletes both ends of the pair).
"""

from __future__ import annotations

import ipaddress
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.request import ProxyHandler, build_opener

# A TCPServer, not http.server.HTTPServer: that one looks up its own name in DNS.
SERVER = (
    "import http.server, socketserver, sys\n"
    "class Handler(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.send_header('Content-Length', '7'); self.end_headers()\n"
    "        self.wfile.write(b'private')\n"
    "    def log_message(self, *args): pass\n"
    "socketserver.TCPServer((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()\n"
)
PORT = 8000
_DIRECT = build_opener(ProxyHandler({}))  # never through a proxy from the environment


@dataclass(frozen=True)
class PrivateHost:
    address: str  # the server's address, inside the namespace
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}/"


def _ip(*argv: str) -> None:
    subprocess.run(["ip", *argv], check=True, capture_output=True)


@contextmanager
def private_host() -> Iterator[PrivateHost]:
    """A server at 10.199.<n>.2:8000 on a network only this host reaches."""
    tag = secrets.token_hex(3)
    netns, host_end, peer_end = f"cct-{tag}", f"cct{tag}h", f"cct{tag}n"
    subnet = ipaddress.ip_network(f"10.199.{secrets.randbelow(250) + 1}.0/30")
    gateway, peer = (str(address) for address in subnet.hosts())
    _ip("netns", "add", netns)
    server: subprocess.Popen[bytes] | None = None
    try:
        _ip("link", "add", host_end, "type", "veth", "peer", "name", peer_end)
        _ip("link", "set", peer_end, "netns", netns)
        _ip("addr", "add", f"{gateway}/30", "dev", host_end)
        _ip("link", "set", host_end, "up")
        _ip("-n", netns, "addr", "add", f"{peer}/30", "dev", peer_end)
        _ip("-n", netns, "link", "set", peer_end, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        server = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-c", SERVER, peer, str(PORT)]
        )
        host = PrivateHost(peer, PORT)
        _wait_until_serving(host)
        yield host
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "link", "del", host_end], capture_output=True)
        subprocess.run(["ip", "netns", "del", netns], capture_output=True)


def _wait_until_serving(host: PrivateHost) -> None:
    """Poll the server until it answers. Not `server.poll()`: an event loop's child watcher
    in the test process may reap it first, and Popen would then call it exited."""
    deadline = time.monotonic() + 10
    while True:
        try:
            with _DIRECT.open(host.url, timeout=1) as response:
                if response.read() == b"private":
                    return
        except OSError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)

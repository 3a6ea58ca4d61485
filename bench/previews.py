"""Previews (local runtime): P8 proxy overhead per small request and req/s, P9 port open →
`port` event, L3 100 WebSocket clients of an HMR-like server through the proxy, DL a 100 MB
download. Every floor is the same program run inside the sandbox against 127.0.0.1, in the
same run. The server runs with `preview_rate_limit=0`: the default per-address limit
(200 req/s) would measure the limiter, not the proxy."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from websockets.asyncio.client import ClientConnection, connect

from bench.preview_programs import AGENT_CPU, CLIENT, DEV_SERVER, LISTENER
from bench.server import Server, cpu_seconds, machine_cpu_seconds, running_server
from bench.stats import Summary
from cloudcontainer.preview.service import MAX_PORTS_PER_CONTAINER

W = "/home/project"
DEV_PORT = 5173
BIG_MIB = 100
CONNECTIONS = 32  # keep-alive connections for req/s
PORTS_PER_SANDBOX = MAX_PORTS_PER_CONTAINER - 2  # P9: what one container's previews can hold


@dataclass
class Sandbox:
    server: Server
    http: httpx.AsyncClient
    cid: str
    events: ClientConnection
    tasks: set[asyncio.Task[str]] = field(default_factory=set)

    async def put(self, path: str, content: bytes) -> None:
        response = await self.http.put(
            f"/api/containers/{self.cid}/files/{path}", params={"mkdirs": "true"}, content=content
        )
        response.raise_for_status()

    async def exec(self, command: str, *args: str, timeout: int = 120) -> str:
        """Run a command to its end; its stdout (stderr joined into the error on failure)."""
        response = await self.http.post(
            f"/api/containers/{self.cid}/exec",
            json={"command": command, "args": list(args), "timeout": timeout},
        )
        out, err, code = [], [], None
        for line in response.text.splitlines():
            frame = json.loads(line)
            if frame["type"] == "stdout":
                out.append(frame["data"])
            elif frame["type"] == "stderr":
                err.append(frame["data"])
            elif frame["type"] == "exit":
                code = frame["code"]
        if code != 0:
            raise RuntimeError(f"{command} {args} exited {code}: {''.join(err)}{''.join(out)}")
        return "".join(out)

    def background(self, command: str, *args: str) -> None:
        """Run a program for the rest of the benchmark through an exec held open: a process
        of the agent's own, so its port watcher polls (a `setsid ... &` one is not counted)."""
        self.tasks.add(asyncio.create_task(self.exec(command, *args, timeout=3600)))

    async def until(self, **fields: Any) -> dict[str, Any]:
        async with asyncio.timeout(60):
            while True:
                for task in self.tasks:
                    if task.done():  # a background program that failed: say why
                        raise RuntimeError(f"exited: {task.exception() or task.result()}")
                frame: dict[str, Any] = json.loads(await self.events.recv())
                if all(frame.get(k) == v for k, v in fields.items()):
                    return frame

    async def public_origin(self, port: int) -> str:
        """Make the port public (no cookie needed); its origin, http://127.0.0.1:<external>."""
        response = await self.http.patch(
            f"/api/containers/{self.cid}/previews/{port}", json={"public": True}
        )
        response.raise_for_status()
        return str(response.json()["url"]).rstrip("/")


@asynccontextmanager
async def sandbox(server: Server) -> AsyncIterator[Sandbox]:
    """A fresh `node` container, its events WebSocket open, the dev server and the client
    program in its workspace."""
    headers = {"Authorization": server.client.headers["Authorization"]}
    base = str(server.client.base_url)
    project = server.client.post("/api/projects", json={"name": f"pv-{time.time()}"}).json()
    created = server.client.post(
        "/api/containers?wait=true", json={"project_id": project["id"], "template": "node"}
    ).json()
    if created.get("status") != "running":
        raise RuntimeError(f"container did not start: {created}")
    cid = str(created["id"])
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=300) as http:
        path = f"/api/containers/{cid}/events"
        ticket = (await http.post("/api/auth/ws-ticket", json={"path": path})).json()["ticket"]
        url = base.replace("http", "ws") + f"{path}?ticket={ticket}"
        async with connect(url, max_size=None) as events:
            box = Sandbox(server, http, cid, events)
            await box.put(".bench/server.cjs", DEV_SERVER.encode())
            await box.put(".bench/client.py", CLIENT.encode())
            try:
                yield box
            finally:
                for task in box.tasks:
                    task.cancel()
                await asyncio.gather(*box.tasks, return_exceptions=True)


async def dev_server(box: Sandbox) -> str:
    """Start the node dev server; its public preview origin once `server-ready`."""
    await box.put("hmr/hmr.txt", b"start")
    box.background("node", f"{W}/.bench/server.cjs", str(DEV_PORT), f"{W}/hmr", str(BIG_MIB))
    await box.until(type="server-ready", port=DEV_PORT)
    return await box.public_origin(DEV_PORT)


def _settings() -> dict[str, str]:
    return {"runtime": "local", "preview_rate_limit": "0"}


# -- P8 and DL ------------------------------------------------------------------------------


def proxy_overhead(samples: int, seconds: float) -> dict[str, Any]:
    """P8: single keep-alive GETs (latency) and req/s over CONNECTIONS keep-alive connections,
    straight to the dev server from inside the sandbox (floor) and through the preview URL
    from the host; rounds alternate so both see the same machine. DL: the 100 MB download,
    both ways, in the same run."""
    with running_server(**_settings()) as server:
        return asyncio.run(_proxy_overhead(server, samples, seconds))


async def _proxy_overhead(server: Server, samples: int, seconds: float) -> dict[str, Any]:
    async with sandbox(server) as box:
        origin = await dev_server(box)
        external = int(origin.rsplit(":", 1)[1])
        wrk_in_sandbox = await _install_wrk(box)
        latency: dict[str, list[float]] = {"direct": [], "proxied": []}
        rate: dict[str, list[dict[str, Any]]] = {"direct": [], "proxied": []}
        download: dict[str, list[dict[str, Any]]] = {"direct": [], "proxied": []}
        pythons = {}
        for _ in range(3):
            for way, port, run in (("direct", DEV_PORT, _in_sandbox(box)),
                                   ("proxied", external, _on_host)):  # fmt: skip
                measured = await run("python3", "client.py", "latency", "127.0.0.1",
                                     str(port), str(samples * 30))  # fmt: skip
                latency[way] += measured["samples_s"]
                pythons[way] = measured["python"]
                cpu, machine = cpu_seconds(server.pid), machine_cpu_seconds()
                agent = float(await box.exec("python3", "-c", AGENT_CPU))
                # The same client both ways: wrk only when it runs inside the sandbox too.
                result = await _rate(run, port, seconds, wrk_in_sandbox)
                busy, total = (b - a for a, b in zip(machine, machine_cpu_seconds(), strict=True))
                result["gateway_cpu_s"] = cpu_seconds(server.pid) - cpu
                result["machine_busy_fraction"] = busy / total if total else 0.0
                done = result["requests_per_s"] * seconds
                result["gateway_cpu_ms_per_request"] = result["gateway_cpu_s"] * 1000 / done
                # The agent relays every proxied byte (its tunnel); two execs' worth of its CPU
                # (these reads) are counted too, a few ms against seconds.
                result["agent_cpu_s"] = float(await box.exec("python3", "-c", AGENT_CPU)) - agent
                result["agent_cpu_ms_per_request"] = result["agent_cpu_s"] * 1000 / done
                rate[way].append(result)
                fetched = await run("python3", "client.py", "download", "127.0.0.1", str(port))
                if fetched["bytes"] != BIG_MIB << 20:
                    raise RuntimeError(f"short download {way}: {fetched}")
                fetched["mb_per_s"] = fetched["bytes"] / fetched["seconds"] / 1e6
                download[way].append(fetched)
    tool = "wrk" if wrk_in_sandbox else "python threads"
    result: dict[str, Any] = {
        "latency": {way: {"samples_s": times, "summary": Summary.of(times).__dict__}
                    for way, times in latency.items()},
        "throughput": {way: {"runs": runs, "requests_per_s": _median(
            [r["requests_per_s"] for r in runs])} for way, runs in rate.items()},
        "throughput_tool": tool, "connections": CONNECTIONS, "seconds_per_run": seconds,
        "python": pythons, "wrk_in_sandbox": wrk_in_sandbox,
    }  # fmt: skip
    p50 = {way: result["latency"][way]["summary"]["p50"] for way in latency}
    result["added_p50_s"] = p50["proxied"] - p50["direct"]
    dl = {way: {"runs": runs, "mb_per_s": _median([r["mb_per_s"] for r in runs])}
          for way, runs in download.items()}  # fmt: skip
    return {"P8": result, "DL": dl | {"mib": BIG_MIB}}


def _in_sandbox(box: Sandbox) -> Any:
    async def run(program: str, *args: str) -> Any:
        if program == "python3":
            return json.loads(await box.exec("python3", f"{W}/.bench/{args[0]}", *args[1:]))
        return await box.exec("env", f"LD_LIBRARY_PATH={W}/.bench/lib", f"{W}/.bench/wrk", *args)

    return run


async def _on_host(program: str, *args: str) -> Any:
    argv = ["python3", "-c", CLIENT, *args[1:]] if program == "python3" else [program, *args]
    done = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=300
    )
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {done.stderr}")
    return json.loads(done.stdout) if program == "python3" else done.stdout


async def _install_wrk(box: Sandbox) -> bool:
    """Copy the host's wrk and the libraries it needs beyond libc into the workspace; True
    when it runs there (the sandbox rootfs is Debian too)."""
    wrk = shutil.which("wrk")
    if not wrk:
        return False
    ldd = (await _on_host("ldd", wrk)).strip()
    for name, path in re.findall(r"^\s*(\S+) => (\S+)", ldd, re.MULTILINE):
        if not name.startswith(("libc.", "libm.", "libpthread.", "libgcc_s.")):
            await box.put(f".bench/lib/{name}", Path(path).read_bytes())
    await box.put(".bench/wrk", Path(wrk).read_bytes())
    try:
        await box.exec("chmod", "+x", f"{W}/.bench/wrk")
        await box.exec("env", f"LD_LIBRARY_PATH={W}/.bench/lib", f"{W}/.bench/wrk", "-v")
    except RuntimeError as exc:
        return "Usage" in str(exc)  # wrk -v prints its usage and exits 1
    return True


def _wrk_result(output: str) -> dict[str, Any]:
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if not rate:
        raise RuntimeError(f"wrk said: {output}")
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = sum(int(n) for n in socket_errors.groups()) if socket_errors else 0
    errors += int(non_2xx.group(1)) if non_2xx else 0
    return {"requests_per_s": float(rate.group(1)), "errors": errors, "output": output}


async def _rate(run: Any, port: int, seconds: float, use_wrk: bool) -> dict[str, Any]:
    if use_wrk:
        url = f"http://127.0.0.1:{port}/"
        return _wrk_result(await run("wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds:g}s", url))
    args = ("client.py", "throughput", "127.0.0.1", str(port), str(CONNECTIONS), f"{seconds:g}")
    return dict(await run("python3", *args))


def _median(values: list[float]) -> float:
    return Summary.of(values).p50


# -- P9 -------------------------------------------------------------------------------------


def port_to_event(samples: int) -> dict[str, Any]:
    """P9: a process in the sandbox listens on one new port after another and notes
    time.time() just after each listen() returns; the time is from there to the `port`
    (`state: open`) event's arrival at an events-WebSocket client on the host (same kernel
    clock: the local runtime shares it)."""
    with running_server(**_settings()) as server:
        return asyncio.run(_port_to_event(server, samples))


async def _port_to_event(server: Server, samples: int) -> dict[str, Any]:
    """In sandboxes of PORTS_PER_SANDBOX ports each: a container holds at most
    MAX_PORTS_PER_CONTAINER previews, and a port past that gets no event."""
    first = 20000
    times: list[float] = []
    while len(times) < samples:
        count = min(PORTS_PER_SANDBOX, samples - len(times))
        async with sandbox(server) as box:
            times += await _ports_opened(box, first, count)
    return {"samples_s": times, "summary": Summary.of(times).__dict__,
            "ports_per_sandbox": PORTS_PER_SANDBOX}  # fmt: skip


async def _ports_opened(box: Sandbox, first: int, count: int) -> list[float]:
    await box.put(".bench/listener.py", LISTENER.encode())
    box.background("python3", f"{W}/.bench/listener.py", str(first), str(count), "/tmp/p9")
    seen: dict[int, float] = {}
    async with asyncio.timeout(60 + count):
        while len(seen) < count:
            frame = json.loads(await box.events.recv())
            arrived = time.time()
            opened = frame.get("type") == "port" and frame.get("state") == "open"
            if opened and first <= frame["port"] < first + count:
                seen.setdefault(frame["port"], arrived)
    listened = {}
    for line in (await box.exec("cat", "/tmp/p9")).splitlines():
        port, at = line.split()
        listened[int(port)] = float(at)
    return [seen[port] - listened[port] for port in sorted(seen)]


# -- L3 -------------------------------------------------------------------------------------


def hmr_clients(clients: int, changes: int, interval: float = 0.2) -> dict[str, Any]:
    """L3: `clients` WebSockets through the preview proxy to the dev server's HMR-like
    socket, while `changes` saves go through the file API `interval` s apart; each save's
    text reaches every client. Latency: the PUT's start → the update at a client."""
    with running_server(**_settings()) as server:
        return asyncio.run(_hmr_clients(server, clients, changes, interval))


async def _hmr_clients(
    server: Server, clients: int, changes: int, interval: float
) -> dict[str, Any]:
    errors: list[str] = []
    latencies: list[float] = []
    sent: dict[str, float] = {}
    received: list[set[str]] = [set() for _ in range(clients)]
    duplicates = 0
    async with sandbox(server) as box:
        origin = await dev_server(box)
        url = origin.replace("http", "ws") + "/hmr"

        async def client(k: int, ready: asyncio.Event) -> None:
            nonlocal duplicates
            try:
                async with connect(url, ping_interval=None, open_timeout=60) as socket:
                    ready.set()
                    async for text in socket:
                        arrived = time.perf_counter()
                        seq = json.loads(text)["seq"]
                        if seq in received[k]:
                            duplicates += 1
                        elif seq in sent:
                            latencies.append(arrived - sent[seq])
                            received[k].add(seq)
                errors.append(f"client {k}: closed before the end")
            except Exception as exc:  # every failure is a counted error
                errors.append(f"client {k}: {exc!r}")
                ready.set()

        readies = [asyncio.Event() for _ in range(clients)]
        tasks = [asyncio.create_task(client(k, readies[k])) for k in range(clients)]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 120)
        connected_errors = len(errors)
        started = time.perf_counter()
        for i in range(changes):
            seq = f"save-{i}"
            sent[seq] = time.perf_counter()
            await box.put("hmr/hmr.txt", seq.encode())
            await asyncio.sleep(interval)
        deadline = time.perf_counter() + 10
        while _count(received) < clients * changes and time.perf_counter() < deadline:
            await asyncio.sleep(0.1)
        elapsed = time.perf_counter() - started
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "clients": clients, "changes": changes, "interval_s": interval,
        "expected": clients * changes, "delivered": _count(received), "duplicates": duplicates,
        "errors": len(errors), "connect_errors": connected_errors, "error_samples": errors[:10],
        "seconds": elapsed, "latency": {"samples_s": latencies,
                                        "summary": Summary.of(latencies).__dict__},
    }  # fmt: skip


def _count(received: list[set[str]]) -> int:
    return sum(len(seqs) for seqs in received)

"""Run the benchmarks: `python -m bench [--only P1,L4,ISO] [--quick]`.

Prints one table (each figure beside its floor from the same run and its goal) and writes
every sample to bench/results/<time>.json, with the commit, the machine and the settings.

Every server starts its sandboxes from one rootfs store, built (or found up to date) at the
start with `cloudcontainer image build` (`--docker` too when a docker figure is wanted): the
repo's `.cloudcontainer/rootfs`, as `make run` uses, or CLOUDCONTAINER_ROOTFS_DIR when set.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import (
    bolt_app,
    boltshell,
    client,
    files,
    images,
    many_terminals,
    neighbours,
    npm,
    previews,
    sandboxes,
    snapshots,
    terminals,
    watch,
)

RESULTS = Path(__file__).with_name("results")
ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--only", default="", help="comma-separated ids, e.g. P1,L4")
    parser.add_argument("--quick", action="store_true", help="fewer samples")
    args = parser.parse_args()
    wanted = {name.strip().upper() for name in args.only.split(",") if name.strip()}
    samples = 10 if args.quick else 30
    console = Console()
    _warn_if_busy(console)
    table = Table("id", "what", "result", "floor (same run)", "goal", title="cloudcontainer bench")
    report: dict[str, Any] = {
        "started": time.time(), "environment": _environment(args), "results": {},
    }  # fmt: skip

    def want(name: str) -> bool:
        return not wanted or name in wanted or name.split("-")[0] in wanted

    # One rootfs store for every server of this run, built (or found up to date) now; loaded
    # into Docker too when a docker figure is wanted and an engine answers.
    docker = sandboxes.docker_engine() and any(want(n) for n in ("P2", "BOLT", "ISO", "IMG"))
    console.print(f"rootfs: image build{' --docker' if docker else ''} in {images.ROOTFS_DIR} …")
    report["environment"]["rootfs"] = images.ensure_rootfs(docker)
    for name, runtime, floor_of, floor_name, goal in (
        ("P1", "local", sandboxes.bwrap_floor, "bwrap true", "p50 ≤ 150 ms, p95 ≤ 300 ms"),
        ("P2", "docker", sandboxes.docker_floor, "docker run --rm true", "p50 ≤ 600 ms"),
    ):
        if not want(name) or (runtime == "docker" and not sandboxes.docker_available()):
            continue
        console.print(f"{name}: {runtime} create → first command …")
        floor = floor_of(samples)
        warm = sandboxes.create_to_first_command(runtime, samples, pool=2)
        cold = sandboxes.create_to_first_command(runtime, samples, pool=0)
        report["results"][name] = {"warm": warm, "cold": cold, "floor": floor}
        for label, figure in (("warm pool", warm), ("cold", cold)):
            table.add_row(
                name, f"create → first command ({runtime}, {label})", _ms(figure),
                f"{_ms(floor)} {floor_name}", goal,
            )  # fmt: skip
    if want("P3"):
        console.print("P3: file save through the API …")
        figure = files.save_latency(samples * 10)
        floor = files.save_floor(samples * 10)
        report["results"]["P3"] = {"figure": figure, "floor": floor}
        table.add_row(
            "P3", "file save, 10 KiB PUT (local)", _ms(figure, p99=True),
            f"{_ms(floor, p99=True)} write()+rename()", "p50 ≤ 5 ms, p99 ≤ 20 ms",
        )  # fmt: skip
    if want("P4"):
        console.print("P4: mixed file operations …")
        if not shutil.which("wrk"):
            console.print(
                "[bold yellow]wrk is not installed[/]: P4 runs with the httpx client only, which "
                "takes the gateway's CPU on a small machine, so its figure is not comparable with "
                "the README's (wrk). `make bench` installs wrk."
            )
        mixed = files.mixed_throughput()
        report["results"]["P4"] = mixed
        drivers = [("httpx", mixed)] + ([("wrk", mixed["wrk"])] if "wrk" in mixed else [])
        floor = mixed.get("floor")
        floor_text = (
            f"{floor['requests_per_s']:,.0f} req/s, {floor['server_cpu_ms_per_request']:.3f} ms "
            "CPU/req: a trivial uvicorn app, same wrk"
            if floor
            else "—"
        )
        for driver, figure in drivers:
            table.add_row(
                "P4", f"file ops/s, 3 reads : 1 write, {figure['clients']} clients ({driver})",
                f"{figure['ops_per_s']:.0f} ops/s, {figure['errors']} errors; gateway CPU "
                f"{figure['server_cpu_ms_per_op']:.2f} ms/op",
                floor_text if driver == "wrk" else "—", "≥ 5,000 ops/s",
            )  # fmt: skip
    if want("P6") or want("P7"):
        console.print("P6/P7: terminal echo and output rate …")
        floors = terminals.pty_floors(samples * 10)
        echo = terminals.keystroke_echo(samples * 10)
        rate = terminals.output_rate()
        report["results"]["P6"] = {"figure": echo, "floor": floors["echo"]}
        report["results"]["P7"] = {"figure": rate, "floor": floors["read"]}
        table.add_row(
            "P6", "keystroke → its echo at the terminal's WS client (local)", _ms(echo, p99=True),
            f"{_ms(floors['echo'], p99=True)} local PTY echo", "p50 ≤ 5 ms, p99 ≤ 20 ms",
        )  # fmt: skip
        table.add_row(
            "P7", "terminal output through one WS (200 MB, local)",
            f"{rate['mb_per_s']:.0f} MB/s{', lagged' if rate['lagged'] else ''}",
            f"{floors['read']['mb_per_s']:.0f} MB/s local PTY read", "≥ 50 MB/s",
        )  # fmt: skip
    if want("L2") or want("M1"):
        console.print("L2/M1: 500 terminals open and echoing …")
        many = many_terminals.many_terminals()
        report["results"]["L2"] = many
        table.add_row(
            "L2", f"terminals open at once, each echoing (local, {many['terminals']})",
            f"{many['echoed']}/{many['terminals']} echoed", "—", "500, no drops",
        )  # fmt: skip
        table.add_row(
            "M1", "gateway memory per open terminal (RSS growth / terminals)",
            f"{many['gateway_kib_per_terminal']:.0f} KiB", "—", "≤ 100 KiB",
        )  # fmt: skip
    if want("BOLT"):
        runs = 10 if args.quick else 50
        floor = boltshell.bash_floor(samples * 10)
        report["results"]["BOLT"] = {"floor": floor}
        for runtime in ("local", "docker"):
            if runtime == "docker" and not sandboxes.docker_available():
                continue
            console.print(f"BOLT: {runs} bolt.diy shell sessions in a row ({runtime}) …")
            bolt = boltshell.sessions(runs, runtime)
            report["results"]["BOLT"][runtime] = bolt
            table.add_row(
                "BOLT", f"bolt shell sessions (25 commands, 2 dev servers preempted; {runtime})",
                f"{bolt['passed']}/{bolt['runs']} passed; executeCommand {_ms(bolt['command'])}; "
                f"echo ok preempting a dev server {_ms(bolt['preempt'])}",
                f"{_ms(floor, p99=True)} echo typed into bash on a PTY", "all pass, none hangs",
            )  # fmt: skip
    if want("P12"):
        console.print("P12: client overhead (clients/js, Node) against raw HTTP/WS …")
        measured = client.overhead(samples * 10)
        report["results"]["P12"] = measured
        write, spawn, command = measured["writeFile"], measured["spawn"], measured["executeCommand"]
        table.add_row(
            "P12", "fs.writeFile 10 KiB through @cloudcontainer/api (local)",
            f"{_ms(write['client'], p99=True)}; added p50 "
            f"{write['added_p50_over_socket_s'] * 1000:.2f} ms over the raw socket call, "
            f"{write['added_p50_over_http_s'] * 1000:.2f} ms over a raw PUT",
            f"raw events-socket call {_ms(write['socket'], p99=True)}; "
            f"raw HTTP PUT {_ms(write['http'], p99=True)}",
            "≤ 1 ms added",
        )  # fmt: skip
        table.add_row(
            "P12", "spawn('echo') → exit through @cloudcontainer/api (local)",
            f"{_ms(spawn['client'], p99=True)}; added p50 "
            f"{spawn['added_p50_over_raw_s'] * 1000:.2f} ms",
            f"raw POST + ticket + WS to exit {_ms(spawn['raw'], p99=True)}", "≤ 1 ms added",
        )  # fmt: skip
        table.add_row(
            "P12", "bolt.diy's BoltShell.executeCommand('echo') through the client (local)",
            _ms(command["client"], p99=True),
            f"raw WS jsh --osc (Python BoltShell) {_ms(command['raw'], p99=True)}", "measure",
        )  # fmt: skip
    if want("BOLT-APP"):
        runs = 2 if args.quick else 3
        console.print(f"BOLT-APP: bolt.diy in Chromium, prompt → app in the preview, {runs} runs …")
        app = bolt_app.prompt_to_preview(runs)
        report["results"]["BOLT-APP"] = app
        floor = app["floor"]
        table.add_row(
            "BOLT-APP", "bolt.diy: prompt → the app in its preview (cold container, npm "
            "install; local)",
            f"{_s(app['total'])}: answer + files {_s(app['files'])}, npm install "
            f"{_s(app['install'])}, dev server + page {_s(app['preview'])}",
            f"host npm install {_s(floor['install'])}; + vite answering {_s(floor['total'])}; "
            f"host npm install, warm cache {_s(floor['install_warm_cache'])}",
            "measure",
        )  # fmt: skip
        table.add_row(
            "P11", "bolt.diy: the answer's first action → the app in its preview (cold "
            "container, its npm cache cold; the model's streaming excluded; local)",
            _s(app["first_action_to_preview"]),
            f"host npm install + vite answering: cold cache {_s(floor['total'])}, warm cache "
            f"{_s(floor['total_warm_cache'])}", "≤ 8 s",
        )  # fmt: skip
        table.add_row(
            "BOLT-APP", "npm install of the same project again in that container (its npm "
            "cache warm; through the exec API)", _s(app["install_warm_cache"]),
            f"host npm install, warm cache {_s(floor['install_warm_cache'])}", "measure",
        )  # fmt: skip
        table.add_row(
            "BOLT-APP", "bolt.diy: Ctrl+S in bolt's editor → the preview shows it (HMR)",
            _ms(app["save_to_preview"]), "—", "file save < 200 ms",
        )  # fmt: skip
    if want("P5"):
        console.print("P5: write → watch event at the client …")
        figure = watch.write_to_event(samples * 10)
        floor = watch.inotify_floor(samples * 10)
        report["results"]["P5"] = {"figure": figure, "floor": floor}
        table.add_row(
            "P5", "PUT 1 KiB → its watch event at a WS client (local)", _ms(figure),
            f"{_ms(floor, p99=True)} inotify in-process", "p95 ≤ 100 ms",
        )  # fmt: skip
    if want("P8") or want("DL"):
        seconds = 3.0 if args.quick else 10.0
        console.print("P8/DL: preview proxy against the dev server in the sandbox …")
        proxied = previews.proxy_overhead(samples, seconds)
        report["results"]["P8"], report["results"]["DL"] = proxied["P8"], proxied["DL"]
        p8, dl = proxied["P8"], proxied["DL"]
        rate = p8["throughput"]
        table.add_row(
            "P8", "small GET through the preview URL, one keep-alive connection (local)",
            f"{_ms(p8['latency']['proxied'], p99=True)}; "
            f"added p50 {p8['added_p50_s'] * 1000:.2f} ms",
            f"{_ms(p8['latency']['direct'], p99=True)} straight to the dev server (in sandbox)",
            "p50 ≤ 1 ms added",
        )  # fmt: skip
        table.add_row(
            "P8", f"req/s, {p8['connections']} keep-alive connections ({p8['throughput_tool']})",
            f"{rate['proxied']['requests_per_s']:,.0f} req/s through the proxy; gateway CPU "
            f"{_median([r['gateway_cpu_ms_per_request'] for r in rate['proxied']['runs']]):.2f}"
            " ms/req, agent CPU "
            f"{_median([r['agent_cpu_ms_per_request'] for r in rate['proxied']['runs']]):.2f}"
            " ms/req",
            f"{rate['direct']['requests_per_s']:,.0f} req/s straight (in sandbox); machine "
            f"busy {_median([r['machine_busy_fraction'] for r in rate['proxied']['runs']]):.0%}"
            " of its CPUs during the proxied runs",
            "≥ 3,000 req/s",
        )  # fmt: skip
        table.add_row(
            "DL", f"{dl['mib']} MiB download through the preview URL",
            f"{dl['proxied']['mb_per_s']:.0f} MB/s",
            f"{dl['direct']['mb_per_s']:.0f} MB/s straight (in sandbox)", "measure",
        )  # fmt: skip
    if want("P9"):
        count = max(30, samples * 3)
        console.print(f"P9: port open → port event, {count} ports …")
        opened = previews.port_to_event(count)
        report["results"]["P9"] = opened
        table.add_row(
            "P9", "listen() in the sandbox → `port` event at an events WS client (local)",
            _ms(opened), "— (agent polls every 100 ms)", "p95 ≤ 300 ms",
        )  # fmt: skip
    if want("L3"):
        changes = samples * 3
        console.print(f"L3: 100 HMR WebSocket clients through the proxy, {changes} saves …")
        hmr = previews.hmr_clients(100, changes)
        report["results"]["L3"] = hmr
        table.add_row(
            "L3", f"{hmr['clients']} WS clients through the proxy, {hmr['changes']} saves "
            "via the file API",
            f"{hmr['errors']} errors; {hmr['delivered']}/{hmr['expected']} delivered "
            f"({hmr['duplicates']} twice); "
            f"PUT → update {_ms(hmr['latency'])}",
            "—", "100 clients, 0 errors",
        )  # fmt: skip
    if want("WATCH-NPM"):
        console.print("WATCH-NPM: npm install of a Vite React app, watched as bolt.diy does …")
        cost = watch.npm_install_cost()
        report["results"]["WATCH-NPM"] = cost
        for name in ("bolt", "everything"):
            seen, bare = cost[name], cost["none"]
            table.add_row(
                "WATCH-NPM", f"npm install (vite-react), {name} watch open",
                f"{seen['events']} events ({seen['events_per_s']:.0f}/s), "
                f"{seen['bytes_sent'] / 1048576:.1f} MiB sent, gateway CPU "
                f"{seen['gateway_cpu_s']:.2f} s in {seen['seconds']:.0f} s "
                f"({seen['node_modules_entries']} node_modules entries)",
                f"no watch: gateway CPU {bare['gateway_cpu_s']:.2f} s in {bare['seconds']:.0f} s",
                "measure",
            )  # fmt: skip
    if want("L4"):
        count = 50 if args.quick else 200
        console.print(f"L4: {count} idle local sandboxes …")
        density = sandboxes.idle_density(count)
        report["results"]["L4"] = density
        table.add_row(
            "L4", f"{density['requested']} idle local sandboxes",
            f"{density['connected_after_idle']} up; agent RSS p50 "
            f"{density['rss_mib']['p50']:.1f} MiB, max {density['rss_max_mib']:.1f} MiB; "
            f"PSS p50 {density['pss_mib']['p50']:.1f} MiB; "
            f"{density['loop_devices']} loop devices",
            f"all started in {density['start_all_s']:.1f} s", "≥ 200, RSS ≤ 20 MiB each",
        )  # fmt: skip
    if want("S1"):
        console.print("S1: snapshots of a Vite-sized workspace …")
        shots = snapshots.snapshot_round(3 if args.quick else 10)
        report["results"]["S1"] = shots
        first, delta = shots["first"], shots["delta"]
        fastest, slowest = min(d["seconds"] for d in delta), max(d["seconds"] for d in delta)
        table.add_row(
            "S1", f"snapshot, {first['file_count']} files, {first['total_bytes'] / 2**20:.1f} MiB",
            f"first {first['seconds']:.2f} s ({first['uploaded_count']} uploaded); "
            f"delta {fastest:.2f}-{slowest:.2f} s "
            f"({delta[0]['uploaded_count']} uploaded); unchanged "
            f"{min(u['seconds'] for u in shots['unchanged']):.2f} s; "
            f"new container restored in {shots['create_with_restore_s']:.2f} s",
            "—", "delta uploads only changed files",
        )  # fmt: skip
    if want("IMG-SIZE"):
        console.print("IMG-size: the root filesystem on disk and in Docker …")
        size = images.sizes(sandboxes.docker_available())
        report["results"]["IMG-size"] = size
        docker_text = (
            f"; Docker image {_gb(size['docker_bytes'])} ({size['docker_tag']})"
            if "docker_bytes" in size
            else ""
        )
        table.add_row(
            "IMG-size", f"root filesystem {size['build_id']} (du -sb of its root)",
            f"{_gb(size['root_bytes'])}{docker_text}",
            f"store cache {_gb(size['cache_bytes'] or 0)} (Debian base, npm tarballs)", "measure",
        )  # fmt: skip
    if want("IMG-BUILD"):
        warm_samples = 1 if args.quick else 3
        first = "" if args.quick else " cold, then"
        console.print(f"IMG-build: image build{first} warm, {warm_samples} times …")
        built = images.build_times(cold=not args.quick, warm_samples=warm_samples)
        report["results"]["IMG-build"] = built
        if "cold" in built:
            table.add_row(
                "IMG-build", "image build, empty store (cold: debootstrap, apt, npm registry)",
                _s(built["cold"]), "—", "measure",
            )  # fmt: skip
        table.add_row(
            "IMG-build", "image build --force, caches filled (warm)", _s(built["warm"]), "—",
            "measure",
        )  # fmt: skip
    if want("NPM"):
        runs = 2 if args.quick else 5
        console.print(f"NPM: npm install of vite-react, sandbox against host, {runs} times each …")
        install = npm.install_ratio(runs)
        report["results"]["NPM"] = install
        sandbox, host = install["sandbox"], install["host"]
        table.add_row(
            "NPM", "npm install (vite-react from main), clean node_modules and cache, local "
            f"sandbox (Node {sandbox['node']}, npm {sandbox['npm']})",
            f"{_s(sandbox)}; {install['ratio_p50']:.2f} times the host",
            f"{_s(host)} host npm install (Node {host['node']}, npm {host['npm']})", "measure",
        )  # fmt: skip
    if want("ISO"):
        for runtime in ("local", "docker"):
            if runtime == "docker" and not sandboxes.docker_available():
                continue
            console.print(f"ISO: a neighbour hogs cpu, memory, disk, pids, fds ({runtime}) …")
            hogs = neighbours.neighbour_hogs(runtime)
            report["results"].setdefault("ISO", {})[runtime] = hogs
            quiet = hogs["floor"]
            for name in neighbours.HOGS:
                table.add_row(
                    "ISO", f"{name} hog next door ({runtime}): gateway GET; neighbour exec",
                    f"{_ms(hogs[name]['gateway'])}; {_ms(hogs[name]['neighbour'])}",
                    f"quiet: {_ms(quiet['gateway'])}; {_ms(quiet['neighbour'])}",
                    "both keep answering",
                )  # fmt: skip
    report["environment"]["machine"]["load_average_at_end"] = os.getloadavg()
    console.print(table)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / time.strftime("%Y%m%d-%H%M%S.json")
    path.write_text(json.dumps(report, indent=2))
    console.print(f"samples written to {path}")


def _environment(args: argparse.Namespace) -> dict[str, Any]:
    """What a figure was measured on: the commit, the machine, the software and the bench's
    settings — enough to tell why a figure does not reproduce (another CPU, a busy machine,
    another library version, no wrk)."""

    def git(*argv: str) -> str:
        done = subprocess.run(["git", *argv], capture_output=True, text=True, cwd=ROOT)
        return done.stdout.strip()

    memory = Path("/proc/meminfo").read_text().split("\n", 1)[0].split()[1]
    return {
        "commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain")),
        "machine": {
            "cpus": os.cpu_count(), "cpu_model": _cpu_model(), "memory_kib": int(memory),
            "kernel": platform.release(), "arch": platform.machine(),
            "load_average_at_start": os.getloadavg(), "docker": sandboxes.docker_available(),
        },
        "software": {
            "python": platform.python_version(),
            "packages": {name: _version(name) for name in PACKAGES},
            "tools": {name: _tool_version(*argv) for name, argv in TOOLS.items()},
        },
        "settings": {"only": args.only, "quick": args.quick},
    }  # fmt: skip


# What the gateway's speed depends on: its web stack (uvicorn takes uvloop and httptools only
# when they are installed, and falls back to slower ones silently), its database drivers, and
# the programs a benchmark drives or measures against.
PACKAGES = ("fastapi", "starlette", "uvicorn", "uvloop", "httptools", "websockets", "pydantic",
            "sqlalchemy", "aiosqlite", "asyncpg")  # fmt: skip
TOOLS = {
    "wrk": ["wrk", "-v"], "bwrap": ["bwrap", "--version"], "docker": ["docker", "--version"],
    "node": ["node", "-v"], "npm": ["npm", "-v"],
}  # fmt: skip
# What runs inside a sandbox (the agent's python, the sandbox's Node.js) is the rootfs's:
# environment["rootfs"]["tools"], from the build's manifest.


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _tool_version(*argv: str) -> str | None:
    if not shutil.which(argv[0]):
        return None
    done = subprocess.run(argv, capture_output=True, text=True)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return lines[0] if lines else ""


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def _warn_if_busy(console: Console) -> None:
    """Figures measured beside a busy process are not comparable: say so before they are."""
    load = os.getloadavg()[0]
    cpus = os.cpu_count() or 1
    if load > 0.5 * cpus:
        console.print(
            f"[bold yellow]The machine is busy (load average {load:.1f} on {cpus} CPUs):[/] "
            "figures will be lower than on a quiet machine; the load is recorded with them."
        )


def _median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def _gb(size: int) -> str:
    return f"{size / 1e9:.2f} GB"


def _s(result: dict[str, Any]) -> str:
    s = result["summary"]
    if s["n"] == 1:
        return f"{s['p50']:.1f} s"
    return f"p50 {s['p50']:.1f} s, max {max(result['samples_s']):.1f} s (n={s['n']})"


def _ms(result: dict[str, Any], p99: bool = False) -> str:
    s = result["summary"]
    tail = f"p99 {s['p99'] * 1000:.2f} ms" if p99 else f"p95 {s['p95'] * 1000:.0f} ms"
    head = f"p50 {s['p50'] * 1000:.2f} ms" if p99 else f"p50 {s['p50'] * 1000:.0f} ms"
    return f"{head}, {tail} (n={s['n']})"


if __name__ == "__main__":
    main()

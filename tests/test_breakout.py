"""Break-out attempts from inside a sandbox, on every runtime: each test is one attacker's move.

The sandbox's code is the tenant's, so these run as a tenant would: through the API's exec,
as the sandbox user, with whatever the image offers (python3, curl, sh). The promises they
check are in docs/security.md.
"""

from __future__ import annotations

import asyncio
import json
import platform
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cloudcontainer.runtimes.base import SANDBOX_UID, open_files_limit
from cloudcontainer.runtimes.egress import METADATA_ADDRESS
from tests.conftest import Api, TestUser, make_settings, running_api
from tests.sandbox_helpers import new_container, run, sh, until_listening
from tests.support.image import BuiltRootfs
from tests.support.net import free_port
from tests.support.netns import private_host
from tests.support.smtp import Mailbox

pytestmark = pytest.mark.skipif(
    platform.machine() != "x86_64", reason="the syscall numbers below are x86_64's"
)

EPERM, ENOSYS = 1, 38
# Each entry: a syscall a sandbox must not make, as (name, number, arguments). Arguments
# that the kernel would reject with EFAULT or EINVAL prove the filter answered first.
FORBIDDEN_SYSCALLS = [
    ("unshare(CLONE_NEWUSER)", 272, (0x10000000,)),
    ("unshare(CLONE_NEWNS)", 272, (0x00020000,)),
    ("unshare(CLONE_NEWNET)", 272, (0x40000000,)),
    ("mount", 165, (0, 0, 0, 0, 0)),
    ("keyctl", 250, (0, 0, 0, 0, 0)),
    ("add_key", 248, (0, 0, 0, 0, 0)),
    ("bpf", 321, (0, 0, 0)),
    ("perf_event_open", 298, (0, 0, 0, 0, 0)),
    ("kexec_load", 246, (0, 0, 0, 0)),
    ("init_module", 175, (0, 0, 0)),
    ("open_by_handle_at", 304, (0, 0, 0)),
    ("fsopen", 430, (0, 0)),
    ("open_tree", 428, (0, 0, 0)),
    ("setns", 308, (0, 0)),
    ("reboot", 169, (0, 0, 0, 0)),
    ("swapon", 167, (0, 0)),
    ("io_uring_setup", 425, (1, 0)),
]

SYSCALL_PROBE = """
import ctypes, json, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
found = {}
for name, number, args in json.loads(sys.argv[1]):
    ctypes.set_errno(0)
    result = libc.syscall(ctypes.c_long(number), *[ctypes.c_long(a) for a in args])
    found[name] = 0 if result >= 0 else ctypes.get_errno()
print(json.dumps(found))
"""


async def _probe_syscalls(api: Api, user: TestUser, cid: str, calls: list[Any]) -> dict[str, int]:
    result = await run(api, user, cid, "python3", "-c", SYSCALL_PROBE, json.dumps(calls))
    assert result.code == 0, result
    found: dict[str, int] = json.loads(result.stdout)
    return found


async def test_dangerous_syscalls_are_refused(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    found = await _probe_syscalls(sandbox_api, user, cid, FORBIDDEN_SYSCALLS)
    allowed = {name: code for name, code in found.items() if code not in (EPERM, ENOSYS)}
    assert allowed == {}, f"these reached the kernel: {allowed}"
    # The filter is a denylist: ordinary work goes on (fork, threads, files, sockets).
    ordinary = await sh(
        sandbox_api, user, cid,
        "python3 -c \"import os,threading,socket; t=threading.Thread(target=print); t.start(); "
        "t.join(); pid=os.fork(); os._exit(0) if pid==0 else os.waitpid(pid,0); "
        "socket.socket().close(); print('ok')\"",
    )  # fmt: skip
    assert ordinary.stdout.strip().endswith("ok"), ordinary


async def test_no_nested_user_namespace_no_mount(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    probe = await sh(
        sandbox_api, user, cid,
        "unshare -Ur true 2>&1; echo userns=$?; unshare -m true 2>&1; echo mountns=$?; "
        "mount -t proc proc /tmp 2>&1; echo mount=$?; mount --bind /tmp /tmp 2>&1; echo bind=$?",
    )  # fmt: skip
    codes = dict(line.split("=") for line in probe.stdout.split() if "=" in line)
    for key in ("userns", "mountns", "mount", "bind"):
        assert codes.get(key) not in (None, "0"), probe


async def test_proc_tricks_lead_nowhere(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    probe = await sh(
        sandbox_api, user, cid,
        "echo x > /proc/sys/kernel/hostname 2>/dev/null; echo hostname=$?; "
        "echo b > /proc/sysrq-trigger 2>/dev/null; echo sysrq=$?; "
        "head -c1 /proc/kcore >/dev/null 2>&1; echo kcore=$?; "
        "echo 1 > /proc/sys/vm/drop_caches 2>/dev/null; echo drop=$?; "
        "ls /proc/1/root/work /proc/1/root/var/lib/docker >/dev/null 2>&1; echo root=$?",
    )  # fmt: skip
    codes = dict(line.split("=") for line in probe.stdout.split())
    assert all(code != "0" for code in codes.values()), probe


async def test_the_agent_cannot_be_traced_or_read(sandbox_api: Api) -> None:
    """Tenant processes share the agent's uid; the agent is undumpable, so they can neither
    ptrace it nor read its memory or environment, and its command line holds no secret."""
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    secret = await _agent_secret(sandbox_api, cid)
    attack = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
def argv(pid):
    return open('/proc/%s/cmdline' % pid, 'rb').read().split(b'\\0')
agent = next(p for p in os.listdir('/proc') if p.isdigit()
             and b'python3' in argv(p)[0] and b'/opt/cloudcontainer/agent.pyz' in argv(p))
print('cmdline', open('/proc/%s/cmdline' % agent, 'rb').read().replace(b'\\0', b' ').decode())
ctypes.set_errno(0)
print('ptrace', libc.ptrace(16, int(agent), 0, 0), ctypes.get_errno())
for name in ('mem', 'environ', 'maps'):
    try:
        open('/proc/%s/%s' % (agent, name), 'rb').read(64)
        print(name, 'read')
    except OSError as exc:
        print(name, 'refused', exc.errno)
"""
    result = await run(sandbox_api, user, cid, "python3", "-c", attack)
    assert result.code == 0, result
    assert secret not in result.stdout + result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.strip().splitlines())
    assert lines["ptrace"].split()[0] == "-1", lines
    for name in ("mem", "environ", "maps"):
        assert lines[name].startswith("refused"), lines
    # Nor does the secret sit anywhere the sandbox can read. `-e`: a URL-safe secret may
    # start with "-", which grep would take for an option.
    grep = await sh(
        sandbox_api, user, cid,
        f"grep -rl --exclude-dir=proc --exclude-dir=sys -e {secret} / 2>/dev/null; "
        f"cat /proc/1/environ 2>/dev/null | tr '\\0' '\\n' | grep -c -e {secret}",
    )  # fmt: skip
    assert grep.stdout.strip() == "0", grep


async def test_raw_and_packet_sockets_are_refused(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    probe = """
import socket
for name, args in (('raw', (socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)),
                   ('raw6', (socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)),
                   ('packet', (socket.AF_PACKET, socket.SOCK_RAW, 0)),
                   ('vsock', (40, socket.SOCK_STREAM, 0))):
    try:
        socket.socket(*args).close()
        print(name, 'opened')
    except OSError as exc:
        print(name, 'refused', exc.errno)
"""
    result = await run(sandbox_api, user, cid, "python3", "-c", probe)
    assert "opened" not in result.stdout, result
    assert result.stdout.count("refused") == 4, result


async def test_no_docker_socket_inside(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    probe = await sh(
        sandbox_api, user, cid,
        "ls -d /var/run/docker.sock /run/docker.sock /run/containerd 2>/dev/null; "
        "find / \\( -path /proc -o -path /sys \\) -prune -o -type s -print 2>/dev/null",
    )  # fmt: skip
    sockets = [line for line in probe.stdout.splitlines() if line]
    assert not any("docker" in line or "containerd" in line for line in sockets), sockets


async def test_the_host_and_its_ports_are_out_of_reach(sandbox_api: Api, runtime_name: str) -> None:
    """A server on every host address (as a gateway or database bound to 0.0.0.0 would be):
    the sandbox reaches none of them, by any of the host's own addresses."""
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    connections: list[object] = []
    port = free_port()
    server = await asyncio.start_server(lambda r, w: connections.append(w), None, port)
    targets = _host_addresses()
    if runtime_name == "local":
        targets.append("10.0.2.2")  # slirp4netns's alias for the host's loopback
    try:
        found = await _connect_from(sandbox_api, user, cid, [(t, port) for t in targets])
    finally:
        server.close()
        await server.wait_closed()
    assert connections == [], found
    assert "connected" not in found.values(), found


async def test_another_sandbox_is_out_of_reach(sandbox_api: Api) -> None:
    alice, mallory = await sandbox_api.user(), await sandbox_api.user()
    victim = (await new_container(sandbox_api, alice))["id"]
    attacker = (await new_container(sandbox_api, mallory))["id"]
    link = await sandbox_api.services.containers.agent(alice.id, victim)
    listen = (
        "python3 -c \"import socket,time; s=socket.socket(); s.bind(('0.0.0.0', 5173)); "
        's.listen(); time.sleep(60)"'
    )
    await link.call("proc.spawn", command="sh", args=["-c", listen])
    info = await sandbox_api.services.runtime.inspect(victim)
    targets = [(address, 5173) for address in _host_addresses()]
    if info.ip:
        targets.append((info.ip, 5173))
    await until_listening(sandbox_api, alice, victim, 5173)  # or "not connected" proves nothing
    found = await _connect_from(sandbox_api, mallory, attacker, targets)
    assert "connected" not in found.values(), found


async def test_private_networks_are_refused_unless_allowed(
    runtime_name: str,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    smtp: tuple[Mailbox, int],
    mailbox: Mailbox,
) -> None:
    """A server on a private network this test makes (a namespace at 10.199.x.2): refused by
    default, reachable from a gateway whose operator allows exactly it; the internet stays
    reachable. One gateway after the other, each with its own data."""
    values: dict[str, Any] = {"runtime": runtime_name, "warm_pool_size": 0}
    if runtime_name == "docker":
        values["sandbox_image"] = request.getfixturevalue("built_image").tag
    with private_host() as host:
        fetch = f"curl -sS --max-time 5 {host.url}; echo; echo code=$?"
        for name, allow in (("closed", []), ("opened", [f"{host.address}/32:{host.port}"])):
            root = tmp_path / name
            settings = make_settings(root, f"sqlite+aiosqlite:///{root / 'test.db'}", smtp[1],
                                     egress_allow=allow, **values)  # fmt: skip
            async with running_api(settings, mailbox) as api:
                user = await api.user()
                cid = (await new_container(api, user))["id"]
                answer = await sh(api, user, cid, fetch)
                if allow:
                    assert answer.stdout.startswith("private"), answer
                else:
                    assert "private" not in answer.stdout, answer
                    registry = await sh(
                        api, user, cid,
                        "curl -sS -o /dev/null -w '%{http_code}' --max-time 20 "
                        "https://registry.npmjs.org/is-number",
                    )  # fmt: skip
                    assert registry.stdout == "200", registry
                deleted = await api.client.delete(f"/api/containers/{cid}", headers=user.headers)
                assert deleted.status_code == 204, deleted.text


async def test_the_metadata_address_has_its_blocking_rule(
    sandbox_api: Api, runtime_name: str
) -> None:
    """Never sent a packet: the rule that refuses 169.254.169.254 is in place, in the chain
    the sandboxes' traffic is sent through."""
    await sandbox_api.user()  # the app is up, so its runtime installed its chains
    rules = subprocess.run(
        ["iptables", "-w", "-S"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    blocking = [r for r in rules if f"-d {METADATA_ADDRESS}/32" in r and r.endswith("-NO")]
    assert blocking, "no rule refuses the metadata address"
    chains = {r.split()[1] for r in blocking}
    parent = "OUTPUT" if runtime_name == "local" else "DOCKER-USER"
    jumps = [r for r in rules if r.startswith(f"-A {parent} ") and r.split()[-1] in chains]
    assert jumps, f"nothing sends sandbox traffic from {parent} into {chains}"


async def test_open_file_limit_holds(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    limits = await sh(sandbox_api, user, cid, "ulimit -Sn; ulimit -Hn; ulimit -Hc")
    wanted = open_files_limit(sandbox_api.services.settings.sandbox_open_files)
    assert limits.stdout.split() == [str(wanted), str(wanted), "0"], limits
    raise_it = await sh(sandbox_api, user, cid, f"ulimit -n {wanted + 1} 2>&1; echo $?")
    assert raise_it.stdout.strip().splitlines()[-1] != "0", raise_it


# -- local runtime ------------------------------------------------------------------------


@pytest.mark.parametrize("runtime_name", ["local"], indirect=True)
async def test_planted_symlinks_never_redirect_root(sandbox_api: Api, tmp_path: Path) -> None:
    """The old attack: replace a file root writes on the next start with a symlink to a
    host file. Plant one under every name root has used, everywhere the sandbox can write,
    then stop and start the sandbox: the host file is untouched."""
    canary = tmp_path / "canary"
    canary.write_text("host secret\n")
    canary.chmod(0o600)
    before = canary.stat()
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    names = ["secret", "run/secret", "agent.sock", "agent.log", "uid", "state.json", "agent.pyz"]
    plant = "; ".join(
        f"mkdir -p {d}/run; ln -sfn {canary} {d}/{name}"
        for d in ("/home/project", "/home", "/tmp") for name in names
    )  # fmt: skip
    await sh(sandbox_api, user, cid, plant)
    stopped = await sandbox_api.client.post(f"/api/containers/{cid}/stop", headers=user.headers)
    assert stopped.status_code == 200, stopped.text
    started = await sandbox_api.client.post(
        f"/api/containers/{cid}/start?wait=true", headers=user.headers
    )
    assert started.json()["status"] == "running", started.text
    assert (await sh(sandbox_api, user, cid, "echo alive")).stdout == "alive\n"
    after = canary.stat()
    assert canary.read_text() == "host secret\n"
    assert (after.st_uid, after.st_gid, after.st_mode) == (
        before.st_uid,
        before.st_gid,
        before.st_mode,
    )


@pytest.mark.parametrize("runtime_name", ["local"], indirect=True)
async def test_each_local_sandbox_has_its_own_host_uid(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    first, last = sandbox_api.services.settings.local_uid_range
    uids = []
    for _ in range(2):
        cid = (await new_container(sandbox_api, user))["id"]
        assert (await sh(sandbox_api, user, cid, "id -u")).stdout == f"{SANDBOX_UID}\n"
        uids.append(_host_uids_of(sandbox_api, cid))
    assert all(len(found) == 1 for found in uids), uids  # every process of one sandbox: one uid
    (a,), (b,) = uids
    assert a != b, uids
    assert first <= min(a, b) <= max(a, b) <= last, uids


async def test_local_refuses_to_run_without_cgroup_limits(
    tmp_path: Path, built_rootfs: BuiltRootfs
) -> None:
    """Fail closed: a host whose cgroups cannot limit sandboxes runs none, unless the operator
    says so (and then the gateway says loudly what that means)."""
    from cloudcontainer.runtimes.base import RuntimeOptions, RuntimeUnavailable
    from cloudcontainer.runtimes.cgroups import CgroupLimits
    from cloudcontainer.runtimes.local import LocalRuntime

    not_a_tree = tmp_path / "cgroup"
    not_a_tree.write_text("")  # nothing can be made under a file
    options = RuntimeOptions(data_dir=tmp_path / "data", agent_zipapp=tmp_path / "a.pyz",
                             ca_bundle=None, rootfs_dir=built_rootfs.directory)  # fmt: skip
    runtime = LocalRuntime(options)
    runtime.cgroups = CgroupLimits(root=not_a_tree)
    with pytest.raises(RuntimeUnavailable, match="cgroups cannot limit sandboxes"):
        await runtime.check()
    allowed = LocalRuntime(
        RuntimeOptions(data_dir=tmp_path / "data", agent_zipapp=tmp_path / "a.pyz",
                       ca_bundle=None, local_allow_without_cgroups=True,
                       rootfs_dir=built_rootfs.directory)
    )  # fmt: skip
    allowed.cgroups = CgroupLimits(root=not_a_tree)
    await allowed.check()


# -- docker runtime -----------------------------------------------------------------------


@pytest.mark.parametrize("runtime_name", ["docker"], indirect=True)
async def test_docker_keeps_the_secret_out_and_maps_the_uid(sandbox_api: Api) -> None:
    user = await sandbox_api.user()
    cid = (await new_container(sandbox_api, user))["id"]
    secret = await _agent_secret(sandbox_api, cid)
    inspect = subprocess.run(
        ["docker", "inspect", f"cc-{cid}"], capture_output=True, text=True, check=True
    ).stdout
    assert secret not in inspect
    details = json.loads(inspect)[0]
    environ = await sh(sandbox_api, user, cid, "tr '\\0' '\\n' < /proc/1/environ; echo; id -u")
    assert secret not in environ.stdout
    assert environ.stdout.split()[-1] == str(SANDBOX_UID)
    host_pid = details["State"]["Pid"]
    status = Path(f"/proc/{host_pid}/status").read_text()
    host_uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
    assert host_uid not in (SANDBOX_UID, 0), status


# -- helpers ------------------------------------------------------------------------------


def _host_addresses() -> list[str]:
    """This host's own addresses (never another machine's: no packet leaves the host)."""
    found = []
    listing = subprocess.run(["ip", "-j", "addr"], capture_output=True, check=True).stdout
    for interface in json.loads(listing):
        for address in interface.get("addr_info", []):
            if address["family"] == "inet6" and address["local"].startswith("fe80"):
                continue  # link-local needs a scope; the host's other addresses cover it
            found.append(address["local"])
    return found


CONNECT_PROBE = """
import json, socket, sys
found = {}
for host, port in json.loads(sys.argv[1]):
    try:
        socket.create_connection((host, port), timeout=2).close()
        found['%s:%s' % (host, port)] = 'connected'
    except OSError as exc:
        found['%s:%s' % (host, port)] = type(exc).__name__
print(json.dumps(found))
"""


async def _connect_from(
    api: Api, user: TestUser, cid: str, targets: list[tuple[str, int]]
) -> dict[str, str]:
    result = await run(api, user, cid, "python3", "-c", CONNECT_PROBE, json.dumps(targets))
    assert result.code == 0, result
    found: dict[str, str] = json.loads(result.stdout)
    return found


async def _agent_secret(api: Api, cid: str) -> str:
    from cloudcontainer.db import Container

    async with api.services.database.session() as session:
        container = await session.get(Container, cid)
        assert container is not None
        return container.agent_secret


def _host_uids_of(api: Api, cid: str) -> set[int]:
    """The host uids of a local sandbox's processes (its state file lists their pids)."""
    base = api.services.settings.data_dir / "sandboxes" / cid
    state = json.loads((base / "state.json").read_text())
    pids = [pid for key, pid in state.items() if key != "slirp" and isinstance(pid, int)]
    uids = set()
    for pid in pids:
        for child in [pid, *_descendants(pid)]:
            try:
                status = Path(f"/proc/{child}/status").read_text()
            except OSError:
                continue
            uid = int(next(x for x in status.splitlines() if x.startswith("Uid:")).split()[1])
            if uid != 0:  # the sh/unshare/nsenter chain before setpriv runs as root
                uids.add(uid)
    return uids


def _descendants(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    try:
        direct = [int(x) for x in children.read_text().split()]
    except OSError:
        return []
    return direct + [grand for child in direct for grand in _descendants(child)]

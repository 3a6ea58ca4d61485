"""The seccomp filter of every sandbox: compiled with libseccomp for bubblewrap's `--seccomp`
(`local`), and written as a Docker seccomp profile (`docker`), so both refuse the same calls.

A bubblewrap sandbox gets no filter unless it is given one, and Docker's default profile lets
io_uring (before Docker 25) and AF_VSOCK sockets through. This filter refuses (EPERM) at least
every system call Docker's default profile refuses to an unprivileged container — the list
documented as "significant syscalls blocked by the default profile" — and a few Docker added
later or that need privileges a sandbox never has: io_uring (a long record of kernel bugs),
the new mount API, namespace creation (`unshare`, `setns`, `clone` with a namespace flag;
`clone3` answers ENOSYS so the C library falls back to `clone`, whose flags a filter can
read), kernel keyrings, BPF, perf, userfaultfd, and AF_VSOCK sockets (the way out of a virtual
machine to its host). `ptrace` and `process_vm_readv/writev` stay allowed, as on Docker
(debuggers work; the agent makes itself undumpable, so sandbox processes cannot use them on
it).

Everything else is allowed: a denylist, so a program behaves the same on both runtimes. (Docker's
own profile is an allowlist, which also refuses system calls newer than the profile; this one
lets those through, each kernel's own permission checks still applying.)
The same rules cover the 32-bit x86 and x32 system call tables on an x86_64 host; a call from
any other architecture is refused with ENOSYS.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import json
import os
import platform
from pathlib import Path

from cloudcontainer.runtimes.base import RuntimeUnavailable

__all__ = ["DENIED", "build_filter", "docker_profile"]

# Refused outright (EPERM). Names unknown to the host's libseccomp are skipped: a kernel too
# old to have a call cannot be asked for it either.
DENIED = (
    # modules, kexec, reboot, swap, accounting, clocks, quotas
    "acct", "create_module", "delete_module", "finit_module", "init_module", "get_kernel_syms",
    "query_module", "kexec_file_load", "kexec_load", "reboot", "swapon", "swapoff",
    "clock_adjtime", "clock_settime", "settimeofday", "stime", "adjtimex", "quotactl",
    "quotactl_fd", "nfsservctl", "uselib", "ustat", "sysfs", "_sysctl", "lookup_dcookie",
    "syslog", "vhangup",
    # mounts and namespaces
    "mount", "umount", "umount2", "pivot_root", "chroot", "unshare", "setns", "fsopen",
    "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
    # kernel interfaces with a record of privilege escalations
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter",
    "io_uring_register", "add_key", "request_key", "keyctl", "fanotify_init",
    "open_by_handle_at", "name_to_handle_at", "kcmp",
    # raw hardware, memory placement
    "ioperm", "iopl", "vm86", "vm86old", "get_mempolicy", "set_mempolicy", "mbind",
    "move_pages",
)  # fmt: skip
# clone() flags that make a namespace; any of them refuses the call.
CLONE_NAMESPACE_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)
# personality() flags that turn off address-space randomisation or make data executable.
PERSONALITY_FLAGS = (
    0x0040000,  # ADDR_NO_RANDOMIZE
    0x0100000,  # MMAP_PAGE_ZERO
    0x0200000,  # ADDR_COMPAT_LAYOUT
    0x0400000,  # READ_IMPLIES_EXEC
)
AF_VSOCK = 40

SCMP_ACT_ALLOW = 0x7FFF0000
SCMP_CMP_EQ = 4
SCMP_CMP_MASKED_EQ = 7
SCMP_FLTATR_ACT_BADARCH = 2
SCMP_ARCH_X86 = 0x40000003
SCMP_ARCH_X32 = 0x4000003E


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


Condition = tuple[int, int, int, int]  # argument index, comparison, value, mask


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


def _library() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise RuntimeUnavailable(
            "the local runtime needs libseccomp to build its sandboxes' seccomp filter: "
            "install the Debian package libseccomp2 (`make run` does this)"
        ) from exc
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_arch_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    lib.seccomp_attr_set.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp),
    ]  # fmt: skip
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


class _Filter:
    """One libseccomp context; every failure is an OSError naming the call."""

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        self.ctx = lib.seccomp_init(SCMP_ACT_ALLOW)
        if not self.ctx:
            raise OSError(errno.ENOMEM, "seccomp_init failed")

    def check(self, result: int, what: str) -> None:
        if result < 0:
            raise OSError(-result, f"{what}: {os.strerror(-result)}")

    def syscall(self, name: str) -> int | None:
        number = int(self.lib.seccomp_syscall_resolve_name(name.encode()))
        return None if number == -1 else number  # -1: __NR_SCMP_ERROR, unknown here

    def deny(
        self, name: str, code: int = errno.EPERM, *conditions: tuple[int, int, int, int]
    ) -> None:
        number = self.syscall(name)
        if number is None:
            return
        args = (_ArgCmp * max(1, len(conditions)))(*(_ArgCmp(*c) for c in conditions))
        self.check(
            self.lib.seccomp_rule_add_array(
                self.ctx, _errno_action(code), number, len(conditions), args
            ),
            f"seccomp rule for {name}",
        )

    def release(self) -> None:
        self.lib.seccomp_release(self.ctx)


def build_filter(target: Path) -> Path:
    """Compile the filter to `target` (raw BPF, as `bwrap --seccomp FD` reads it); replaced
    atomically, so a sandbox starting meanwhile reads the old one or the new one whole."""
    seccomp = _Filter(_library())
    try:
        if platform.machine() == "x86_64":
            for arch in (SCMP_ARCH_X86, SCMP_ARCH_X32):
                seccomp.check(seccomp.lib.seccomp_arch_add(seccomp.ctx, arch), "seccomp_arch_add")
        seccomp.check(
            seccomp.lib.seccomp_attr_set(
                seccomp.ctx, SCMP_FLTATR_ACT_BADARCH, _errno_action(errno.ENOSYS)
            ),
            "seccomp_attr_set",
        )
        for name in DENIED:
            seccomp.deny(name)
        seccomp.deny("clone3", errno.ENOSYS)
        for flag in CLONE_NAMESPACE_FLAGS:
            seccomp.deny("clone", errno.EPERM, (0, SCMP_CMP_MASKED_EQ, flag, flag))
        for flag in PERSONALITY_FLAGS:
            seccomp.deny("personality", errno.EPERM, (0, SCMP_CMP_MASKED_EQ, flag, flag))
        seccomp.deny("socket", errno.EPERM, (0, SCMP_CMP_EQ, AF_VSOCK, 0))
        partial = target.with_name(target.name + ".new")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        try:
            seccomp.check(seccomp.lib.seccomp_export_bpf(seccomp.ctx, fd), "seccomp_export_bpf")
        finally:
            os.close(fd)
        os.replace(partial, target)
    except OSError as exc:
        raise RuntimeUnavailable(f"could not build the sandbox seccomp filter: {exc}") from exc
    finally:
        seccomp.release()
    return target


def docker_profile() -> str:
    """The same rules as a Docker seccomp profile (JSON, for `SecurityOpt: seccomp=...`).

    Docker's default profile is an allowlist; this is the local runtime's denylist instead,
    so that a program behaves the same on both runtimes and both refuse io_uring and vsock."""

    def masked(flag: int) -> dict[str, object]:
        return {"index": 0, "value": flag, "valueTwo": flag, "op": "SCMP_CMP_MASKED_EQ"}

    def refuse(names: list[str], code: int = errno.EPERM, **more: object) -> dict[str, object]:
        return {"names": names, "action": "SCMP_ACT_ERRNO", "errnoRet": code, **more}

    rules = [refuse(list(DENIED)), refuse(["clone3"], errno.ENOSYS)]
    rules += [refuse(["clone"], args=[masked(flag)]) for flag in CLONE_NAMESPACE_FLAGS]
    rules += [refuse(["personality"], args=[masked(flag)]) for flag in PERSONALITY_FLAGS]
    rules.append(refuse(["socket"], args=[{"index": 0, "value": AF_VSOCK, "op": "SCMP_CMP_EQ"}]))
    profile = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
        if platform.machine() == "x86_64"
        else [],
        "syscalls": rules,
    }
    return json.dumps(profile, separators=(",", ":"))

"""The bolt shell: `/bin/jsh [--osc]`, bash with the hooks bolt.diy expects of WebContainer's jsh.

bolt.diy types its commands into one interactive shell and learns where they end from OSC 654
markers in the output (PARITY.md, "The bolt shell", R1-R9). Three parts make that exact:

- `RC`, the bash start-up file: the markers, the `~/project` / `❯` prompt, `jsh: command not
  found: NAME`, and one history file for every terminal of the sandbox (`~/.jsh_history`: in
  its home, kept with it but outside the workspace). It also reports each command line and its
  exit status with a private OSC 6973 sequence, which never leaves the agent: `OutputFramer`
  takes it out and the process table turns it into a `proc.command` event (the
  project's shell history: the tenant's word, never an audit log).
- `OutputFramer`: with `--osc`, output is flushed after a short quiet period (so output that
  arrives together leaves together) and cut right after every 654 marker, so that each marker
  is the only one in its frame (bolt reads only the first marker of a chunk).
- `InputGate`: input that follows a Ctrl-C is held until the shell shows its next prompt, so a
  command typed while bash is still handling the interrupt loses no characters (R9).

Why output waits: while a dev server runs, bolt has two readers taking chunks in turn, one
waiting for the server's `exit`, one for the `prompt` after the Ctrl-C it sent. Every chunk
that reaches bolt after its Ctrl-C and before the `exit` swaps which reader gets which marker,
and then both wait for ever. So output is never cut by time alone while it flows (a server that
logs every few milliseconds leaves in one frame per second), and after a Ctrl-C everything up to
the next marker leaves as one frame: the `^C` echo and a server's last words travel with its
`exit` (R5), however long the server takes to stop.
Python >= 3.9, stdlib only.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import tempfile
from typing import Any, Callable, Dict, List, Optional, Tuple

NAMES = ("/bin/jsh", "jsh")
QUIET_SECONDS = 0.008  # R6: a frame leaves once the output has paused this long...
MAX_HOLD_SECONDS = 1.0  # ...or has been held this long (a server that logs without pause)
MAX_FRAME_BYTES = 65536  # ...or is this big
# A reported command line is cut here (the gateway keeps 4096 characters of it, and refuses
# an event string over 64 KiB outright).
REPORT_MAX_CHARS = 8192
GATE_SECONDS = 1.0  # R9: how long input (and output) after Ctrl-C waits for a marker at most
MAX_PARTIAL_BYTES = 256 * 1024  # an unterminated OSC longer than this is passed on as it is...
PARTIAL_SECONDS = 0.1  # ...and so is one whose end has not come this long after its start

MARKER = re.compile(rb"\x1b\]654;[^\x07\x1b]*\x07")
REPORT = re.compile(rb"\x1b\]6973;(start|end);([^\x07]*)\x07")
PROMPT = b"\x1b]654;prompt\x07"
HISTORY_LINE = re.compile(r"^\s*\d+\*?\s\s(.*)$", re.S)

# bash start-up file. PS0 (expanded only when a command line is about to run) sets __jsh_ran
# and reports the line. The INT trap exists only at the prompt, armed by the prompt hook and
# disarmed by the DEBUG trap before anything runs (a trap on INT would keep Ctrl-C from ending a
# shell loop): it tells a Ctrl-C at the prompt (R4: prompt, no exit) from an empty line (R7:
# exit 0, then prompt). A line that ran nothing but changed $? was a syntax error: its status is
# reported like a command's.
RC = r"""# jsh: written by the cloudcontainer agent
[ -f ~/.bashrc ] && . ~/.bashrc
HISTFILE=~/.jsh_history
HISTSIZE=10000
HISTFILESIZE=100000
HISTCONTROL=${HISTCONTROL//ignorespace/}
HISTCONTROL=${HISTCONTROL//ignoreboth/ignoredups}
HISTIGNORE=
shopt -s histappend checkwinsize
__jsh_first=1 __jsh_ran=0 __jsh_int=0 __jsh_last=0 __jsh_seq=0 __jsh_armed= __jsh_none=()
__jsh_mark() { [ -n "$JSH_OSC" ] && printf '\e]654;%s\a' "$1"; }
command_not_found_handle() { printf 'jsh: command not found: %s\n' "$1" >&2; return 127; }
__jsh_disarm() { [ -n "$__jsh_armed" ] && { __jsh_armed=; trap - INT; }; }
__jsh_prompt() {
  local code=$?
  if [ "$__jsh_first" = 1 ]; then
    __jsh_first=0
    __jsh_mark interactive
  elif [ "$__jsh_ran" = 1 ] || { [ "$__jsh_int" = 0 ] && [ "$code" != "$__jsh_last" ]; }; then
    [ -n "$JSH_REPORTS" ] && printf '\e]6973;end;%s\a' "$code"
    __jsh_mark "exit=$((++__jsh_seq)):$code"
  elif [ "$__jsh_int" = 0 ]; then
    __jsh_mark "exit=$((++__jsh_seq)):0"
  fi
  __jsh_last=$code __jsh_ran=0 __jsh_int=0 __jsh_armed=1
  builtin history -a
  builtin history -n
  trap '__jsh_int=1' INT
}
PROMPT_COMMAND=__jsh_prompt
PS0='${__jsh_none[__jsh_ran=1]}'
[ -n "$JSH_REPORTS" ] && PS0=$PS0'\e]6973;start;$(HISTTIMEFORMAT= builtin history 1)\a'
PS1='\[\e[1;34m\]\w\[\e[0m\]\n\[\e[1;35m\]❯\[\e[0m\] '
[ -n "$JSH_OSC" ] && PS1='\[\e]654;prompt\a\]'$PS1
trap __jsh_disarm DEBUG
"""


def is_jsh(command: str) -> bool:
    return command in NAMES


def command(args: List[str], env: Dict[str, str], reports: bool) -> Tuple[str, List[str], bool]:
    """bash's command line for `jsh ARGS` (`env` is completed), and whether bolt's markers are
    on (`--osc`). `reports`: the output goes through an `OutputFramer`, which takes the
    command reports out (a jsh without a PTY makes none). `jsh -c LINE` is `bash -c LINE`."""
    osc = "--osc" in args
    rest = [a for a in args if a != "--osc"]
    for name, on in (("JSH_OSC", osc), ("JSH_REPORTS", reports)):
        if on:
            env[name] = "1"
        else:
            env.pop(name, None)
    argv = ["--noprofile", "--rcfile", _rc_file(), "-i"]
    if rest[:1] == ["-c"]:
        argv = ["--noprofile", "-c", *rest[1:]]
    return "bash", argv, osc


def _rc_file() -> str:
    """The rc file, written once per agent into a private directory under /tmp."""
    directory = os.path.join(tempfile.gettempdir(), ".jsh-%d" % os.getuid())
    digest = hashlib.sha256(RC.encode()).hexdigest()[:12]  # an older agent's rc is not this one
    path = os.path.join(directory, "rc-%s.bash" % digest)
    if not os.path.exists(path):
        os.makedirs(directory, mode=0o700, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=directory)
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(RC)
        os.replace(temp, path)
    return path


def split_after_markers(data: bytes) -> List[bytes]:
    """`data` cut right after each 654 marker (R6): no piece carries two, and the text before a
    marker travels with it. The gateway cuts a bolt shell's replayed scrollback the same way."""
    pieces, start = [], 0
    for match in MARKER.finditer(data):
        pieces.append(data[start : match.end()])
        start = match.end()
    if start < len(data):
        pieces.append(data[start:])
    return pieces


def decode_report(kind: bytes, value: bytes) -> Dict[str, Any]:
    """A private report as a `proc.command` event's data."""
    text = value.replace(b"\r\n", b"\n").decode("utf-8", "replace")
    if kind == b"end":
        return {"phase": "end", "code": int(text) if text.strip().isdigit() else None}
    match = HISTORY_LINE.match(text)
    line = (match.group(1) if match else text).rstrip("\n")
    return {"phase": "start", "command": line[:REPORT_MAX_CHARS]}


class OutputFramer:
    """Cuts a jsh's output into frames: each 654 marker ends its frame (R6), private reports
    are taken out, and with `quiet` set a frame leaves only once output pauses."""

    def __init__(self, send: Callable[[bytes], None], report: Callable[[Dict[str, Any]], None],
                 on_prompt: Callable[[], None], quiet: bool) -> None:  # fmt: skip
        self._send = send
        self._report = report
        self._on_prompt = on_prompt
        self._quiet = quiet
        self._pending = bytearray()
        self._timer: Optional[asyncio.TimerHandle] = None
        self._held_since = 0.0
        self._interrupted = False

    def interrupted(self) -> None:
        """A Ctrl-C went in: hold everything until a marker comes out (or GATE_SECONDS pass)."""
        if not self._quiet:
            return
        self._interrupted = True
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_event_loop().call_later(GATE_SECONDS, self.flush)

    def feed(self, data: bytes) -> None:
        if not self._quiet and not self._pending and b"\x1b]" not in data and data[-1:] != b"\x1b":
            self._send(data)  # no OSC in it, nothing held: as it is (a terminal's fast path)
            return
        self._pending += data
        if not self._quiet or len(self._pending) >= MAX_FRAME_BYTES:
            self.flush()
            return
        if self._interrupted:
            if not MARKER.search(self._pending):
                return
            self._interrupted = False  # the shell answered: frame it as usual from here
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        loop = asyncio.get_event_loop()
        now = loop.time()
        if self._timer is None:
            self._held_since = now
        else:
            self._timer.cancel()
        wait = min(QUIET_SECONDS, self._held_since + MAX_HOLD_SECONDS - now)
        self._timer = loop.call_later(max(wait, 0.0), self.flush)

    def flush(self, final: bool = False) -> None:
        """Send what is held: cut after each marker, a trailing unfinished OSC kept back."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._interrupted = False
        data = bytes(self._pending)
        self._pending.clear()
        data = REPORT.sub(self._take_report, data)
        if not final:
            keep = _unfinished_osc(data)
            if keep:
                self._pending += data[-keep:]
                data = data[:-keep]
                loop = asyncio.get_event_loop()
                self._timer = loop.call_later(PARTIAL_SECONDS, self.flush, True)
        for piece in split_after_markers(data):
            self._send(piece)
            if piece.endswith(PROMPT):
                self._on_prompt()

    def _take_report(self, match: re.Match[bytes]) -> bytes:
        self._report(decode_report(match.group(1), match.group(2)))
        return b""


def _unfinished_osc(data: bytes) -> int:
    """How many bytes at the end of `data` are the start of an OSC not yet ended by BEL."""
    start = data.rfind(b"\x1b")
    if start < 0 or len(data) - start > MAX_PARTIAL_BYTES:
        return 0
    tail = data[start:]
    if tail == b"\x1b" or (tail.startswith(b"\x1b]") and b"\x07" not in tail):
        return len(tail)
    return 0


class InputGate:
    """R9: the bytes typed after a Ctrl-C wait for the shell's next prompt (at most 1 s)."""

    def __init__(self, write: Callable[[bytes], None],
                 on_interrupt: Callable[[], None] = lambda: None) -> None:  # fmt: skip
        self._write = write
        self._on_interrupt = on_interrupt
        self._held: Optional[bytearray] = None
        self._timer: Optional[asyncio.TimerHandle] = None

    def feed(self, data: bytes) -> None:
        if self._held is not None:
            self._held += data
            return
        cut = data.find(b"\x03")
        if cut < 0:
            self._write(data)
            return
        self._write(data[: cut + 1])
        self._on_interrupt()
        self._held = bytearray(data[cut + 1 :])
        self._timer = asyncio.get_event_loop().call_later(GATE_SECONDS, self.release)

    def release(self) -> None:
        """The prompt is shown (or the wait is over): what was held goes, Ctrl-Cs gated again."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        held, self._held = self._held, None
        if held:
            self.feed(bytes(held))

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._held = None

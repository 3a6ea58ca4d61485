"""The bolt shell in the agent: jsh's framing and input gate, and `/bin/jsh --osc` on a real PTY.

The rules are PARITY.md's R1-R9. Frames are checked one by one, as they leave the agent: bolt
reads only the first marker of each chunk, so which frame a marker travels in is the contract.
"""

from __future__ import annotations

import asyncio
import base64
import re
from typing import Any

from cloudcontainer.agent import jsh
from cloudcontainer.agent.protocol import PROC_OUTPUT
from cloudcontainer.agentlink.client import AgentClient
from tests.agent.conftest import Events, until

MARKER = re.compile(rb"\x1b\]654;([^\x07]*)\x07")


def markers(frame: bytes) -> list[str]:
    return [m.decode() for m in MARKER.findall(frame)]


class Framed:
    """An `OutputFramer` whose frames, reports and prompts are kept."""

    def __init__(self, quiet: bool) -> None:
        self.frames: list[bytes] = []
        self.reports: list[dict[str, Any]] = []
        self.prompts = 0
        self.framer = jsh.OutputFramer(
            self.frames.append, self.reports.append, self._prompt, quiet=quiet
        )

    def _prompt(self) -> None:
        self.prompts += 1


async def test_each_marker_ends_its_frame_and_text_before_it_travels_with_it() -> None:
    framed = Framed(quiet=False)
    framed.framer.feed(
        b"^C\r\n\x1b]654;exit=3:130\x07\x1b]654;prompt\x07~/project\r\n\xe2\x9d\xaf "
    )
    assert framed.frames == [
        b"^C\r\n\x1b]654;exit=3:130\x07",
        b"\x1b]654;prompt\x07",
        b"~/project\r\n\xe2\x9d\xaf ",
    ]
    assert framed.prompts == 1


async def test_reports_are_taken_out_and_decoded_even_when_cut_across_reads() -> None:
    framed = Framed(quiet=False)
    framed.framer.feed(b"\x1b]6973;start;   12  printf 'a\\n'\r\n  | wc")
    assert framed.frames == []  # an OSC without its end is held back...
    framed.framer.feed(b" -l\x07a\r\n\x1b]6973;end;0\x07\x1b]654;exit=1:0\x07")
    assert framed.frames == [b"a\r\n\x1b]654;exit=1:0\x07"]  # ...and never shown
    assert framed.reports == [
        {"phase": "start", "command": "printf 'a\\n'\n  | wc -l"},
        {"phase": "end", "code": 0},
    ]


async def test_an_osc_that_never_ends_is_passed_on_after_a_while() -> None:
    framed = Framed(quiet=False)
    framed.framer.feed(b"prompt> \x1b]0;title")
    assert framed.frames == [b"prompt> "]
    await until(lambda: len(framed.frames) == 2, "the unfinished OSC")
    assert framed.frames[1] == b"\x1b]0;title"


async def test_quiet_framing_sends_output_that_arrives_together_in_one_frame() -> None:
    framed = Framed(quiet=True)
    framed.framer.feed(b"last log line\r\n")
    framed.framer.feed(b"^C\r\n")
    framed.framer.feed(b"\x1b]654;exit=1:130\x07\x1b]654;prompt\x07")
    assert framed.frames == []
    await until(lambda: len(framed.frames) == 2, "the quiet period's flush")
    assert framed.frames[0] == b"last log line\r\n^C\r\n\x1b]654;exit=1:130\x07"


async def test_after_ctrl_c_output_waits_for_the_next_marker() -> None:
    """A dev server that takes its time to stop: its `^C` echo and last words travel with the
    shell's `exit` marker (R5), never as a chunk of their own."""
    framed = Framed(quiet=True)
    framed.framer.feed(b"tick\r\n")
    framed.framer.interrupted()
    framed.framer.feed(b"^C")
    await asyncio.sleep(jsh.QUIET_SECONDS * 5)
    framed.framer.feed(b"server closed\r\n")
    await asyncio.sleep(jsh.QUIET_SECONDS * 5)
    assert framed.frames == []
    framed.framer.feed(b"\x1b]654;exit=4:130\x07")
    framed.framer.feed(b"\x1b]654;prompt\x07~/project")
    await until(lambda: len(framed.frames) == 3, "the frames")
    assert framed.frames[0] == b"tick\r\n^Cserver closed\r\n\x1b]654;exit=4:130\x07"


async def test_quiet_framing_still_flushes_output_that_never_pauses() -> None:
    framed = Framed(quiet=True)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + jsh.MAX_HOLD_SECONDS * 3
    while loop.time() < deadline and not framed.frames:
        framed.framer.feed(b"tick\r\n")
        await asyncio.sleep(jsh.QUIET_SECONDS / 4)
    assert framed.frames, "a server logging without pause must not be held back for ever"


async def test_the_gate_holds_what_follows_ctrl_c_until_the_prompt() -> None:
    written: list[bytes] = []
    gate = jsh.InputGate(written.append)
    gate.feed(b"ls\x03echo ")
    gate.feed(b"hi\n")
    assert written == [b"ls\x03"]
    gate.release()
    assert written == [b"ls\x03", b"echo hi\n"]
    gate.feed(b"\x03\x03x")  # a second Ctrl-C waits for the prompt after the first one
    assert written[2:] == [b"\x03"]
    gate.release()
    assert written[2:] == [b"\x03", b"\x03"]  # and then gates what follows it
    gate.release()
    assert written[2:] == [b"\x03", b"\x03", b"x"]


async def test_the_gate_lets_go_after_a_second_without_a_prompt() -> None:
    written: list[bytes] = []
    gate = jsh.InputGate(written.append)
    gate.feed(b"\x03y")  # a program that ignores SIGINT never prints a prompt
    await until(lambda: written == [b"\x03", b"y"], "the gate's timeout")


class Jsh:
    """`/bin/jsh --osc` in the agent, with its output frames and command reports."""

    def __init__(self, client: AgentClient, proc: dict[str, Any]) -> None:
        self.client = client
        self.proc_id: int = proc["proc_id"]
        self.frames: list[bytes] = []
        self.events = Events(client)
        client.on_stream(PROC_OUTPUT, self.proc_id, lambda _k, data: self.frames.append(data))

    async def type(self, text: bytes) -> None:
        await self.client.send_input(self.proc_id, text)

    async def frame_with(self, marker: str, after: int = 0) -> int:
        """The index of the first frame from `after` on with a marker that starts with `marker`."""

        def find() -> int | None:
            for index in range(after, len(self.frames)):
                if any(m.startswith(marker) for m in markers(self.frames[index])):
                    return index
            return None

        found = await until(find, f"{marker} in {self.frames[after:]!r}")
        assert found is not None
        return found


async def start_jsh(client: AgentClient) -> Jsh:
    proc = await client.call("proc.spawn", command="/bin/jsh", args=["--osc"], pty=True)
    return Jsh(client, proc)


async def test_jsh_follows_the_bolt_shell_rules(client: AgentClient) -> None:
    shell = await start_jsh(client)
    # R1, R2: `interactive` first, then a prompt; the prompt is ~/… then ❯ on the next line.
    first = await shell.frame_with("prompt")
    assert [markers(f) for f in shell.frames[: first + 1] if markers(f)] == [
        ["interactive"],
        ["prompt"],
    ]
    await until(
        lambda: b"~/project\x1b[0m\r\r\n\x1b[1;35m\xe2\x9d\xaf" in b"".join(shell.frames),
        "~/project, then ❯ on the next line",
    )
    # R3, R8: a command's status, then a prompt; an unknown command is jsh's 127.
    for line, code in ((b"true", 0), (b"false", 1), (b"nosuch-tool --x", 127), (b"", 0)):
        mark = len(shell.frames)
        await shell.type(line + b"\n")
        done = await shell.frame_with("prompt", mark)
        exits = [m for f in shell.frames[mark:done] for m in markers(f)]
        assert len(exits) == 1, (line, exits)
        assert exits[0].endswith(f":{code}"), (line, exits)  # R7 for the empty line
    assert b"jsh: command not found: nosuch-tool" in b"".join(shell.frames)
    # R4: Ctrl-C at the prompt: a prompt and no exit.
    mark = len(shell.frames)
    await shell.type(b"\x03")
    done = await shell.frame_with("prompt", mark)
    assert [m for f in shell.frames[mark : done + 1] for m in markers(f)] == ["prompt"]
    # R5: Ctrl-C during a job: a frame whose marker is exit=…:130, then one with the prompt.
    await shell.type(b"sleep 30\n")
    await shell.events.wait("proc.command", proc_id=shell.proc_id, phase="start",
                            command="sleep 30")  # fmt: skip
    mark = len(shell.frames)
    await shell.type(b"\x03")
    done = await shell.frame_with("prompt", mark)
    marked = [markers(f) for f in shell.frames[mark : done + 1] if markers(f)]
    assert marked == [["exit=" + marked[0][0].partition("=")[2]], ["prompt"]]
    assert marked[0][0].endswith(":130")
    # R6: never two markers in a frame, and a marker always ends its frame.
    for frame in shell.frames:
        assert len(markers(frame)) <= 1, frame
        assert not markers(frame) or frame.endswith(b"\x07"), frame
    assert b"6973" not in b"".join(shell.frames)  # reports never reach a client


async def test_type_ahead_after_ctrl_c_is_not_lost(client: AgentClient) -> None:
    """R9: what bolt types right after Ctrl-C arrives whole, prompt or not."""
    shell = await start_jsh(client)
    await shell.frame_with("prompt")
    for round_ in range(10):
        mark = len(shell.frames)
        await shell.type(b"\x03")
        await shell.type(f"echo typed-ahead-{round_}\n".encode())
        done = await shell.frame_with("exit=", mark)
        assert markers(shell.frames[done])[0].endswith(":0")
        assert f"typed-ahead-{round_}\r\n".encode() in b"".join(shell.frames[mark : done + 1])


async def test_commands_are_reported_with_their_status(client: AgentClient) -> None:
    shell = await start_jsh(client)
    await shell.frame_with("prompt")
    await shell.type(b"echo one; (exit 7)\n")
    started = await shell.events.wait("proc.command", proc_id=shell.proc_id, phase="start")
    assert started["command"] == "echo one; (exit 7)"
    ended = await shell.events.wait("proc.command", proc_id=shell.proc_id, phase="end")
    assert ended["code"] == 7


async def test_terminals_of_one_sandbox_share_a_history_file(client: AgentClient) -> None:
    first, second = await start_jsh(client), await start_jsh(client)
    await first.frame_with("prompt")
    await second.frame_with("prompt")
    await first.type(b"echo shared-history-line\n")
    await first.frame_with("exit=")
    mark = len(second.frames)
    await second.type(b"\n")  # a new prompt reads what the other terminal added
    await second.frame_with("prompt", mark)
    await second.type(b"history | tail -3\n")
    await until(lambda: b"  echo shared-history-line" in b"".join(second.frames), "shared")


async def test_plain_jsh_has_no_markers_and_answers_at_once(client: AgentClient) -> None:
    proc = await client.call("proc.spawn", command="jsh", pty=True)
    shell = Jsh(client, proc)
    await until(lambda: b"\xe2\x9d\xaf" in b"".join(shell.frames), "the prompt")
    await shell.type(b"echo plain-$((6*7))\n")
    await until(lambda: b"plain-42" in b"".join(shell.frames), "the output")
    assert not any(markers(frame) for frame in shell.frames)
    ran = await client.call("proc.run", command="jsh", args=["-c", "echo via-c"])
    assert (ran["code"], base64.b64decode(ran["stdout"])) == (0, b"via-c\n")

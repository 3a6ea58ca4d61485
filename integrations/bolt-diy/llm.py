#!/usr/bin/env python3
"""A scripted LLM for bolt.diy: an OpenAI-compatible server that replays recorded answers.

bolt.diy's `OpenAILike` provider talks to it (`OPENAI_LIKE_API_BASE_URL=http://HOST:PORT/v1`),
so bolt builds apps with no provider key and the same answer every time: tests and demos are
deterministic, and nothing leaves the machine.

    llm.py [--port 8788] [--recordings DIR]

A recording is a folder of `turns.json` (`[{"when": "text in the prompt", "answer": "file"}]`)
and the answer files, plain text as a model would write them (bolt artifacts with file, shell
and start actions). A chat request gets the answer of the first turn, over every recording,
whose `when` occurs in its last user message (case-insensitive). bolt's own questions get the
answers bolt parses: "blank" to its starter-template question (the recordings bring their own
files), the project's files to its context selection, a line to its chat summary. A prompt no
turn matches gets an answer that says so, listing what the recordings know.

Speaks what bolt's AI SDK sends: `GET /v1/models`, and `POST /v1/chat/completions` streamed
(server-sent events: `chat.completion.chunk`s, a usage chunk, `[DONE]`) or not.
Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
MODEL = "cloudcontainer-scripted"
CHUNK_CHARS = 40  # an answer is streamed in pieces about this long, as a model streams tokens
MAX_BODY = 16 * 1024 * 1024
# bolt prefixes every user message with the model and provider it was sent to.
# bolt asks, before a new chat, which starter template fits; the recordings bring their files.
BLANK_TEMPLATE = "<selection><templateName>blank</templateName><title>App</title></selection>"
# ...and, with context optimisation on (its default), a summary of the chat before a follow-up.
SUMMARY = "The user asked for an app; the recorded answers built it and changed it on request."
BOLT_PREFIX = re.compile(r"^\[Model: [^\]]*\]\s*\[Provider: [^\]]*\]\s*", re.S)


@dataclass(frozen=True)
class Turn:
    when: str
    answer: str
    recording: str


def load(folder: Path) -> list[Turn]:
    """Every turn of every recording under `folder`, in recording then turn order."""
    turns = []
    for recording in sorted(p for p in folder.iterdir() if (p / "turns.json").is_file()):
        for turn in json.loads((recording / "turns.json").read_text()):
            answer = (recording / turn["answer"]).read_text()
            turns.append(Turn(turn["when"].lower(), answer, recording.name))
    if not turns:
        raise SystemExit(f"no recordings (folders with turns.json) in {folder}")
    return turns


def answer_for(turns: list[Turn], messages: list[dict[str, Any]]) -> str:
    system = " ".join(_text(m) for m in messages if m.get("role") == "system")
    users = [_text(m) for m in messages if m.get("role") == "user"]
    last = BOLT_PREFIX.sub("", users[-1]) if users else ""
    if "<templateName>" in system or "<templateName>" in last:
        return BLANK_TEMPLATE
    if "<updateContextBuffer>" in system:
        return context_selection(system)
    if "summary of the chat" in system:
        return SUMMARY
    for turn in turns:
        if turn.when in last.lower():
            return turn.answer
    known = "; ".join(f"{t.recording}: {t.when!r}" for t in turns)
    return f"This scripted model has no recorded answer for that prompt. It knows: {known}."


def context_selection(system: str) -> str:
    """bolt's context optimisation asks which files a follow-up needs (at least one, or bolt
    gives up): the project's own files, sources first, at most bolt's five."""
    paths = re.findall(r"^\s*- (/home/project/\S+)\s*$", system, re.M)
    chosen = sorted(paths, key=lambda path: "/src/" not in path)[:5]
    included = "".join(f'\n    <includeFile path="{path}"/>' for path in chosen)
    return f"<updateContextBuffer>{included}\n</updateContextBuffer>"


def _text(message: dict[str, Any]) -> str:
    content = message.get("content", "")
    if isinstance(content, list):  # [{type: "text", text}, {type: "image_url", ...}]
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


class Handler(BaseHTTPRequestHandler):
    turns: list[Turn] = []
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path.rstrip("/") in ("/v1/models", "/models"):
            self._json(200, {"object": "list", "data": [
                {"id": MODEL, "object": "model", "created": 0, "owned_by": "cloudcontainer"},
            ]})  # fmt: skip
        else:
            self._json(404, {"error": {"message": f"no such path: {self.path}"}})

    def do_POST(self) -> None:
        if self.path.rstrip("/") not in ("/v1/chat/completions", "/chat/completions"):
            self._json(404, {"error": {"message": f"no such path: {self.path}"}})
            return
        length = int(self.headers.get("content-length") or 0)
        if not 0 < length <= MAX_BODY:
            self._json(400, {"error": {"message": "a JSON body is needed"}})
            return
        try:
            request = json.loads(self.rfile.read(length))
            messages = request["messages"]
        except (ValueError, KeyError, TypeError):
            self._json(400, {"error": {"message": "not a chat completion request"}})
            return
        answer = answer_for(self.turns, messages)
        if request.get("stream"):
            self._stream(answer)
        else:
            self._json(200, {
                "id": "chatcmpl-scripted", "object": "chat.completion", "created": int(time.time()),
                "model": MODEL,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": answer}}],
                "usage": _usage(messages, answer),
            })  # fmt: skip

    def _stream(self, answer: str) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.end_headers()
        base = {"id": "chatcmpl-scripted", "object": "chat.completion.chunk",
                "created": int(time.time()), "model": MODEL}  # fmt: skip
        pieces = [answer[i : i + CHUNK_CHARS] for i in range(0, len(answer), CHUNK_CHARS)]
        first = {"role": "assistant", "content": ""}
        events = [{**base, "choices": [{"index": 0, "delta": first, "finish_reason": None}]}]
        events += [
            {**base, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]}
            for p in pieces
        ]
        events.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        events.append({**base, "choices": [], "usage": _usage([], answer)})
        try:
            for event in events:
                self.wfile.write(f"data: {json.dumps(event)}\n\n".encode())
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client stopped the answer (bolt's stop button)
        self.close_connection = True

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        sys.stderr.write(f"llm.py: {format % args}\n")


def _usage(messages: list[dict[str, Any]], answer: str) -> dict[str, int]:
    prompt = sum(len(_text(m)) for m in messages) // 4
    completion = len(answer) // 4
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="llm.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8788)
    parser.add_argument("--recordings", type=Path, default=HERE / "recordings")
    args = parser.parse_args(argv)
    Handler.turns = load(args.recordings)
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"llm.py: {len(Handler.turns)} recorded turns at "
          f"http://{args.host}:{server.server_port}/v1", flush=True)  # fmt: skip
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: make bolt stopping
        server.serve_forever()


if __name__ == "__main__":
    main()

"""One upstream response on its way to the browser: parsed, its head rewritten, its body re-framed.

Framing is tracked with httptools, but the head is cut by hand first: httptools' response parser
cannot be told that a response answers a HEAD (httptools#47), so a bodiless response is complete
at its head and the parser never sees what follows.
"""

from __future__ import annotations

from collections.abc import Callable

import httptools

from cloudcontainer.preview import headers as h
from cloudcontainer.preview.inject import Decoder, HeadInjector, decodable
from cloudcontainer.preview.types import Forward

MAX_RESPONSE_HEAD = 256 * 1024


class UpstreamMalformed(Exception):
    """Upstream sent something that is not an HTTP/1.1 response."""


class _Head:
    """httptools callbacks for one response: its head, then (once `relay` is set) its body."""

    def __init__(self) -> None:
        self.reason = b""
        self.headers: h.Headers = []
        self.relay: ResponseRelay | None = None
        self.ended = False

    def on_status(self, status: bytes) -> None:
        self.reason += status

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_body(self, body: bytes) -> None:
        if self.relay is not None:
            self.relay.body(body)

    def on_message_complete(self) -> None:
        self.ended = True
        if self.relay is not None:
            self.relay.complete()


class ResponseRelay:
    """Feed upstream bytes in; rewritten bytes go to `write`. Flags say where the response is."""

    def __init__(
        self,
        *,
        method: str,
        http10: bool,
        close: bool,
        forward: Forward,
        origin: str | None,
        document: bool,
        write: Callable[[bytes], None],
    ) -> None:
        self._method = method
        self._http10 = http10
        self._close = close or http10
        self._forward = forward
        self._origin = origin
        self._document = document
        self._sink = write
        # What one feed produces leaves in one write: a head and its body in one segment.
        self._out: list[bytes] = []
        self._buf = bytearray()
        self._parser: httptools.HttpResponseParser | None = None
        self._chunked_out = False
        self._upstream_eof = False
        self._injector: HeadInjector | None = None
        self._decoder: Decoder | None = None
        self.status = 0
        self.head_sent = False
        self.done = False
        self.upgraded = False
        # Whether upstream's connection can carry the next request.
        self.reusable = False
        # Whether the client's connection can carry the next request.
        self.client_keep = False

    def feed(self, data: bytes) -> None:
        """Relay `data`; raises UpstreamMalformed (after sending what came before it)."""
        try:
            self._feed(data)
        finally:
            self._flush()

    def _write(self, data: bytes) -> None:
        if data:
            self._out.append(data)

    def _flush(self) -> None:
        if self._out:
            out = self._out[0] if len(self._out) == 1 else b"".join(self._out)
            self._out.clear()
            self._sink(out)

    def _feed(self, data: bytes) -> None:
        if self.upgraded:
            self._write(data)
            return
        if self.done:
            self.reusable = False  # bytes nobody asked for: never reuse this connection
            return
        if self._parser is None:
            rest = self._take_heads(data)
            if rest is None:
                return
            data = rest
        if data and self._parser is not None:
            try:
                self._parser.feed_data(data)
            except httptools.HttpParserError as exc:
                if not self.done:
                    raise UpstreamMalformed(str(exc)) from exc
                self.reusable = False

    def untouched(self) -> bool:
        """Whether nothing at all came back yet."""
        return not self._buf and not self.head_sent and self.status == 0

    def feed_eof(self) -> bool:
        """Upstream closed: whether that ends the response properly (a close-delimited body)."""
        if self.done or self.upgraded:
            return True
        if self._parser is not None and self._upstream_eof:
            self._complete()
            self._flush()
            return True
        return False

    def _take_heads(self, data: bytes) -> bytes | None:
        """Cut and relay heads (1xx first); the bytes after the final head, or None for more."""
        self._buf += data
        while True:
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_RESPONSE_HEAD:
                    raise UpstreamMalformed("response head too large")
                return None
            head, rest = bytes(self._buf[: end + 4]), bytes(self._buf[end + 4 :])
            self._buf.clear()
            parser, parsed = self._parse_head(head)
            status = parser.get_status_code()
            if 100 <= status < 200 and status != 101:
                self._write(h.encode_head(_status_line(status, parsed.reason), parsed.headers))
                self._buf += rest
                continue
            self.status = status
            if status == 101:
                self._send_upgrade(parsed)
                self._write(rest)
                return None
            self._start(parser, parsed)
            if self.done:
                self.reusable = self.reusable and not rest
                return None
            return rest

    def _parse_head(self, head: bytes) -> tuple[httptools.HttpResponseParser, _Head]:
        parsed = _Head()
        parser = httptools.HttpResponseParser(parsed)
        try:
            parser.feed_data(head)
        except httptools.HttpParserUpgrade:
            pass
        except httptools.HttpParserError as exc:
            raise UpstreamMalformed(str(exc)) from exc
        return parser, parsed

    def _start(self, parser: httptools.HttpResponseParser, parsed: _Head) -> None:
        """Send the rewritten head and pick the body's framing on both sides."""
        upstream = parsed.headers
        bodiless = self._method == "HEAD" or self.status in (204, 304)
        chunked = "chunked" in (h.get(upstream, "transfer-encoding") or "").lower()
        self._upstream_eof = (
            not bodiless and not chunked and h.get(upstream, "content-length") is None
        )
        client_eof = self._upstream_eof
        out = h.strip_hop_by_hop(upstream)
        if not bodiless and self._injectable(upstream):
            out = self._start_injection(out)
            client_eof = self._http10
        elif chunked and not bodiless:
            self._chunked_out = not self._http10
            client_eof = self._http10
        close = self._close or client_eof
        out = h.client_response_headers(
            out,
            coep=self._forward.coep,
            extra=self._forward.response_headers,
            origin=self._origin,
            cors_origins=self._forward.cors_origins,
        )
        if self._chunked_out:
            out.append(("transfer-encoding", "chunked"))
        if close:
            out.append(("connection", "close"))
        self._write(h.encode_head(_status_line(self.status, parsed.reason), out))
        self.head_sent = True
        self.client_keep = not close
        self.reusable = parser.should_keep_alive() and not self._upstream_eof
        if bodiless:
            self.done = True
            return
        parsed.relay = self
        self._parser = parser
        if parsed.ended:  # Content-Length: 0 ends at the head
            self._complete()

    def _injectable(self, upstream_headers: h.Headers) -> bool:
        return (
            self._forward.inject is not None
            and self._document
            and self._method == "GET"
            and self.status == 200
            and h.is_html(upstream_headers)
            and decodable(_encoding(upstream_headers))
        )

    def _start_injection(self, out: h.Headers) -> h.Headers:
        assert self._forward.inject is not None
        encoding = _encoding(out)
        if encoding not in ("", "identity"):
            self._decoder = Decoder(encoding)
        self._injector = HeadInjector(self._forward.inject)
        self._chunked_out = not self._http10
        drop = {"content-length", "content-encoding", "etag", "content-md5"}
        return [(k, v) for k, v in out if k not in drop]

    def _send_upgrade(self, parsed: _Head) -> None:
        out = h.strip_hop_by_hop(parsed.headers)
        out += [("connection", "Upgrade"), ("upgrade", h.get(parsed.headers, "upgrade") or "")]
        self._write(h.encode_head(_status_line(101, parsed.reason), out))
        self.head_sent = True
        self.upgraded = True

    def body(self, data: bytes) -> None:
        """A piece of the body, as framed by upstream."""
        if self._decoder is not None:
            data = self._decoder.feed(data)
        if self._injector is not None:
            data = self._injector.feed(data)
        self._send(data)

    def _send(self, data: bytes) -> None:
        if not data:
            return
        if self._chunked_out:
            self._write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self._write(data)

    def _complete(self) -> None:
        tail = b""
        if self._decoder is not None:
            tail = self._decoder.finish()
            if self._injector is not None:
                tail = self._injector.feed(tail)
        if self._injector is not None:
            tail += self._injector.finish()
        self._send(tail)
        if self._chunked_out:
            self._write(b"0\r\n\r\n")
        self.done = True

    def complete(self) -> None:
        """Upstream's message ended (its framing said so)."""
        if not self.done:
            self._complete()


def _encoding(headers: h.Headers) -> str:
    return (h.get(headers, "content-encoding") or "").strip().lower()


def _status_line(status: int, reason: bytes) -> str:
    return f"HTTP/1.1 {status} {reason.decode('latin-1')}".rstrip()

"""Streamed HTML injection: bytes go in right after the first `<head ...>` tag.

Only what is needed to find the tag is held back (at most `SCAN_LIMIT` bytes): streaming SSR
flushes its head early and its body late, so buffering the whole document would stall it.
"""

from __future__ import annotations

import re
import zlib

SCAN_LIMIT = 64 * 1024

# `<head>` or `<head attr=...>`, not `<header>`; the `>` closes the tag.
_HEAD = re.compile(rb"<head(?:[\s/][^>]*)?>", re.IGNORECASE)
_HEAD_START = re.compile(rb"<head(?:[\s/>]|$)", re.IGNORECASE)
_DOCTYPE = re.compile(rb"\A(?:\xef\xbb\xbf)?\s*<!doctype[^>]*>", re.IGNORECASE)


class HeadInjector:
    """Feed the body as it comes; what `feed` and `finish` return is what the client gets."""

    def __init__(self, snippet: bytes) -> None:
        self._snippet = snippet
        self._held = bytearray()
        self._done = False

    def feed(self, data: bytes) -> bytes:
        """The bytes that can be sent now."""
        if self._done:
            return data
        self._held += data
        match = _HEAD.search(self._held)
        if match:
            return self._emit(match.end())
        if len(self._held) >= SCAN_LIMIT and not self._tag_pending():
            return self._emit(self._fallback_position())
        return b""

    def finish(self) -> bytes:
        """The rest, at the end of the body."""
        if self._done:
            return b""
        return self._emit(self._fallback_position())

    def _tag_pending(self) -> bool:
        # A `<head` whose `>` has not arrived yet: wait for it, even past the limit.
        return _HEAD_START.search(self._held) is not None and len(self._held) < 2 * SCAN_LIMIT

    def _fallback_position(self) -> int:
        """Before the first `<` after a doctype, or at the start: no `<head` in sight."""
        doctype = _DOCTYPE.match(self._held)
        start = doctype.end() if doctype else 0
        tag = self._held.find(b"<", start)
        return start if tag < 0 else tag

    def _emit(self, at: int) -> bytes:
        out = bytes(self._held[:at]) + self._snippet + bytes(self._held[at:])
        self._held.clear()
        self._done = True
        return out


class Decoder:
    """Streaming gzip/deflate decoding (zlib), output bounded per call by `chunk`."""

    def __init__(self, encoding: str) -> None:
        # 47 = 32 + 15: gzip or zlib header, detected; raw deflate is tried on failure.
        self._zlib = zlib.decompressobj(47)
        self._raw_fallback = encoding == "deflate"
        self._started = False

    def feed(self, data: bytes) -> bytes:
        """Decoded bytes of `data`; raises `zlib.error` on a corrupt stream."""
        try:
            out = self._zlib.decompress(data)
        except zlib.error:
            if not (self._raw_fallback and not self._started):
                raise
            # Some servers send raw deflate for `Content-Encoding: deflate` (RFC 9110 8.4.1.2).
            self._zlib = zlib.decompressobj(-15)
            out = self._zlib.decompress(data)
        self._started = True
        return out

    def finish(self) -> bytes:
        """What the decoder still holds."""
        return self._zlib.flush()


def decodable(encoding: str) -> bool:
    """Whether the proxy can decode `encoding` to inject (gzip, deflate, or none)."""
    return encoding in ("", "identity", "gzip", "x-gzip", "deflate")

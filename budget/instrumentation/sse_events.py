"""A server-sent event stream's body split into its events as its bytes arrive, each
event's own bytes kept (so one can be left out of what the caller reads), and an event's
name and data as the SSE format defines them.
"""

from __future__ import annotations

import re

__all__ = ["EventSplitter", "event_fields"]

_LINE_END = re.compile(rb"\r\n|\r|\n")
_TEXT_LINE_END = re.compile(r"\r\n|\r|\n")  # not str.splitlines: JSON may hold U+2028


class EventSplitter:
    """Feeds of an SSE body's bytes in, its complete events out: each event's bytes up to
    and including the blank line that ends it (any line ending: CRLF, CR, LF)."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._scanned = 0
        """Where the next line of the event being read starts in ``_buffer``."""

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        events: list[bytes] = []
        while (end := _LINE_END.search(self._buffer, self._scanned)) is not None:
            if end.group() == b"\r" and end.end() == len(self._buffer):
                break  # perhaps the first half of a CRLF: wait for the next byte
            blank = end.start() == self._scanned
            self._scanned = end.end()
            if blank:
                events.append(bytes(self._buffer[: self._scanned]))
                del self._buffer[: self._scanned]
                self._scanned = 0
        return events

    def rest(self) -> bytes:
        """What the body ended with after its last complete event (taken out)."""
        rest = bytes(self._buffer)
        self._buffer.clear()
        self._scanned = 0
        return rest


def event_fields(event: bytes) -> tuple[str | None, str]:
    """An event's name (None when it has none) and its data lines joined, as the SSE
    format reads them (comments skipped, one space after the colon dropped)."""
    name: str | None = None
    data: list[str] = []
    for line in _TEXT_LINE_END.split(event.decode("utf-8", errors="replace")):
        if not line or line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            name = value or None
        elif field == "data":
            data.append(value)
    return name, "\n".join(data)

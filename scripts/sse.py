"""The one reader of server-sent events (text/event-stream) for every client in this repository:
the bench, the demo's stream printer, the tests. Bytes in as they arrive, events out the moment a
blank line completes them.

Hand-written on purpose: the parsing rules are a few lines (WHATWG HTML, "event stream
interpretation"), and the libraries that implement them are each tied to one HTTP client
(httpx-sse to httpx, sseclient to a blocking iterator), while this repository reads streams with
aiohttp, http.client and Playwright alike and must see comments (heartbeats) and network reads.
"""
from __future__ import annotations

import codecs
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    """One event: `name` is "message" when the stream named none; a comment line (a heartbeat,
    `: keep-alive`) is an Event with name "comment" and the comment's text as data."""
    name: str
    data: str

    def json(self):
        return json.loads(self.data)


class SSEReader:
    """Incremental parser: feed() each network read, get the events it completed."""

    def __init__(self) -> None:
        # A character split across two reads must not become two replacement characters.
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._name, self._data = "message", []

    def feed(self, chunk: bytes) -> list[Event]:
        self._buffer += self._decoder.decode(chunk)
        events = []
        while True:
            # A line ends at \r\n, \n or \r; a lone \r at the end may be half of a \r\n.
            cut = min((i for i in (self._buffer.find("\n"), self._buffer.find("\r")) if i >= 0), default=-1)
            if cut < 0 or (self._buffer[cut] == "\r" and cut == len(self._buffer) - 1):
                return events
            line = self._buffer[:cut]
            step = 2 if self._buffer.startswith("\r\n", cut) else 1
            self._buffer = self._buffer[cut + step:]
            event = self._line(line)
            if event is not None:
                events.append(event)

    def close(self) -> list[Event]:
        """End of stream: an event without its blank line is dropped, as the standard says."""
        tail = self.feed(b"\n") if self._buffer.endswith("\r") else []
        self._buffer, self._name, self._data = "", "message", []
        return tail

    def _line(self, line: str) -> Event | None:
        if not line:
            if not self._data:
                self._name = "message"
                return None
            event = Event(self._name, "\n".join(self._data))
            self._name, self._data = "message", []
            return event
        if line.startswith(":"):
            return Event("comment", line[1:].strip())
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            self._name = value or "message"
        elif field == "data":
            self._data.append(value)
        return None  # id and retry mean nothing to these clients


async def aiter_events(resp) -> AsyncIterator[Event]:
    """Events of an aiohttp response, each as soon as it is complete."""
    reader = SSEReader()
    async for chunk in resp.content.iter_any():
        for event in reader.feed(chunk):
            yield event
    for event in reader.close():
        yield event


def iter_reads(resp) -> Iterator[list[Event]]:
    """Events of an http.client response, grouped by the network read that completed them
    (a stream a proxy buffered arrives in one read, a live one in many)."""
    reader = SSEReader()
    while chunk := resp.read1(65536):
        yield reader.feed(chunk)
    yield reader.close()

"""scripts/sse.py, the one SSE reader every client here uses: the stream rules that matter when
bytes arrive split anywhere (mid-line, mid-character, between \\r and \\n)."""
from __future__ import annotations

import pytest
from sse import Event, SSEReader

STREAM = (": keep-alive\n\n"
          "data: {\"token\": \"caf\u00e9\"}\n\n"
          "event: done\r\ndata: line one\r\ndata:line two\r\n\r\n"
          "id: 7\nretry: 10\ndata: [DONE]\n\n"
          "data: no blank line at the end")
EXPECTED = [Event("comment", "keep-alive"), Event("message", '{"token": "caf\u00e9"}'),
            Event("done", "line one\nline two"), Event("message", "[DONE]")]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 1000])
def test_events_are_the_same_however_the_bytes_are_split(size):
    raw, reader, events = STREAM.encode(), SSEReader(), []
    for i in range(0, len(raw), size):
        events += reader.feed(raw[i:i + size])
    events += reader.close()
    assert events == EXPECTED
    assert events[1].json() == {"token": "caf\u00e9"}


def test_an_event_is_out_the_moment_its_blank_line_arrives():
    reader = SSEReader()
    assert reader.feed(b"event: done\ndata: {}\n") == []
    assert reader.feed(b"\n") == [Event("done", "{}")]
    # a lone \r may be the first half of \r\n: the line is not cut until the next byte says
    assert reader.feed(b"data: x\r") == []
    assert reader.feed(b"\n\r\n") == [Event("message", "x")]

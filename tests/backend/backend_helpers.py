"""Helpers for the service's tests: wait for readiness, parse server-sent events."""
from __future__ import annotations

import asyncio
import json


async def wait_ready(client, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while (await client.get("/readyz")).status != 200:
            await asyncio.sleep(0.01)


async def sse_events(resp) -> list[tuple[str, object]]:
    """[(event name, parsed data)] for data events ("message" when unnamed), ("comment", text)."""
    events, name = [], "message"
    async for raw in resp.content:
        line = raw.decode().rstrip("\n")
        if line.startswith(":"):
            events.append(("comment", line[1:].strip()))
        elif line.startswith("event:"):
            name = line[6:].strip()
        elif line.startswith("data:"):
            data = line[5:].strip()
            events.append((name, data if data == "[DONE]" else json.loads(data)))
            name = "message"
    return events

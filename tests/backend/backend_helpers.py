"""Helpers for the service's tests: wait for readiness, parse server-sent events."""
from __future__ import annotations

import asyncio

from sse import aiter_events  # scripts/sse.py, the repository's one SSE reader


async def wait_ready(client, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while (await client.get("/readyz")).status != 200:
            await asyncio.sleep(0.01)


async def sse_events(resp) -> list[tuple[str, object]]:
    """[(event name, parsed data)] for data events ("message" when unnamed), ("comment", text)."""
    return [(e.name, e.data if e.name == "comment" or e.data == "[DONE]" else e.json())
            async for e in aiter_events(resp)]

"""Fixtures for the service's own tests: the real app, in process, on the tiny model.

`make_client(**options)` -> aiohttp TestClient of `init_app(Config(model=tiny, **options))` with
the real engine (cli.engine_factory); it returns once the model is loaded (/readyz 200). `client` is the default.
Helpers (sse_events, wait_ready) live in backend_helpers.py.
"""
from __future__ import annotations

import pytest
from ampere_llm_server.app import init_app
from ampere_llm_server.cli import Config, engine_factory
from backend_helpers import wait_ready


@pytest.fixture
def make_client(aiohttp_client, tiny_model):
    async def make(factory=None, **options):
        config = Config(model=str(tiny_model), **{"threads": 1, "node_name": "test-node",
                                                  **options})
        app = init_app(config, factory or engine_factory(config))
        client = await aiohttp_client(app)
        if factory is None:
            await wait_ready(client)
        return client
    return make


@pytest.fixture
async def client(make_client):
    return await make_client()

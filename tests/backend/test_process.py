"""The real process on the tiny model: a burst beyond slots + queue, the per-request log line, a
model llama.cpp refuses, and configuration through a TOML file and the environment."""
from __future__ import annotations

import asyncio
import json

import aiohttp
import numpy as np
from gguf import GGUFWriter


async def test_burst_beyond_slots_and_queue_is_200_or_503_never_500(run_server, tiny_model):
    server = run_server(tiny_model, "--parallel", "1", "--max-queue", "2", "--threads", "1")
    body = {"prompt": "Hello", "max_tokens": 400, "temperature": 0, "stream": False}
    async with aiohttp.ClientSession() as s:
        async def one():
            async with s.post(server.url + "/generate", json=body) as r:
                return r.status, r.headers.get("Retry-After"), await r.json()

        results = await asyncio.gather(*(one() for _ in range(12)))
    statuses = sorted(st for st, _, _ in results)
    assert set(statuses) <= {200, 503}, statuses
    assert statuses.count(200) >= 3  # one running + two queued at the least
    assert statuses.count(503) >= 1
    for status, retry_after, reply in results:
        if status == 503:
            assert reply["error"]["type"] == "overloaded" and int(retry_after) >= 1
    assert server.get("/readyz")[0] == 200  # and it still serves


async def test_one_json_log_line_per_request(run_server, tiny_model):
    server = run_server(tiny_model, "--threads", "1")
    async with aiohttp.ClientSession() as s:
        async with s.post(server.url + "/generate", headers={"X-Request-Id": "log-test-1"},
                          json={"prompt": "Hi", "max_tokens": 4, "stream": False}) as r:
            assert r.status == 200
        async with s.post(server.url + "/generate", data=b"{",
                          headers={"X-Request-Id": "log-test-2"}) as r:
            assert r.status == 400
    lines = [json.loads(line.split(": ", 1)[1]) for line in server.log().splitlines()
             if line.startswith("INFO ampere_llm.access: ")]
    ok = [d for d in lines if d["id"] == "log-test-1"]
    assert len(ok) == 1
    assert {"route", "status", "tokens_in", "tokens_out", "queue_ms", "ttft_ms", "tok_s"} <= set(ok[0])
    assert ok[0]["route"] == "/generate" and ok[0]["status"] == 200 and ok[0]["tokens_out"] >= 1
    bad = [d for d in lines if d["id"] == "log-test-2"]
    assert len(bad) == 1 and bad[0]["status"] == 400
    assert bad[0]["error"].startswith("invalid_request: body is not valid JSON")


def test_a_model_llama_cpp_refuses_ends_the_process(run_server, tmp_path):
    model = tmp_path / "unknown-arch.gguf"
    w = GGUFWriter(str(model), "no-such-architecture")
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    server = run_server(model, wait=False)
    assert server.proc.wait(60) == 1
    assert "model failed to load" in server.log()


def test_config_file_and_environment(run_server, tiny_model, tmp_path):
    (tmp_path / "server.toml").write_text(f'model = "{tiny_model}"\nnode_name = "from-toml"\n'
                                          'max_queue = 3\nthreads = 1\n')
    (tmp_path / "key").write_text("k3y\n")
    server = run_server(tiny_model, "--config", tmp_path / "server.toml",
                        env={"AMPERE_LLM_API_KEY_FILE": str(tmp_path / "key"),
                             "AMPERE_LLM_NODE_NAME": "from-env"})
    status, headers, _ = server.get("/v1/models")
    assert status == 401 and headers["X-Served-By"] == "from-env"
    status, _, body = server.get("/v1/models", headers={"Authorization": "Bearer k3y"})
    assert status == 200 and json.loads(body)["data"][0]["id"] == tiny_model.stem

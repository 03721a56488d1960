"""The console script: option sources and precedence, and every refusal to start (one line, non-zero)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from ampere_llm_server.cli import ConfigError, load_config

SERVER = str(Path(sys.executable).parent / "ampere-llm-server")


def start_fails(*args: str, env: dict | None = None) -> tuple[int, str]:
    """Run the real console script, which must exit before serving; (exit code, stderr)."""
    p = subprocess.run([SERVER, "--port", "1", *args], capture_output=True, text=True,
                       timeout=30, env={**os.environ, **(env or {})})
    return p.returncode, p.stderr


def test_precedence_cli_over_env_over_file_over_defaults(tmp_path):
    toml = tmp_path / "server.toml"
    toml.write_text('model = "/m.gguf"\nmax_queue = 3\nctx = 1024\nport = 9001\n')
    env = {"AMPERE_LLM_CONFIG": str(toml), "AMPERE_LLM_MAX_QUEUE": "5", "AMPERE_LLM_CTX": "2048"}
    c = load_config(["--ctx", "512"], env)
    assert (c.model, c.port, c.max_queue, c.ctx) == ("/m.gguf", 9001, 5, 512)
    assert c.host == "127.0.0.1" and c.parallel == 4 and c.flash_attn == "on"
    assert load_config(["--model", "m", "--flash-attn", "off"], {}).flash_attn == "off"
    assert (c.batch, c.prefill_chunk) == (512, 256)
    assert load_config(["--model", "m", "--prefill-chunk", "512"], {}).prefill_chunk == 512
    assert c.threads == len(os.sched_getaffinity(0)) >= 1  # the cores this process may use


@pytest.mark.parametrize("argv, env, toml, says", [
    ([], {}, None, "--model is required"),
    (["--model", "m", "--port", "http"], {}, None, "port from --port must be an integer"),
    (["--model", "m", "--port", "70000"], {}, None, "--port 70000 is out of range"),
    (["--model", "m"], {"AMPERE_LLM_THREADS": "0"}, None, "--threads 0 is out of range"),
    (["--model", "m", "--log-level", "loud"], {}, None, "--log-level 'loud'"),
    (["--model", "m"], {"AMPERE_LLM_FLASH_ATTN": "yes"}, None, "--flash-attn 'yes': use one of off, on"),
    (["--model", "m"], {"AMPERE_LLM_PREFILL_CHUNK": "4"}, None, "--prefill-chunk 4 is out of range"),
    (["--model", "m", "--bogus", "1"], {}, None, "unrecognized arguments: --bogus"),
    (["--model", "m"], {}, "max_queue = 3\nmax_queu = 4\n", "unknown key 'max_queu'"),
    (["--model", "m"], {}, "ctx = \"big\"\n", "ctx from"),
    (["--model", "m"], {}, "ctx = [", "is not valid TOML"),
])
def test_bad_options_say_what_is_wrong(tmp_path, argv, env, toml, says):
    if toml is not None:
        (tmp_path / "c.toml").write_text(toml)
        argv = [*argv, "--config", str(tmp_path / "c.toml")]
    with pytest.raises(ConfigError, match=None) as e:
        load_config(argv, env)
    assert says in str(e.value)
    assert "\n" not in str(e.value)


def test_missing_truncated_and_non_gguf_models_exit_before_starting(tmp_path, tiny_model):
    data = tiny_model.read_bytes()
    (tmp_path / "trunc.gguf").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.gguf").write_text("<html>404 Not Found</html>" * 10)
    cases = {str(tmp_path / "absent.gguf"): "does not exist",
             str(tmp_path / "trunc.gguf"): "is truncated",
             str(tmp_path / "text.gguf"): "is not GGUF",
             str(tmp_path): "is not a regular file"}
    for model, says in cases.items():
        code, err = start_fails("--model", model)
        assert code == 1, err
        assert says in err and len(err.strip().splitlines()) == 1, err


def test_bad_api_key_file_and_bad_option_exit(tmp_path, tiny_model):
    (tmp_path / "empty").write_text("\n")
    code, err = start_fails("--model", str(tiny_model), "--api-key-file", str(tmp_path / "empty"))
    assert code == 1 and "must hold one key" in err
    code, err = start_fails("--model", str(tiny_model), "--api-key-file", str(tmp_path / "nope"))
    assert code == 1 and "No such file" in err
    code, err = start_fails("--model", str(tiny_model), "--ctx", "-5")
    assert code == 2 and len(err.strip().splitlines()) == 1, err


def test_port_in_use_exits_1(run_server, tiny_model):
    first = run_server(tiny_model)
    code, err = start_fails("--model", str(tiny_model), "--port", str(first.port),
                            "--host", "127.0.0.1")
    assert code == 1 and f"cannot listen on 127.0.0.1:{first.port}" in err, err


def test_missing_llama_cpp_library_is_one_line(tiny_model, tmp_path):
    code, err = start_fails("--model", str(tiny_model), env={"LLAMA_CPP_LIB_PATH": str(tmp_path)})
    assert code == 1 and "cannot load llama.cpp" in err and str(tmp_path) in err
    assert len(err.strip().splitlines()) == 1, err

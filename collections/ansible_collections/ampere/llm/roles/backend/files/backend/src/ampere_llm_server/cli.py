"""`ampere-llm-server`: options (command line > AMPERE_LLM_* > TOML --config > defaults), checks,
serving.

The loader is the standard library's argparse and tomllib plus ~40 lines of merging, kept so: each
error is one line naming the source of the bad value (`port from AMPERE_LLM_PORT must be an
integer`), where pydantic-settings would add pydantic, pydantic-core (compiled, per platform) and
python-dotenv to the node's lock, 0.18 s to startup and multi-line errors that do not say where a
value came from.

Everything that can be known wrong before the model loads is checked first and ends the process
with one line on stderr and exit code 2 (options) or 1 (model file, API key file, port): a
systemd unit or an operator then sees what to fix instead of a half-started service. SIGTERM
drains (see scheduler.py) and exits 0.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Ubuntu 22.04's Python 3.10: the same parser, from PyPI (pyproject.toml's tomli)
    import tomli as tomllib

from .engine import ConfigError

PROG = "ampere-llm-server"


def default_threads() -> int:
    # The cores this process may run on (cgroups/taskset), not the machine's: a 2-OCPU node has 4.
    return len(os.sched_getaffinity(0))


@dataclass(frozen=True)
class Config:
    model: str = ""
    host: str = "127.0.0.1"
    port: int = 8000
    threads: int = field(default_factory=default_threads)
    ctx: int = 4096
    parallel: int = 4
    max_queue: int = 8
    api_key_file: str = ""
    node_name: str = field(default_factory=socket.gethostname)
    drain_timeout: float = 30.0
    max_body_bytes: int = 1 << 20
    log_level: str = "info"
    heartbeat_interval: float = 10.0
    flash_attn: str = "on"
    batch: int = 512
    prefill_chunk: int = 256
    # Derived, not options:
    api_key: str = field(default="", metadata={"derived": True})
    started: float = field(default_factory=time.time, metadata={"derived": True})


HELP = {
    "model": "GGUF model file (required)",
    "host": "listen address (default 127.0.0.1: NGINX in front)",
    "port": "listen port (default 8000)",
    "threads": "llama.cpp threads (default: the cores this process may use)",
    "ctx": "context tokens per sequence (default 4096)",
    "parallel": "sequences generated at once, batched into each decode step (default 4, as "
                "llama-server's)",
    "max_queue": "requests that may wait for a slot; beyond that 503 + Retry-After (default 8)",
    "api_key_file": "file holding the API key; then /generate and /v1/* need Bearer auth",
    "node_name": "name sent in X-Served-By (default: host name)",
    "config": "TOML file with any of these options (keys with _ for -)",
    "drain_timeout": "seconds in-flight requests may take after SIGTERM (default 30)",
    "max_body_bytes": "largest request body (default 1048576)",
    "log_level": "debug | info | warning | error (default info)",
    "heartbeat_interval": "seconds between SSE keep-alive comments while idle (default 10; "
                          "keep it under the load balancer's idle timeout)",
    "flash_attn": "on | off: llama.cpp's flash-attention kernel (default on: the faster here, as "
                  "llama-server's default; off: a greedy answer is the same alone and beside other "
                  "streams, for a few per cent of speed, see make bench)",
    "batch": "most tokens one llama_decode takes (llama.cpp's n_batch and n_ubatch; default 512)",
    "prefill_chunk": "most prompt tokens read in a step while other streams generate: a longer "
                     "prompt is read over several steps so theirs keep pace (default 256)",
}
# (minimum, maximum) of each number
LIMITS = {"port": (1, 65535), "threads": (1, 1024), "ctx": (64, 1 << 20), "parallel": (1, 256),
          "max_queue": (0, 100_000), "drain_timeout": (0, 86_400),
          "max_body_bytes": (1024, 1 << 30), "heartbeat_interval": (0.05, 3600),
          "batch": (16, 65_536), "prefill_chunk": (8, 65_536)}
LOG_LEVELS = ("debug", "info", "warning", "error")
FLASH_ATTN = ("off", "on")


def _options() -> list[tuple[str, type]]:
    return [(f.name, {"int": int, "float": float}.get(str(f.type), str))
            for f in fields(Config) if not f.metadata.get("derived")]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not argparse's usage block
        raise ConfigError(f"{message} (see {PROG} --help)")


def _convert(name: str, kind: type, value: Any, source: str) -> Any:
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} from {source} must be a string, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(f"{name} from {source} must be a number, got {value!r}")
    try:
        if kind is int and isinstance(value, float):  # TOML 8.0 for an integer option
            if not value.is_integer():
                raise ValueError
            return int(value)
        return kind(value)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ConfigError(f"{name} from {source} must be {what}, got {value!r}") from None


def load_config(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    """Merge the sources (command line > environment > config file > defaults) and validate."""
    environ = os.environ if environ is None else environ
    parser = _Parser(prog=PROG, description="The node's LLM inference service.",
                     argument_default=argparse.SUPPRESS)
    opts = _options()
    metavars = {"model": "PATH", "host": "ADDR", "api_key_file": "FILE", "node_name": "NAME",
                "config": "FILE", "log_level": "LEVEL", "flash_attn": "on|off", int: "N", float: "SECONDS"}
    for name, kind in opts + [("config", str)]:
        parser.add_argument("--" + name.replace("_", "-"), dest=name, help=HELP[name],
                            metavar=metavars.get(name) or metavars[kind])
    cli = vars(parser.parse_args(argv))

    values: dict[str, Any] = {}
    config_file = cli.pop("config", None) or environ.get("AMPERE_LLM_CONFIG")
    if config_file:
        try:
            data = tomllib.loads(Path(config_file).read_text())
        except OSError as e:
            raise ConfigError(f"config file {config_file}: {e.strerror or e}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"config file {config_file} is not valid TOML: {e}") from None
        known = dict(opts)
        for key, value in data.items():
            if key not in known:
                raise ConfigError(f"config file {config_file}: unknown key {key!r} "
                                  f"(known: {', '.join(known)})")
            values[key] = _convert(key, known[key], value, config_file)
    for name, kind in opts:
        env = "AMPERE_LLM_" + name.upper()
        if env in environ:
            values[name] = _convert(name, kind, environ[env], env)
        if name in cli:
            values[name] = _convert(name, kind, cli[name], "--" + name.replace("_", "-"))
    config = Config(**values)
    _validate(config)
    return config


def _validate(c: Config) -> None:
    if not c.model:
        raise ConfigError("--model is required (a GGUF file; or AMPERE_LLM_MODEL, or model = in "
                          "--config)")
    for name, (lo, hi) in LIMITS.items():
        v = getattr(c, name)
        if not lo <= v <= hi:
            raise ConfigError(f"--{name.replace('_', '-')} {v} is out of range {lo}..{hi}")
    if c.log_level not in LOG_LEVELS:
        raise ConfigError(f"--log-level {c.log_level!r}: use one of {', '.join(LOG_LEVELS)}")
    if c.flash_attn not in FLASH_ATTN:
        raise ConfigError(f"--flash-attn {c.flash_attn!r}: use one of {', '.join(FLASH_ATTN)}")
    if not c.node_name or len(c.node_name) > 255 or not c.node_name.isprintable():
        raise ConfigError("--node-name must be 1-255 printable characters")


def read_api_key(path: str) -> str:
    try:
        key = Path(path).read_text().strip()
    except OSError as e:
        raise ConfigError(f"API key file {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"API key file {path} is not text") from None
    if not key or any(ch.isspace() for ch in key) or not key.isprintable():
        raise ConfigError(f"API key file {path} must hold one key: printable, no spaces")
    return key


def engine_factory(config: Config) -> Callable[[Config], Any]:
    """The engine, its module imported (and libllama loaded) before anything starts."""
    try:
        import llama_cpp  # noqa: F401 - loads libllama now, not in the middle of serving

        from .batch import BatchEngine
    except (ImportError, OSError, RuntimeError) as e:
        where = os.environ.get("LLAMA_CPP_LIB_PATH", "(LLAMA_CPP_LIB_PATH not set)")
        raise ConfigError(f"cannot load llama.cpp for llama-cpp-python from {where}: {e}") from None
    # One engine for every --parallel (1 is one slot): the same sampler and code path everywhere.
    return lambda c: BatchEngine(c.model, n_ctx=c.ctx, n_threads=c.threads, slots=c.parallel,
                                 n_batch=c.batch, prefill_chunk=c.prefill_chunk,
                                 flash_attn=c.flash_attn == "on")


def setup_logging(level: str) -> None:
    # A private copy of stderr: llama-cpp-python points fds 1 and 2 at /dev/null while it loads a
    # model, which would otherwise swallow every log line written meanwhile.
    stream = os.fdopen(os.dup(sys.stderr.fileno()), "w", buffering=1)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


async def serve(config: Config, make_engine: Callable[[Config], Any]) -> int:
    from aiohttp import web

    from .app import SCHEDULER, STOP, init_app

    log = logging.getLogger("ampere_llm")
    # Bind before the app starts (and the model starts loading): a taken port ends it cleanly.
    try:
        sock = socket.create_server((config.host, config.port),
                                    family=socket.AF_INET6 if ":" in config.host else socket.AF_INET)
    except OSError as e:
        log.error("cannot listen on %s:%d: %s", config.host, config.port, e.strerror or e)
        return 1
    app = init_app(config, make_engine)
    loop = asyncio.get_running_loop()
    stop: asyncio.Future = app[STOP]
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda s=sig: stop.done() or stop.set_result(-s))
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None, shutdown_timeout=5)
    await runner.setup()
    await web.SockSite(runner, sock).start()
    log.info("listening on http://%s:%d (node %s, %d threads, parallel %d, queue %d)",
             config.host, config.port, config.node_name, config.threads, config.parallel,
             config.max_queue)
    code = await stop
    if code < 0:  # a signal: drain, then a clean exit
        log.info("%s: draining (up to %.0f s)", signal.Signals(-code).name, config.drain_timeout)
        clean = await app[SCHEDULER].drain(config.drain_timeout)
        log.info("drained%s; exiting", "" if clean else " (cancelled what was left)")
        code = 0
    await runner.cleanup()
    return code


def main(argv: list[str] | None = None) -> None:
    from .modelfile import ModelFileError, check_model_file

    try:
        config = load_config(argv)
    except ConfigError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        sys.exit(2)
    try:
        check_model_file(config.model)
        if config.api_key_file:
            config = replace(config, api_key=read_api_key(config.api_key_file))
        make_engine = engine_factory(config)
    except (ModelFileError, ConfigError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        sys.exit(1)
    setup_logging(config.log_level)
    sys.exit(asyncio.run(serve(config, make_engine)))

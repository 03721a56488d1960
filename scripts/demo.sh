#!/usr/bin/env bash
# `make demo`: one serving node on this machine. A booted Debian 12 systemd container plays the seed
# host (scripts/nspawn.sh), site.yml configures it exactly as it would a real A2 host (inventories/local:
# llama.cpp from the sdist, SmolLM2 as the small model), then the page's URL and one streamed answer.
#   demo.sh up     bring it up (re-running converges the running node again)
#   demo.sh down   stop it and remove it
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${AMPERE_LLM_CACHE:-$HOME/.cache/ampere-llm}
export AMPERE_LLM_CACHE=$CACHE
NAME=ampere-llm-demo
SSH_PORT=22040                       # must match inventories/local/hosts.yml
KEY=$CACHE/machines/demo_ed25519     # ditto
PY=${PYTHON:-.venv/bin/python}

PORT_FILE=$CACHE/machines/$NAME.webport

running() { [ -e "$CACHE/machines/$NAME.pid" ] && kill -0 "$(cat "$CACHE/machines/$NAME.pid")" 2>/dev/null; }
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

up() {
  "$PY" scripts/small_models.py smollm2 >/dev/null      # the model file the node gets (cached)
  mkdir -p "$CACHE/machines"
  [ -f "$KEY" ] || ssh-keygen -q -t ed25519 -N "" -f "$KEY"
  # The container shares this machine's network: the page goes on 80 when it is free, else 8080
  # (a running node keeps the port it got).
  if [ -z "${AMPERE_LLM_DEMO_WEB_PORT:-}" ]; then
    if running && [ -f "$PORT_FILE" ]; then AMPERE_LLM_DEMO_WEB_PORT=$(cat "$PORT_FILE")
    elif port_free 80; then AMPERE_LLM_DEMO_WEB_PORT=80
    else AMPERE_LLM_DEMO_WEB_PORT=8080; fi
  fi
  export AMPERE_LLM_DEMO_WEB_PORT
  running || bash scripts/nspawn.sh up "$NAME" "$SSH_PORT" "$KEY.pub"
  echo "$AMPERE_LLM_DEMO_WEB_PORT" >"$PORT_FILE"
  echo "==> ansible-playbook site.yml (first run compiles llama.cpp in the container: ~5 min on 2 cores)"
  .venv/bin/ansible-playbook site.yml
  local url="http://127.0.0.1:$AMPERE_LLM_DEMO_WEB_PORT"
  echo
  echo "==> The node is up. Page: $url/   (stop it: make demo-down)"
  echo "==> One streamed answer from $url/generate:"
  "$PY" scripts/stream_generate.py "$url/generate" "In one sentence, what is an Arm server good for?"
}

down() {
  bash scripts/nspawn.sh down "$NAME"
  rm -f "$PORT_FILE"
  echo "==> $NAME removed"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  *) echo "usage: demo.sh up|down" >&2; exit 2 ;;
esac

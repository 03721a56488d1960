#!/usr/bin/env bash
# `make demo`: the reference architecture's pool on this machine (pool/local.py). A booted Debian 12
# systemd container plays the seed host (scripts/nspawn.sh) and site.yml configures it exactly as it
# would a real A2 host (inventories/local + pool/seed-vars.yml: llama.cpp from the sdist, SmolLM2);
# its root filesystem, cleaned by image/clean.sh, becomes the image; two nodes boot from it,
# each in a network namespace of its own; HAProxy balances them. Then the page's URL and one answer.
#   demo.sh up     bring it up (a running pool is left as it is and shown)
#   demo.sh down   stop and remove all of it (nodes, HAProxy, seed, images)
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE=${AMPERE_LLM_CACHE:-$HOME/.cache/ampere-llm}
export AMPERE_LLM_CACHE=$CACHE
PY=${PYTHON:-.venv/bin/python}
POOL=("$PY" pool/local.py --name demo)
STATE=$CACHE/pool/demo/state.json

port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

up() {
  # The balancer is the page's door: port 80 when it is free, else 8080 (AMPERE_LLM_DEMO_WEB_PORT
  # chooses). The seed keeps to 22040 (SSH, inventories/local), 18000 and 18080 on this machine's
  # loopback; the nodes use those same ports inside their own namespaces.
  local port=${AMPERE_LLM_DEMO_WEB_PORT:-}
  if [ -z "$port" ]; then
    if [ -f "$STATE" ]; then port=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["config"]["port"])' "$STATE")
    elif port_free 80; then port=80
    else port=8080; fi
  fi
  # The one-node demo of earlier versions held these ports: it goes first.
  [ -e "$CACHE/machines/ampere-llm-demo.pid" ] && bash scripts/nspawn.sh down ampere-llm-demo
  echo "==> the pool: seed -> image -> 2 nodes -> HAProxy on 127.0.0.1:$port (first run compiles llama.cpp in the seed: ~5 min on 2 cores)"
  "${POOL[@]}" up --nodes 2 --port "$port" --seed-ssh 22040 --seed-backend 18000 --seed-web 18080
  local url="http://127.0.0.1:$port"
  echo
  echo "==> Two streamed answers through the balancer (X-Served-By names the node; leastconn spreads them):"
  "$PY" scripts/stream_generate.py "$url/generate" "In one sentence, what is an Arm server good for?"
  "$PY" scripts/stream_generate.py "$url/generate" "Name three colours of the rainbow."
  echo
  echo "==> The pool is up. Page (through HAProxy; its header shows the node that answered): $url/"
  echo "    status: $PY pool/local.py --name demo status    stop: make demo-down"
}

down() {
  "${POOL[@]}" down
  [ -e "$CACHE/machines/ampere-llm-demo.pid" ] && bash scripts/nspawn.sh down ampere-llm-demo
  rm -f "$CACHE/machines/ampere-llm-demo.webport"
  echo "==> the demo pool is removed"
}

case ${1:-} in
  up) up ;;
  down) down ;;
  *) echo "usage: demo.sh up|down" >&2; exit 2 ;;
esac

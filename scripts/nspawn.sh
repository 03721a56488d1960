#!/usr/bin/env bash
# Booted Debian 12 systemd containers (systemd-nspawn) that stand in for a fresh seed host:
# molecule's create/destroy and `make demo` both go through here.
#
#   nspawn.sh golden                      build (once) and print the cached golden rootfs
#   nspawn.sh up NAME SSH_PORT PUBKEY     copy the golden rootfs, boot it, wait for sshd on 127.0.0.1:SSH_PORT
#   nspawn.sh down NAME                   stop it and remove its rootfs
#   nspawn.sh exec NAME CMD...            run a command inside (debugging, journalctl)
#
# The container shares the host's network namespace (no bridge or NAT needed; apt and pip work),
# so every server in it listens on 127.0.0.1 on a port of its own. The host's model and sdist
# caches are bind-mounted read-only at /srv/ampere-llm-cache, so no model crosses the network.
# ccache is the one thing a real seed host would not have: llama.cpp's CMake uses it when present,
# and the host's compiler cache is mounted as root's, so only the first container compiles in full.
set -euo pipefail

CACHE=${AMPERE_LLM_CACHE:-$HOME/.cache/ampere-llm}
MACHINES=$CACHE/machines
# What a minimal seed host needs to boot and be reached (systemd, sshd, python3 and python3-apt for
# Ansible, as Ubuntu cloud images have them: apt in check mode needs the latter), plus
# the base role's Debian packages preinstalled: the converge still declares them, but does not spend
# minutes in apt. The golden copy is keyed by this list, so changing it builds a new one.
PACKAGES=systemd,systemd-sysv,dbus,python3,python3-apt,openssh-server,iproute2,ca-certificates,sudo,curl,\
build-essential,cmake,git,pkg-config,libopenblas-dev,nginx,python3-venv,python3-pip,python3-dev,\
ccache
MIRROR=${AMPERE_LLM_DEBIAN_MIRROR:-http://deb.debian.org/debian}

die() { echo "nspawn.sh: $*" >&2; exit 1; }

golden() {
  local key dir
  key=$(echo "$PACKAGES $MIRROR" | md5sum | cut -c1-10)
  dir=$CACHE/rootfs/bookworm-$key
  if [ ! -e "$dir/.complete" ]; then
    command -v debootstrap >/dev/null || die "debootstrap missing: make deps"
    rm -rf "$dir.tmp" && mkdir -p "$CACHE/rootfs"
    echo "==> debootstrap Debian 12 golden rootfs ($dir), ~3 min once" >&2
    debootstrap --variant=minbase --include="$PACKAGES" bookworm "$dir.tmp" "$MIRROR" >"$dir.log" 2>&1 \
      || { tail -20 "$dir.log" >&2; die "debootstrap failed (log: $dir.log)"; }
    # A fresh host has no NGINX default site listening on *:80 of the (shared) network: the web
    # role owns port and site. Services start only when the role says so.
    rm -f "$dir.tmp/etc/nginx/sites-enabled/default"
    chroot "$dir.tmp" systemctl disable nginx.service >/dev/null 2>&1 || true
    chroot "$dir.tmp" apt-get clean
    touch "$dir.tmp/.complete" && mv "$dir.tmp" "$dir"
  fi
  echo "$dir"
}

# The container trusts the certificate authorities this machine added (a TLS-intercepting egress
# proxy, a corporate CA), so apt, pip and get_url inside work wherever they work outside. pip
# bundles its own CA list, hence the pip.conf pointing it at the system's.
trust_host_cas() {
  local root=$1 added=0 crt
  for crt in /usr/local/share/ca-certificates/*.crt; do
    [ -e "$crt" ] || continue
    install -m 644 "$crt" "$root/usr/local/share/ca-certificates/" && added=1
  done
  [ $added = 1 ] || return 0
  chroot "$root" update-ca-certificates >/dev/null 2>&1
  printf '[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n' >"$root/etc/pip.conf"
}

pid_of() { cat "$MACHINES/$1.pid" 2>/dev/null || true; }

# PID 1 of the container as the host sees it (the child of systemd-nspawn).
init_pid() { pgrep -P "$(pid_of "$1")" | head -1; }

wait_for() {  # wait_for SECONDS DESCRIPTION CMD...: poll a condition with a deadline
  local deadline=$((SECONDS + $1)) what=$2; shift 2
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "timed out waiting for $what"
    sleep 0.5
  done
}

up() {
  local name=$1 port=$2 pubkey=$3 gold root
  [ -n "$(pid_of "$name")" ] && kill -0 "$(pid_of "$name")" 2>/dev/null && die "$name is already running"
  gold=$(golden)
  root=$MACHINES/$name
  mkdir -p "$MACHINES" && rm -rf "$root"
  cp -a "$gold" "$root"
  echo "$name" >"$root/etc/hostname"
  install -d -m 700 "$root/root/.ssh"
  install -m 600 "$pubkey" "$root/root/.ssh/authorized_keys"
  printf 'Port %s\nListenAddress 127.0.0.1\nPasswordAuthentication no\nPermitRootLogin prohibit-password\n' \
    "$port" >"$root/etc/ssh/sshd_config.d/nspawn.conf"
  trust_host_cas "$root"
  mkdir -p "$CACHE/models" "$CACHE/sdist" "$CACHE/ccache"
  setsid systemd-nspawn -b -D "$root" -M "$name" --register=no --keep-unit \
    --bind-ro="$CACHE/models:/srv/ampere-llm-cache/models" \
    --bind-ro="$CACHE/sdist:/srv/ampere-llm-cache/sdist" \
    --bind="$CACHE/ccache:/root/.cache/ccache" \
    >"$MACHINES/$name.log" 2>&1 </dev/null &
  echo $! >"$MACHINES/$name.pid"
  wait_for 60 "$name to boot" bash -c "[ -n \"\$(pgrep -P $!)\" ]"
  # `--wait` returns once boot finished, whatever the state; sshd's port is what Ansible needs.
  wait_for 120 "$name to finish booting" nsenter -t "$(init_pid "$name")" -a systemctl is-system-running --wait
  wait_for 60 "sshd of $name on 127.0.0.1:$port" bash -c "exec 3<>/dev/tcp/127.0.0.1/$port"
  echo "==> $name is up (ssh root@127.0.0.1 -p $port)" >&2
}

down() {
  local name=$1 pid
  pid=$(pid_of "$name")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid"
    local deadline=$((SECONDS + 30))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  rm -rf "${MACHINES:?}/$name" "$MACHINES/$name.pid"
}

exec_in() {
  local name=$1; shift
  local pid; pid=$(init_pid "$name")
  [ -n "$pid" ] || die "$name is not running"
  nsenter -t "$pid" -a "$@"
}

case ${1:-} in
  golden) golden ;;
  up) [ $# -eq 4 ] || die "usage: up NAME SSH_PORT PUBKEY"; up "$2" "$3" "$4" ;;
  down) [ $# -eq 2 ] || die "usage: down NAME"; down "$2" ;;
  exec) [ $# -ge 3 ] || die "usage: exec NAME CMD..."; shift; exec_in "$@" ;;
  *) die "usage: nspawn.sh golden | up NAME SSH_PORT PUBKEY | down NAME | exec NAME CMD..." ;;
esac

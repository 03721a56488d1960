#!/usr/bin/env bash
# Booted Debian 12 systemd containers (systemd-nspawn) that stand in for a fresh seed host:
# molecule's create/destroy and `make demo` both go through here.
#
#   nspawn.sh golden                      build (once) and print the cached golden rootfs
#   nspawn.sh up NAME SSH_PORT PUBKEY     copy the golden rootfs, boot it, wait for sshd on 127.0.0.1:SSH_PORT
#   nspawn.sh boot NAME IMAGE [NETNS]     boot IMAGE (a cleaned snapshot, pool/local.py) under an overlay, no SSH;
#                                         in network namespace /run/netns/NETNS when given (pool nodes)
#   nspawn.sh down NAME                   stop it and remove its rootfs
#   nspawn.sh exec NAME CMD...            run a command inside (debugging, journalctl)
#
#   --arch arm64 (before the command) makes an arm64 rootfs and container on an x86_64 machine: every
#   arm64 program runs under qemu-user through binfmt_misc (qemu-user-static, binfmt-support; make deps).
#   That is ~9x slower than native and only for proving the roles on aarch64 (molecule/arm64).
#   --suite trixie (before the command) makes a Debian 13 rootfs instead of Debian 12 (bookworm, the
#   default): the second OS release the roles are booted on (molecule/trixie).
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
HOST_ARCH=$(dpkg --print-architecture)
ARCH=$HOST_ARCH
SUITE=bookworm

die() { echo "nspawn.sh: $*" >&2; exit 1; }

foreign() { [ "$ARCH" != "$HOST_ARCH" ]; }

# A foreign-arch rootfs runs its programs through qemu-user: binfmt_misc must hand arm64 ELF files
# to qemu-aarch64-static. Debian registers it with the F flag (interpreter opened at registration),
# so it works inside the container's chroot without a copy of qemu in the rootfs.
need_binfmt() {
  foreign || return 0
  [ "$ARCH" = arm64 ] || die "--arch: only arm64 is supported besides the host's own $HOST_ARCH"
  command -v qemu-aarch64-static >/dev/null && command -v update-binfmts >/dev/null \
    || die "qemu-user-static and binfmt-support are missing: make deps"
  [ -e /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 2>/dev/null || update-binfmts --enable qemu-aarch64
  grep -qx enabled /proc/sys/fs/binfmt_misc/qemu-aarch64 || die "binfmt_misc has no enabled qemu-aarch64 entry"
}

golden() {
  local key dir
  need_binfmt
  if foreign; then
    # The native key stays as it was, so existing golden copies keep being used.
    key=$(echo "$PACKAGES $MIRROR $ARCH" | md5sum | cut -c1-10)
    dir=$CACHE/rootfs/$SUITE-$ARCH-$key
  else
    key=$(echo "$PACKAGES $MIRROR" | md5sum | cut -c1-10)
    dir=$CACHE/rootfs/$SUITE-$key
  fi
  if [ ! -e "$dir/.complete" ]; then
    command -v debootstrap >/dev/null || die "debootstrap missing: make deps"
    rm -rf "$dir.tmp" && mkdir -p "$CACHE/rootfs"
    echo "==> debootstrap Debian $SUITE $ARCH golden rootfs ($dir), ~3 min once ($([ "$ARCH" = "$HOST_ARCH" ] || echo 'emulated: ~10 min'))" >&2
    debootstrap --arch="$ARCH" --variant=minbase --include="$PACKAGES" "$SUITE" "$dir.tmp" "$MIRROR" >"$dir.log" 2>&1 \
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

# Boot finished: `running`; a foreign-arch container ends `degraded` because systemd-sysusers and
# systemd-tmpfiles-setup fail on credentials under qemu-user (seen in every emulated boot here), which Ansible does not need.
booted() {
  local state
  state=$(nsenter -t "$(init_pid "$1")" -a systemctl is-system-running --wait 2>/dev/null) || true
  [ "$state" = running ] || { foreign && [ "$state" = degraded ]; }
}

# start NAME ROOT SLOW [nspawn options]: boot ROOT as container NAME and wait until systemd is up.
start() {
  local name=$1 root=$2 slow=$3; shift 3
  setsid systemd-nspawn -b -D "$root" -M "$name" --register=no --keep-unit "$@" \
    >"$MACHINES/$name.log" 2>&1 </dev/null &
  echo $! >"$MACHINES/$name.pid"
  wait_for 60 "$name to boot" bash -c "[ -n \"\$(pgrep -P $!)\" ]"
  # `--wait` returns once boot finished, whatever the state.
  wait_for $((120 * slow)) "$name to finish booting" booted "$name"
}

up() {
  local name=$1 port=$2 pubkey=$3 gold root slow=1
  [ -n "$(pid_of "$name")" ] && kill -0 "$(pid_of "$name")" 2>/dev/null && die "$name is already running"
  gold=$(golden)
  foreign && slow=5  # emulated boot and sshd start take several times longer
  root=$MACHINES/$name
  mkdir -p "$MACHINES" && rm -rf "$root"
  cp -a "$gold" "$root"
  echo "$ARCH" >"$MACHINES/$name.arch"
  echo "$name" >"$root/etc/hostname"
  install -d -m 700 "$root/root/.ssh"
  install -m 600 "$pubkey" "$root/root/.ssh/authorized_keys"
  printf 'Port %s\nListenAddress 127.0.0.1\nPasswordAuthentication no\nPermitRootLogin prohibit-password\n' \
    "$port" >"$root/etc/ssh/sshd_config.d/nspawn.conf"
  trust_host_cas "$root"
  mkdir -p "$CACHE/models" "$CACHE/sdist" "$CACHE/ccache"
  start "$name" "$root" $slow \
    --bind-ro="$CACHE/models:/srv/ampere-llm-cache/models" \
    --bind-ro="$CACHE/sdist:/srv/ampere-llm-cache/sdist" \
    --bind="$CACHE/ccache:/root/.cache/ccache"
  wait_for $((60 * slow)) "sshd of $name on 127.0.0.1:$port" bash -c "exec 3<>/dev/tcp/127.0.0.1/$port"
  echo "==> $name ($ARCH) is up (ssh root@127.0.0.1 -p $port)" >&2
}

# A pool node: a cleaned image with a writable layer of its own, its own name (the hostname systemd gives it, %H in
# the node-name drop-in), no host caches mounted (the image must hold everything), and, with NETNS,
# its own network namespace: its loopback is its alone, so every node listens on the same ports.
boot() {
  local name=$1 image=$2 netns=${3:-} root opts=()
  [ -n "$(pid_of "$name")" ] && kill -0 "$(pid_of "$name")" 2>/dev/null && die "$name is already running"
  [ -e "$image/etc/os-release" ] || die "$image is not a root filesystem"
  if [ -n "$netns" ]; then
    [ -e "/run/netns/$netns" ] || die "network namespace $netns does not exist (ip netns add $netns)"
    opts+=(--network-namespace-path="/run/netns/$netns")
  fi
  root=$MACHINES/$name
  mkdir -p "$MACHINES" && rm -rf "$root" "$root.overlay" && mkdir -p "$root" "$root.overlay/upper" "$root.overlay/work"
  # The image stays read-only below an overlay and the node writes only its own upper layer, as an
  # instance's boot volume is a copy-on-write clone of its image: booting and removing a node take a
  # second, where copying and deleting 1.5 GB took a minute on a busy disk. A full copy where the
  # kernel has no overlayfs.
  if ! mount -t overlay overlay -o "lowerdir=$image,upperdir=$root.overlay/upper,workdir=$root.overlay/work" "$root" 2>/dev/null; then
    rm -rf "$root" "$root.overlay" && cp -a --reflink=auto "$image" "$root"
  fi
  echo "$HOST_ARCH" >"$MACHINES/$name.arch"
  echo "$name" >"$root/etc/hostname"
  start "$name" "$root" 1 "${opts[@]}"
  echo "==> $name is up${netns:+ (network namespace $netns)}" >&2
}

down() {
  local name=$1 pid
  pid=$(pid_of "$name")
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    # An emulated systemd does not act on the SIGRTMIN+3 that nspawn turns SIGTERM into (qemu-user
    # keeps the top real-time signals for itself), so it is asked to power off from inside.
    if [ "$(cat "$MACHINES/$name.arch" 2>/dev/null || echo "$HOST_ARCH")" != "$HOST_ARCH" ]; then
      nsenter -t "$(init_pid "$name")" -a systemctl poweroff --no-block >/dev/null 2>&1 || kill -TERM "$pid"
    else
      kill -TERM "$pid"
    fi
    local deadline=$((SECONDS + 60))
    while kill -0 "$pid" 2>/dev/null && [ $SECONDS -lt $deadline ]; do sleep 0.5; done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
  fi
  if mountpoint -q "$MACHINES/$name"; then umount "$MACHINES/$name" || umount -l "$MACHINES/$name"; fi
  rm -rf "${MACHINES:?}/$name" "$MACHINES/$name.overlay" "$MACHINES/$name.pid" "$MACHINES/$name.arch"
}

exec_in() {
  local name=$1; shift
  local pid; pid=$(init_pid "$name")
  [ -n "$pid" ] || die "$name is not running"
  nsenter -t "$pid" -a "$@"
}

while [ "${1:-}" = --arch ] || [ "${1:-}" = --suite ]; do
  [ -n "${2:-}" ] || die "$1 needs a value (--arch arm64, --suite trixie)"
  case $1 in --arch) ARCH=$2 ;; --suite) SUITE=$2 ;; esac
  shift 2
done

case ${1:-} in
  golden) golden ;;
  up) [ $# -eq 4 ] || die "usage: up NAME SSH_PORT PUBKEY"; up "$2" "$3" "$4" ;;
  down) [ $# -eq 2 ] || die "usage: down NAME"; down "$2" ;;
  boot) [ $# -ge 3 ] && [ $# -le 4 ] || die "usage: boot NAME IMAGE [NETNS]"; boot "$2" "$3" "${4:-}" ;;
  exec) [ $# -ge 3 ] || die "usage: exec NAME CMD..."; shift; exec_in "$@" ;;
  *) die "usage: nspawn.sh [--arch arm64] [--suite trixie] golden | up NAME SSH_PORT PUBKEY | boot NAME IMAGE [NETNS] | down NAME | exec NAME CMD..." ;;
esac

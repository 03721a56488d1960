#!/usr/bin/env bash
# Clean a configured root filesystem so it can become an image that many nodes boot from.
#
# One step for every image this project makes: bake.yml runs it on the OCI seed host (ROOT=/)
# right before the custom image is captured; the local pool runs it on the snapshot of the seed
# container's root. It removes what must differ per node or must not leave the seed:
# cloud-init state, machine-id, SSH host keys, DHCP leases, logs, shell histories, temporary
# files and credentials (OCI/cloud CLI config, Hugging Face tokens, authorized SSH keys).
# Kept on purpose: the service's own config, /etc/ampere-llm (incl. the optional API key every
# node needs). First boot regenerates the machine-id (systemd) and SSH host keys (cloud-init on
# OCI; the unit installed below where cloud-init is absent).
#
# Usage: clean.sh ROOT   (ROOT is required: running it bare on a live host is never an accident)
#        KEEP_AUTHORIZED_KEYS=1 clean.sh ROOT   keeps ~/.ssh/authorized_keys (private test pools)
set -euo pipefail
ROOT=${1:?usage: clean.sh ROOT (e.g. / on the seed host, or a snapshot directory)}
[ -d "$ROOT/etc" ] || { echo "clean.sh: $ROOT has no etc/: not a root filesystem" >&2; exit 2; }
ROOT=${ROOT%/}
shopt -s nullglob dotglob

gone() {  # remove and report each path that exists
  for p in "$@"; do
    if [ -e "$p" ] || [ -L "$p" ]; then rm -rf -- "$p"; echo "removed ${p#"$ROOT"}"; fi
  done
}

# cloud-init must run again on each new instance (ssh keys, hostname, user-data).
gone "$ROOT"/var/lib/cloud/instance "$ROOT"/var/lib/cloud/instances "$ROOT"/var/lib/cloud/data \
     "$ROOT"/var/lib/cloud/sem "$ROOT"/var/lib/cloud/handlers "$ROOT"/var/log/cloud-init*.log

# machine-id: empty (not absent) means "first boot" to systemd, which then makes a new one.
if [ -f "$ROOT/etc/machine-id" ] && [ -s "$ROOT/etc/machine-id" ]; then
  : > "$ROOT/etc/machine-id"; echo "emptied /etc/machine-id"
fi
[ -L "$ROOT/var/lib/dbus/machine-id" ] || gone "$ROOT/var/lib/dbus/machine-id"
gone "$ROOT"/var/lib/systemd/random-seed "$ROOT"/var/lib/systemd/credential.secret

# SSH host keys: every node must have its own.
gone "$ROOT"/etc/ssh/ssh_host_*
if [ -e "$ROOT/usr/sbin/sshd" ] && [ ! -e "$ROOT/usr/bin/cloud-init" ]; then
  mkdir -p "$ROOT/etc/systemd/system/multi-user.target.wants"
  unit=$ROOT/etc/systemd/system/ampere-llm-ssh-hostkeys.service
  cat > "$unit" <<'UNIT'
# Installed by image/clean.sh: images without cloud-init regenerate SSH host keys here.
[Unit]
Description=Generate this node's SSH host keys (the image has none)
ConditionPathExistsGlob=!/etc/ssh/ssh_host_*_key
Before=ssh.service

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=multi-user.target
UNIT
  ln -sf ../ampere-llm-ssh-hostkeys.service "$ROOT/etc/systemd/system/multi-user.target.wants/"
  echo "installed /etc/systemd/system/ampere-llm-ssh-hostkeys.service"
fi

# Network leases of the seed.
gone "$ROOT"/var/lib/dhcp/*.leases "$ROOT"/var/lib/NetworkManager/*.lease "$ROOT"/run/systemd/netif/leases/*

# Logs: truncate live files (services keep their handles), drop rotated ones and the journal.
if [ -d "$ROOT/var/log" ]; then
  find "$ROOT/var/log" -type f \( -name '*.gz' -o -name '*.[0-9]' -o -name '*.old' \) -print -delete | sed "s|^$ROOT|removed |"
  find "$ROOT/var/log" -type f -size +0 -print -exec truncate -s 0 {} + | sed "s|^$ROOT|truncated |"
fi
gone "$ROOT"/var/log/journal/*

# Shell histories, temporary files, and credentials of the people and tools that built the seed.
for home in "$ROOT"/root "$ROOT"/home/*; do
  gone "$home"/.bash_history "$home"/.python_history "$home"/.lesshst "$home"/.viminfo \
       "$home"/.wget-hsts "$home"/.oci "$home"/.aws "$home"/.azure "$home"/.config/gcloud \
       "$home"/.cache/huggingface/token "$home"/.cache/huggingface/stored_tokens \
       "$home"/.huggingface/token "$home"/.ansible "$home"/.git-credentials "$home"/.netrc
  [ "${KEEP_AUTHORIZED_KEYS:-0}" = 1 ] || gone "$home"/.ssh/authorized_keys
done
# Temporary files, except the private /tmp of services running right now on a live seed.
for t in "$ROOT"/tmp/* "$ROOT"/var/tmp/*; do
  case ${t##*/} in systemd-private-*) ;; *) gone "$t" ;; esac
done
echo "clean.sh: $ROOT is ready to be imaged"

#!/usr/bin/env bash
# The collection as users get it: `ansible-galaxy collection build` of the source tree, then the
# tarball installed into an empty collections path, which is the only one the scenarios use
# (molecule.yml: the dependency step runs this, ANSIBLE_COLLECTIONS_PATH points at DEST).
#
#   molecule/collection.sh DEST    DEST/ansible_collections/ampere/llm from DEST.artifact/ampere-llm-<version>.tar.gz
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 DEST" >&2; exit 2; }
dest=$1
src=$(cd "$(dirname "$0")/.." && pwd)/collections/ansible_collections/ampere/llm
rm -rf "$dest" "$dest.artifact"
mkdir -p "$dest" "$dest.artifact"
ansible-galaxy collection build "$src" --output-path "$dest.artifact"
# --offline: the collection depends on nothing, and Galaxy is not asked.
ANSIBLE_COLLECTIONS_PATH=$dest ansible-galaxy collection install --offline -p "$dest" "$dest.artifact"/ampere-llm-*.tar.gz

#!/bin/sh
# Set up everything on a fresh Debian host and bring up a local cluster:
# one metaserver and three chunk servers on loopback, mounted at $MNT.
set -eu
cd "$(dirname "$0")/.."
DATA="${DFS_DATA_DIR:-/var/lib/dfs-local}"
MNT="${DFS_MOUNT:-/mnt/dfs}"

./scripts/install.sh
.venv/bin/dfs up --data-dir "$DATA" --mount "$MNT"
echo
echo "dfs is mounted at $MNT"
echo "  status:  $(pwd)/.venv/bin/dfs status --data-dir $DATA"
echo "  stop:    $(pwd)/.venv/bin/dfs down --data-dir $DATA"

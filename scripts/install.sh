#!/bin/sh
# Install what dfs needs on a Debian host (as root): the FUSE 3 runtime and
# headers, the tools the tests and benchmarks drive, and a virtualenv in .venv
# holding dfs with its CSI, test and benchmark extras.
set -eu
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES="fuse3 libfuse3-dev pkg-config gcc python3-venv fio systemd"
echo "dfs install: Debian packages: $DEBIAN_PACKAGES ${DFS_EXTRA_PACKAGES:-}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# shellcheck disable=SC2086
apt-get install -y -qq $DEBIAN_PACKAGES ${DFS_EXTRA_PACKAGES:-} >/dev/null

PYTHON="${PYTHON:-python3}"
echo "dfs install: virtualenv .venv with $($PYTHON --version)"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[csi,test,bench]'
echo "dfs install: done; the commands are in $(pwd)/.venv/bin (dfs, dfs-metaserver, dfs-chunkserver)"

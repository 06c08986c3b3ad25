#!/usr/bin/env bash
# Set up edgeslim on a fresh Debian/Ubuntu machine and run the demo.
#   bash setup.sh            system packages + .venv + demo
#   bash setup.sh --no-demo  the same without the demo (what CI does)
set -euo pipefail
cd "$(dirname "$0")"
SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

# System packages: the Fashion-MNIST data plus whatever .ci/apt-packages.d/*.txt lists
# (e.g. openssh-server and qemu for the device_bench tests).
PKGS="dataset-fashion-mnist"
for f in .ci/apt-packages.d/*.txt; do
  [ -e "$f" ] && PKGS="$PKGS $(grep -v '^#' "$f" | tr '\n' ' ')"
done
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
if [ -n "$missing" ]; then
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq || true
  # shellcheck disable=SC2086
  $SUDO apt-get install -y -qq --no-install-recommends $missing
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then "$PY" -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".[all,dev]"

if [ "${1:-}" != "--no-demo" ]; then
  .venv/bin/edgeslim demo
fi

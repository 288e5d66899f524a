#!/usr/bin/env bash
# fleet's offline demo, in one command: installs the one package it needs if missing (Debian's
# static busybox, for a tiny runner image built without a registry), builds fleet, and runs the
# demo against a fake GitHub on 127.0.0.1 and the local Docker engine. It cleans up after itself.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /bin/busybox ] && [ ! -x /usr/bin/busybox ]; then
  echo "Installing busybox-static (a static busybox for the demo's runner image)..."
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  if ! { $sudo apt-get update -qq && $sudo apt-get install -y -qq busybox-static >/dev/null; }; then
    echo "Please install a static busybox (Debian/Ubuntu: busybox-static; Arch: busybox) and run again." >&2
    exit 1
  fi
fi
if ! docker info >/dev/null 2>&1; then
  echo "The Docker engine does not answer: start it (for instance: sudo systemctl start docker) and run again." >&2
  exit 1
fi

cargo build --release --locked -q -p fleet-demo
exec target/release/fleet-demo "$@"

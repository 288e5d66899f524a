#!/usr/bin/env bash
# Runs every fleet benchmark on this machine's Docker engine with the fake GitHub, and prints the
# tables that docs/benchmarks.md holds. Takes about fifteen minutes on 2 cores. The two-engine
# benchmarks start an extra dockerd (TLS on 127.0.0.1, certificates by openssl): run as root.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null; then
  echo "Installing docker-compose (the bench compares fleet with it)..."
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq docker-compose >/dev/null
fi
if [ ! -x /bin/busybox ] && [ ! -x /usr/bin/busybox ]; then
  echo "A static busybox is needed for the runner image: apt-get install busybox-static" >&2
  exit 1
fi

cargo build --release --locked --workspace -q
bench=target/release/fleet-bench

echo "## Machine"
echo
echo "$(date -u +%Y-%m-%d), $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, Linux $(uname -r), Docker $(docker version --format '{{.Server.Version}}')"
for what in "converge --runners 30,100 --rounds 3" "plan" "replacement --exits 20" "replacement-gpu-health --exits 20 --gpus 8" "api-budget --runners 100" "jit-timeline --runners 100" "memory --runners 100" "hosts-converge --runners 30 --rounds 3" "dead-host --runners 3 --exits 5" "autoscale --jobs 20 --burst 50" "autoscale --jobs 5 --burst 50 --secrets env"; do
  echo
  echo "## fleet-bench $what"
  echo
  # shellcheck disable=SC2086 # the arguments are meant to split
  $bench $what
done
echo
echo "## plan() alone (criterion)"
echo
cargo bench -q -p fleet --bench plan 2>/dev/null | grep -E '^plan/|time:'
echo
echo "## GPU health of 8 GPUs (criterion)"
echo
cargo bench -q -p fleet --bench gpu_health 2>/dev/null | grep -E '^gpu_health/|time:'

#!/usr/bin/env bash
# fleet's check on a real NVIDIA machine (docs/gpus.md), run from a checkout after `cargo build`:
#
#   1. `fleet gpus --format json` lists what `nvidia-smi` lists (index, UUID, name, memory).
#      Then, read-only, the health fleet reads for each GPU (docs/gpu-health.md), printed beside
#      `nvidia-smi -q`'s ECC, page retirement, row remapper and throttle (performance) sections.
#      Nothing is reset and no setting is changed.
#   2. Where Docker and the NVIDIA container toolkit are present: fleet applies a pool of one
#      runner with `gpus: 1` (against the fake GitHub of crates/fake-github, on 127.0.0.1), and
#      inside the container `nvidia-smi -L` lists exactly the GPU fleet assigned; then destroy.
#
# Each step prints PASS, FAIL or SKIP with a reason; what the machine lacks is skipped. Exit
# status: 0 when nothing failed, 1 when a step failed, 2 when fleet is not built.
# `--inventory-only` runs step 1 alone.
# Environment: FLEET_BIN, FAKE_GITHUB_BIN (default: target/debug/...), GPU_CHECK_IMAGE (an image
# with a shell and glibc to use instead of the one built here from the host's files).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
root=$(pwd)

fleet_bin=${FLEET_BIN:-$root/target/debug/fleet}
fake_github_bin=${FAKE_GITHUB_BIN:-$root/target/debug/fake-github}
failures=0
passes=0
skips=0

pass() { printf 'PASS  %s: %s\n' "$1" "$2"; passes=$((passes + 1)); }
fail() { printf 'FAIL  %s: %s\n' "$1" "$2"; failures=$((failures + 1)); }
skip() { printf 'SKIP  %s: %s\n' "$1" "$2"; skips=$((skips + 1)); }

summary() {
  printf '\ngpu-check: %d passed, %d failed, %d skipped\n' "$passes" "$failures" "$skips"
  [ "$failures" -eq 0 ]
}

inventory_only=false
case "${1:-}" in
  --inventory-only) inventory_only=true ;;
  "") ;;
  *) printf 'usage: %s [--inventory-only]\n' "$0" >&2; exit 2 ;;
esac

needed=("$fleet_bin")
$inventory_only || needed+=("$fake_github_bin")
for bin in "${needed[@]}"; do
  if [ ! -x "$bin" ]; then
    printf 'gpu-check: %s is not built: run "cargo build" in %s first\n' "$bin" "$root" >&2
    exit 2
  fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/fleet-gpu-check.XXXXXX")
fleet_name="gpucheck-$(date +%s | tail -c 7)$$"
fleet_name=${fleet_name:0:24}
fake_pid=""
built_image=""

cleanup() {
  if [ -f "$work/fleet.yaml" ]; then
    run_fleet destroy --auto-approve >/dev/null 2>&1 || true
  fi
  # Whatever fleet made under this run's unique name, should destroy have failed.
  if command -v docker >/dev/null 2>&1; then
    docker ps -aq --filter "label=fleet.name=$fleet_name" | while read -r id; do
      docker rm -f -v "$id" >/dev/null 2>&1 || true
    done
    if [ -n "$built_image" ]; then docker rmi "$built_image" >/dev/null 2>&1 || true; fi
  fi
  if [ -n "$fake_pid" ]; then kill "$fake_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

run_fleet() {
  GITHUB_API_URL=${fake_url:-} GITHUB_TOKEN=gpu-check-token FLEET_LOCK_DIR=$work NO_COLOR=1 \
    "$fleet_bin" -f "$work/fleet.yaml" "$@"
}

# index<TAB>uuid<TAB>name<TAB>memory in MiB, one line per GPU, from `fleet gpus --format json`.
fleet_gpu_lines() {
  if command -v jq >/dev/null 2>&1; then
    jq -r '.gpus[] | [.index, .uuid, .name, (.memory_total_bytes / 1048576 | floor)] | @tsv' "$1"
  else
    python3 -c '
import json, sys
for g in json.load(open(sys.argv[1]))["gpus"]:
    print("\t".join([str(g["index"]), g["uuid"], g["name"], str(g["memory_total_bytes"] // 1048576)]))
' "$1"
  fi
}

# The same from nvidia-smi ("0, GPU-..., NVIDIA H200, 143771 MiB").
smi_gpu_lines() {
  nvidia-smi --query-gpu=index,uuid,name,memory.total --format=csv,noheader,nounits |
    awk -F', *' '{ printf "%s\t%s\t%s\t%s\n", $1, $2, $3, $4 }'
}

check_inventory() {
  local step="fleet gpus matches nvidia-smi"
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    skip "$step" "no nvidia-smi on this machine (no NVIDIA driver)"
    return 1
  fi
  if ! nvidia-smi -L >"$work/smi-L.txt" 2>&1; then
    skip "$step" "nvidia-smi does not work here: $(head -n 1 "$work/smi-L.txt")"
    return 1
  fi
  if ! command -v jq >/dev/null 2>&1 && ! command -v python3 >/dev/null 2>&1; then
    skip "$step" "neither jq nor python3 is installed to read fleet's JSON"
    return 1
  fi
  if ! "$fleet_bin" gpus --format json >"$work/gpus.json" 2>"$work/gpus.err"; then
    fail "$step" "fleet gpus failed: $(cat "$work/gpus.err")"
    return 1
  fi
  fleet_gpu_lines "$work/gpus.json" >"$work/fleet.tsv"
  smi_gpu_lines >"$work/smi.tsv"
  if [ ! -s "$work/fleet.tsv" ]; then
    fail "$step" "fleet lists no GPU, nvidia-smi lists $(wc -l <"$work/smi.tsv")"
  elif diff -u "$work/smi.tsv" "$work/fleet.tsv" >"$work/diff.txt"; then
    pass "$step" "$(wc -l <"$work/fleet.tsv") GPU(s): $(cut -f2 "$work/fleet.tsv" | tr '\n' ' ')"
  else
    fail "$step" "index, UUID, name or memory (MiB) differ (--- nvidia-smi, +++ fleet):
$(cat "$work/diff.txt")"
  fi
}

# uuid<TAB>health<TAB>reasons, one line per GPU, from `fleet gpus --format json`.
fleet_health_lines() {
  if command -v jq >/dev/null 2>&1; then
    jq -r '.gpus[] | [.uuid, (.health // "-"), ((.health_reasons // []) | join("; "))] | @tsv' "$1"
  else
    python3 -c '
import json, sys
for g in json.load(open(sys.argv[1]))["gpus"]:
    print("\t".join([g["uuid"], g.get("health", "-"), "; ".join(g.get("health_reasons", []))]))
' "$1"
  fi
}

# Read-only: what fleet reads of each GPU's health, and what nvidia-smi says of the same.
check_health() {
  local step="fleet reads each GPU's health"
  fleet_health_lines "$work/gpus.json" >"$work/health.tsv"
  if awk -F'\t' '$2 == "-" { missing = 1 } END { exit !missing }' "$work/health.tsv"; then
    fail "$step" "no health for some GPU:
$(cat "$work/health.tsv")"
  else
    pass "$step" "$(awk -F'\t' '{ printf "%s %s%s; ", $1, $2, ($3 == "" ? "" : " (" $3 ")") }' "$work/health.tsv")"
  fi
  printf '\nnvidia-smi -q (ECC, page retirement, row remapper, throttle), for comparison:\n'
  nvidia-smi -q -d ECC,PAGE_RETIREMENT,ROW_REMAPPER,PERFORMANCE 2>&1 ||
    nvidia-smi -q -d ECC,PAGE_RETIREMENT,PERFORMANCE 2>&1 ||
    printf '(nvidia-smi -q failed)\n'
  printf '\n'
}

# What the engine offers: "runtime", "cdi" or "" (nothing NVIDIA).
engine_nvidia() {
  local info
  info=$(docker info --format '{{json .}}' 2>/dev/null) || return 1
  if printf '%s' "$info" | grep -q -e '"nvidia":' -e '"DefaultRuntime":"nvidia"' ||
    command -v nvidia-container-runtime-hook >/dev/null 2>&1; then
    echo runtime
  elif printf '%s' "$info" | grep -q 'nvidia.com/gpu='; then
    echo cdi
  fi
}

# An image that can run the nvidia-smi the toolkit mounts: a static busybox for the runner's
# shell, and the host's C library and dynamic loader that nvidia-smi links against (the toolkit
# brings the NVIDIA libraries, not glibc).
build_check_image() {
  local busybox ctx lib
  busybox=$(command -v busybox) || return 1
  # ldd fails on a static binary, which is what a FROM scratch image needs.
  if ldd "$busybox" >/dev/null 2>&1; then return 1; fi
  ctx="$work/image"
  mkdir -p "$ctx/rootfs/bin" "$ctx/rootfs/etc" "$ctx/rootfs/tmp"
  cp -L "$busybox" "$ctx/rootfs/bin/busybox"
  cp -L "$busybox" "$ctx/rootfs/bin/sh"
  : >"$ctx/rootfs/etc/ld.so.conf"
  for lib in $(ldd "$(command -v nvidia-smi)" | grep -o '/[^ ]*' | grep -v nvidia); do
    mkdir -p "$ctx/rootfs$(dirname "$lib")"
    cp -L "$lib" "$ctx/rootfs$lib"
  done
  # shellcheck disable=SC2016 # $RUNNER_NAME is for the container's shell
  printf '%s\n' 'FROM scratch' 'COPY rootfs/ /' \
    'CMD ["/bin/sh", "-c", "echo runner $RUNNER_NAME ready; exec /bin/busybox sleep 86400"]' \
    >"$ctx/Dockerfile"
  docker build -q -t "fleet-gpu-check:$fleet_name" "$ctx" >/dev/null || return 1
  built_image="fleet-gpu-check:$fleet_name"
}

start_fake_github() {
  "$fake_github_bin" --addr 127.0.0.1:0 --token gpu-check-token --quiet >"$work/fake.out" 2>&1 &
  fake_pid=$!
  for _ in $(seq 1 50); do
    fake_url=$(sed -n 's/^listening on //p' "$work/fake.out")
    [ -n "$fake_url" ] && return 0
    sleep 0.1
  done
  return 1
}

write_spec() {
  cat >"$work/fleet.yaml" <<EOF
version: 1
name: $fleet_name
github:
  repo: fleet-gpu-check/$fleet_name
  api_url: $fake_url
hosts:
  local:
    docker: unix:///var/run/docker.sock
    gpus: auto
    gpu_mode: $1
pools:
  gpu:
    count: 1
    gpus: 1
    image: $2
    pull: never
    network: none
    env:
      NVIDIA_DRIVER_CAPABILITIES: utility
      LD_LIBRARY_PATH: /usr/lib/x86_64-linux-gnu:/usr/lib64:/usr/lib/aarch64-linux-gnu:/usr/lib
EOF
}

check_container() {
  local step="the runner's container sees exactly its GPU" mode image name uuid listed
  if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
    skip "$step" "no Docker engine answers here"
    return
  fi
  mode=$(engine_nvidia)
  if [ -z "$mode" ]; then
    skip "$step" "the engine shows no NVIDIA support (no nvidia runtime, toolkit hook or CDI devices): install nvidia-container-toolkit"
    return
  fi
  [ "$mode" = runtime ] && mode=nvidia
  image=${GPU_CHECK_IMAGE:-}
  if [ -z "$image" ] && ! build_check_image; then
    skip "$step" "cannot build the check image (needs a static busybox: apt-get install busybox-static); or set GPU_CHECK_IMAGE"
    return
  fi
  image=${image:-$built_image}
  if ! start_fake_github; then
    fail "$step" "the fake GitHub did not start: $(cat "$work/fake.out")"
    return
  fi
  write_spec "$mode" "$image"
  if ! run_fleet apply --auto-approve >"$work/apply.txt" 2>&1; then
    fail "fleet apply (gpu_mode: $mode)" "$(tail -n 20 "$work/apply.txt")"
    return
  fi
  pass "fleet apply (gpu_mode: $mode)" "one runner with gpus: 1"
  name=$(docker ps --filter "label=fleet.name=$fleet_name" --format '{{.Names}}')
  uuid=$(docker inspect --format '{{index .Config.Labels "fleet.gpus"}}' "$name")
  listed=$(docker exec "$name" nvidia-smi -L 2>&1)
  if [ "$(printf '%s\n' "$listed" | grep -c '^GPU ')" -eq 1 ] && printf '%s' "$listed" | grep -q "(UUID: $uuid)"; then
    pass "$step" "$name holds $uuid; nvidia-smi -L in it: $listed"
  else
    fail "$step" "$name holds ${uuid:-nothing}; nvidia-smi -L in it says: $listed"
  fi
  if run_fleet destroy --auto-approve >"$work/destroy.txt" 2>&1 &&
    [ -z "$(docker ps -aq --filter "label=fleet.name=$fleet_name")" ]; then
    pass "fleet destroy" "no container of $fleet_name is left"
  else
    fail "fleet destroy" "$(tail -n 20 "$work/destroy.txt")"
  fi
  rm -f "$work/fleet.yaml"
}

if check_inventory; then
  check_health
  if $inventory_only; then
    skip "the runner's container sees exactly its GPU" "--inventory-only"
  else
    check_container
  fi
else
  skip "the runner's container sees exactly its GPU" "needs a working NVIDIA driver (see above)"
fi
summary

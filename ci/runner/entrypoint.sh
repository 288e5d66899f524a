#!/bin/sh
# fleet-entrypoint: starts the GitHub Actions runner of a container that fleet made, following
# fleet's container contract (docs/apply.md, "What each step does"). POSIX sh: it runs under
# bash, dash and busybox ash alike (fleet's tests run it under busybox).
#
# Two modes, chosen by the environment fleet sets:
#
#   Ephemeral (JIT): ACTIONS_RUNNER_INPUT_JITCONFIG is set. The runner starts with that single-use
#     configuration and runs one job; config.sh is never called and nothing is saved.
#
#   Persistent: ACTIONS_RUNNER_INPUT_URL is set (with _NAME, _LABELS, and _TOKEN when the runner
#     must register). The registration (.runner, .credentials, .credentials_rsaparams) lives in
#     $FLEET_STATE_DIR (default /var/lib/fleet-runner, a per-runner volume). FLEET_REGISTRATION
#     says what fleet found: `restore` (GitHub knows the runner: the saved registration is
#     restored and config.sh is not called, so a recreated container comes back as the same
#     runner) or `register` (GitHub does not know it, or its volume is new: any saved
#     registration is stale, so it is removed and `config.sh --unattended --replace` registers
#     the runner with the token; the registration is saved there). A container that restarts
#     after registering restores what it saved: the token it registered with is remembered by its
#     SHA-256 in $FLEET_STATE_DIR/.fleet-token-used, never by value. Without FLEET_REGISTRATION
#     (an older fleet), a saved registration is restored and a token used only when there is none.
#
# Secrets are never put on a command line (where `ps` and `docker top` on the host would show
# them) and never printed: the runner reads every ACTIONS_RUNNER_INPUT_<NAME> variable itself as
# the input <name> (its CommandSettings), and removes them from its own environment so that jobs
# do not see them. This script logs only names and paths.
#
# SIGTERM, SIGINT and SIGHUP are forwarded to the runner as SIGTERM; the script waits for it to
# finish and exits 0. The runner's run.sh, with RUNNER_MANUALLY_TRAP_SIG=1, turns SIGTERM into a
# graceful stop of its listener.
#
# Registration removal on exit: a persistent runner KEEPS its registration when it stops. fleet
# replaces a persistent runner by removing only its container and creating it again on the same
# state volume (docs/apply.md), so a removal on every exit would break exactly the "recreated
# container keeps its registration" promise of the contract; and `fleet destroy` removes the
# registration through GitHub's API before it removes the container. The runner is removed from
# GitHub on exit only when someone asks for it explicitly: by putting a removal token (from
# `POST .../actions/runners/remove-token`, valid for an hour) in the file $FLEET_REMOVE_TOKEN_FILE
# (default $FLEET_STATE_DIR/remove-token) before stopping the container. The script then runs
# `config.sh remove` with it, deletes the token file, and clears the saved registration.
#
# Other variables: FLEET_RUNNER_DIR (where the runner is unpacked, default
# /home/runner/actions-runner). With arguments, the script runs them instead of the runner
# (`docker run --rm -it IMAGE bash` for a look inside).

set -eu

runner_dir=${FLEET_RUNNER_DIR:-/home/runner/actions-runner}
state_dir=${FLEET_STATE_DIR:-/var/lib/fleet-runner}
remove_token_file=${FLEET_REMOVE_TOKEN_FILE:-$state_dir/remove-token}
# What config.sh writes and run.sh needs; the runner may add the *_migrated files later.
required_files=".runner .credentials .credentials_rsaparams"
state_files="$required_files .runner_migrated .credentials_migrated"

log() { printf 'fleet-entrypoint: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

if [ "$#" -gt 0 ]; then
  exec "$@"
fi

if [ -n "${ACTIONS_RUNNER_INPUT_JITCONFIG:-}" ]; then
  mode=jit
  if [ -n "${ACTIONS_RUNNER_INPUT_TOKEN:-}" ]; then
    log "warning: both a JIT configuration and a registration token are set; using the JIT configuration"
  fi
  unset ACTIONS_RUNNER_INPUT_TOKEN
elif [ -n "${ACTIONS_RUNNER_INPUT_URL:-}" ]; then
  mode=persistent
else
  die "neither ACTIONS_RUNNER_INPUT_JITCONFIG (ephemeral runner) nor ACTIONS_RUNNER_INPUT_URL (persistent runner) is set: this image expects the environment fleet gives its runner containers"
fi

cd "$runner_dir" 2>/dev/null || die "cannot enter the runner directory $runner_dir (set FLEET_RUNNER_DIR)"
[ -x ./run.sh ] || die "no runner in $runner_dir: run.sh is missing (set FLEET_RUNNER_DIR)"

name=${ACTIONS_RUNNER_INPUT_NAME:-${RUNNER_NAME:-}}

has_state() {
  for f in $required_files; do
    [ -s "$state_dir/$f" ] || return 1
  done
}

restore_state() {
  for f in $state_files; do
    if [ -f "$state_dir/$f" ]; then
      (umask 077 && cp "$state_dir/$f" "./$f")
    else
      rm -f "./$f"
    fi
  done
}

# Copies what the runner holds back to the state directory, each file atomically.
save_state() {
  for f in $state_files; do
    if [ -f "./$f" ]; then
      (umask 077 && cp "./$f" "$state_dir/$f.tmp" && mv -f "$state_dir/$f.tmp" "$state_dir/$f") ||
        log "warning: cannot save $f to $state_dir"
    fi
  done
}

# Only on explicit request: a removal token in $remove_token_file (see the top of this file).
remove_if_asked() {
  [ -s "$remove_token_file" ] || return 0
  remove_token=$(cat "$remove_token_file")
  rm -f "$remove_token_file"
  log "a removal token was provided: removing runner ${name:-?} from GitHub"
  if ACTIONS_RUNNER_INPUT_TOKEN=$remove_token ./config.sh remove; then
    for f in $state_files; do
      rm -f "$state_dir/$f" "./$f"
    done
    log "the registration was removed and $state_dir cleared"
  else
    log "warning: config.sh remove failed; the registration and $state_dir are kept"
  fi
  unset remove_token
}

# The SHA-256 of the registration token, to recognise it after a restart without keeping it.
token_digest() {
  printf '%s' "${ACTIONS_RUNNER_INPUT_TOKEN:-}" | sha256sum | cut -c1-64
}

# Whether this start must register: fleet said so with a token not used yet, or there is
# nothing saved to restore.
must_register() {
  if [ "${FLEET_REGISTRATION:-}" = register ] && [ -n "${ACTIONS_RUNNER_INPUT_TOKEN:-}" ]; then
    [ "$(cat "$state_dir/.fleet-token-used" 2>/dev/null)" != "$(token_digest)" ] && return 0
  fi
  ! has_state
}

clear_state() {
  for f in $state_files .fleet-token-used; do
    rm -f "$state_dir/$f" "./$f"
  done
}

if [ "$mode" = persistent ]; then
  [ -n "$name" ] || die "ACTIONS_RUNNER_INPUT_NAME is not set: a persistent runner needs its name"
  [ -d "$state_dir" ] || die "the state directory $state_dir does not exist: mount the runner's state volume there (FLEET_STATE_DIR)"
  if ! must_register; then
    log "runner $name: restoring its registration from $state_dir"
    restore_state
  else
    if has_state; then
      log "runner $name: GitHub no longer knows the registration saved in $state_dir: removing it and registering again"
      clear_state
    fi
    [ -n "${ACTIONS_RUNNER_INPUT_TOKEN:-}" ] ||
      die "runner $name has no saved registration in $state_dir and no ACTIONS_RUNNER_INPUT_TOKEN to register with; fleet passes a token only when GitHub does not know the runner, so the state volume was probably lost: remove the runner's registration on GitHub and run fleet apply"
    [ -w "$state_dir" ] || die "the state directory $state_dir is not writable by user $(id -u): the registration could not be saved"
    set -- --unattended --replace
    # The runner adds self-hosted, Linux and X64 unless told not to; fleet lists them itself
    # unless the pool says no_default_labels.
    labels=$(printf '%s' "${ACTIONS_RUNNER_INPUT_LABELS:-}" | tr '[:upper:]' '[:lower:]')
    case ",$labels," in
    *,self-hosted,*) ;;
    *) set -- "$@" --no-default-labels ;;
    esac
    log "runner $name: registering with GitHub (config.sh $*)"
    rm -f ./.runner ./.credentials ./.credentials_rsaparams ./.runner_migrated ./.credentials_migrated
    if ./config.sh "$@"; then
      save_state
      (umask 077 && token_digest >"$state_dir/.fleet-token-used") ||
        log "warning: cannot record the use of the registration token in $state_dir"
      log "runner $name: registered; registration saved to $state_dir"
    else
      die "config.sh failed with status $?: runner $name is not registered"
    fi
  fi
  # Not needed to run, and not for jobs to see.
  unset ACTIONS_RUNNER_INPUT_TOKEN ACTIONS_RUNNER_INPUT_URL ACTIONS_RUNNER_INPUT_NAME ACTIONS_RUNNER_INPUT_LABELS
else
  log "runner ${name:-?}: starting with its JIT configuration"
fi

export RUNNER_MANUALLY_TRAP_SIG="${RUNNER_MANUALLY_TRAP_SIG:-1}"

runner_pid=
stopping=
# shellcheck disable=SC2317 # called by the traps below
forward() {
  stopping=$1
  if [ -n "$runner_pid" ]; then
    kill -TERM "$runner_pid" 2>/dev/null || true
  fi
}
trap 'forward TERM' TERM
trap 'forward INT' INT
trap 'forward HUP' HUP

[ -z "$stopping" ] || {
  log "stopped (SIG$stopping) before the runner started"
  exit 0
}
# A command started with `&` by a shell without job control has SIGINT and SIGQUIT ignored,
# and the runner (.NET) keeps ignored signals ignored; run.sh stops its listener with SIGINT.
# GNU env (coreutils 8.31 and later) restores them; busybox's env cannot, and does not need to
# for anything but the real runner.
if env --default-signal=INT,QUIT true >/dev/null 2>&1; then
  env --default-signal=INT,QUIT ./run.sh &
else
  ./run.sh &
fi
runner_pid=$!
if [ -n "$stopping" ]; then
  kill -TERM "$runner_pid" 2>/dev/null || true
fi

# A trapped signal interrupts `wait` with a status above 128 while the runner still runs.
while :; do
  if wait "$runner_pid"; then status=0; else status=$?; fi
  if [ "$status" -gt 128 ] && kill -0 "$runner_pid" 2>/dev/null; then
    continue
  fi
  break
done

if [ "$mode" = persistent ]; then
  save_state
  remove_if_asked
fi

if [ -n "$stopping" ]; then
  log "runner ${name:-?}: stopped (SIG$stopping)"
  exit 0
fi
log "runner ${name:-?}: the runner exited with status $status"
exit "$status"

#!/bin/sh
# fleet-entrypoint: starts the GitHub Actions runner of a container that fleet made, following
# fleet's container contract (docs/apply.md, "The container contract"). POSIX sh: it runs under
# bash, dash and busybox ash alike (fleet's tests run it under busybox).
#
# It starts as root, reads and removes the registration secret, and runs everything else as the
# unprivileged runner user ($FLEET_RUNNER_USER, default `runner`).
#
# The registration secret: one line ACTIONS_RUNNER_INPUT_JITCONFIG=<config> (ephemeral runner)
# or ACTIONS_RUNNER_INPUT_TOKEN=<token> (persistent runner that must register). With
# `secrets: stdin` (fleet's default, FLEET_SECRET_STDIN=1) fleet writes that line to the
# container's standard input as it first starts, then closes it. With `secrets: file` fleet
# writes it, before the container starts, into a root-only file (mode 0600) whose path is in
# FLEET_SECRET_FILE (/run/fleet/registration); the script removes the file once read. Either way
# the script reads it into unexported variables before anything else runs, and neither value is
# ever in the container's configuration (`docker inspect`). A container started again (a restart
# of a persistent runner) finds no line and no file: the secret was used the first time, and the
# runner restores the registration it saved. With `secrets: env` the same variables come from the
# environment instead (then `docker inspect` shows them for the container's life).
#
# Two modes, chosen by what fleet gave:
#
#   Ephemeral (JIT): a JIT configuration. The runner starts with that single-use configuration
#     in its own environment (it reads it there) and runs one job; config.sh is never called and
#     nothing is saved.
#
#   Persistent: ACTIONS_RUNNER_INPUT_URL is set (with _NAME, _LABELS, and a token when the runner
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
#     config.sh runs as the runner user (it refuses root, and what it writes is the runner's),
#     with the token in its environment and nothing else of the runner's running; once it has
#     exited no process, environment or file holds the token.
#
# Dropping to the runner user. The first of these that is installed and works (it is tried with
# `id -u`) switches user: setpriv (util-linux, in the reference images), su-exec, gosu, runuser,
# chpst, setuidgid, su. A script started as another user than root runs as that user and cannot
# read a secret file (use `secrets: env` for such an image); FLEET_RUNNER_USER=root keeps root,
# which the runner refuses unless RUNNER_ALLOW_RUNASROOT=1. Files in places the runner user can
# write (the runner directory, the state directory) are only read and written as that user.
#
# Secrets are never put on a command line (where `ps` and `docker top` on the host would show
# them) and never printed: the runner reads every ACTIONS_RUNNER_INPUT_<NAME> variable itself as
# the input <name> (its CommandSettings). This script logs only names and paths.
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
# /home/runner/actions-runner). With arguments, the script runs them instead of the runner, as
# the user it was started as (`docker run --rm -it IMAGE bash` for a look inside).

set -eu

runner_dir=${FLEET_RUNNER_DIR:-/home/runner/actions-runner}
state_dir=${FLEET_STATE_DIR:-/var/lib/fleet-runner}
remove_token_file=${FLEET_REMOVE_TOKEN_FILE:-$state_dir/remove-token}
runner_user=${FLEET_RUNNER_USER:-runner}
# What config.sh writes and run.sh needs; the runner may add the *_migrated files later.
required_files=".runner .credentials .credentials_rsaparams"
state_files="$required_files .runner_migrated .credentials_migrated"
# The script itself, for the steps it runs again as the runner user.
case $0 in
/*) self=$0 ;;
*) self=$(pwd)/$0 ;;
esac

log() { printf 'fleet-entrypoint: %s\n' "$*" >&2; }
die() {
  log "error: $*"
  exit 1
}

## Steps that run as the runner user (`fleet-entrypoint:configure` and `fleet-entrypoint:save`).

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

# A persistent runner: restores its saved registration, or registers with the token in
# ACTIONS_RUNNER_INPUT_TOKEN (this process's environment, and config.sh's) and saves it.
configure() {
  if ! must_register; then
    log "runner $name: restoring its registration from $state_dir"
    restore_state
    return 0
  fi
  if has_state; then
    log "runner $name: GitHub no longer knows the registration saved in $state_dir: removing it and registering again"
    clear_state
  fi
  [ -n "${ACTIONS_RUNNER_INPUT_TOKEN:-}" ] ||
    die "runner $name has no saved registration in $state_dir and no registration token (ACTIONS_RUNNER_INPUT_TOKEN, from \$FLEET_SECRET_FILE or the environment) to register with; fleet passes a token only when GitHub does not know the runner, so the state volume was probably lost: remove the runner's registration on GitHub and run fleet apply"
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
}

name=${ACTIONS_RUNNER_INPUT_NAME:-${RUNNER_NAME:-}}

case "${1:-}" in
fleet-entrypoint:configure)
  cd "$runner_dir"
  configure
  exit 0
  ;;
fleet-entrypoint:save)
  cd "$runner_dir"
  save_state
  remove_if_asked
  exit 0
  ;;
esac

if [ "$#" -gt 0 ]; then
  exec "$@"
fi

## As root: the secret, the user, then the runner.

jit_config=${ACTIONS_RUNNER_INPUT_JITCONFIG:-}
token=${ACTIONS_RUNNER_INPUT_TOKEN:-}
# From here on they reach only the process that needs them, and only for as long as it does.
unset ACTIONS_RUNNER_INPUT_JITCONFIG ACTIONS_RUNNER_INPUT_TOKEN

# Reads the secret file into the unexported variables and removes it. Only the two known
# variables are taken; the file is never sourced.
read_secret_file() {
  secret_file=${FLEET_SECRET_FILE:-}
  [ -n "$secret_file" ] || return 0
  unreadable="cannot read the secret file $secret_file as user $(id -u): it is root's; start this entrypoint as root (no USER in the image: it drops to $runner_user itself), or give the pool \`secrets: env\`"
  if [ ! -e "$secret_file" ]; then
    # A directory this user cannot search hides the file.
    if [ -d "${secret_file%/*}" ] && [ ! -x "${secret_file%/*}" ]; then
      die "$unreadable"
    fi
    log "no secret file at $secret_file: it was read and removed when this container first started"
    return 0
  fi
  [ -r "$secret_file" ] || die "$unreadable"
  while IFS= read -r line || [ -n "$line" ]; do
    case $line in
    ACTIONS_RUNNER_INPUT_JITCONFIG=*) jit_config=${line#*=} ;;
    ACTIONS_RUNNER_INPUT_TOKEN=*) token=${line#*=} ;;
    '') ;;
    *) log "warning: ignoring a line of $secret_file that sets neither ACTIONS_RUNNER_INPUT_JITCONFIG nor ACTIONS_RUNNER_INPUT_TOKEN" ;;
    esac
  done <"$secret_file"
  unset line
  rm -f "$secret_file" || die "cannot remove the secret file $secret_file"
  rmdir "${secret_file%/*}" 2>/dev/null || true
  log "read and removed the secret file $secret_file"
}

# Reads the secret line fleet writes to standard input (`secrets: stdin`). A container started
# again gets no line: end of input, or nothing within 10 s.
read_secret_stdin() {
  [ "${FLEET_SECRET_STDIN:-}" = 1 ] || return 0
  if command -v timeout >/dev/null 2>&1; then
    line=$(timeout 10 head -n 1) || line=
  else
    line=$(head -n 1) || line=
  fi
  case $line in
  ACTIONS_RUNNER_INPUT_JITCONFIG=*) jit_config=${line#*=} ;;
  ACTIONS_RUNNER_INPUT_TOKEN=*) token=${line#*=} ;;
  '') log "no secret on standard input: it was read when this container first started" ;;
  *) log "warning: ignoring a line on standard input that sets neither ACTIONS_RUNNER_INPUT_JITCONFIG nor ACTIONS_RUNNER_INPUT_TOKEN" ;;
  esac
  unset line
}

# uid, gid and home of a user, from /etc/passwd (no getent in busybox images).
passwd_entry() {
  while IFS=: read -r user _ uid gid _ home _; do
    if [ "$user" = "$1" ]; then
      printf '%s %s %s\n' "$uid" "$gid" "$home"
      return 0
    fi
  done </etc/passwd
  return 1
}

# Runs "$@" as the runner user, in place of the calling (sub)shell, with the tool $drop found
# at $drop_path.
exec_as_runner() {
  # shellcheck disable=SC2016 # su: the runner user's shell expands "$0" "$@"
  case $drop in
  none) exec "$@" ;;
  setpriv) exec "$drop_path" --reuid="$runner_uid" --regid="$runner_gid" --init-groups -- "$@" ;;
  su-exec | gosu) exec "$drop_path" "$runner_user" "$@" ;;
  runuser) exec "$drop_path" -u "$runner_user" -- "$@" ;;
  chpst) exec "$drop_path" -u "$runner_user" "$@" ;;
  setuidgid) exec "$drop_path" "$runner_user" "$@" ;;
  su) exec "$drop_path" -s /bin/sh -c 'exec "$0" "$@"' -- "$runner_user" "$@" ;;
  esac
  die "no way to run a command as $runner_user"
}

# Each executable named $1 in $PATH, in order. Not `command -v`: a busybox shell may answer
# with its own applet of that name, whatever else $PATH holds.
executables() {
  (
    IFS=:
    for dir in $PATH; do
      [ -f "$dir/$1" ] && [ -x "$dir/$1" ] && printf '%s\n' "$dir/$1"
    done
  ) || true
}

# Chooses how to drop to the runner user: the first tool that is there and works (busybox's
# setpriv, for one, has no --reuid).
choose_drop() {
  drop=none
  if [ "$(id -u)" != 0 ]; then
    log "running as user $(id -u), not root: the runner runs as that user"
    return 0
  fi
  if [ "$runner_user" = root ]; then
    log "warning: FLEET_RUNNER_USER=root: the runner and its jobs run as root"
    return 0
  fi
  entry=$(passwd_entry "$runner_user") ||
    die "user $runner_user is not in /etc/passwd: create it in the image, or set FLEET_RUNNER_USER"
  runner_uid=${entry%% *}
  entry=${entry#* }
  runner_gid=${entry%% *}
  runner_home=${entry#* }
  for drop in setpriv su-exec gosu runuser chpst setuidgid su; do
    for drop_path in $(executables "$drop"); do
      if [ "$(exec_as_runner id -u 2>/dev/null)" = "$runner_uid" ]; then
        export HOME="$runner_home" USER="$runner_user" LOGNAME="$runner_user"
        log "the runner runs as $runner_user (uid $runner_uid, switched with $drop_path)"
        return 0
      fi
    done
  done
  die "found no working way to switch to user $runner_user (tried setpriv, su-exec, gosu, runuser, chpst, setuidgid, su in \$PATH): install util-linux's setpriv in the image"
}

read_secret_stdin
read_secret_file

if [ -n "$jit_config" ]; then
  mode=jit
  if [ -n "$token" ]; then
    log "warning: both a JIT configuration and a registration token were given; using the JIT configuration"
  fi
  token=
elif [ -n "${ACTIONS_RUNNER_INPUT_URL:-}" ]; then
  mode=persistent
else
  die "neither ACTIONS_RUNNER_INPUT_JITCONFIG (ephemeral runner) nor ACTIONS_RUNNER_INPUT_URL (persistent runner) is set, in the environment or in \$FLEET_SECRET_FILE: this image expects what fleet gives its runner containers"
fi

choose_drop
cd "$runner_dir" 2>/dev/null || die "cannot enter the runner directory $runner_dir (set FLEET_RUNNER_DIR)"
[ -x ./run.sh ] || die "no runner in $runner_dir: run.sh is missing (set FLEET_RUNNER_DIR)"

if [ "$mode" = persistent ]; then
  [ -n "$name" ] || die "ACTIONS_RUNNER_INPUT_NAME is not set: a persistent runner needs its name"
  [ -d "$state_dir" ] || die "the state directory $state_dir does not exist: mount the runner's state volume there (FLEET_STATE_DIR)"
  # The token goes to this one step, as the runner user, and ends with it.
  (
    if [ -n "$token" ]; then
      ACTIONS_RUNNER_INPUT_TOKEN=$token
      export ACTIONS_RUNNER_INPUT_TOKEN
    fi
    exec_as_runner /bin/sh "$self" fleet-entrypoint:configure
  ) || exit 1
  token=
  # Not needed to run, and not for jobs to see.
  unset ACTIONS_RUNNER_INPUT_URL ACTIONS_RUNNER_INPUT_NAME ACTIONS_RUNNER_INPUT_LABELS ACTIONS_RUNNER_INPUT_RUNNERGROUP
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

# The runner, as the runner user; the JIT configuration in its environment only.
start_runner() {
  if [ -n "$jit_config" ]; then
    ACTIONS_RUNNER_INPUT_JITCONFIG=$jit_config
    export ACTIONS_RUNNER_INPUT_JITCONFIG
  fi
  # A command started with `&` by a shell without job control has SIGINT and SIGQUIT ignored,
  # and the runner (.NET) keeps ignored signals ignored; run.sh stops its listener with SIGINT.
  # GNU env (coreutils 8.31 and later) restores them; busybox's env cannot, and does not need to
  # for anything but the real runner.
  if env --default-signal=INT,QUIT true >/dev/null 2>&1; then
    exec_as_runner env --default-signal=INT,QUIT ./run.sh
  else
    exec_as_runner ./run.sh
  fi
}
start_runner &
runner_pid=$!
jit_config=
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
  (exec_as_runner /bin/sh "$self" fleet-entrypoint:save) ||
    log "warning: saving the registration to $state_dir failed"
fi

if [ -n "$stopping" ]; then
  log "runner ${name:-?}: stopped (SIG$stopping)"
  exit 0
fi
log "runner ${name:-?}: the runner exited with status $status"
exit "$status"

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
# The runner. The script starts the runner's listener itself (`bin/Runner.Listener run`, as the
# runner's run.sh and run-helper.sh do), not run.sh: run-helper.sh turns the listener's failures
# (1: credentials refused, registration deleted; 5: session conflict; any unknown code) into 0,
# so that an image that cannot work would look like a runner that finished its job. The script
# repeats what run.sh and run-helper.sh do otherwise: it starts the listener again after a
# retryable error (2, and 6: configuration refreshed) after 5 s, and after a self-update (3, 4)
# once update.finished is there (at most 30 s).
#
# SIGTERM, SIGINT and SIGHUP are forwarded to the listener as SIGTERM, which it handles as a
# shutdown (its Unloading handler, as for SIGINT): it stops listening, deletes its session with
# GitHub (else the next container of a persistent runner waits minutes on "a session for this
# runner already exists") and exits; a persistent runner's registration is then saved; the
# script exits 0. Not SIGINT: a command started with `&` by a shell without job control has
# SIGINT ignored, and only GNU env can restore it.
#
# Exit codes, so that fleet tells "job done" from "could not start" (docs/apply.md, "Exit codes"):
#   0   the runner ended normally (an ephemeral runner's job is done), or it was stopped
#   1   the listener's terminated error: GitHub refused its credentials, its registration was
#       deleted, or it could not start
#   5   the listener's session conflict: another listener holds this runner's session
#   7   the runner's version is deprecated: GitHub no longer accepts it (rebuild the image)
#   75  a persistent runner with no registration saved and no token to register with: fleet
#       registers it again (a new token, FLEET_REGISTRATION=register)
#   78  the container is not set up as the contract says (no runner, no user, a secret that
#       cannot be read), or config.sh failed after its retries
#   any other code is the listener's own (137: it was killed)
#
# Labels. FLEET_NO_DEFAULT_LABELS=1 (the pool's `no_default_labels`) passes
# --no-default-labels to config.sh; otherwise the runner adds self-hosted, Linux and X64 itself
# and the script takes exactly those names off ACTIONS_RUNNER_INPUT_LABELS, so that they are not
# sent twice; every other label goes as written. FLEET_RUNNER_UPDATE=enabled lets the runner
# update itself; anything else (fleet's default, `runner_update: disabled`) passes
# --disableupdate to config.sh.
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
# Docker for jobs (`docker_socket: true`). When the engine's socket is mounted
# ($FLEET_DOCKER_SOCKET, default /var/run/docker.sock), the runner user joins the group that owns
# it, by the gid the socket has in this container (a group of that gid in /etc/group, or a new
# `fleet-docker`), so that a job's `docker` works without root. The script reads the gid itself
# because fleet may reach the engine over SSH or TCP and cannot see the socket. A socket of group
# 0 is not given: that would make the runner user a member of root's group.
#
# The work folder. With the socket, fleet bind-mounts the host directory $FLEET_WORK_DIR
# (<work_dir>/<runner>) at the identical path and registers the runner with it as its work
# folder (the JIT config's, or config.sh --work): the runner hands the host's engine the paths it
# sees (a `container:` job's workspace, a service container's or a Docker action's mounts), and
# the engine finds them on the host. The script gives the directory to the runner user, and an
# ephemeral runner's work folder is emptied when the runner ends (the host keeps the empty
# directory); a persistent runner's is kept.
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
  exit 78
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

# Copies what the runner holds back to the state directory, each file atomically, and removes
# from it what the runner removed: a runner whose registration GitHub deleted deletes its
# configuration, and a saved copy would be restored on every start.
save_state() {
  for f in $state_files; do
    if [ -f "./$f" ]; then
      (umask 077 && cp "./$f" "$state_dir/$f.tmp" && mv -f "$state_dir/$f.tmp" "$state_dir/$f") ||
        log "warning: cannot save $f to $state_dir"
    elif [ -e "$state_dir/$f" ]; then
      rm -f "$state_dir/$f" || log "warning: cannot remove $f from $state_dir"
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
  if [ -z "${ACTIONS_RUNNER_INPUT_TOKEN:-}" ]; then
    log "runner $name has no saved registration in $state_dir and no registration token to register with (the registration was deleted, or the state volume lost): exiting with $exit_register_again, which tells fleet to register it again"
    exit "$exit_register_again"
  fi
  [ -w "$state_dir" ] || die "the state directory $state_dir is not writable by user $(id -u): the registration could not be saved"
  set -- --unattended --replace
  [ "${FLEET_RUNNER_UPDATE:-disabled}" = enabled ] || set -- "$@" --disableupdate
  [ -z "${FLEET_WORK_DIR:-}" ] || set -- "$@" --work "$FLEET_WORK_DIR"
  if [ -n "${FLEET_NO_DEFAULT_LABELS:-}" ]; then
    [ "$FLEET_NO_DEFAULT_LABELS" != 1 ] || set -- "$@" --no-default-labels
    ACTIONS_RUNNER_INPUT_LABELS=$(custom_labels "${ACTIONS_RUNNER_INPUT_LABELS:-}")
    export ACTIONS_RUNNER_INPUT_LABELS
  else
    # An older fleet: it listed the defaults itself unless the pool said no_default_labels.
    labels=$(printf '%s' "${ACTIONS_RUNNER_INPUT_LABELS:-}" | tr '[:upper:]' '[:lower:]')
    case ",$labels," in
    *,self-hosted,*) ;;
    *) set -- "$@" --no-default-labels ;;
    esac
  fi
  log "runner $name: registering with GitHub (config.sh $*)"
  attempt=1
  delay=${FLEET_CONFIG_RETRY_DELAY:-5}
  while :; do
    rm -f ./.runner ./.credentials ./.credentials_rsaparams ./.runner_migrated ./.credentials_migrated
    if ./config.sh "$@"; then
      break
    else
      status=$?
    fi
    # A registration token is valid for an hour: a passing network error is worth a wait.
    [ "$attempt" -lt "${FLEET_CONFIG_ATTEMPTS:-5}" ] ||
      die "config.sh failed with status $status $attempt times: runner $name is not registered"
    log "runner $name: config.sh failed with status $status (attempt $attempt); trying again in $delay s"
    sleep "$delay"
    attempt=$((attempt + 1))
    delay=$((delay * 2))
  done
  save_state
  (umask 077 && token_digest >"$state_dir/.fleet-token-used") ||
    log "warning: cannot record the use of the registration token in $state_dir"
  log "runner $name: registered; registration saved to $state_dir"
}

# The labels of the comma-separated list $1 but the runner's own defaults, which it adds itself
# unless FLEET_NO_DEFAULT_LABELS=1 (exact names: a custom `linux` stays as written).
custom_labels() {
  [ "${FLEET_NO_DEFAULT_LABELS:-}" != 1 ] || {
    printf '%s' "$1"
    return 0
  }
  printf '%s' "$1" | tr ',' '\n' | {
    out=
    while IFS= read -r label || [ -n "$label" ]; do
      case $label in
      self-hosted | Linux | X64 | '') ;;
      *) out=${out:+$out,}$label ;;
      esac
    done
    printf '%s' "$out"
  }
}

name=${ACTIONS_RUNNER_INPUT_NAME:-${RUNNER_NAME:-}}
exit_register_again=75

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

# Reads the secret line fleet writes to standard input (`secrets: stdin`) on the container's
# first start. A container started again (a restart) gets no line, and does not wait for one: a
# root-only marker in its own filesystem says it started before. Without the marker (it could
# not be written), nothing within 10 s means no line.
read_secret_stdin() {
  [ "${FLEET_SECRET_STDIN:-}" = 1 ] || return 0
  if [ -e "$started_marker" ]; then
    log "no secret on standard input: this container started before, and its secret was read then"
    return 0
  fi
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
    # The runner's scripts refuse root without it.
    export RUNNER_ALLOW_RUNASROOT=1
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

started_marker=${FLEET_STARTED_MARKER:-/var/lib/fleet-entrypoint/started}
# The name of the group whose gid is $1 in /etc/group, if any.
group_of_gid() {
  while IFS=: read -r group _ gid _; do
    if [ "$gid" = "$1" ]; then
      printf '%s\n' "$group"
      return 0
    fi
  done </etc/group
  return 1
}

# Adds $runner_user to the members of group $1 in /etc/group.
join_group() {
  tmp=/etc/group.fleet-entrypoint
  while IFS= read -r line || [ -n "$line" ]; do
    case $line in
    "$1":*)
      members=${line##*:}
      case ",$members," in
      *",$runner_user,"*) ;;
      *) line="$line${members:+,}$runner_user" ;;
      esac
      ;;
    esac
    printf '%s\n' "$line"
  done </etc/group >"$tmp" && cat "$tmp" >/etc/group && rm -f "$tmp"
}

# The Docker socket's group for the runner user (see the top of this file).
grant_docker_socket() {
  socket=${FLEET_DOCKER_SOCKET:-/var/run/docker.sock}
  [ -S "$socket" ] && [ "$drop" != none ] || return 0
  gid=$(stat -c %g "$socket") || return 0
  if [ "$gid" = 0 ]; then
    log "warning: $socket belongs to group 0: not giving it to $runner_user, so jobs cannot use Docker (give the socket a group of its own on the host)"
    return 0
  fi
  if group=$(group_of_gid "$gid"); then
    join_group "$group" || die "cannot add $runner_user to group $group in /etc/group"
  else
    group=fleet-docker
    printf '%s:x:%s:%s\n' "$group" "$gid" "$runner_user" >>/etc/group ||
      die "cannot add group $group to /etc/group"
  fi
  log "$runner_user joins group $group (gid $gid), which owns $socket: jobs can use Docker"
}

read_secret_stdin
read_secret_file
if [ "$(id -u)" = 0 ]; then
  (umask 077 && mkdir -p "${started_marker%/*}" && : >"$started_marker") 2>/dev/null ||
    log "warning: cannot write $started_marker: a restart waits 10 s for a secret line"
fi

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
grant_docker_socket
if [ -n "${FLEET_WORK_DIR:-}" ]; then
  mkdir -p "$FLEET_WORK_DIR" || die "cannot make the work folder $FLEET_WORK_DIR"
  if [ "$drop" != none ]; then
    chown "$runner_uid:$runner_gid" "$FLEET_WORK_DIR" ||
      die "cannot give the work folder $FLEET_WORK_DIR to $runner_user"
  fi
fi
cd "$runner_dir" 2>/dev/null || die "cannot enter the runner directory $runner_dir (set FLEET_RUNNER_DIR)"
[ -x ./bin/Runner.Listener ] || die "no runner in $runner_dir: bin/Runner.Listener is missing (set FLEET_RUNNER_DIR)"

if [ "$mode" = persistent ]; then
  [ -n "$name" ] || die "ACTIONS_RUNNER_INPUT_NAME is not set: a persistent runner needs its name"
  [ -d "$state_dir" ] || die "the state directory $state_dir does not exist: mount the runner's state volume there (FLEET_STATE_DIR)"
  # A new volume on a path the image does not have is root's: give it to the runner user.
  if [ "$drop" != none ]; then
    if ! chown "$runner_uid:$runner_gid" "$state_dir" || ! chmod 0700 "$state_dir"; then
      die "cannot give the state directory $state_dir to $runner_user"
    fi
  fi
  # The token goes to this one step, as the runner user, and ends with it.
  (
    if [ -n "$token" ]; then
      ACTIONS_RUNNER_INPUT_TOKEN=$token
      export ACTIONS_RUNNER_INPUT_TOKEN
    fi
    exec_as_runner /bin/sh "$self" fleet-entrypoint:configure
  ) || exit $?
  token=
  # Not needed to run, and not for jobs to see.
  unset ACTIONS_RUNNER_INPUT_URL ACTIONS_RUNNER_INPUT_NAME ACTIONS_RUNNER_INPUT_LABELS ACTIONS_RUNNER_INPUT_RUNNERGROUP
else
  log "runner ${name:-?}: starting with its JIT configuration"
fi

export RUNNER_MANUALLY_TRAP_SIG="${RUNNER_MANUALLY_TRAP_SIG:-1}"
# For images that start run.sh themselves: keep 7 (version deprecated) a failure.
export ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE=1

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

# The listener, as the runner user; the JIT configuration in its environment only.
start_runner() {
  if [ -n "$jit_config" ]; then
    ACTIONS_RUNNER_INPUT_JITCONFIG=$jit_config
    export ACTIONS_RUNNER_INPUT_JITCONFIG
  fi
  # A command started with `&` by a shell without job control has SIGINT and SIGQUIT ignored,
  # and the runner (.NET) keeps ignored signals ignored (Ctrl-C in `docker attach`, say).
  # GNU env (coreutils 8.31 and later) restores them; busybox's env cannot, and does not need to
  # for anything but the real runner.
  if env --default-signal=INT,QUIT true >/dev/null 2>&1; then
    exec_as_runner env --default-signal=INT,QUIT ./bin/Runner.Listener run
  else
    exec_as_runner ./bin/Runner.Listener run
  fi
}

# Waits for process $1, through the traps' interruptions; sets $status.
wait_for() {
  while :; do
    if wait "$1"; then status=0; else status=$?; fi
    if [ "$status" -gt 128 ] && kill -0 "$1" 2>/dev/null; then
      continue
    fi
    return 0
  done
}

# Sleeps $1 seconds unless a signal comes first.
pause() {
  sleep "$1" &
  runner_pid=$!
  wait_for "$runner_pid"
  runner_pid=
}

# The listener, started again as run.sh would: after a retryable error, and after an update.
while :; do
  start_runner &
  runner_pid=$!
  if [ -n "$stopping" ]; then
    kill -TERM "$runner_pid" 2>/dev/null || true
  fi
  wait_for "$runner_pid"
  runner_pid=
  [ -z "$stopping" ] || break
  case $status in
  2 | 6)
    log "runner ${name:-?}: the listener exited with status $status (retryable): starting it again in 5 s"
    pause 5
    ;;
  3 | 4)
    log "runner ${name:-?}: the runner updated itself: starting it again once the update is finished"
    i=0
    while [ "$i" -lt 30 ] && [ ! -f ./update.finished ] && [ -z "$stopping" ]; do
      pause 1
      i=$((i + 1))
    done
    rm -f ./update.finished 2>/dev/null || true
    ;;
  *) break ;;
  esac
  [ -z "$stopping" ] || break
done
jit_config=

if [ "$mode" = persistent ]; then
  (exec_as_runner /bin/sh "$self" fleet-entrypoint:save) ||
    log "warning: saving the registration to $state_dir failed"
elif [ -n "${FLEET_WORK_DIR:-}" ] && [ -d "$FLEET_WORK_DIR" ]; then
  # One job's files, some of them root's (written by the job's containers): not for the next.
  find "$FLEET_WORK_DIR" -mindepth 1 -maxdepth 1 -exec rm -rf {} + ||
    log "warning: cannot empty the work folder $FLEET_WORK_DIR"
fi

if [ -n "$stopping" ]; then
  log "runner ${name:-?}: stopped (SIG$stopping)"
  exit 0
fi
case $status in
0) log "runner ${name:-?}: the runner exited with status 0 (it ended normally)" ;;
1) log "runner ${name:-?}: the runner exited with status 1: GitHub refused its credentials, or its registration was deleted, or it could not start (its log above says which)" ;;
5) log "runner ${name:-?}: the runner exited with status 5: another listener holds this runner's session with GitHub" ;;
7) log "runner ${name:-?}: the runner exited with status 7: its version is deprecated and GitHub no longer accepts it; rebuild the image with a newer runner" ;;
*) log "runner ${name:-?}: the runner exited with status $status" ;;
esac
exit "$status"

#!/bin/sh
# Test stub of the runner's config.sh, used by tests/entrypoint.rs (never shipped in the image):
# it records its user id, its arguments and the inputs it got from the environment in
# $FLEET_TEST_RECORDS and writes (or, for `remove`, deletes) the files the real one does, with
# `"disableUpdate": true` in .runner when given --disableupdate. It prints no input value. With
# $FLEET_TEST_CONFIG_FAILS=N its first N calls fail as on a network error (exit 1, nothing
# written), as the real one does when GitHub cannot be reached. The token it records is the
# test's to take away before it looks for copies of the token in the container.
set -eu
rec=${FLEET_TEST_RECORDS:-/records}
count=$(cat "$rec/config.count" 2>/dev/null || echo 0)
echo $((count + 1)) >"$rec/config.count"
id -u >"$rec/config.uid"
for arg in "$@"; do printf '%s\n' "$arg"; done >"$rec/config.args"
env | sed -n 's/^\(ACTIONS_RUNNER_INPUT_[A-Z_]*\)=.*/\1/p' | sort >"$rec/config.env-names"
if [ "${1:-}" = remove ]; then
  [ -n "${ACTIONS_RUNNER_INPUT_TOKEN:-}" ] || {
    echo "config stub: remove needs a token" >&2
    exit 1
  }
  printf '%s' "$ACTIONS_RUNNER_INPUT_TOKEN" >"$rec/remove.token"
  rm -f .runner .credentials .credentials_rsaparams
  echo "config stub: removed"
  exit 0
fi
if [ "$((count + 1))" -le "${FLEET_TEST_CONFIG_FAILS:-0}" ]; then
  echo "config stub: cannot reach GitHub (attempt $((count + 1)))" >&2
  exit 1
fi
[ -n "${ACTIONS_RUNNER_INPUT_TOKEN:-}" ] || {
  echo "config stub: no registration token" >&2
  exit 1
}
printf '%s' "$ACTIONS_RUNNER_INPUT_TOKEN" >"$rec/config.token"
printf '%s' "${ACTIONS_RUNNER_INPUT_URL:-}" >"$rec/config.url"
printf '%s' "${ACTIONS_RUNNER_INPUT_NAME:-}" >"$rec/config.name"
printf '%s' "${ACTIONS_RUNNER_INPUT_LABELS:-}" >"$rec/config.labels"
disable_update=false
for arg in "$@"; do [ "$arg" != --disableupdate ] || disable_update=true; done
printf '{"agentName":"%s","poolId":1,"disableUpdate": %s}\n' "${ACTIONS_RUNNER_INPUT_NAME:-}" "$disable_update" >.runner
printf '{"scheme":"OAuth"}\n' >.credentials
printf '{"d":"stub"}\n' >.credentials_rsaparams
echo "config stub: configured ${ACTIONS_RUNNER_INPUT_NAME:-}"

#!/bin/sh
# Test stub of the runner's run.sh (never shipped in the image), written anew after
# actions/runner's src/Misc/layoutroot/run.sh so that tests can show what it does with the
# listener's exit codes: it starts run-helper.sh (a fresh copy of run-helper.sh.template) again
# while that exits 2, and otherwise exits 0, except 7 when
# ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE=1. With RUNNER_MANUALLY_TRAP_SIG set it
# turns SIGINT and SIGTERM into a SIGINT for the helper and exits with the helper's code.
# fleet's entrypoint does not go through it: it starts bin/Runner.Listener itself and keeps
# its exit code (ci/runner/entrypoint.sh, "Exit codes").
dir=$(cd "$(dirname "$0")" && pwd)
while :; do
  cp -f "$dir/run-helper.sh.template" "$dir/run-helper.sh"
  if [ -n "${RUNNER_MANUALLY_TRAP_SIG:-}" ]; then
    "$dir/run-helper.sh" "$@" &
    pid=$!
    trap 'kill -INT $pid' INT TERM
    wait $pid
    code=$?
  else
    "$dir/run-helper.sh" "$@"
    code=$?
  fi
  if [ "$code" -eq 2 ]; then
    echo "Restarting runner..."
  elif [ "${ACTIONS_RUNNER_RETURN_VERSION_DEPRECATED_EXIT_CODE:-}" = 1 ] && [ "$code" -eq 7 ]; then
    echo "Exiting runner..."
    exit "$code"
  else
    echo "Exiting runner..."
    if [ -n "${RUNNER_MANUALLY_TRAP_SIG:-}" ]; then exit "$code"; fi
    exit 0
  fi
done

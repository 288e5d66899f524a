#!/bin/sh
# Test stub of the runner's run.sh, used by tests/entrypoint.rs (never shipped in the image): it
# records how it was started (user id, arguments, inputs) in $FLEET_TEST_RECORDS, says it is
# listening, and waits like a runner until SIGTERM, or exits with $FLEET_TEST_RUNNER_EXIT when
# that is set (a job done).
set -eu
rec=${FLEET_TEST_RECORDS:-/records}
count=$(cat "$rec/run.count" 2>/dev/null || echo 0)
echo $((count + 1)) >"$rec/run.count"
id -u >"$rec/run.uid"
for arg in "$@"; do printf '%s\n' "$arg"; done >"$rec/run.args"
env | sed -n 's/^\(ACTIONS_RUNNER_INPUT_[A-Z_]*\)=.*/\1/p' | sort >"$rec/run.env-names"
printf '%s' "${ACTIONS_RUNNER_INPUT_JITCONFIG:-}" >"$rec/run.jitconfig"
printf '%s' "${RUNNER_MANUALLY_TRAP_SIG:-}" >"$rec/run.trap-sig"
for f in .runner .credentials .credentials_rsaparams; do
  if [ -s "$f" ]; then echo "$f"; fi
done >"$rec/run.config-files"
if [ -n "${FLEET_TEST_RUNNER_EXIT:-}" ]; then
  echo "runner stub: job done"
  exit "$FLEET_TEST_RUNNER_EXIT"
fi
stop() {
  echo "runner stub: got $1"
  echo "$1" >"$rec/run.signal"
  exit 0
}
trap 'stop TERM' TERM
trap 'stop INT' INT
echo "runner stub: listening"
while :; do
  sleep 1 &
  wait $! || true
done

# Shared by scripts/*.sh: repo root, the local stack's environment, and cleanup.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export ROOT

# Points the AWS SDK (and our code) at the running local stack as the new account.
use_local_stack() {
  # shellcheck disable=SC1091
  . "$ROOT/.local/run/env"
  export AWS_ENDPOINT_URL="$FANOUT_MOTO_ENDPOINT"
  export AWS_ENDPOINT_URL_KINESIS="$FANOUT_KINESIS_ENDPOINT"
  export AWS_ACCESS_KEY_ID=123456789012 AWS_SECRET_ACCESS_KEY=local AWS_REGION=us-east-1
  export AWS_EC2_METADATA_DISABLED=true
  unset AWS_PROFILE AWS_SESSION_TOKEN AWS_DEFAULT_PROFILE
}

# Starts the named emulators; stops, on exit, only those this script started.
start_stack() {
  local name started=()
  for name in "$@"; do
    if [ -f "$ROOT/.local/run/$name.pid" ] && kill -0 "$(cat "$ROOT/.local/run/$name.pid")" 2>/dev/null; then
      continue
    fi
    started+=("$name")
  done
  "$ROOT/infra/local/start.sh" "$@"
  if [ "${#started[@]}" -gt 0 ] && [ "${FANOUT_KEEP_STACK:-0}" != 1 ]; then
    STARTED_STACK="${started[*]}"
    on_exit '"$ROOT/infra/local/stop.sh" $STARTED_STACK >/dev/null 2>&1 || true'
  fi
}

# Adds a command to run when the script exits, however it exits; the last added runs first.
# Use this instead of `trap ... EXIT`, which would replace the stack's own cleanup.
EXIT_HOOKS=()
on_exit() {
  EXIT_HOOKS=("$1" "${EXIT_HOOKS[@]}")
  trap 'for hook in "${EXIT_HOOKS[@]}"; do eval "$hook"; done' EXIT
}

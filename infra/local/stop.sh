#!/usr/bin/env bash
# Stop local AWS emulators started by start.sh.
# Usage: infra/local/stop.sh [kinesis-local] [moto] [moto-kinesis] [kinesalite]  (default: all)
# Sends SIGTERM to each server's whole process group, waits up to FANOUT_STOP_TIMEOUT
# seconds (default 10), then SIGKILLs. Removes PID files and rewrites .local/run/env.
# Idempotent: stopping what is not running is fine.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

STOP_TIMEOUT="${FANOUT_STOP_TIMEOUT:-10}"

services=()
for arg in "$@"; do
  case "$arg" in
    -h|--help) sed -n '2,6s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
    all) services+=("${ALL_SERVICES[@]}") ;;
    *) is_service "$arg" || die "unknown service '$arg' (known: ${ALL_SERVICES[*]} all)"
       services+=("$arg") ;;
  esac
done
[[ ${#services[@]} -gt 0 ]] || services=("${ALL_SERVICES[@]}")

# One start/stop at a time (parallel test runs may call these together).
mkdir -p "$RUN_DIR"
exec 9>"$RUN_DIR/.lock"
flock -w 120 9 || die "could not take $RUN_DIR/.lock within 120s"

# True while any member of process group PGID is alive.
group_alive() {
  local p
  for p in $(pgrep -g "$1" 2>/dev/null); do
    proc_alive "$p" && return 0
  done
  return 1
}

signal_group() {
  local sig="$1" pid="$2"
  # start.sh makes each server a session/group leader; fall back to the PID alone.
  kill "-$sig" -- "-$pid" 2>/dev/null || kill "-$sig" "$pid" 2>/dev/null || true
}

for name in "${services[@]}"; do
  if ! pid="$(live_pid "$name")"; then
    if [[ -f "$(pid_file "$name")" ]]; then
      echo "$name: not running (removed stale PID file)"
    fi
    rm -f "$(pid_file "$name")" "$(port_file "$name")"
    [[ "$name" != kinesis-local ]] || rm -f "$RUN_DIR/kinesis-local.tls-port"
    continue
  fi
  signal_group TERM "$pid"
  deadline=$((SECONDS + STOP_TIMEOUT))
  while proc_alive "$pid" || group_alive "$pid"; do
    if ((SECONDS >= deadline)); then
      echo "$name: still alive after ${STOP_TIMEOUT}s, sending SIGKILL" >&2
      signal_group KILL "$pid"
      sleep 0.5
      break
    fi
    sleep 0.1
  done
  if proc_alive "$pid" || group_alive "$pid"; then
    die "$name: could not stop process group $pid"
  fi
  rm -f "$(pid_file "$name")" "$(port_file "$name")"
  [[ "$name" != kinesis-local ]] || rm -f "$RUN_DIR/kinesis-local.tls-port"
  echo "$name: stopped (pid $pid)"
done

if [[ -d "$RUN_DIR" ]]; then write_env_file; fi

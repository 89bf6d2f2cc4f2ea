#!/usr/bin/env bash
# Start local AWS emulators in the background, bound to 127.0.0.1.
# Usage: infra/local/start.sh [kinesis-local] [moto] [moto-kinesis] [kinesalite] [all]
#        (default: kinesis-local moto)
# Writes .local/run/NAME.pid, .local/run/NAME.port, .local/log/NAME.log and
# .local/run/env (sourceable; exports FANOUT_*_ENDPOINT for every emulator running).
# Idempotent: a service already running and answering is left alone.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source-path=SCRIPTDIR source=lib.sh
source "$HERE/lib.sh"

START_TIMEOUT="${FANOUT_START_TIMEOUT:-60}"
KINESIS_DURATION="${FANOUT_KINESIS_DURATION:-0ms}"
KINESIS_DURATION_VARS=(
  CREATE_STREAM_DURATION DELETE_STREAM_DURATION
  REGISTER_STREAM_CONSUMER_DURATION DEREGISTER_STREAM_CONSUMER_DURATION
  START_STREAM_ENCRYPTION_DURATION STOP_STREAM_ENCRYPTION_DURATION
  MERGE_SHARDS_DURATION SPLIT_SHARD_DURATION
  UPDATE_SHARD_COUNT_DURATION UPDATE_STREAM_MODE_DURATION
)

services=()
for arg in "$@"; do
  case "$arg" in
    -h|--help) sed -n '2,7s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
    all) services+=("${ALL_SERVICES[@]}") ;;
    *) is_service "$arg" || die "unknown service '$arg' (known: ${ALL_SERVICES[*]} all)"
       services+=("$arg") ;;
  esac
done
[[ ${#services[@]} -gt 0 ]] || services=(kinesis-local moto)

command -v curl >/dev/null || die "curl is needed"
command -v setsid >/dev/null || die "setsid (util-linux) is needed"
mkdir -p "$RUN_DIR" "$LOG_DIR"

# One start/stop at a time (parallel test runs may call these together).
mkdir -p "$RUN_DIR"
exec 9>"$RUN_DIR/.lock"
flock -w 120 9 || die "could not take $RUN_DIR/.lock within 120s"

installed_or_die() {
  case "$1" in
    kinesis-local)
      [[ -f "$NODE_PREFIX/node_modules/kinesis-local/main-loopback.js" ]] ;;
    kinesalite)
      [[ -f "$NODE_PREFIX/node_modules/kinesalite/index.js" ]] ;;
    moto|moto-kinesis)
      [[ -x "$VENV/bin/moto_server" ]] ;;
  esac || die "$1 is not installed: run infra/local/install.sh"
}

# launch NAME PORT: start the server detached, in its own session and process group.
launch() {
  local name="$1" port="$2" log pid v
  log="$(log_file "$name")"
  local -a cmd
  case "$name" in
    kinesis-local)
      local tls_port="${FANOUT_KINESIS_TLS_PORT:-4566}"
      ! port_taken "$tls_port" \
        || die "kinesis-local: TLS port $tls_port is already in use; set FANOUT_KINESIS_TLS_PORT"
      echo "$tls_port" >"$RUN_DIR/kinesis-local.tls-port"
      cmd=(env
        KINESIS_MOCK_PLAIN_PORT="$port"
        KINESIS_MOCK_TLS_PORT="$tls_port"
        KINESIS_MOCK_CERT_PATH="$NODE_PREFIX/node_modules/kinesis-local/server.json"
        AWS_ACCOUNT_ID="${FANOUT_KINESIS_ACCOUNT_ID:-123456789012}"
        AWS_REGION="${FANOUT_KINESIS_REGION:-us-east-1}"
        SHARD_LIMIT="${SHARD_LIMIT:-${FANOUT_KINESIS_SHARD_LIMIT:-500}}"
        ON_DEMAND_STREAM_COUNT_LIMIT="${ON_DEMAND_STREAM_COUNT_LIMIT:-50}"
        LOG_LEVEL="${FANOUT_KINESIS_LOG_LEVEL:-WARN}"
        SHOULD_PERSIST_DATA=false
        LOAD_DATA_IF_EXISTS=false)
      for v in "${KINESIS_DURATION_VARS[@]}"; do
        cmd+=("$v=${!v:-$KINESIS_DURATION}")
      done
      cmd+=(node "$NODE_PREFIX/node_modules/kinesis-local/main-loopback.js")
      ;;
    moto)
      cmd=("$VENV/bin/python" "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port") ;;
    moto-kinesis)
      cmd=("$VENV/bin/python" "$HERE/moto_single_threaded.py" -H 127.0.0.1 -p "$port") ;;
    kinesalite)
      cmd=(env NODE_PATH="$NODE_PREFIX/node_modules"
        KINESALITE_DELAY_MS="${FANOUT_KINESALITE_DELAY_MS:-0}"
        KINESALITE_SHARD_LIMIT="${FANOUT_KINESALITE_SHARD_LIMIT:-500}"
        node "$HERE/kinesalite-loopback.js" "$port") ;;
  esac
  echo "# $(date -u +%FT%TZ) start: ${cmd[*]}" >"$log"
  # No job control in a script, so the child is not a group leader and setsid execs
  # in place: $! is the server itself and its PGID equals its PID (stop.sh kills the group).
  # fd 9 (the start/stop lock) must not leak into the long-lived server.
  (cd "$RUN_DIR" && exec setsid "${cmd[@]}" </dev/null >>"$log" 2>&1 9>&-) &
  pid=$!
  echo "$pid" >"$(pid_file "$name")"
  echo "$port" >"$(port_file "$name")"
}

# Fail if the process listens on anything but loopback.
check_loopback_only() {
  local name="$1" pid="$2" bad
  command -v ss >/dev/null || { echo "$name: warning: ss not found, bind address not checked" >&2; return 0; }
  bad="$(ss -Hltnp 2>/dev/null | awk -v p="pid=$pid," 'index($0, p) && $4 !~ /^(127\.0\.0\.1|\[::1\]):/ {print $4}')"
  if [[ -n "$bad" ]]; then
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$(pid_file "$name")" "$(port_file "$name")"
    die "$name listened on a non-loopback address ($(echo "$bad" | tr '\n' ' ')); stopped it"
  fi
}

wait_ready() {
  local name="$1" pid="$2" port="$3" log deadline
  log="$(log_file "$name")"
  deadline=$((SECONDS + START_TIMEOUT))
  until port_answers "$port"; do
    if ! proc_alive "$pid"; then
      echo "$name: exited during start-up; last lines of $log:" >&2
      tail -n 20 "$log" >&2
      rm -f "$(pid_file "$name")" "$(port_file "$name")"
      exit 1
    fi
    if ((SECONDS >= deadline)); then
      echo "$name: not answering on 127.0.0.1:$port after ${START_TIMEOUT}s; see $log" >&2
      tail -n 20 "$log" >&2
      exit 1
    fi
    sleep 0.2
  done
  check_loopback_only "$name" "$pid"
}

declare -A started=()
for name in "${services[@]}"; do
  [[ -z "${started[$name]:-}" ]] || continue
  installed_or_die "$name"
  if pid="$(live_pid "$name")"; then
    port="$(recorded_port "$name")"
    want="$(wanted_port "$name")"
    [[ "$port" == "$want" ]] \
      || echo "$name: note: running on port $port, not the requested $want (stop it first to move it)" >&2
    started[$name]="already"
    continue
  fi
  rm -f "$(pid_file "$name")" "$(port_file "$name")"
  port="$(wanted_port "$name")"
  [[ "$port" =~ ^[0-9]+$ ]] || die "$name: bad port '$port'"
  ! port_taken "$port" \
    || die "$name: port $port is already in use by another process; set $(endpoint_var "$name" | sed 's/_ENDPOINT/_PORT/')"
  launch "$name" "$port"
  started[$name]="new"
done

for name in "${services[@]}"; do
  [[ -n "${started[$name]:-}" ]] || continue
  pid="$(cat "$(pid_file "$name")")"
  port="$(recorded_port "$name")"
  wait_ready "$name" "$pid" "$port"
  if [[ "${started[$name]}" == already ]]; then
    echo "$name: already running on http://127.0.0.1:$port (pid $pid)"
  else
    echo "$name: started on http://127.0.0.1:$port (pid $pid, log ${LOG_DIR#"$ROOT"/}/$name.log)"
  fi
  started[$name]=""
done

write_env_file
echo "env: ${ENV_FILE#"$ROOT"/} (source it for FANOUT_*_ENDPOINT)"

# shellcheck shell=bash
# Shared definitions for start.sh / stop.sh. Source it; do not run it.
# Expects HERE (this directory) to be set by the caller.

ROOT="$(cd "$HERE/../.." && pwd)"
LOCAL="$ROOT/.local"
RUN_DIR="$LOCAL/run"
LOG_DIR="$LOCAL/log"
# shellcheck disable=SC2034 # VENV and NODE_PREFIX are used by start.sh
{
  VENV="$LOCAL/venv"
  NODE_PREFIX="$LOCAL/node"
}
ENV_FILE="$RUN_DIR/env"

ALL_SERVICES=(kinesis-local moto moto-kinesis kinesalite)

die() { echo "$(basename "$0"): $*" >&2; exit 1; }

is_service() {
  local s
  for s in "${ALL_SERVICES[@]}"; do [[ "$s" == "$1" ]] && return 0; done
  return 1
}

# Port a service is to be started on (from the environment, or the default).
wanted_port() {
  case "$1" in
    kinesis-local) echo "${FANOUT_KINESIS_PORT:-4567}" ;;
    moto)          echo "${FANOUT_MOTO_PORT:-5000}" ;;
    moto-kinesis)  echo "${FANOUT_MOTO_KINESIS_PORT:-5001}" ;;
    kinesalite)    echo "${FANOUT_KINESALITE_PORT:-4568}" ;;
  esac
}

pid_file()  { echo "$RUN_DIR/$1.pid"; }
port_file() { echo "$RUN_DIR/$1.port"; }
log_file()  { echo "$LOG_DIR/$1.log"; }

# A process that has exited but not yet been reaped (state Z) counts as gone: once
# start.sh has exited, the servers' parent is PID 1, which may reap them only later.
proc_alive() {
  local state
  state="$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" || return 1
  [[ -n "$state" && "$state" != Z ]]
}

# PID recorded for a service, if that process is alive and is one of ours (its command
# line mentions this checkout), so a recycled PID is never taken for our server.
live_pid() {
  local f pid
  f="$(pid_file "$1")"
  [[ -f "$f" ]] || return 1
  pid="$(cat "$f")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  proc_alive "$pid" || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$ROOT/" || return 1
  echo "$pid"
}

recorded_port() { cat "$(port_file "$1")" 2>/dev/null; }

# True if something answers HTTP on 127.0.0.1:PORT (any status code).
port_answers() {
  local code
  code="$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$1/" || true)"
  [[ -n "$code" && "$code" != "000" ]]
}

# True if anything at all listens on TCP 127.0.0.1:PORT (or the wildcard address).
port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

endpoint_var() {
  case "$1" in
    kinesis-local) echo FANOUT_KINESIS_ENDPOINT ;;
    moto)          echo FANOUT_MOTO_ENDPOINT ;;
    moto-kinesis)  echo FANOUT_MOTO_KINESIS_ENDPOINT ;;
    kinesalite)    echo FANOUT_KINESALITE_ENDPOINT ;;
  esac
}

# Rewrite .local/run/env from what is running now.
write_env_file() {
  local s pid port tmp
  mkdir -p "$RUN_DIR"
  tmp="$ENV_FILE.tmp.$$"
  {
    echo "# Written by infra/local/start.sh / stop.sh: the local AWS emulators now running."
    echo "# Source it: . .local/run/env"
    for s in "${ALL_SERVICES[@]}"; do
      if pid="$(live_pid "$s")" && port="$(recorded_port "$s")"; then
        echo "export $(endpoint_var "$s")=http://127.0.0.1:$port"
        if [[ "$s" == kinesis-local && -f "$RUN_DIR/kinesis-local.tls-port" ]]; then
          echo "export FANOUT_KINESIS_TLS_ENDPOINT=https://127.0.0.1:$(cat "$RUN_DIR/kinesis-local.tls-port")"
        fi
      fi
    done
  } >"$tmp"
  mv "$tmp" "$ENV_FILE"
}

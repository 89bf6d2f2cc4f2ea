#!/usr/bin/env bash
# Install the local AWS emulator stack, at pinned versions, into $ROOT/.local/.
# Usage: infra/local/install.sh [--with-cargo-lambda]
# Idempotent: steps whose stamp matches the pinned versions are skipped.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
LOCAL="$ROOT/.local"
VENV="$LOCAL/venv"
NODE_PREFIX="$LOCAL/node"
STAMPS="$LOCAL/stamps"
LOG_DIR="$LOCAL/log"

# shellcheck source-path=SCRIPTDIR source=versions.env
source "$HERE/versions.env"

with_cargo_lambda=0
for arg in "$@"; do
  case "$arg" in
    --with-cargo-lambda) with_cargo_lambda=1 ;;
    -h|--help) sed -n '2,4s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "install.sh: unknown argument: $arg" >&2; exit 2 ;;
  esac
done

mkdir -p "$LOCAL" "$STAMPS" "$LOG_DIR"
INSTALL_LOG="$LOG_DIR/install.log"
: >"$INSTALL_LOG"

# run DESCRIPTION CMD...: run quietly; on failure show the tail of the log and exit.
run() {
  local what="$1"; shift
  if ! "$@" >>"$INSTALL_LOG" 2>&1; then
    echo "install.sh: FAILED: $what (full log: $INSTALL_LOG)" >&2
    tail -n 30 "$INSTALL_LOG" >&2
    exit 1
  fi
}

stamp_ok() { [[ -f "$STAMPS/$1" && "$(cat "$STAMPS/$1")" == "$2" ]]; }
stamp_set() { printf '%s\n' "$2" >"$STAMPS/$1"; }

need() {
  command -v "$1" >/dev/null 2>&1 || { echo "install.sh: '$1' not found on PATH" >&2; exit 1; }
}

# --- Python venv with moto[server] ------------------------------------------------------
need python3
if [[ ! -x "$VENV/bin/python" ]]; then
  run "create venv $VENV" python3 -m venv "$VENV"
  rm -f "$STAMPS/moto" "$STAMPS/kpl-deagg" "$STAMPS/cargo-lambda"
  echo "installed: python venv $VENV"
fi
if ! stamp_ok moto "moto[server]==$MOTO_VERSION"; then
  run "pip install moto[server]==$MOTO_VERSION" \
    "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet \
    "moto[server]==$MOTO_VERSION"
  stamp_set moto "moto[server]==$MOTO_VERSION"
  echo "installed: moto[server]==$MOTO_VERSION (with boto3) in $VENV"
fi

# --- KPL deaggregator (tests/kpl.rs checks src/kpl.rs against it) --------------------------
kpl_want="aws_kinesis_agg==$KINESIS_AGG_VERSION protobuf==$PROTOBUF_VERSION six==$SIX_VERSION"
if ! stamp_ok kpl-deagg "$kpl_want"; then
  # shellcheck disable=SC2086 # kpl_want is a deliberate word list
  run "pip install $kpl_want" \
    "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet $kpl_want
  stamp_set kpl-deagg "$kpl_want"
  echo "installed: $kpl_want in $VENV"
fi

# --- npm: kinesis-local and kinesalite --------------------------------------------------
need node
need npm
npm_want="kinesis-local@$KINESIS_LOCAL_VERSION kinesalite@$KINESALITE_VERSION"
if ! stamp_ok npm "$npm_want" \
   || [[ ! -f "$NODE_PREFIX/node_modules/kinesis-local/main.js" ]] \
   || [[ ! -f "$NODE_PREFIX/node_modules/kinesalite/index.js" ]]; then
  mkdir -p "$NODE_PREFIX"
  # shellcheck disable=SC2086 # npm_want is a deliberate word list
  run "npm install $npm_want" \
    npm install --prefix "$NODE_PREFIX" --no-audit --no-fund --save-exact --loglevel=error \
    $npm_want
  rm -f "$NODE_PREFIX/node_modules/kinesis-local/main-loopback.js"
  stamp_set npm "$npm_want"
  echo "installed: npm $npm_want in $NODE_PREFIX"
fi

# --- kinesis-local patched to bind 127.0.0.1 --------------------------------------------
# The copy sits beside main.js so any path it resolves relative to itself still works.
KL_DIR="$NODE_PREFIX/node_modules/kinesis-local"
KL_PATCHED="$KL_DIR/main-loopback.js"
if [[ ! -f "$KL_PATCHED" ]]; then
  # shellcheck disable=SC2016 # literal JavaScript, no expansion wanted
  pattern='Host$().em("0.0.0.0")'
  # shellcheck disable=SC2016
  replacement='Host$().em("127.0.0.1")'
  n="$(grep -cF "$pattern" "$KL_DIR/main.js" || true)"
  if [[ "$n" -lt 1 ]]; then
    echo "install.sh: FAILED: pattern '$pattern' not found in $KL_DIR/main.js;" \
      "kinesis-local $KINESIS_LOCAL_VERSION changed its start-up code: update the patch" >&2
    exit 1
  fi
  tmp="$KL_PATCHED.tmp.$$"
  # Plain-string replace (no regex): use node, which is there anyway.
  node -e '
    const fs = require("fs");
    const [src, dst, from, to] = process.argv.slice(1);
    const text = fs.readFileSync(src, "utf8");
    const out = text.split(from).join(to);
    if (out === text || out.includes(from)) { console.error("patch did not apply"); process.exit(1); }
    fs.writeFileSync(dst, out);
  ' "$KL_DIR/main.js" "$tmp" "$pattern" "$replacement"
  if grep -qF '"0.0.0.0"' "$tmp"; then
    rm -f "$tmp"
    echo "install.sh: FAILED: $KL_DIR/main.js still mentions \"0.0.0.0\" after patching" >&2
    exit 1
  fi
  mv "$tmp" "$KL_PATCHED"
  echo "installed: $KL_PATCHED (kinesis-local bound to 127.0.0.1; $n site(s) patched)"
fi

# --- optional: cargo-lambda -------------------------------------------------------------
if [[ "$with_cargo_lambda" == 1 ]] && ! stamp_ok cargo-lambda "cargo-lambda==$CARGO_LAMBDA_VERSION"; then
  run "pip install cargo-lambda==$CARGO_LAMBDA_VERSION" \
    "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet \
    "cargo-lambda==$CARGO_LAMBDA_VERSION"
  stamp_set cargo-lambda "cargo-lambda==$CARGO_LAMBDA_VERSION"
  echo "installed: cargo-lambda==$CARGO_LAMBDA_VERSION in $VENV (use $VENV/bin/cargo-lambda)"
fi

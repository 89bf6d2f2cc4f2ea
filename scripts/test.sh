#!/usr/bin/env bash
# Every test: formatting and lints, the static Terraform checks, unit tests, and integration
# tests over HTTP against the local AWS stack (kinesis-local + moto, and single-threaded moto
# as the second Kinesis backend). Installs and starts what it needs; stops what it started.
#   FANOUT_SKIP_LINT=1   skip cargo fmt --check and cargo clippy
#   FANOUT_KEEP_STACK=1  leave the emulators running afterwards
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

echo "== Installing the local AWS stack (first run only)"
infra/local/install.sh
if [ "${FANOUT_SKIP_LINT:-0}" != 1 ]; then
  echo "== cargo fmt --check, cargo clippy"
  cargo fmt --all -- --check
  cargo clippy --quiet --all-targets -- -D warnings
fi
echo "== Terraform: parse, environment and IAM against the code, checkov"
scripts/check-terraform.sh
echo "== Starting kinesis-local, moto and moto-kinesis"
start_stack kinesis-local moto moto-kinesis
use_local_stack
# The tests build their own worlds; the writer role comes from the provisioned topology.
.local/venv/bin/python infra/local/provision.py >/dev/null
# Tests route each service explicitly; keep the process-wide overrides out of their way.
unset AWS_ENDPOINT_URL AWS_ENDPOINT_URL_KINESIS
echo "== cargo test"
log="$ROOT/target/test-output.log"
mkdir -p "$ROOT/target"
# A test whose emulator is missing returns early (outside CI; under CI it fails) and libtest
# counts it as passed: each one writes its name here instead, and is counted as skipped.
export FANOUT_SKIPPED_LOG="$ROOT/target/skipped-tests.log"
: >"$FANOUT_SKIPPED_LOG"
status=0
cargo test --workspace --all-targets --quiet -- --test-threads "${FANOUT_TEST_THREADS:-4}" 2>&1 | tee "$log" || status=$?
if [ -s "$FANOUT_SKIPPED_LOG" ]; then
  echo "Skipped for a missing emulator (counted as skipped below, not passed):"
  sort -u "$FANOUT_SKIPPED_LOG" | sed 's/^/  /'
fi
# One closing line over every test binary (unit, integration, Lambda crate).
missing="$(cut -f1 "$FANOUT_SKIPPED_LOG" | sort -u | wc -l)"
awk -v missing="$missing" '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "%d passed, %d failed, %d skipped\n", p - missing, f, s + missing }' "$log"
exit "$status"

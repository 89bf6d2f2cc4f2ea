#!/usr/bin/env bash
# The demo: replicate a realistic stream from the "new account" into the "old account" on the
# local AWS stack, then check every promise. Installs what it needs on first run.
#   FANOUT_DEMO_RECORDS=5000   records to write
#   FANOUT_KEEP_STACK=1        leave the emulators running afterwards
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

echo "== Installing the local AWS stack (first run only)"
infra/local/install.sh
echo "== Building"
cargo build --quiet --example demo --bin fanoutctl
echo "== Starting kinesis-local (Kinesis) and moto (DynamoDB, S3, STS, IAM)"
start_stack kinesis-local moto
use_local_stack
echo "== Provisioning both accounts (fresh streams)"
topology="$(.local/venv/bin/python infra/local/provision.py --reset --json)"
field() { printf '%s' "$topology" | .local/venv/bin/python -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }
FANOUT_ROUTES="[{\"source\":\"$(field source_stream_arn)\",\"target\":\"$(field target_stream_arn)\"}]"
export FANOUT_ROUTES
FANOUT_TABLE="$(field table)"
FANOUT_DEAD_LETTER_BUCKET="$(field bucket)"
FANOUT_WRITER_ROLE_ARN="$(field writer_role_arn)"
FANOUT_WRITER_EXTERNAL_ID="$(field external_id)"
export FANOUT_TABLE FANOUT_DEAD_LETTER_BUCKET FANOUT_WRITER_ROLE_ARN FANOUT_WRITER_EXTERNAL_ID
echo "   route: $(field source_stream_arn)"
echo "       -> $(field target_stream_arn)"
echo "   writer role: $FANOUT_WRITER_ROLE_ARN (external id $FANOUT_WRITER_EXTERNAL_ID)"
echo
target/debug/examples/demo

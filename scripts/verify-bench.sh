#!/usr/bin/env bash
# Timings and memory of `fanoutctl verify` (not a test; figures in docs/verify.md): writes a
# window of records to a source stream and a correct copy to a target stream on a local Kinesis
# emulator, then measures
#   - the comparison engine alone (no streams) on 50,000 and 1,000,000 records: time and RSS
#     per record held, with 1 and 4 passes;
#   - the verification over the streams, in process, with 1 and 4 passes (one process each);
#   - the release `fanoutctl verify` binary end to end (wall time and max RSS from /usr/bin/time).
# Writes only under target/ and .local/.
#   FANOUT_VERIFY_BENCH_RECORDS=50000          records in the window
#   FANOUT_VERIFY_BENCH_BACKEND=moto-kinesis   or kinesis-local (56-digit sequence numbers,
#                                              but writes at ~1-2k records/s)
#   FANOUT_KEEP_STACK=1                        leave the emulators running afterwards
set -euo pipefail
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

records="${FANOUT_VERIFY_BENCH_RECORDS:-50000}"
backend="${FANOUT_VERIFY_BENCH_BACKEND:-moto-kinesis}"
case "$backend" in
  moto-kinesis|kinesis-local) ;;
  *) echo "verify-bench.sh: FANOUT_VERIFY_BENCH_BACKEND must be moto-kinesis or kinesis-local" >&2; exit 1 ;;
esac
unset AWS_ENDPOINT_URL AWS_ENDPOINT_URL_KINESIS AWS_PROFILE AWS_DEFAULT_PROFILE
export AWS_EC2_METADATA_DISABLED=true

echo "== Installing the local AWS stack (first run only)"
infra/local/install.sh
echo "== Building (release profile)"
cargo build --quiet --release --example verify_bench --bin fanoutctl
target_dir="${CARGO_TARGET_DIR:-$ROOT/target}"
bin="$target_dir/release/examples/verify_bench"
ctl="$target_dir/release/fanoutctl"
out="$target_dir/verify-bench"
mkdir -p "$out"
rm -f "$out"/*.jsonl "$out"/*.json "$out"/*.txt

echo "== Starting $backend (Kinesis) and moto"
start_stack "$backend" moto
# shellcheck disable=SC1091
. "$ROOT/.local/run/env"
moto="${FANOUT_MOTO_ENDPOINT:?moto is not running}"
single=()
if [ "$backend" = moto-kinesis ]; then
  kinesis="${FANOUT_MOTO_KINESIS_ENDPOINT:?moto-kinesis is not running}"
  single=(--single-account)
else
  kinesis="${FANOUT_KINESIS_ENDPOINT:?kinesis-local is not running}"
fi
python=python3
[ -x .local/venv/bin/python ] && python=.local/venv/bin/python
field() { "$python" -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
rfc3339() { "$python" -c "import sys,datetime; print(datetime.datetime.fromtimestamp(int(sys.argv[1])/1000, datetime.timezone.utc).isoformat(timespec='milliseconds').replace('+00:00','Z'))" "$1"; }

echo "== Machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), load average $(cut -d' ' -f1-3 /proc/loadavg)"
echo "== The engine alone (synthetic 200 B records, 10,000 keys, 56-digit sequence numbers)"
for args in "--records 50000" "--records 1000000" "--records 1000000 --partitions 4"; do
  # shellcheck disable=SC2086
  "$bin" engine $args | tee -a "$out/results.jsonl"
done

echo "== Writing $records records (200 B, 1,000 keys, 4 shards) to a source and a copy to a target on $backend"
setup="$("$bin" write --kinesis "$kinesis" --moto "$moto" "${single[@]}" --records "$records")"
echo "$setup" | tee -a "$out/results.jsonl"
source_arn="$(field "$setup" source)"
target_arn="$(field "$setup" target)"
from_ms="$(field "$setup" from_ms)"
until_ms="$(field "$setup" until_ms)"
sleep 1.2  # let until + grace (1 s) pass: measure reading, not waiting

echo "== Verifying the window in process (one process per run)"
for p in 1 4; do
  "$bin" measure --kinesis "$kinesis" --moto "$moto" --source "$source_arn" --target "$target_arn" \
    --from-ms "$from_ms" --until-ms "$until_ms" --expect "$records" --partitions "$p" | tee -a "$out/results.jsonl"
done

echo "== fanoutctl verify end to end (release binary; max RSS from /usr/bin/time)"
set +e
env AWS_ENDPOINT_URL="$moto" AWS_ENDPOINT_URL_KINESIS="$kinesis" \
  AWS_ACCESS_KEY_ID=123456789012 AWS_SECRET_ACCESS_KEY=local AWS_REGION=us-east-1 \
  /usr/bin/time -f '%M %e' -o "$out/time.txt" \
  "$ctl" verify --source "$source_arn" --target "$target_arn" \
  --from "$(rfc3339 "$from_ms")" --until "$(rfc3339 "$until_ms")" --grace 1s --no-store --quiet \
  --output json >"$out/report.json"
code=$?
set -e
read -r max_rss_kb wall_s <"$out/time.txt"
echo "   exit code $code, wall $wall_s s, max RSS $((max_rss_kb / 1024)) MB; report: $out/report.json"
"$python" - "$out" "$code" "$max_rss_kb" "$wall_s" <<'EOF'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1]); code, rss_kb, wall = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
rows = [json.loads(l) for l in (out / "results.jsonl").read_text().splitlines() if l.strip()]
rep = json.loads((out / "report.json").read_text())
print()
print("engine alone:")
for r in rows:
    if r["mode"] == "engine":
        print(f"  {r['records']:>9} records, {r['partitions']} pass(es): held {r['records_held']:>8}, "
              f"index {r['index_ms']} ms, match {r['match_ms']} ms, "
              f"{r['bytes_per_record_held']:.0f} B/record held (peak {r['peak_bytes_per_record_held']:.0f}), "
              f"peak RSS {r['peak_rss_mb']:.1f} MB")
w = next(r for r in rows if r["mode"] == "write")
print(f"over the streams ({w['records']} records, {w['shards']} shards):")
for r in rows:
    if r["mode"] == "measure":
        print(f"  {r['partitions']} pass(es): read source {r['read_source_ms']} ms, read target {r['read_target_ms']} ms, "
              f"compare {r['compare_ms']} ms, total {r['total_ms']} ms; peak RSS {r['peak_rss_mb']:.1f} MB "
              f"(before the run {r['rss_before_mb']:.1f} MB); {r['verdict']}, matched {r['matched']}")
t = rep["timings"]
print(f"fanoutctl verify: exit {code}, {rep['verdict']}, matched {rep['totals']['matched']}; read source {t['read_source_ms']} ms, "
      f"read target {t['read_target_ms']} ms, compare {t['compare_ms']} ms; wall {wall:.2f} s; max RSS {rss_kb/1024:.1f} MB")
sys.exit(0 if code == 0 else 1)
EOF

//! Timings and memory of `fanoutctl verify` (behind `scripts/verify-bench.sh`; not a test).
//!
//! Modes, each one process printing one JSON line per measurement:
//! - `write`: creates a source and a target stream on a local Kinesis emulator, writes N
//!   records to the source and a correct copy to the target, and prints the streams and the
//!   window as one JSON line.
//! - `measure`: runs the verification (`fanout::verify::run`, what `fanoutctl verify` runs)
//!   once over those streams: the report's read/compare timings, the peak RSS during the run
//!   and the RSS before it. One process per measurement, so earlier runs do not inflate it.
//! - `engine`: the comparison engine alone on N synthetic records (no streams): time to index
//!   the source and match the target, and the RSS the index adds, per record held.

use std::time::Instant;

use aws_config::SdkConfig;
use clap::{Parser, Subcommand};
use fanout::aws::source::KinesisSource;
use fanout::aws::{local_sdk_config, LocalEndpoints};
use fanout::cli::status_kb;
use fanout::model::{Route, StreamArn};
use fanout::seq::SequenceNumber;
use fanout::verify::{self, DeadLetterIndex, Verifier, VerifyOptions, Window};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    Write {
        /// Kinesis endpoint (kinesis-local or moto's Kinesis).
        #[arg(long)]
        kinesis: String,
        /// moto endpoint (the SDK configuration wants one for the other services).
        #[arg(long)]
        moto: String,
        /// moto's Kinesis keeps every stream in one account: put the target there too.
        #[arg(long)]
        single_account: bool,
        #[arg(long, default_value_t = 50_000)]
        records: usize,
        #[arg(long, default_value_t = 200)]
        size: usize,
        #[arg(long, default_value_t = 1000)]
        keys: usize,
        #[arg(long, default_value_t = 4)]
        shards: i32,
    },
    Measure {
        #[arg(long)]
        kinesis: String,
        #[arg(long)]
        moto: String,
        #[arg(long)]
        source: String,
        #[arg(long)]
        target: String,
        /// Window start, epoch milliseconds.
        #[arg(long)]
        from_ms: i64,
        /// Window end, epoch milliseconds.
        #[arg(long)]
        until_ms: i64,
        /// Records expected to match (the run fails otherwise).
        #[arg(long)]
        expect: u64,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
    },
    Engine {
        #[arg(long, default_value_t = 1_000_000)]
        records: usize,
        #[arg(long, default_value_t = 10_000)]
        keys: usize,
        #[arg(long, default_value_t = 200)]
        size: usize,
        #[arg(long, default_value_t = 1)]
        partitions: u32,
    },
}

/// Resets VmHWM to the current RSS (Linux ≥ 4.0), so the next reading is the peak since now.
fn reset_peak_rss() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        eprintln!("cannot reset the peak RSS via /proc/self/clear_refs: {e}");
    }
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// Record `i`: a key among `keys` and a unique payload of `size` bytes.
fn record(i: usize, keys: usize, size: usize, data: &mut Vec<u8>) -> String {
    let key = format!("key-{}", (i * 7919) % keys);
    data.clear();
    data.extend_from_slice(format!("{key}|{i}|").as_bytes());
    data.resize(size.max(data.len()), b'.');
    key
}

async fn create_stream(sdk: &SdkConfig, name: &str, shards: i32) -> Result<StreamArn, String> {
    KinesisSource::new(sdk)
        .create_stream(name, shards)
        .await
        .map_err(|e| format!("create stream {name}: {e}"))
}

async fn write(
    endpoints: LocalEndpoints,
    single_account: bool,
    n: usize,
    size: usize,
    keys: usize,
    shards: i32,
) -> Result<(), String> {
    let new = local_sdk_config(endpoints.clone(), "123456789012").await;
    let old_account = if single_account {
        "123456789012"
    } else {
        "222222222222"
    };
    let old = local_sdk_config(endpoints, old_account).await;
    let tag = format!("{:08x}", rand::random::<u32>());
    let source = create_stream(&new, &format!("vbench-src-{tag}"), shards).await?;
    let target = create_stream(&old, &format!("vbench-dst-{tag}"), shards).await?;
    let writer = KinesisSource::new(&new);
    let from = chrono::Utc::now().timestamp_millis() - 1;
    let mut data = Vec::new();
    for (stream, what) in [(&source, "source"), (&target, "target")] {
        let t = Instant::now();
        // In chunks, so the generated payloads never all sit in memory at once.
        for start in (0..n).step_by(5000) {
            let chunk: Vec<(String, Vec<u8>)> = (start..(start + 5000).min(n))
                .map(|i| {
                    let k = record(i, keys, size, &mut data);
                    (k, data.clone())
                })
                .collect();
            writer
                .put_all(stream, &chunk)
                .await
                .map_err(|e| format!("writing the {what}: {e}"))?;
        }
        eprintln!(
            "   wrote {n} records to the {what} in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }
    let until = chrono::Utc::now().timestamp_millis();
    let line = serde_json::json!({
        "mode": "write",
        "source": source.as_str(),
        "target": target.as_str(),
        "from_ms": from,
        "until_ms": until,
        "records": n,
        "record_bytes": size,
        "keys": keys,
        "shards": shards,
    });
    println!("{line}");
    Ok(())
}

struct Measure {
    source: String,
    target: String,
    from_ms: i64,
    until_ms: i64,
    expect: u64,
    partitions: u32,
}

async fn measure(endpoints: LocalEndpoints, m: Measure) -> Result<(), String> {
    let sdk = local_sdk_config(endpoints, "123456789012").await;
    let reader = KinesisSource::new(&sdk);
    let source = StreamArn::parse(&m.source)?;
    let target = StreamArn::parse(&m.target)?;
    let opts = VerifyOptions {
        route: Route::default_name(&source, &target),
        source,
        target,
        window: Window {
            from_ms: Some(m.from_ms),
            until_ms: m.until_ms,
            grace_ms: 1000,
        },
        partitions: m.partitions,
        read_concurrency: 4,
        example_cap: 20,
        progress: false,
    };
    let rss_before = status_kb("VmRSS");
    reset_peak_rss();
    let t = Instant::now();
    let report = verify::run(&reader, &reader, &opts, &DeadLetterIndex::unchecked())
        .await
        .map_err(|e| e.to_string())?;
    let wall = t.elapsed();
    let peak = status_kb("VmHWM");
    let line = serde_json::json!({
        "mode": "measure",
        "partitions": m.partitions,
        "verdict": report.verdict,
        "source_in_window": report.totals.source_in_window,
        "target_read": report.totals.target_read,
        "matched": report.totals.matched,
        "keys": report.totals.keys,
        "read_source_ms": report.timings.read_source_ms,
        "read_target_ms": report.timings.read_target_ms,
        "compare_ms": report.timings.compare_ms,
        "total_ms": wall.as_millis() as u64,
        "rss_before_mb": mb(rss_before),
        "peak_rss_mb": mb(peak),
    });
    println!("{line}");
    if !report.is_clean() || report.totals.matched != m.expect {
        return Err(format!(
            "expected a clean copy of {} records:\n{}",
            m.expect,
            report.render_text(5)
        ));
    }
    Ok(())
}

fn engine(n: usize, keys: usize, size: usize, partitions: u32) {
    let mut data = Vec::new();
    let rss_before = status_kb("VmRSS");
    reset_peak_rss();
    let mut v = Verifier::new(Window::everything(), 0, partitions, 20);
    let shard = v.shard("shardId-000000000000");
    // 56-digit sequence numbers, like real Kinesis.
    let seq = |i: usize| {
        SequenceNumber::parse(&format!(
            "4959033827149025660855969253836157109592157598913{i:07}"
        ))
        .expect("sequence number")
    };
    let t = Instant::now();
    for i in 0..n {
        let key = record(i, keys, size, &mut data);
        v.add_source(shard, &key, &data, &seq(i), None, false);
    }
    let index_time = t.elapsed();
    let held = v.records_held();
    let rss_indexed = status_kb("VmRSS");
    let t = Instant::now();
    for i in 0..n {
        let key = record(i, keys, size, &mut data);
        v.add_target(shard, &key, &data, &seq(i), None);
    }
    let match_time = t.elapsed();
    let t = Instant::now();
    let f = v.finish();
    let finish_time = t.elapsed();
    let peak = status_kb("VmHWM");
    assert!(f.totals.is_clean() && f.totals.matched == held as u64);
    let line = serde_json::json!({
        "mode": "engine",
        "records": n,
        "keys": keys,
        "record_bytes": size,
        "partitions": partitions,
        "records_held": held,
        "index_ms": index_time.as_millis() as u64,
        "match_ms": match_time.as_millis() as u64,
        "finish_ms": finish_time.as_millis() as u64,
        "rss_before_mb": mb(rss_before),
        "rss_indexed_mb": mb(rss_indexed),
        "peak_rss_mb": mb(peak),
        "bytes_per_record_held": ((rss_indexed.saturating_sub(rss_before)) * 1024) as f64 / held.max(1) as f64,
        "peak_bytes_per_record_held": ((peak.saturating_sub(rss_before)) * 1024) as f64 / held.max(1) as f64,
    });
    println!("{line}");
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let endpoints = |kinesis: String, other: String| LocalEndpoints { kinesis, other };
    let result = match Cli::parse().mode {
        Mode::Write {
            kinesis,
            moto,
            single_account,
            records,
            size,
            keys,
            shards,
        } => {
            write(
                endpoints(kinesis, moto),
                single_account,
                records,
                size,
                keys,
                shards,
            )
            .await
        }
        Mode::Measure {
            kinesis,
            moto,
            source,
            target,
            from_ms,
            until_ms,
            expect,
            partitions,
        } => {
            let m = Measure {
                source,
                target,
                from_ms,
                until_ms,
                expect,
                partitions,
            };
            measure(endpoints(kinesis, moto), m).await
        }
        Mode::Engine {
            records,
            keys,
            size,
            partitions,
        } => {
            engine(records, keys, size, partitions);
            Ok(())
        }
    };
    if let Err(e) = result {
        eprintln!("verify_bench: {e}");
        return std::process::ExitCode::from(1);
    }
    std::process::ExitCode::SUCCESS
}

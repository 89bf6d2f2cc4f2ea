//! The demo behind `scripts/demo.sh`: writes a realistic stream into the new account's source
//! stream, replicates it through the real replicator handler into the old account's target
//! stream, reads both back and checks the promises. Exits non-zero if one is broken.
//!
//! Needs the local stack running and provisioned, and the `FANOUT_*` configuration in the
//! environment (the script sets both up).

use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout::aws::dead_letters::S3DeadLetters;
use fanout::aws::source::KinesisSource;
use fanout::aws::{build_handler, load_sdk_config};
use fanout::config::ReplicatorConfig;
use fanout::handler::MetricsOutput;
use fanout::runner::{self, InProcess, RunnerOptions};
use fanout::seq::SequenceNumber;
use fanout::verify;
use rand::{Rng, SeedableRng};

/// Records of the generated stream: hot and cold keys, mostly small payloads, some over
/// 100 KiB, and exactly one larger than the target accepts.
fn generate(n: usize, seed: u64, too_large: usize) -> Vec<(String, Vec<u8>)> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let hot = ["tenant-acme", "tenant-globex", "tenant-initech"];
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let key = if rng.random_bool(0.3) {
            hot[rng.random_range(0..hot.len())].to_owned()
        } else {
            format!("customer-{:04}", rng.random_range(0..400))
        };
        let pad = if i == n / 2 {
            too_large
        } else if rng.random_bool(0.01) {
            rng.random_range(100 * 1024..300 * 1024)
        } else {
            rng.random_range(40..900)
        };
        let head = format!(r#"{{"event":{i},"key":"{key}","kind":"order-updated","body":""#);
        let mut data = head.into_bytes();
        data.resize(data.len() + pad.saturating_sub(data.len() + 2), b'x');
        data.extend_from_slice(b"\"}");
        out.push((key, data));
    }
    out
}

#[tokio::main]
async fn main() -> ExitCode {
    fanout::cli::init_tracing();
    match demo().await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("demo: {e}");
            ExitCode::from(2)
        }
    }
}

async fn demo() -> Result<bool, String> {
    let n: usize = std::env::var("FANOUT_DEMO_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let config = ReplicatorConfig::from_env().map_err(|e| e.to_string())?;
    let route = config.routes.first().ok_or("no route configured")?.clone();
    let sdk = load_sdk_config().await;
    let kinesis = KinesisSource::new(&sdk);

    // The source stream takes records up to 1 MiB of data (the partition key comes on top);
    // the target, like every stream, counts data + key against its 1 MiB. One such record
    // cannot be replicated and must end in the dead-letter bucket.
    let too_large = 1024 * 1024;
    println!("1. Writing {n} records to {} (new account)…", route.source);
    let records = generate(n, 7, too_large);
    let t = Instant::now();
    kinesis
        .put_all(&route.source, &records)
        .await
        .map_err(|e| format!("writing the source: {e}"))?;
    println!("   written in {:.1}s", t.elapsed().as_secs_f64());

    println!(
        "2. Replicating into {} (old account, via {}):",
        route.target,
        route
            .writer_role
            .as_ref()
            .map_or("own credentials", |r| r.role_arn.as_str())
    );
    let handler = Arc::new(build_handler(&config, &sdk, MetricsOutput::None).await);
    let options = RunnerOptions {
        until_caught_up: true,
        progress: true,
        batch_size: 500,
        function_timeout: Duration::from_secs(60),
        max_attempts: Some(10),
        region: route.source.region().to_owned(),
        ..RunnerOptions::default()
    };
    let summary = runner::run(
        &kinesis,
        &route.source,
        Arc::new(InProcess(handler)),
        Arc::new(fanout::lease::MemoryLeases::default()),
        &options,
        Arc::new(AtomicBool::new(false)),
    )
    .await
    .map_err(|e| format!("reading the source: {e}"))?;
    let stopped: Vec<_> = summary
        .shards
        .iter()
        .filter_map(|(id, s)| s.stopped.as_ref().map(|w| format!("{id}: {w}")))
        .collect();
    let rate = summary.records_delivered() as f64 / summary.elapsed.as_secs_f64().max(0.001);
    println!(
        "   {} records through the handler in {:.1}s ({rate:.0} records/s), {} invocations, {} retried",
        summary.records_delivered(),
        summary.elapsed.as_secs_f64(),
        summary.shards.values().map(|s| s.invocations).sum::<u64>(),
        summary.shards.values().map(|s| s.retried_invocations).sum::<u64>(),
    );

    println!("3. Reading both streams back and checking…");
    let source = kinesis
        .read_all(&route.source)
        .await
        .map_err(|e| format!("reading the source back: {e}"))?;
    let target = kinesis
        .read_all(&route.target)
        .await
        .map_err(|e| format!("reading the target back: {e}"))?;
    let dlq = S3DeadLetters::new(&sdk, &config.dead_letter_bucket, &config.dead_letter_prefix);
    let letters = dlq
        .list(Some(&route.name))
        .await
        .map_err(|e| format!("listing dead letters: {e}"))?;
    let dead: HashSet<SequenceNumber> = letters
        .iter()
        .filter_map(|(_, env)| SequenceNumber::parse(&env.sequence_number).ok())
        .collect();
    let c = verify::compare(&source, &target, &dead);

    let source_shards: HashSet<&str> = source.iter().map(|(s, _)| s.as_str()).collect();
    let target_shards: HashSet<&str> = target.iter().map(|(s, _)| s.as_str()).collect();
    println!();
    println!(
        "   source records read     {:>8}  ({} shards, {} partition keys)",
        c.source_records,
        source_shards.len(),
        c.keys
    );
    println!(
        "   written to the target   {:>8}  ({} shards)",
        c.target_records - c.duplicates,
        target_shards.len()
    );
    println!("   dead-lettered           {:>8}", c.dead_lettered);
    for (location, env) in &letters {
        println!(
            "       {location}\n       reason: {} ({})",
            env.reason, env.error_code
        );
    }
    println!("   duplicates              {:>8}", c.duplicates);
    println!("   missing                 {:>8}", c.missing.len());
    println!("   out of order (per key)  {:>8}", c.out_of_order);
    println!("   foreign records         {:>8}", c.extra);
    println!(
        "   throughput              {:>8.0} records/s through the handler",
        rate
    );
    println!(
        "       (bound here by kinesis-local, which takes tens of milliseconds per PutRecords,"
    );
    println!(
        "        and by per-key order: a key never has two records in flight, so a batch needs"
    );
    println!("        one round trip per record of its hottest key; BENCHMARKS.md has the handler");
    println!("        against a fast emulator)");
    println!();

    let mut broken = Vec::new();
    if !c.missing.is_empty() {
        broken.push(format!(
            "{} records lost (first: {})",
            c.missing.len(),
            c.missing[0]
        ));
    }
    if c.out_of_order > 0 {
        broken.push(format!("{} records out of per-key order", c.out_of_order));
    }
    if c.extra > 0 {
        broken.push(format!(
            "{} records in the target that the source does not have",
            c.extra
        ));
    }
    if c.source_records != n {
        broken.push(format!(
            "the source holds {} records, {n} were written (stale streams? run with a fresh stack)",
            c.source_records
        ));
    }
    if c.dead_lettered != 1 {
        broken.push(format!(
            "expected exactly 1 dead letter (the oversize record), found {}",
            c.dead_lettered
        ));
    }
    if !stopped.is_empty() {
        broken.push(format!("shards stopped: {}", stopped.join("; ")));
    }
    if broken.is_empty() {
        println!("PASS: every record replicated or dead-lettered, per-key order kept.");
        Ok(true)
    } else {
        for b in &broken {
            println!("FAIL: {b}");
        }
        Ok(false)
    }
}

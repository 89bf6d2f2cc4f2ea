//! The benchmark behind `scripts/bench.sh` (see BENCHMARKS.md). Not a test: each measured run
//! is one process that prints one JSON line, and the script takes medians over many runs.
//!
//! Modes:
//! - `event`: writes a Lambda Kinesis event (the JSON the event source mapping would send) to a
//!   file, with N records of S bytes over K partition keys (round robin, or Zipf-distributed
//!   with `--zipf`), or as many as fit in a byte limit. `--batch I` makes the I-th of several
//!   consecutive batches of one source shard: same keys, new data, later sequence numbers.
//! - `handler`: reads event files, creates a fresh target stream and checkpoint table, builds
//!   the real replicator handler (order mode `--order`, pacing settings from the environment),
//!   warms it up with a one-record event, then times `Handler::handle` on each event in turn
//!   (consecutive batches through one handler), each with a deadline `--budget-ms` after its
//!   start: wall time, CPU time of the whole process (every thread), peak RSS, records per
//!   second (a run stops at the first batch left unfinished). Then it
//!   reads the target back and counts lost, reordered and duplicated records.
//! - `ceiling`: the emulator's own ceiling: the same records sent by a bare PutRecords loop
//!   (same SDK, same client settings, 500 entries per request), timed the same way.
//! - `rtt`: the median round trip of single-entry PutRecords on a path (through a delaying shim).
//! - `shim`: the "real conditions" proxy in front of kinesalite (`bench/shim.rs`): StreamARN →
//!   StreamName rewriting, delayed PutRecords answers, per-shard write limits, failed entries.
//!   It runs as its own process so its CPU and memory never count against the handler.

#[path = "bench/shim.rs"]
mod shim;
#[path = "bench/verify.rs"]
mod verify;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, StreamStatus};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use fanout::aws::checkpoints::DynamoCheckpoints;
use fanout::aws::target::writer_config;
use fanout::aws::{build_handler, LocalEndpoints};
use fanout::cli::status_kb;
use fanout::config::{Limits, ReplicatorConfig};
use fanout::event::{build_event, parse_event};
use fanout::handler::MetricsOutput;
use fanout::model::{CheckpointAdvance, SourceRecord, StreamArn};
use fanout::plan;
use fanout::ports::CheckpointStore;
use fanout::seq::SequenceNumber;
use futures::stream::{self, StreamExt};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::time::Instant;

/// The source stream every generated event comes from (the checkpoint table is fresh per run,
/// so reusing one source never makes a run skip records).
const SOURCE_ARN: &str = "arn:aws:kinesis:us-east-1:123456789012:stream/bench-source";
const SHARD_ID: &str = "shardId-000000000000";
const ACCOUNT: &str = "123456789012";
/// Lambda's limit on a synchronous invocation payload ("6 MB"): 6,291,456 bytes.
const LAMBDA_PAYLOAD_LIMIT: usize = 6 * 1024 * 1024;
/// Sequence numbers of consecutive batches: batch I's records are numbered from I × this.
const BATCH_STRIDE: usize = 1_000_000;
/// Settings `bench handler` passes from its own environment to the replicator's configuration.
const PASSED_THROUGH: &[&str] = &[
    "FANOUT_SHARD_RECORDS_PER_SEC",
    "FANOUT_SHARD_BYTES_PER_SEC",
    "FANOUT_SHARD_HEADROOM_PCT",
    "FANOUT_RUN_LENGTH",
    "FANOUT_MAX_CONCURRENT_REQUESTS",
    "FANOUT_MAX_REQUEST_ENTRIES",
    "FANOUT_MAX_REQUEST_BYTES",
    "FANOUT_BACKOFF_BASE_MS",
    "FANOUT_BACKOFF_MAX_MS",
    "FANOUT_DEADLINE_MARGIN_MS",
    "FANOUT_REQUEST_TIMEOUT_MS",
];

#[derive(Parser)]
#[command(about = "fanout benchmark (driven by scripts/bench.sh)")]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// Write a Lambda Kinesis event to a file; prints its size as JSON.
    Event(EventArgs),
    /// Time Handler::handle on event files, then check the target; prints one JSON line.
    Handler(RunArgs),
    /// Time a bare PutRecords loop over the same records; prints one JSON line.
    Ceiling(CeilingArgs),
    /// Median round trip of single-entry PutRecords; prints one JSON line.
    Rtt(RttArgs),
    /// Serve the "real conditions" proxy until stopped (SIGTERM, SIGINT).
    Shim(shim::ShimArgs),
}

#[derive(Args)]
struct EventArgs {
    /// Records in the event (ignored with --fit-bytes).
    #[arg(long, default_value_t = 10_000)]
    records: usize,
    /// Data bytes per record (before base64).
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Distinct partition keys (0: one per record). Record i uses key i mod K, or a key drawn
    /// from a Zipf distribution with --zipf.
    #[arg(long, default_value_t = 0)]
    keys: usize,
    /// Draw each record's key from a Zipf(S) distribution over the --keys keys (seeded): key k
    /// (1-based) has weight k^-S.
    #[arg(long)]
    zipf: Option<f64>,
    /// Put as many records as fit in an event of at most this many bytes.
    #[arg(long)]
    fit_bytes: Option<usize>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Which of several consecutive batches of one source shard (0, 1, …): the same keys (and
    /// key distribution), new data, sequence numbers above every earlier batch's.
    #[arg(long, default_value_t = 0)]
    batch: usize,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct Endpoints {
    /// kinesalite itself (stream setup, teardown and reading back always go here, by name).
    #[arg(long)]
    kinesalite: String,
    /// moto (DynamoDB, S3).
    #[arg(long)]
    moto: String,
    /// Shards of the fresh target stream.
    #[arg(long, default_value_t = 4)]
    target_shards: i32,
}

#[derive(Args)]
struct RunArgs {
    /// Event file; repeat for consecutive batches of one source shard, handled one after the
    /// other by the same handler (per-container state such as pacing carries over).
    #[arg(long, required = true)]
    event: Vec<PathBuf>,
    /// Where the handler's Kinesis calls go: a shim (the handler always sends StreamARN).
    #[arg(long)]
    kinesis: String,
    #[command(flatten)]
    endpoints: Endpoints,
    /// The route's order mode: strict (default; no "order" field is written), aggregated, runs.
    #[arg(long, default_value = "strict")]
    order: String,
    /// The deadline of each Handler::handle call: this many ms after the call starts (Lambda's
    /// timeout). The handler stops writing its own margin (FANOUT_DEADLINE_MARGIN_MS) before it
    /// and reports the first unhandled record; later batches are then not started.
    #[arg(long, default_value_t = 300_000)]
    budget_ms: u64,
    /// Fail unless every record was written at the first try (no retry, no stop): the check of
    /// the scenarios without faults or budget.
    #[arg(long)]
    expect_clean: bool,
    /// Do not read the target back (no lost / reordered / duplicates figures).
    #[arg(long)]
    no_verify: bool,
    /// Label copied into the output.
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Args)]
struct CeilingArgs {
    #[arg(long)]
    event: PathBuf,
    /// Where the PutRecords go (kinesalite directly, or a shim).
    #[arg(long)]
    kinesis: String,
    /// Address the stream by StreamARN (needs the shim) instead of StreamName.
    #[arg(long)]
    by_arn: bool,
    /// PutRecords requests in flight at once (the handler allows 4).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    #[command(flatten)]
    endpoints: Endpoints,
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Args)]
struct RttArgs {
    /// The shim of the path to measure (addressed by StreamARN).
    #[arg(long)]
    kinesis: String,
    /// Single-entry PutRecords to time (after one warm-up).
    #[arg(long, default_value_t = 20)]
    samples: usize,
    /// Data bytes of each entry.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    #[command(flatten)]
    endpoints: Endpoints,
    #[arg(long, default_value = "")]
    label: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // No logging unless asked for (FANOUT_LOG=debug, say, to see where a run's time goes):
    // a subscriber costs CPU that the figures would count.
    if std::env::var_os("FANOUT_LOG").is_some() {
        fanout::cli::init_tracing();
    }
    let result = match cli.mode {
        Mode::Event(a) => write_event(&a),
        Mode::Handler(a) => run_handler(&a).await,
        Mode::Ceiling(a) => run_ceiling(&a).await,
        Mode::Rtt(a) => run_rtt(&a).await,
        Mode::Shim(a) => shim::run_shim(a).await.map(|()| Value::Null),
    };
    match result {
        Ok(line) => {
            if !line.is_null() {
                println!("{line}");
            }
            // A run that lost or reordered records prints its line and fails.
            if line.get("failed").is_some_and(|f| !f.is_null()) {
                eprintln!("bench: FAILED: {}", line["failed"]);
                return ExitCode::from(3);
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("bench: {e}");
            ExitCode::from(2)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Measurement: all from /proc, so no extra dependency.

/// CPU time of every live thread of this process, in nanoseconds (`/proc/self/task/*/schedstat`,
/// first field: time spent on a CPU). Nanosecond resolution, unlike the 10 ms ticks of
/// `/proc/self/stat`.
fn cpu_ns() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0;
    };
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// utime + stime of the whole process (including exited threads) in clock ticks: a coarse
/// cross-check of [`cpu_ns`].
fn cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

/// Resets VmHWM to the current RSS (Linux ≥ 4.0), so the next reading is the peak since now.
fn reset_peak_rss() -> Result<(), String> {
    std::fs::write("/proc/self/clear_refs", "5")
        .map_err(|e| format!("cannot reset the peak RSS via /proc/self/clear_refs: {e}"))
}

fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

struct Sample {
    started: Instant,
    cpu_ns: u64,
    ticks: u64,
}

impl Sample {
    fn start() -> Sample {
        // CPU first, clock last: the clock brackets only the measured work.
        let cpu_ns = cpu_ns();
        let ticks = cpu_ticks();
        Sample {
            started: Instant::now(),
            cpu_ns,
            ticks,
        }
    }

    /// (wall ms, CPU ms from schedstat, CPU ms from ticks)
    fn stop(self) -> (f64, f64, f64) {
        let wall = ms(self.started.elapsed());
        let cpu = cpu_ns().saturating_sub(self.cpu_ns) as f64 / 1e6;
        // USER_HZ is 100 on Linux: one tick is 10 ms.
        let ticks = cpu_ticks().saturating_sub(self.ticks) as f64 * 10.0;
        (wall, cpu, ticks)
    }
}

// ---------------------------------------------------------------------------------------------
// Events.

fn seq(i: usize) -> SequenceNumber {
    // 56 digits, like real Kinesis sequence numbers, increasing with i.
    SequenceNumber::parse(&format!(
        "4959033827149025660855969253836157109592157598{i:010}"
    ))
    .expect("a valid sequence number")
}

/// How the records of an event are made.
#[derive(Clone, Copy)]
struct Shape {
    size: usize,
    /// Distinct keys (0: one per record).
    keys: usize,
    zipf: Option<f64>,
    seed: u64,
    /// Which consecutive batch: the same keys, new data, later sequence numbers.
    batch: usize,
}

impl Shape {
    fn plain(size: usize, keys: usize, seed: u64) -> Shape {
        Shape {
            size,
            keys,
            zipf: None,
            seed,
            batch: 0,
        }
    }
}

/// Cumulative Zipf(s) weights of keys 1..=n (key k has weight k^-s).
fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
    let mut total = 0.0;
    (1..=n)
        .map(|k| {
            total += (k as f64).powf(-s);
            total
        })
        .collect()
}

fn records(n: usize, shape: Shape) -> Vec<SourceRecord> {
    let Shape {
        size,
        keys,
        zipf,
        seed,
        batch,
    } = shape;
    // The key pool depends on the seed only, so consecutive batches share their keys.
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut key = || format!("{:032x}", rng.random::<u128>());
    let pool: Vec<String> = (0..keys).map(|_| key()).collect();
    let cdf = zipf.map(|s| zipf_cdf(keys.max(1), s));
    let stream = seed.wrapping_add(1).wrapping_add(batch as u64 * 1_000_003);
    let mut rng = rand::rngs::StdRng::seed_from_u64(stream);
    let mut draw = rand::rngs::StdRng::seed_from_u64(stream ^ 0x5eed_2f1f_0000_0000);
    (0..n)
        .map(|i| {
            let partition_key = match (&cdf, pool.is_empty()) {
                (_, true) => format!("{:032x}", rng.random::<u128>()),
                (Some(cdf), false) => {
                    let u = draw.random::<f64>() * cdf[cdf.len() - 1];
                    pool[cdf.partition_point(|&c| c <= u).min(pool.len() - 1)].clone()
                }
                (None, false) => pool[i % pool.len()].clone(),
            };
            let mut data = vec![0u8; size];
            rng.fill(&mut data[..]);
            SourceRecord {
                seq: seq(batch * BATCH_STRIDE + i + 1),
                partition_key: Some(partition_key),
                data,
                arrival_ms: Some(1_700_000_000_000),
                defect: None,
            }
        })
        .collect()
}

fn event_bytes(records: &[SourceRecord]) -> Vec<u8> {
    let source = StreamArn::parse(SOURCE_ARN).expect("source ARN");
    serde_json::to_vec(&build_event(&source, SHARD_ID, "us-east-1", records)).expect("serialize")
}

/// Records per partition key, most first.
fn key_counts<'a>(records: impl IntoIterator<Item = &'a SourceRecord>) -> Vec<usize> {
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for r in records {
        *counts
            .entry(r.partition_key.as_deref().unwrap_or_default())
            .or_default() += 1;
    }
    let mut counts: Vec<usize> = counts.into_values().collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    counts
}

fn write_event(a: &EventArgs) -> Result<Value, String> {
    if a.zipf.is_some() && a.keys == 0 {
        return Err("--zipf needs --keys N".into());
    }
    if a.batch >= 1000 {
        return Err("--batch must be below 1000".into());
    }
    let shape = Shape {
        size: a.size,
        keys: a.keys,
        zipf: a.zipf,
        seed: a.seed,
        batch: a.batch,
    };
    let n = match a.fit_bytes {
        None => a.records,
        Some(limit) => {
            // Every record serialises to the same size (fixed-width keys and sequence numbers).
            let one = event_bytes(&records(1, shape)).len();
            let two = event_bytes(&records(2, shape)).len();
            let per = two - one;
            let envelope = one - per;
            if limit < one {
                return Err(format!(
                    "not even one record of {} B fits in {limit} B",
                    a.size
                ));
            }
            (limit - envelope) / per
        }
    };
    if n >= BATCH_STRIDE {
        return Err(format!("at most {} records per event", BATCH_STRIDE - 1));
    }
    let mut n = n;
    let (bytes, made) = loop {
        let made = records(n, shape);
        let bytes = event_bytes(&made);
        match a.fit_bytes {
            Some(limit) if bytes.len() > limit && n > 1 => n -= 1,
            _ => break (bytes, made),
        }
    };
    std::fs::write(&a.out, &bytes).map_err(|e| format!("writing {}: {e}", a.out.display()))?;
    let counts = key_counts(&made);
    Ok(json!({
        "records": n,
        "size": a.size,
        "keys": counts.len(),
        "hottest_key_records": counts.first().copied().unwrap_or(0),
        "zipf": a.zipf,
        "batch": a.batch,
        "event_bytes": bytes.len(),
        "under_lambda_limit": bytes.len() <= LAMBDA_PAYLOAD_LIMIT,
    }))
}

// ---------------------------------------------------------------------------------------------
// The local stack.

async fn sdk_config(kinesis: &str, moto: &str) -> SdkConfig {
    let endpoints = LocalEndpoints {
        kinesis: kinesis.to_owned(),
        other: moto.to_owned(),
    };
    fanout::aws::local_sdk_config(endpoints, ACCOUNT).await
}

/// A fresh stream on kinesalite (addressed by name), a fresh table and bucket on moto.
struct World {
    setup: SdkConfig,
    name: String,
    with_table: bool,
}

impl World {
    async fn create(e: &Endpoints, with_table: bool) -> Result<World, String> {
        let name = format!("bench-{:012x}", rand::random::<u64>() >> 16);
        let setup = sdk_config(&e.kinesalite, &e.moto).await;
        let kinesis = aws_sdk_kinesis::Client::new(&setup);
        kinesis
            .create_stream()
            .stream_name(&name)
            .shard_count(e.target_shards)
            .send()
            .await
            .map_err(|err| format!("CreateStream on kinesalite: {err:?}"))?;
        let mut active = false;
        for _ in 0..400 {
            let out = kinesis
                .describe_stream_summary()
                .stream_name(&name)
                .send()
                .await
                .map_err(|err| format!("DescribeStreamSummary: {err:?}"))?;
            if out
                .stream_description_summary()
                .is_some_and(|s| *s.stream_status() == StreamStatus::Active)
            {
                active = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        if !active {
            return Err(format!("stream {name} did not become ACTIVE"));
        }
        if with_table {
            fanout::aws::table::create_table(&setup, &name)
                .await
                .map_err(|err| format!("CreateTable on moto: {err}"))?;
            s3(&setup)
                .create_bucket()
                .bucket(&name)
                .send()
                .await
                .map_err(|err| format!("CreateBucket on moto: {err:?}"))?;
        }
        Ok(World {
            setup,
            name,
            with_table,
        })
    }

    /// The ARN the replicator is given; the shim maps it back to the name.
    fn arn(&self) -> String {
        format!("arn:aws:kinesis:us-east-1:{ACCOUNT}:stream/{}", self.name)
    }

    /// Deletes what `create` made, so kinesalite and moto do not grow across runs.
    async fn delete(self) {
        let _ = aws_sdk_kinesis::Client::new(&self.setup)
            .delete_stream()
            .stream_name(&self.name)
            .enforce_consumer_deletion(true)
            .send()
            .await;
        if self.with_table {
            let _ = aws_sdk_dynamodb::Client::new(&self.setup)
                .delete_table()
                .table_name(&self.name)
                .send()
                .await;
            let _ = s3(&self.setup)
                .delete_bucket()
                .bucket(&self.name)
                .send()
                .await;
        }
    }
}

fn s3(sdk: &SdkConfig) -> aws_sdk_s3::Client {
    aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(true)
            .build(),
    )
}

// ---------------------------------------------------------------------------------------------
// The handler.

/// The records of each event file, in order (for checks after the measured calls).
fn read_batches(paths: &[PathBuf]) -> Result<Vec<Vec<SourceRecord>>, String> {
    paths
        .iter()
        .map(|p| {
            let payload = std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()))?;
            Ok(parse_event(&payload).map_err(|e| e.to_string())?.records)
        })
        .collect()
}

/// Sums of the route reports of the batches run.
#[derive(Default)]
struct Totals {
    received: usize,
    handled: usize,
    written: usize,
    skipped: usize,
    dead_lettered: usize,
    requests: usize,
    possible_duplicates: usize,
    repairs: usize,
    retries: BTreeMap<String, u64>,
    checkpoint_errors: Vec<String>,
    stops: Vec<String>,
    batches_run: usize,
    stopped_early: bool,
}

async fn run_handler(a: &RunArgs) -> Result<Value, String> {
    let promise = match a.order.as_str() {
        "strict" | "aggregated" => verify::Promise::FirstArrival,
        "runs" => verify::Promise::LastArrival,
        other => return Err(format!("--order {other:?}: use strict, aggregated or runs")),
    };
    let world = World::create(&a.endpoints, true).await?;
    // "order" only when not the default, so strict runs need no config support for the field.
    let order = if a.order == "strict" {
        String::new()
    } else {
        format!(r#","order":"{}""#, a.order)
    };
    let mut vars: HashMap<&str, String> = HashMap::from([
        (
            "FANOUT_ROUTES",
            format!(
                r#"[{{"source":"{SOURCE_ARN}","target":"{}"{order}}}]"#,
                world.arn()
            ),
        ),
        ("FANOUT_TABLE", world.name.clone()),
        ("FANOUT_DEAD_LETTER_BUCKET", world.name.clone()),
    ]);
    let mut settings = serde_json::Map::new();
    for name in PASSED_THROUGH {
        if let Ok(v) = std::env::var(name) {
            settings.insert((*name).to_owned(), json!(v));
            vars.insert(name, v);
        }
    }
    let config = match ReplicatorConfig::from_lookup(|k| vars.get(k).cloned()) {
        Ok(c) => c,
        Err(e) => {
            world.delete().await;
            return Err(e.to_string());
        }
    };
    let sdk = sdk_config(&a.kinesis, &a.endpoints.moto).await;
    let handler = build_handler(&config, &sdk, MetricsOutput::None).await;
    let warm_deadline = || Instant::now() + Duration::from_secs(300);

    // Warm-up, as in a warm Lambda container: the event source mapping hands a shard's
    // batches one at a time, usually to the same container, so the warm-up is the shard's
    // previous batch: one record just before the event's first. It opens the connections,
    // fills the target-info and shard-map caches, writes the shard's checkpoint and
    // heartbeat. Not measured.
    let source = StreamArn::parse(SOURCE_ARN).expect("source ARN");
    let mut previous = records(1, Shape::plain(10, 0, 99));
    previous[0].seq = seq(0);
    let warm = build_event(&source, SHARD_ID, "us-east-1", &previous);
    let warm = serde_json::to_vec(&warm).expect("serialize");
    let (_, report) = handler
        .handle(&warm, warm_deadline())
        .await
        .map_err(|e| format!("warm-up: {e}"))?;
    if report.first_unhandled.is_some() || report.routes.first().map(|r| r.written) != Some(1) {
        return Err(format!("warm-up did not write its record: {report:?}"));
    }
    drop(warm);

    // The measured calls: one per event file, back to back on the same handler, under one
    // deadline. Each payload is read just before its call (as the runtime would hold it) and
    // dropped after; reading the file is not timed.
    let rss_before_kb = status_kb("VmRSS");
    let peak_before_kb = status_kb("VmHWM");
    reset_peak_rss()?;
    let (mut wall_ms, mut cpu_ms, mut cpu_ticks_ms) = (0.0, 0.0, 0.0);
    let mut reports = Vec::new();
    let mut event_bytes = 0;
    for path in &a.event {
        let payload =
            std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        event_bytes += payload.len();
        // Each invocation has its own deadline, as in Lambda.
        let deadline = Instant::now() + Duration::from_millis(a.budget_ms);
        let sample = Sample::start();
        let result = handler.handle(&payload, deadline).await;
        let (w, c, t) = sample.stop();
        wall_ms += w;
        cpu_ms += c;
        cpu_ticks_ms += t;
        let (_, report) = result.map_err(|e| e.to_string())?;
        let stop = report.first_unhandled.is_some();
        reports.push(report);
        if stop {
            break;
        }
    }
    let peak_handle_kb = status_kb("VmHWM");

    let batches = read_batches(&a.event)?;
    let mut t = Totals::default();
    for (report, records) in reports.iter().zip(&batches) {
        let route = report.routes.first().ok_or("no route report")?;
        t.batches_run += 1;
        t.received += route.received;
        t.written += route.written;
        t.skipped += route.skipped;
        t.dead_lettered += route.dead_lettered;
        t.requests += route.requests;
        t.possible_duplicates += route.possible_duplicates;
        t.repairs += route.repairs;
        for (code, n) in &route.retries {
            *t.retries.entry(code.clone()).or_default() += n;
        }
        if let Some(e) = &route.checkpoint_error {
            t.checkpoint_errors.push(e.clone());
        }
        if let Some(stop) = &route.stop {
            t.stops.push(format!("{stop:?}"));
        }
        t.handled += match &report.first_unhandled {
            Some(first) => {
                t.stopped_early = true;
                records.iter().take_while(|r| r.seq < *first).count()
            }
            None => records.len(),
        };
    }
    let total_records: usize = batches.iter().map(Vec::len).sum();
    let run: Vec<&SourceRecord> = batches[..t.batches_run].iter().flatten().collect();
    let handled = &run[..t.handled.min(run.len())];
    let hot = key_counts(handled.iter().copied());

    // For the breakdown only, after the measurement: what reading the (first) event alone
    // costs, and the two checkpoint calls.
    let first = std::fs::read(&a.event[0]).map_err(|e| e.to_string())?;
    let sample = Sample::start();
    let batch = parse_event(&first).map_err(|e| e.to_string())?;
    let (parse_wall_ms, parse_cpu_ms, _) = sample.stop();
    drop((batch, first));
    let checkpoint_ms = checkpoint_round_trips(&sdk, &world, &config.routes[0].name).await?;

    // What the shim did for this stream, and the limits it enforced.
    let shim_stats = shim_stats(&a.kinesis, &world.name).await;
    let stream_stats = shim_stats
        .as_ref()
        .and_then(|s| s.pointer(&format!("/streams/{}", world.name)))
        .cloned();
    let limit_of = |k: &str| {
        shim_stats
            .as_ref()
            .and_then(|s| s.pointer(&format!("/options/{k}")))
            .and_then(Value::as_f64)
            .unwrap_or(0.0)
    };
    let (limit_records, limit_bytes) = (
        limit_of("shard_records_per_sec"),
        limit_of("shard_bytes_per_sec"),
    );

    // Per target shard, the handled records and bytes: what the shard limits allow at best.
    let setup = aws_sdk_kinesis::Client::new(&world.setup);
    let map = verify::shard_map(&setup, &world.name).await?;
    let mut loads = vec![(0usize, 0usize); map.len()];
    for r in handled {
        let key = r.partition_key.as_deref().unwrap_or_default();
        if let Some(i) = map.shard_of(shim::key_hash(key)) {
            loads[i].0 += 1;
            loads[i].1 += plan::record_bytes(r);
        }
    }
    // The shortest time the enforced limits allow for these loads: each bucket starts full
    // (one second of its rate) and refills at its rate.
    let limit_bound_ms = (limit_records > 0.0 || limit_bytes > 0.0).then(|| {
        loads
            .iter()
            .map(|&(n, b)| {
                let by = |amount: f64, rate: f64| {
                    if rate > 0.0 {
                        ((amount - rate) / rate).max(0.0)
                    } else {
                        0.0
                    }
                };
                by(n as f64, limit_records).max(by(b as f64, limit_bytes))
            })
            .fold(0.0, f64::max)
            * 1000.0
    });

    let check = if a.no_verify {
        None
    } else {
        let shards = verify::read_target(&setup, &world.name, Duration::from_secs(120)).await?;
        Some(verify::check(&run, t.handled, &shards, promise))
    };

    let mut failed = Vec::new();
    if let Some(c) = &check {
        if c.lost > 0 {
            failed.push(format!("{} handled records lost", c.lost));
        }
        if c.reordered > 0 {
            failed.push(format!(
                "{} records out of per-key order ({} arrival), e.g. {}",
                c.reordered,
                if promise == verify::Promise::FirstArrival {
                    "first"
                } else {
                    "last"
                },
                c.reorder_examples.join("; ")
            ));
        }
        if c.misplaced > 0 {
            failed.push(format!(
                "{} sub-records on a shard whose range excludes their key (the KCL drops them)",
                c.misplaced
            ));
        }
        if c.undecodable > 0 {
            failed.push(format!(
                "{} records start with the KPL magic but are not valid aggregated records",
                c.undecodable
            ));
        }
    }
    if t.dead_lettered > 0 {
        failed.push(format!("{} records dead-lettered", t.dead_lettered));
    }
    if !t.checkpoint_errors.is_empty() {
        failed.push(format!("checkpoint errors: {:?}", t.checkpoint_errors));
    }
    if t.skipped > 0 {
        failed.push(format!(
            "{} records skipped (below a checkpoint of a fresh table)",
            t.skipped
        ));
    }
    if a.expect_clean && (t.stopped_early || !t.retries.is_empty() || t.written != t.received) {
        failed.push(format!(
            "not written cleanly: {} of {} written, retries {:?}, stopped early {}, stops {:?}",
            t.written, t.received, t.retries, t.stopped_early, t.stops
        ));
    }

    let wall_s = wall_ms / 1000.0;
    let line = json!({
        "mode": "handler",
        "label": a.label,
        "order": a.order,
        "settings": settings,
        "batches": a.event.len(),
        "batches_run": t.batches_run,
        "records": total_records,
        "received": t.received,
        "handled": t.handled,
        "written": t.written,
        "stopped_early": t.stopped_early,
        "stops": t.stops,
        // Progress: the records the source shard moves past (handled), per second of the
        // measured calls. Records written past the first unhandled one are sent again by the
        // next invocation, so they are reported apart (written_per_sec).
        "records_per_sec": if wall_s > 0.0 { t.handled as f64 / wall_s } else { 0.0 },
        "written_per_sec": if wall_s > 0.0 { t.written as f64 / wall_s } else { 0.0 },
        "hottest_key_handled": hot.first().copied().unwrap_or(0),
        "keys_handled": hot.len(),
        "event_bytes": event_bytes,
        "requests": t.requests,
        "retries": t.retries,
        "possible_duplicates": t.possible_duplicates,
        "repairs": t.repairs,
        "dead_lettered": t.dead_lettered,
        "wall_ms": wall_ms,
        "cpu_ms": cpu_ms,
        "cpu_ticks_ms": cpu_ticks_ms,
        "peak_rss_mb": mb(peak_handle_kb.max(peak_before_kb)),
        "peak_rss_handle_mb": mb(peak_handle_kb),
        "rss_before_mb": mb(rss_before_kb),
        "parse_wall_ms": parse_wall_ms,
        "parse_cpu_ms": parse_cpu_ms,
        "checkpoint_ms": checkpoint_ms,
        "target_shards": map.len(),
        "shard_loads": loads.iter().map(|(n, b)| json!([n, b])).collect::<Vec<_>>(),
        "limit_bound_ms": limit_bound_ms,
        "shim": stream_stats,
        "verify": check.as_ref().map(verify::Outcome::to_json),
        "failed": if failed.is_empty() { Value::Null } else { json!(failed.join("; ")) },
    });
    drop(handler);
    world.delete().await;
    Ok(line)
}

/// The shim's counters for one stream (`GET /stats?stream=NAME`); None when `kinesis` is not
/// a shim or does not answer.
async fn shim_stats(kinesis: &str, stream: &str) -> Option<Value> {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let uri = format!("{}/stats?stream={stream}", kinesis.trim_end_matches('/'))
        .parse()
        .ok()?;
    let response = tokio::time::timeout(Duration::from_secs(5), client.get(uri))
        .await
        .ok()?
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    let body = response.into_body().collect().await.ok()?.to_bytes();
    serde_json::from_slice(&body).ok()
}

/// For the breakdown only: the wall time of the two checkpoint calls every batch makes (a
/// consistent GetItem, then the conditional UpdateItem) on moto, on a warm connection.
async fn checkpoint_round_trips(
    sdk: &SdkConfig,
    world: &World,
    route: &str,
) -> Result<f64, String> {
    let store = DynamoCheckpoints::new(sdk, &world.name);
    let err = |e: fanout::model::StoreError| format!("checkpoint on moto: {e}");
    store
        .load(route, "shardId-000000000998")
        .await
        .map_err(err)?;
    let started = Instant::now();
    store.load(route, SHARD_ID).await.map_err(err)?;
    let advance = CheckpointAdvance {
        route: route.to_owned(),
        shard_id: SHARD_ID.to_owned(),
        source_arn: SOURCE_ARN.to_owned(),
        target_arn: world.arn(),
        last_seq: seq(9_000_000_000),
        last_target: Some((SHARD_ID.to_owned(), seq(1).to_string())),
        written: 1,
        dead_lettered: 0,
        now_ms: chrono::Utc::now().timestamp_millis(),
        beyond: None,
    };
    store.advance(&advance).await.map_err(err)?;
    Ok(ms(started.elapsed()))
}

// ---------------------------------------------------------------------------------------------
// The ceiling: a bare PutRecords loop; and the round trip of one PutRecords.

fn entry(r: &SourceRecord) -> PutRecordsRequestEntry {
    PutRecordsRequestEntry::builder()
        .partition_key(r.partition_key.clone().unwrap_or_default())
        .data(Blob::new(r.data.clone()))
        .build()
        .expect("entry")
}

async fn run_ceiling(a: &CeilingArgs) -> Result<Value, String> {
    let batch = {
        let payload =
            std::fs::read(&a.event).map_err(|e| format!("reading {}: {e}", a.event.display()))?;
        parse_event(&payload).map_err(|e| e.to_string())?
    };
    let world = World::create(&a.endpoints, false).await?;
    let sdk = sdk_config(&a.kinesis, &a.endpoints.moto).await;
    let limits = Limits::default();
    // The replicator's own client settings (no SDK retries, same timeouts).
    let client = aws_sdk_kinesis::Client::from_conf(writer_config(&sdk, &limits).build());
    let arn = world.arn();
    let put = |entries: Vec<PutRecordsRequestEntry>| {
        let request = client.put_records().set_records(Some(entries));
        let request = if a.by_arn {
            request.stream_arn(&arn)
        } else {
            request.stream_name(&world.name)
        };
        async move {
            let out = request
                .send()
                .await
                .map_err(|e| format!("PutRecords: {e:?}"))?;
            match out.failed_record_count() {
                Some(n) if n > 0 => Err(format!("{n} entries failed")),
                _ => Ok(out.records().len()),
            }
        }
    };
    // Warm-up: one record, so the connection is open as in the handler's measured call.
    put(vec![entry(&batch.records[0])]).await?;

    let items: Vec<(usize, usize)> = batch
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| (i, plan::record_bytes(r)))
        .collect();
    let requests =
        plan::pack_requests(&items, limits.max_request_entries, limits.max_request_bytes);
    let request_count = requests.len();
    let sample = Sample::start();
    let written: Vec<Result<usize, String>> = stream::iter(requests)
        .map(|indices| put(indices.iter().map(|&i| entry(&batch.records[i])).collect()))
        .buffer_unordered(a.concurrency.max(1))
        .collect()
        .await;
    let (wall_ms, cpu_ms, cpu_ticks_ms) = sample.stop();
    let mut total = 0;
    for w in written {
        total += w?;
    }
    if total != batch.records.len() {
        return Err(format!("wrote {total} of {} records", batch.records.len()));
    }
    world.delete().await;
    Ok(json!({
        "mode": "ceiling",
        "label": a.label,
        "records": total,
        "requests": request_count,
        "by_arn": a.by_arn,
        "concurrency": a.concurrency.max(1),
        "wall_ms": wall_ms,
        "cpu_ms": cpu_ms,
        "cpu_ticks_ms": cpu_ticks_ms,
        "peak_rss_mb": mb(status_kb("VmHWM")),
    }))
}

/// The median round trip of a single-entry PutRecords by StreamARN (the handler's path): what
/// one strict round costs on this path.
async fn run_rtt(a: &RttArgs) -> Result<Value, String> {
    let world = World::create(&a.endpoints, false).await?;
    let sdk = sdk_config(&a.kinesis, &a.endpoints.moto).await;
    let client =
        aws_sdk_kinesis::Client::from_conf(writer_config(&sdk, &Limits::default()).build());
    let sample = records(a.samples.clamp(1, 1000) + 1, Shape::plain(a.size, 0, 7));
    let mut times = Vec::with_capacity(sample.len());
    for (i, r) in sample.iter().enumerate() {
        let started = Instant::now();
        let out = client
            .put_records()
            .stream_arn(world.arn())
            .records(entry(r))
            .send()
            .await
            .map_err(|e| format!("PutRecords: {e:?}"))?;
        if out.failed_record_count().unwrap_or(0) > 0 {
            return Err(format!("PutRecords failed its entry: {out:?}"));
        }
        // The first is the warm-up (connection set-up).
        if i > 0 {
            times.push(ms(started.elapsed()));
        }
    }
    world.delete().await;
    times.sort_by(f64::total_cmp);
    Ok(json!({
        "mode": "rtt",
        "label": a.label,
        "samples": times.len(),
        "rtt_ms": times[times.len() / 2],
        "min_ms": times[0],
        "max_ms": times[times.len() - 1],
    }))
}

//! The benchmark behind `scripts/bench.sh` (see BENCHMARKS.md). Not a test: each measured run
//! is one process that prints one JSON line, and the script takes medians over many runs.
//!
//! Modes:
//! - `event`: writes a Lambda Kinesis event (the JSON the event source mapping would send) to a
//!   file, with N records of S bytes over K partition keys, or as many as fit in a byte limit.
//! - `handler`: reads an event file, creates a fresh target stream and checkpoint table, builds
//!   the real replicator handler, warms it up with a one-record event, then times one
//!   `Handler::handle` call on the event: wall time, CPU time of the whole process (every
//!   thread), peak RSS.
//! - `ceiling`: the emulator's own ceiling: the same records sent by a bare PutRecords loop
//!   (same SDK, same client settings, 500 entries per request), timed the same way.
//! - `shim`: a loopback HTTP proxy that rewrites `"StreamARN":"arn:…:stream/NAME"` into
//!   `"StreamName":"NAME"` in request bodies, because kinesalite rejects StreamARN parameters
//!   and the replicator always addresses its target by ARN. It runs as its own process so its
//!   CPU and memory never count against the handler.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
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
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, HOST};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::time::Instant;

/// The source stream every generated event comes from (the checkpoint table is fresh per run,
/// so reusing one source never makes a run skip records).
const SOURCE_ARN: &str = "arn:aws:kinesis:us-east-1:123456789012:stream/bench-source";
const SHARD_ID: &str = "shardId-000000000000";
const ACCOUNT: &str = "123456789012";
/// Lambda's limit on a synchronous invocation payload ("6 MB"): 6,291,456 bytes.
const LAMBDA_PAYLOAD_LIMIT: usize = 6 * 1024 * 1024;

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
    /// Time one Handler::handle call on an event file; prints one JSON line.
    Handler(RunArgs),
    /// Time a bare PutRecords loop over the same records; prints one JSON line.
    Ceiling(CeilingArgs),
    /// Serve the StreamARN -> StreamName rewriting proxy until killed.
    Shim {
        /// Address to listen on, e.g. 127.0.0.1:4869.
        #[arg(long)]
        listen: String,
        /// kinesalite's base URL, e.g. http://127.0.0.1:4868.
        #[arg(long)]
        upstream: String,
    },
}

#[derive(Args)]
struct EventArgs {
    /// Records in the event (ignored with --fit-bytes).
    #[arg(long, default_value_t = 10_000)]
    records: usize,
    /// Data bytes per record (before base64).
    #[arg(long, default_value_t = 100)]
    size: usize,
    /// Distinct partition keys (0: one per record). Record i uses key i mod K.
    #[arg(long, default_value_t = 0)]
    keys: usize,
    /// Put as many records as fit in an event of at most this many bytes.
    #[arg(long)]
    fit_bytes: Option<usize>,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Args)]
struct Endpoints {
    /// kinesalite itself (stream setup and teardown always go here, by name).
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
    #[arg(long)]
    event: PathBuf,
    /// Where the handler's Kinesis calls go: the shim (the handler always sends StreamARN).
    #[arg(long)]
    kinesis: String,
    #[command(flatten)]
    endpoints: Endpoints,
    /// Label copied into the output.
    #[arg(long, default_value = "")]
    label: String,
}

#[derive(Args)]
struct CeilingArgs {
    #[arg(long)]
    event: PathBuf,
    /// Where the PutRecords go (kinesalite directly, or the shim).
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

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.mode {
        Mode::Event(a) => write_event(&a),
        Mode::Handler(a) => run_handler(&a).await,
        Mode::Ceiling(a) => run_ceiling(&a).await,
        Mode::Shim { listen, upstream } => run_shim(&listen, &upstream).await.map(|()| json!({})),
    };
    match result {
        Ok(line) => {
            println!("{line}");
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

fn records(n: usize, size: usize, keys: usize, seed: u64) -> Vec<SourceRecord> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut key = || format!("{:032x}", rng.random::<u128>());
    let pool: Vec<String> = (0..keys).map(|_| key()).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed.wrapping_add(1));
    (0..n)
        .map(|i| {
            let partition_key = if pool.is_empty() {
                format!("{:032x}", rng.random::<u128>())
            } else {
                pool[i % pool.len()].clone()
            };
            let mut data = vec![0u8; size];
            rng.fill(&mut data[..]);
            SourceRecord {
                seq: seq(i + 1),
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

fn write_event(a: &EventArgs) -> Result<serde_json::Value, String> {
    let n = match a.fit_bytes {
        None => a.records,
        Some(limit) => {
            // Every record serialises to the same size (fixed-width keys and sequence numbers).
            let one = event_bytes(&records(1, a.size, a.keys, a.seed)).len();
            let two = event_bytes(&records(2, a.size, a.keys, a.seed)).len();
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
    let mut n = n;
    let bytes = loop {
        let bytes = event_bytes(&records(n, a.size, a.keys, a.seed));
        match a.fit_bytes {
            Some(limit) if bytes.len() > limit && n > 1 => n -= 1,
            _ => break bytes,
        }
    };
    std::fs::write(&a.out, &bytes).map_err(|e| format!("writing {}: {e}", a.out.display()))?;
    Ok(json!({
        "records": n,
        "size": a.size,
        "keys": if a.keys == 0 { n } else { a.keys },
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
            fanout::aws::checkpoints::create_table(&setup, &name)
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

async fn run_handler(a: &RunArgs) -> Result<serde_json::Value, String> {
    // What the Lambda runtime would hold: the payload bytes, read once, exactly sized.
    let payload =
        std::fs::read(&a.event).map_err(|e| format!("reading {}: {e}", a.event.display()))?;
    let world = World::create(&a.endpoints, true).await?;
    let vars: HashMap<&str, String> = HashMap::from([
        (
            "FANOUT_ROUTES",
            format!(
                r#"[{{"source":"{SOURCE_ARN}","target":"{}"}}]"#,
                world.arn()
            ),
        ),
        ("FANOUT_TABLE", world.name.clone()),
        ("FANOUT_DEAD_LETTER_BUCKET", world.name.clone()),
    ]);
    let config =
        ReplicatorConfig::from_lookup(|k| vars.get(k).cloned()).map_err(|e| e.to_string())?;
    let sdk = sdk_config(&a.kinesis, &a.endpoints.moto).await;
    let handler = build_handler(&config, &sdk, MetricsOutput::None).await;
    let deadline = || Instant::now() + Duration::from_secs(300);

    // Warm-up, as in a warm Lambda container: one record on another shard of the same route
    // opens the connections and fills the target-info cache. Not measured.
    let source = StreamArn::parse(SOURCE_ARN).expect("source ARN");
    let warm = build_event(
        &source,
        "shardId-000000000999",
        "us-east-1",
        &records(1, 10, 0, 99),
    );
    let warm = serde_json::to_vec(&warm).expect("serialize");
    let (_, report) = handler
        .handle(&warm, deadline())
        .await
        .map_err(|e| format!("warm-up: {e}"))?;
    if report.first_unhandled.is_some() || report.routes.first().map(|r| r.written) != Some(1) {
        return Err(format!("warm-up did not write its record: {report:?}"));
    }
    drop(warm);

    let rss_before_kb = status_kb("VmRSS");
    let peak_before_kb = status_kb("VmHWM");
    reset_peak_rss()?;
    let sample = Sample::start();
    let result = handler.handle(&payload, deadline()).await;
    let (wall_ms, cpu_ms, cpu_ticks_ms) = sample.stop();
    let peak_handle_kb = status_kb("VmHWM");

    let (_, report) = result.map_err(|e| e.to_string())?;
    // For the breakdown only, after the measurement: what reading the event alone costs.
    let sample = Sample::start();
    let batch = parse_event(&payload).map_err(|e| e.to_string())?;
    let (parse_wall_ms, parse_cpu_ms, _) = sample.stop();
    drop(batch);
    let checkpoint_ms = checkpoint_round_trips(&sdk, &world, &config.routes[0].name).await?;
    let route = report.routes.first().ok_or("no route report")?;
    if report.first_unhandled.is_some()
        || route.written != route.received
        || route.skipped != 0
        || route.dead_lettered != 0
        || !route.retries.is_empty()
        || route.checkpoint_error.is_some()
    {
        return Err(format!(
            "the handler did not write every record cleanly: {route:?}"
        ));
    }
    let line = json!({
        "mode": "handler",
        "label": a.label,
        "records": route.received,
        "event_bytes": payload.len(),
        "requests": route.requests,
        "wall_ms": wall_ms,
        "cpu_ms": cpu_ms,
        "cpu_ticks_ms": cpu_ticks_ms,
        "peak_rss_mb": mb(peak_handle_kb.max(peak_before_kb)),
        "peak_rss_handle_mb": mb(peak_handle_kb),
        "rss_before_mb": mb(rss_before_kb),
        "parse_wall_ms": parse_wall_ms,
        "parse_cpu_ms": parse_cpu_ms,
        "checkpoint_ms": checkpoint_ms,
    });
    drop(handler);
    world.delete().await;
    Ok(line)
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
    };
    store.advance(&advance).await.map_err(err)?;
    Ok(ms(started.elapsed()))
}

// ---------------------------------------------------------------------------------------------
// The ceiling: a bare PutRecords loop.

async fn run_ceiling(a: &CeilingArgs) -> Result<serde_json::Value, String> {
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
    let entry = |r: &SourceRecord| {
        PutRecordsRequestEntry::builder()
            .partition_key(r.partition_key.clone().unwrap_or_default())
            .data(Blob::new(r.data.clone()))
            .build()
            .expect("entry")
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

// ---------------------------------------------------------------------------------------------
// The StreamARN shim.

struct Shim {
    upstream_base: String,
    upstream_authority: String,
    client: Client<HttpConnector, Full<Bytes>>,
}

async fn run_shim(listen: &str, upstream: &str) -> Result<(), String> {
    let uri: Uri = upstream
        .trim_end_matches('/')
        .parse()
        .map_err(|e| format!("bad upstream {upstream:?}: {e}"))?;
    let authority = uri
        .authority()
        .ok_or_else(|| format!("upstream {upstream:?} has no host:port"))?
        .to_string();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let shim = Arc::new(Shim {
        upstream_base: upstream.trim_end_matches('/').to_owned(),
        upstream_authority: authority,
        client: Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(2))
            .pool_timer(TokioTimer::new())
            .build(connector),
    });
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| format!("binding {listen}: {e}"))?;
    eprintln!("shim: http://{listen} -> {upstream}");
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shim = shim.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| proxy(shim.clone(), req));
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// Rewrites the first `"StreamARN":"arn:…:stream/NAME"` into `"StreamName":"NAME"`. The SDK
/// writes compact JSON, and inside a JSON string the quotes of that pattern would be escaped,
/// so the match cannot come from record data or a partition key.
fn rewrite_stream_arn(body: &[u8]) -> Option<Vec<u8>> {
    const PATTERN: &[u8] = br#""StreamARN":""#;
    // The SDK serialises StreamARN after Records: look near the end first.
    let tail = body.len().saturating_sub(512);
    let start = find(&body[tail..], PATTERN)
        .map(|i| i + tail)
        .or_else(|| find(body, PATTERN))?;
    let value_start = start + PATTERN.len();
    let value_len = body[value_start..].iter().position(|&b| b == b'"')?;
    let arn = std::str::from_utf8(&body[value_start..value_start + value_len]).ok()?;
    let name = arn.rsplit_once(":stream/")?.1;
    let mut out = Vec::with_capacity(body.len());
    out.extend_from_slice(&body[..start]);
    out.extend_from_slice(br#""StreamName":""#);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&body[value_start + value_len..]);
    Some(out)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

async fn proxy(
    shim: Arc<Shim>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(forward(&shim, req).await.unwrap_or_else(|e| {
        let mut r = Response::new(Full::new(Bytes::from(e)));
        *r.status_mut() = StatusCode::BAD_GATEWAY;
        r
    }))
}

async fn forward(shim: &Shim, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, String> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("reading request: {e}"))?
        .to_bytes();
    let body = match rewrite_stream_arn(&body) {
        Some(rewritten) => Bytes::from(rewritten),
        None => body,
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let uri: Uri = format!("{}{path}", shim.upstream_base)
        .parse()
        .map_err(|e| format!("upstream URI: {e}"))?;
    let mut upstream = Request::builder()
        .method(parts.method)
        .uri(uri)
        .body(Full::new(body.clone()))
        .map_err(|e| e.to_string())?;
    let headers = upstream.headers_mut();
    for (name, value) in &parts.headers {
        if name != HOST && name != CONTENT_LENGTH && name != "connection" {
            headers.append(name.clone(), value.clone());
        }
    }
    // kinesalite does not verify signatures, so a rewritten body is accepted.
    headers.insert(
        HOST,
        shim.upstream_authority
            .parse()
            .map_err(|_| "bad upstream authority".to_owned())?,
    );
    headers.insert(CONTENT_LENGTH, body.len().into());
    let response = shim
        .client
        .request(upstream)
        .await
        .map_err(|e| format!("upstream: {e:?}"))?;
    let (head, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| format!("reading response: {e}"))?
        .to_bytes();
    let mut response = Response::new(Full::new(body.clone()));
    *response.status_mut() = head.status;
    for (name, value) in &head.headers {
        if name != CONTENT_LENGTH && name != "connection" && name != "transfer-encoding" {
            response.headers_mut().append(name.clone(), value.clone());
        }
    }
    response
        .headers_mut()
        .insert(CONTENT_LENGTH, body.len().into());
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shim_rewrites_only_the_stream_arn_member() {
        let body = br#"{"Records":[{"Data":"AA==","PartitionKey":"k\"StreamARN\":\"x"}],"StreamARN":"arn:aws:kinesis:us-east-1:123456789012:stream/bench-1"}"#;
        let out = rewrite_stream_arn(body).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"Records":[{"Data":"AA==","PartitionKey":"k\"StreamARN\":\"x"}],"StreamName":"bench-1"}"#
        );
        assert!(rewrite_stream_arn(br#"{"StreamName":"s"}"#).is_none());
    }
}

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

#[path = "bench/ceiling.rs"]
mod ceiling;
#[path = "bench/event.rs"]
mod event;
#[path = "bench/handler.rs"]
mod handler;
#[path = "bench/measure.rs"]
mod measure;
#[path = "bench/shim.rs"]
mod shim;
#[path = "bench/verify.rs"]
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use aws_config::SdkConfig;
use aws_sdk_kinesis::types::StreamStatus;
use clap::{Args, Parser, Subcommand};
use fanout::aws::LocalEndpoints;
use serde_json::Value;

use ceiling::{run_ceiling, run_rtt};
use event::write_event;
use handler::run_handler;

/// The source stream every generated event comes from (the checkpoint table is fresh per run,
/// so reusing one source never makes a run skip records).
const SOURCE_ARN: &str = "arn:aws:kinesis:us-east-1:123456789012:stream/bench-source";
const SHARD_ID: &str = "shardId-000000000000";
const ACCOUNT: &str = "123456789012";

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

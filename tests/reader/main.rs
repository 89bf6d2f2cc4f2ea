//! The shard reader against the local stack (kinesis-local for Kinesis, moto for DynamoDB, S3
//! and STS): resharding while records flow, SIGKILL at random moments, two runners on one
//! route, leases fenced by their counter, and a bounded backfill window.

// The shared helpers are here; the tests are in the topic modules below.
mod runs;
mod shards;
#[path = "../support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout::aws::build_handler;
use fanout::aws::leases::DynamoLeases;
use fanout::aws::source::KinesisSource;
use fanout::handler::MetricsOutput;
use fanout::lease::{check_history, LeaseStore, Position};
use fanout::model::SourceRecord;
use fanout::ports::reader::ShardReader;
use fanout::runner::{self, InProcess, RunnerOptions};
use fanout::verify;
use support::stack::{records, Backend, World};

const BIN: &str = env!("CARGO_BIN_EXE_fanoutctl");

fn lease_name(world: &World) -> String {
    world.route().name
}

/// Runs the real replicator handler in this process over `reader`, with leases in the
/// world's table, until caught up (if the options say so) or until `stop` is set.
fn spawn_in_process(
    world: &World,
    reader: &KinesisSource,
    options: &RunnerOptions,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<runner::RunSummary> {
    let (config, sdk, table, source, reader, options) = (
        world.config(),
        world.new_account.clone(),
        world.table.clone(),
        world.source.clone(),
        reader.clone(),
        options.clone(),
    );
    tokio::spawn(async move {
        let handler = Arc::new(build_handler(&config, &sdk, MetricsOutput::None).await);
        let leases = Arc::new(DynamoLeases::new(&sdk, &table));
        runner::run(
            &reader,
            &source,
            Arc::new(InProcess(handler)),
            leases,
            &options,
            stop,
        )
        .await
        .expect("runner")
    })
}

/// The lease history of the world's route, after checking no tenure overlapped another.
async fn clean_history(leases: &DynamoLeases, world: &World) -> Vec<fanout::lease::Epoch> {
    let history = leases.history(&lease_name(world)).await.unwrap();
    let problems = check_history(&history);
    assert!(problems.is_empty(), "{problems:?}");
    history
}

async fn compare(world: &World, source: &[(String, SourceRecord)]) -> verify::Comparison {
    let reader = KinesisSource::new(&world.new_account);
    let target = reader.read_all(&world.target).await.expect("read target");
    verify::compare(source, &target, &HashSet::new())
}

/// Waits until the target holds at least `n` records.
async fn wait_for_target(world: &World, n: usize, timeout: Duration) -> usize {
    let reader = KinesisSource::new(&world.new_account);
    let started = Instant::now();
    loop {
        let have = reader
            .read_all(&world.target)
            .await
            .expect("read target")
            .len();
        if have >= n || started.elapsed() > timeout {
            return have;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn spawn_fanoutctl(world: &World, args: &[&str]) -> Child {
    Command::new(BIN)
        .args(args)
        .envs(world.process_env())
        .env_remove("AWS_PROFILE")
        // A loaded test machine can stall an emulator for seconds: a short request timeout
        // would then turn accepted writes into ambiguous ones (duplicates by design, §2.3)
        // and blur what these tests measure, which is the reader's own hand-overs.
        .env("FANOUT_REQUEST_TIMEOUT_MS", "15000")
        .env(
            "FANOUT_LOG",
            std::env::var("FANOUT_TEST_CHILD_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start fanoutctl")
}

/// [`spawn_fanoutctl`] with its log (stderr) appended to `log`.
fn spawn_fanoutctl_logging(world: &World, args: &[&str], log: &std::path::Path) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the log");
    Command::new(BIN)
        .args(args)
        .envs(world.process_env())
        .env_remove("AWS_PROFILE")
        .env("FANOUT_REQUEST_TIMEOUT_MS", "15000")
        .env("FANOUT_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(file)
        .spawn()
        .expect("start fanoutctl")
}

/// Possible duplicates the runs reported: PossibleDuplicates in the EMF lines of `metrics`,
/// plus the records each run wrote again after taking a shard over from a killed run (its
/// WARN line in `log`).
fn duplicates_reported(metrics: &std::path::Path, log: &std::path::Path) -> (u64, u64) {
    let emf: u64 = std::fs::read_to_string(metrics)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["PossibleDuplicates"].as_f64())
        .map(|n| n as u64)
        .sum();
    let taken_over: u64 = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let before = l
                .split(" record(s) written again from its last checkpoint")
                .next()?;
            if before.len() == l.len() {
                return None;
            }
            before.rsplit(' ').next()?.parse::<u64>().ok()
        })
        .sum();
    (emf, taken_over)
}

fn wait_child(mut child: Child, timeout: Duration) -> (i32, String) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut out = String::new();
            if let Some(mut o) = child.stdout.take() {
                use std::io::Read;
                let _ = o.read_to_string(&mut out);
            }
            return (status.code().unwrap_or(-1), out);
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            panic!("fanoutctl did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("kill -TERM");
    assert!(status.success());
}

//! Replication across two local "accounts" over HTTP against the real emulators: clean runs,
//! injected partial failures, ambiguous timeouts, retried batches, bad input and systemic
//! errors. Each test asserts what a user would see: nothing lost, per-key order kept,
//! duplicates counted, the right dead letters, one clear error line.

// The shared helpers are here; the tests are in the topic modules below.
mod delivery;
mod failures;
mod order;
#[path = "../support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fanout::aws::dead_letters::S3DeadLetters;
use fanout::aws::source::KinesisSource;
use fanout::aws::{build_handler, AwsHandler};
use fanout::config::ReplicatorConfig;
use fanout::event;
use fanout::handler::MetricsOutput;
use fanout::model::{SourceRecord, StreamArn};
use fanout::replicate::BatchReport;
use fanout::seq::SequenceNumber;
use fanout::verify::{self, Comparison};
use support::fault_proxy::{FaultPlan, FaultProxy};
use support::stack::{records, Backend, World};
use tokio::time::Instant;

async fn handler_for(world: &World, config: &ReplicatorConfig, kinesis: &str) -> AwsHandler {
    build_handler(config, &world.sdk_via(kinesis).await, MetricsOutput::None).await
}

/// Reads the source back, grouped per shard: what the event source mapping would deliver.
async fn source_batches(world: &World) -> Vec<(String, Vec<SourceRecord>)> {
    let reader = KinesisSource::new(&world.new_account);
    let mut per_shard: Vec<(String, Vec<SourceRecord>)> = Vec::new();
    for (shard, r) in reader.read_all(&world.source).await.expect("read source") {
        match per_shard.last_mut() {
            Some((s, v)) if *s == shard => v.push(r),
            _ => per_shard.push((shard, vec![r])),
        }
    }
    per_shard
}

/// Invokes the handler once per shard with the shard's whole content as one event.
async fn invoke_per_shard(world: &World, handler: &AwsHandler) -> Vec<BatchReport> {
    let mut reports = Vec::new();
    for (shard, recs) in source_batches(world).await {
        let ev = event::build_event(&world.source, &shard, "us-east-1", &recs);
        let payload = serde_json::to_vec(&ev).unwrap();
        let (_, report) = handler
            .handle(&payload, Instant::now() + Duration::from_secs(60))
            .await
            .expect("handled");
        reports.push(report);
    }
    reports
}

async fn dead_letters(
    world: &World,
    config: &ReplicatorConfig,
) -> Vec<(String, fanout::aws::dead_letters::Envelope)> {
    S3DeadLetters::new(
        &world.new_account,
        &config.dead_letter_bucket,
        &config.dead_letter_prefix,
    )
    .list(None)
    .await
    .expect("list dead letters")
}

async fn compare(world: &World, config: &ReplicatorConfig) -> Comparison {
    let reader = KinesisSource::new(&world.new_account);
    let source = reader.read_all(&world.source).await.expect("read source");
    let target = reader.read_all(&world.target).await.expect("read target");
    let dead: HashSet<SequenceNumber> = dead_letters(world, config)
        .await
        .iter()
        .map(|(_, e)| SequenceNumber::parse(&e.sequence_number).unwrap())
        .collect();
    verify::compare(&source, &target, &dead)
}

async fn write_source(world: &World, recs: &[(String, Vec<u8>)]) {
    KinesisSource::new(&world.new_account)
        .put_all(&world.source, recs)
        .await
        .expect("write source");
}

fn total<F: Fn(&fanout::replicate::RouteReport) -> usize>(reports: &[BatchReport], f: F) -> usize {
    reports.iter().flat_map(|r| &r.routes).map(f).sum()
}

/// Captures log lines of the current thread (tokio tests run on one thread). One global
/// subscriber writes each event to the buffer of the thread it happens on: a per-thread
/// (scoped) subscriber would race with the other tests' over tracing's global interest cache
/// and could miss events.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

thread_local! {
    static CAPTURING: std::cell::RefCell<Option<Logs>> = const { std::cell::RefCell::new(None) };
}

/// Writes to the current thread's [`Logs`], if it captures.
struct ThreadWriter;

impl Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURING.with(|c| {
            if let Some(logs) = &*c.borrow() {
                logs.0.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Stops the thread's capture when dropped.
struct Capturing;

impl Drop for Capturing {
    fn drop(&mut self) {
        CAPTURING.with(|c| *c.borrow_mut() = None);
    }
}

impl Logs {
    fn capture(&self) -> Capturing {
        static GLOBAL: std::sync::Once = std::sync::Once::new();
        GLOBAL.call_once(|| {
            let sub = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(|| ThreadWriter)
                .finish();
            tracing::subscriber::set_global_default(sub).expect("one global subscriber");
        });
        CAPTURING.with(|c| *c.borrow_mut() = Some(self.clone()));
        Capturing
    }
    fn lines(&self, level: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(level))
            .map(str::to_owned)
            .collect()
    }
}

//! The shard reader: reads every shard of a source stream and invokes the replicator the way
//! Lambda's Kinesis event source mapping does. It drives local runs, backfills of a time
//! window, and anything else that must read a stream exactly like the mapping.
//!
//! Rules kept from the event source mapping:
//! - one shard's records per invocation, in order, at most `batch_size` of them;
//! - a `batchItemFailures` answer resumes the shard at the reported sequence number;
//! - a handler error retries the whole batch;
//! - the position moves only after a successful answer;
//! - parents before children: a shard starts only after every parent has been read to its
//!   end (`NextShardIterator` null, recorded as SHARD_END); shards that appear while running
//!   (splits, merges, UpdateShardCount) are picked up from `ChildShards` and from ListShards.
//!
//! What it adds for running on machines rather than inside Lambda:
//! - leases in the state table ([`crate::lease`]): one owner per (lease name, shard), a
//!   counter fencing every position write, renewal with a heartbeat (how far behind, caught
//!   up or not), take-over of leases whose owner stopped renewing;
//! - per-shard read limits (5 GetRecords/s, 2 MB/s), expired iterators replaced from the
//!   position, transient errors retried with backoff, systemic errors stopping only that shard;
//! - a clean stop: the in-flight batch finishes, its position is written, leases are released.
//!
//! Starting from LATEST: until a shard's first record is handled there is no position, so a
//! runner restarted before then starts at the (new) LATEST again, like a new event source
//! mapping. Use a time (`AtTimestamp`) when that matters.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::event::streams::KinesisEventResponse;
use tokio::time::Instant;

use crate::event;
use crate::handler::Handler;
use crate::lease::{Heartbeat, Lease, LeaseRecord, LeaseStore, Position};
use crate::lineage;
use crate::model::{FailureClass, RequestError, ShardInfo, SourceRecord, StreamArn};
use crate::plan;
use crate::ports::reader::{ShardReader, StartPosition, Subscription as _};
use crate::ports::{CheckpointStore, DeadLetterStore, TargetWriter};
use crate::seq::SequenceNumber;
use crate::time::now_ms;

/// How the runner reads and when it stops.
#[derive(Clone, Debug)]
pub struct RunnerOptions {
    /// Where a shard with no position starts (children of read parents start at their
    /// beginning whatever this says, except for a time, which suits both).
    pub start: StartPosition,
    /// Most records per invocation (the mapping's BatchSize).
    pub batch_size: i32,
    /// The function timeout given to each invocation.
    pub function_timeout: Duration,
    /// Stop once every shard has been read to its current end.
    pub until_caught_up: bool,
    /// Wait between reads of a shard that returned nothing.
    pub idle_poll: Duration,
    /// Print a live progress line to stderr.
    pub progress: bool,
    pub region: String,
    /// Give up on a shard (it stops, nothing skipped) after this many failed invocations of
    /// one batch. `None`: retry forever, like an event source mapping with no retry limit.
    pub max_attempts: Option<u32>,
    /// The name leases and positions are kept under: one reader per (name, shard).
    pub lease_name: String,
    /// This runner's identity in the lease table; unique per process.
    pub owner: String,
    /// A lease not renewed for this long may be taken over.
    pub lease_ttl: Duration,
    /// How often the shard list is re-read (new shards). Leases are renewed every third of
    /// the lease time by a task of their own.
    pub discover_every: Duration,
    /// Per-shard read limits: at most one GetRecords per interval, and this many bytes a
    /// second (Kinesis: 5 reads/s, 2 MB/s per shard, shared by all classic consumers).
    pub min_read_interval: Duration,
    pub read_bytes_per_second: u64,
    /// A bounded window: records that arrived after this time (ms since the epoch) are not
    /// delivered, and a shard that reaches one is finished.
    pub until_ms: Option<i64>,
    /// Read with enhanced fan-out through this consumer (registered if absent) instead of
    /// GetRecords: SubscribeToShard, re-subscribing from the continuation sequence number
    /// whenever a subscription ends (Kinesis ends each after 5 minutes).
    pub fan_out_consumer: Option<String>,
    /// End each subscription after this long and re-subscribe (tests; Kinesis's own limit
    /// is 5 minutes).
    pub subscription_max: Option<Duration>,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        RunnerOptions {
            start: StartPosition::TrimHorizon,
            batch_size: 1000,
            function_timeout: Duration::from_secs(60),
            until_caught_up: false,
            idle_poll: Duration::from_millis(250),
            progress: false,
            region: "us-east-1".to_owned(),
            max_attempts: None,
            lease_name: "fanout".to_owned(),
            owner: default_owner(),
            lease_ttl: Duration::from_secs(10),
            discover_every: Duration::from_secs(1),
            min_read_interval: Duration::from_millis(200),
            read_bytes_per_second: 2_000_000,
            until_ms: None,
            fan_out_consumer: None,
            subscription_max: None,
        }
    }
}

/// `<host>:<pid>:<random>`: unique per process, readable in the lease table.
pub fn default_owner() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!(
        "{host}:{}:{:06x}",
        std::process::id(),
        rand::random::<u32>() & 0xff_ffff
    )
}

/// Per-shard figures, as the progress line and the final summary show them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardProgress {
    pub records_delivered: u64,
    pub invocations: u64,
    /// Invocations answered with a failure or an error, then retried.
    pub retried_invocations: u64,
    pub millis_behind: i64,
    /// Read to its end (closed shard), or past the end of the window.
    pub finished: bool,
    /// Reached the tip at least once.
    pub caught_up: bool,
    /// The last read returned nothing at the tip.
    pub at_tip: bool,
    pub stopped: Option<String>,
    /// Arrival time of the last record delivered.
    pub last_arrival_ms: Option<i64>,
    /// The lease was taken by another runner (this one stopped reading the shard).
    pub lease_lost: bool,
    /// Times this runner took the shard's lease.
    pub leases_taken: u32,
    /// From the handler's reports (in-process runs only), summed over routes and invocations.
    pub handled: HandledCounts,
    /// Why the last invocation replicated nothing or stopped a route, with what to do; `None`
    /// once a batch goes through.
    pub held: Option<String>,
}

/// What the handler did with a shard's records, summed over its reports.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct HandledCounts {
    /// Handler reports summed (0: the handler ran elsewhere, e.g. invoked over HTTP).
    pub reports: u64,
    pub written: u64,
    pub dead_lettered: u64,
    /// Skipped as handled by an earlier invocation.
    pub skipped: u64,
    pub possible_duplicates: u64,
    /// Entries sent again (throttled, failed, timed out).
    pub retries: u64,
    pub repairs: u64,
}

impl HandledCounts {
    pub fn add(&mut self, other: &HandledCounts) {
        self.reports += other.reports;
        self.written += other.written;
        self.dead_lettered += other.dead_lettered;
        self.skipped += other.skipped;
        self.possible_duplicates += other.possible_duplicates;
        self.retries += other.retries;
        self.repairs += other.repairs;
    }
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct RunSummary {
    /// The shards this runner read.
    pub shards: BTreeMap<String, ShardProgress>,
    pub elapsed: Duration,
}

impl RunSummary {
    pub fn records_delivered(&self) -> u64 {
        self.shards.values().map(|s| s.records_delivered).sum()
    }

    /// The handler's figures over every shard.
    pub fn handled(&self) -> HandledCounts {
        let mut total = HandledCounts::default();
        for s in self.shards.values() {
            total.add(&s.handled);
        }
        total
    }
}

/// State shared by the coordinator, the shard tasks and the progress printer.
#[derive(Default)]
pub struct Shared {
    progress: Mutex<BTreeMap<String, ShardProgress>>,
    delivered: AtomicU64,
    hints: Mutex<Vec<ShardInfo>>,
    wake: tokio::sync::Notify,
}

impl Shared {
    fn update(&self, shard: &str, f: impl FnOnce(&mut ShardProgress)) {
        if let Ok(mut p) = self.progress.lock() {
            f(p.entry(shard.to_owned()).or_default());
        }
    }

    fn get(&self, shard: &str) -> ShardProgress {
        self.progress
            .lock()
            .ok()
            .and_then(|p| p.get(shard).cloned())
            .unwrap_or_default()
    }

    /// A snapshot of every shard's progress.
    pub fn snapshot(&self) -> BTreeMap<String, ShardProgress> {
        self.progress.lock().map(|p| p.clone()).unwrap_or_default()
    }

    pub fn delivered(&self) -> u64 {
        self.delivered.load(Ordering::Relaxed)
    }
}

/// How a shard task ended.
#[derive(Debug, PartialEq, Eq)]
enum TaskEnd {
    /// Read to its end (or past the window): position SHARD_END written.
    Finished,
    /// Asked to stop (or the run is over): the in-flight batch finished, position written.
    Stopped,
    /// A systemic error or too many attempts: the shard waits for a person.
    Failed,
    /// Another runner holds the lease now.
    Lost,
}

#[derive(Clone)]
struct Running {
    lease: Lease,
    cancel: Arc<AtomicBool>,
}

/// The leases this runner holds, renewed by their own task.
type Held = Arc<Mutex<HashMap<String, Running>>>;

mod coordinator;
mod display;
mod invoke;
mod shard;

pub use coordinator::{run, run_with};
use display::print_progress;
pub use invoke::*;
use shard::ShardTask;

#[cfg(test)]
mod tests;

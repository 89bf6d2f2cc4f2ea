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
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::event::streams::KinesisEventResponse;
use tokio::time::Instant;

use crate::aws::source::{KinesisSource, StartPosition};
use crate::event;
use crate::handler::Handler;
use crate::lease::{Heartbeat, Lease, LeaseRecord, LeaseStore, Position};
use crate::lineage;
use crate::model::{FailureClass, RequestError, ShardInfo, SourceRecord, StreamArn};
use crate::plan;
use crate::ports::{CheckpointStore, DeadLetterStore, TargetWriter};
use crate::seq::SequenceNumber;
use crate::time::now_ms;

/// What an invocation answered.
pub struct Invoked {
    /// The handler's JSON answer (`batchItemFailures`).
    pub body: Vec<u8>,
    /// What the handler did, when it ran in this process (a function invoked over HTTP keeps
    /// its figures in its own logs and metrics).
    pub report: Option<crate::replicate::BatchReport>,
}

/// Calls the replicator with one event.
pub trait Invoker: Send + Sync {
    /// Returns the handler's answer, or an error message (the whole batch is retried).
    fn invoke(
        &self,
        event: Vec<u8>,
        timeout: Duration,
    ) -> impl Future<Output = Result<Invoked, String>> + Send;
}

/// Invokes the handler in this process.
pub struct InProcess<W, C, D>(pub Arc<Handler<W, C, D>>);

impl<W: TargetWriter, C: CheckpointStore, D: DeadLetterStore> Invoker for InProcess<W, C, D> {
    async fn invoke(&self, event: Vec<u8>, timeout: Duration) -> Result<Invoked, String> {
        match self.0.handle(&event, Instant::now() + timeout).await {
            Ok((response, report)) => Ok(Invoked {
                body: serde_json::to_vec(&response).map_err(|e| e.to_string())?,
                report: Some(report),
            }),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Invokes a function over HTTP through the Lambda Invoke API, e.g. at `cargo lambda watch`.
pub struct HttpInvoker {
    url: String,
    client: hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        http_body_util::Full<bytes::Bytes>,
    >,
}

impl HttpInvoker {
    /// `base` like `http://127.0.0.1:9000`; `function` the function's name.
    pub fn new(base: &str, function: &str) -> Self {
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        HttpInvoker {
            url: format!(
                "{}/2015-03-31/functions/{function}/invocations",
                base.trim_end_matches('/')
            ),
            client,
        }
    }
}

impl Invoker for HttpInvoker {
    async fn invoke(&self, event: Vec<u8>, timeout: Duration) -> Result<Invoked, String> {
        use http_body_util::BodyExt;
        let req = hyper::Request::post(&self.url)
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(event)))
            .map_err(|e| e.to_string())?;
        let call = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| format!("invoke {}: {e}", self.url))?;
            let status = resp.status();
            let function_error = resp.headers().contains_key("x-amz-function-error");
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes();
            if !status.is_success() || function_error {
                return Err(format!(
                    "function error (HTTP {status}): {}",
                    String::from_utf8_lossy(&body)
                ));
            }
            Ok(Invoked {
                body: body.to_vec(),
                report: None,
            })
        };
        tokio::time::timeout(timeout + Duration::from_secs(5), call)
            .await
            .map_err(|_| format!("invoke {} timed out", self.url))?
    }
}

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

/// Renews every held lease each third of the lease time, all at once, apart from the
/// coordinator's listing and taking of shards (which a slow store can hold up for longer than
/// a lease lasts). A lease found taken over cancels its shard task.
async fn keep_leases<L: LeaseStore>(
    leases: Arc<L>,
    held: Held,
    shared: Arc<Shared>,
    ttl: Duration,
    lease_name: String,
) {
    let ttl_ms = ttl.as_millis() as i64;
    loop {
        tokio::time::sleep(ttl / 3).await;
        let now: Vec<(String, Running)> = held
            .lock()
            .map(|h| h.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let renewals = now.iter().map(|(shard, r)| {
            let p = shared.get(shard);
            let hb = Heartbeat {
                millis_behind: Some(p.millis_behind),
                caught_up: p.at_tip,
            };
            let leases = leases.clone();
            async move { (shard, r, leases.renew(&r.lease, hb, ttl_ms, now_ms()).await) }
        });
        for (shard, r, outcome) in futures::future::join_all(renewals).await {
            match outcome {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(shard = %shard, lease_name = %lease_name, "Lease of {shard} was taken by another runner; stopping this shard here.");
                    r.cancel.store(true, Ordering::Relaxed);
                    shared.update(shard, |s| s.lease_lost = true);
                }
                Err(e) => {
                    tracing::warn!(shard = %shard, error = %e, "Lease renewal failed; retrying.")
                }
            }
        }
    }
}

/// Runs until caught up (if asked), until `stop` is set, or until every shard stops.
/// `progress`, if given, receives live figures (the CLI renders them); otherwise, with
/// `options.progress`, a plain progress line is printed.
pub async fn run<I: Invoker + 'static, L: LeaseStore + 'static>(
    source: &KinesisSource,
    stream: &StreamArn,
    invoker: Arc<I>,
    leases: Arc<L>,
    options: &RunnerOptions,
    stop: Arc<AtomicBool>,
) -> Result<RunSummary, RequestError> {
    run_with(
        source,
        stream,
        invoker,
        leases,
        options,
        stop,
        Arc::new(Shared::default()),
    )
    .await
}

/// [`run`] with the shared state supplied by the caller (to render progress itself).
pub async fn run_with<I: Invoker + 'static, L: LeaseStore + 'static>(
    source: &KinesisSource,
    stream: &StreamArn,
    invoker: Arc<I>,
    leases: Arc<L>,
    options: &RunnerOptions,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
) -> Result<RunSummary, RequestError> {
    let started = Instant::now();
    let started_ms = now_ms();
    let ttl_ms = options.lease_ttl.as_millis() as i64;
    let mut running: HashMap<String, Running> = HashMap::new();
    let held: Held = Arc::default();
    let keeper = tokio::spawn(keep_leases(
        leases.clone(),
        held.clone(),
        shared.clone(),
        options.lease_ttl,
        options.lease_name.clone(),
    ));
    let mut tasks: tokio::task::JoinSet<(String, TaskEnd)> = tokio::task::JoinSet::new();
    let mut first_round = true;
    let printer = options.progress.then(|| {
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move { print_progress(shared, stop, started).await })
    });
    let consumer_arn = match &options.fan_out_consumer {
        Some(name) => Some(source.ensure_consumer(stream, name).await?),
        None => None,
    };
    let mut failed_lists = 0u32;
    // Shards that stopped on an error: not read again by this run (they wait for a person).
    let mut failed: HashSet<String> = HashSet::new();
    loop {
        // Shard tasks that ended: release their leases (positions are already written).
        while let Some(done) = tasks.try_join_next() {
            if let Ok((shard, end)) = done {
                if end == TaskEnd::Failed {
                    failed.insert(shard.clone());
                }
                if let Ok(mut h) = held.lock() {
                    h.remove(&shard);
                }
                if let Some(r) = running.remove(&shard) {
                    if end != TaskEnd::Lost {
                        release(&*leases, &r.lease).await;
                    }
                }
            }
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let listing = match source.list_shards(stream).await {
            Ok(l) => {
                failed_lists = 0;
                let hints = shared.hints.lock().map(|h| h.clone()).unwrap_or_default();
                lineage::merge(l, &hints)
            }
            Err(e) if first_round => return Err(e),
            Err(e) => {
                failed_lists += 1;
                if failed_lists % 10 == 1 {
                    tracing::warn!(stream = %stream, error = %e, "ListShards failed; shards being read continue, new shards wait.");
                }
                tokio::time::sleep(options.discover_every).await;
                continue;
            }
        };
        first_round = false;
        let records: HashMap<String, LeaseRecord> = match leases.list(&options.lease_name).await {
            Ok(v) => v.into_iter().map(|r| (r.shard_id.clone(), r)).collect(),
            Err(e) => {
                tracing::warn!(lease_name = %options.lease_name, error = %e, "Cannot read the leases; retrying.");
                tokio::time::sleep(options.discover_every).await;
                continue;
            }
        };
        let now = now_ms();
        let finished: HashSet<String> = records
            .values()
            .filter(|r| r.position == Position::End)
            .map(|r| r.shard_id.clone())
            .collect();
        let running_ids: HashSet<String> = running.keys().chain(failed.iter()).cloned().collect();
        let ready: Vec<ShardInfo> = lineage::ready(&listing, &finished, &running_ids)
            .into_iter()
            .cloned()
            .collect();
        let mut acquired_any = false;
        // Take at most half of what is free per round (at least one), so runners started
        // together share the shards instead of the first one taking all of them.
        let mut budget = ready.len().div_ceil(2).max(1);
        for shard in &ready {
            if budget == 0 {
                break;
            }
            if records
                .get(&shard.shard_id)
                .is_some_and(|r| !r.claimable(now))
            {
                continue;
            }
            match leases
                .acquire(
                    &options.lease_name,
                    &shard.shard_id,
                    &options.owner,
                    ttl_ms,
                    now_ms(),
                )
                .await
            {
                Ok(Some((lease, position))) => {
                    acquired_any = true;
                    budget -= 1;
                    // An owner still named on an expired lease stopped without releasing it
                    // (killed, or cut off): it may have written records past its last
                    // checkpoint, which this run writes again.
                    let taken_from = records
                        .get(&shard.shard_id)
                        .and_then(|r| r.owner.clone())
                        .filter(|o| *o != options.owner);
                    tracing::info!(shard = %shard.shard_id, counter = lease.counter, position = ?position, owner = %options.owner, "Took the lease of {}.", shard.shard_id);
                    let listed: HashSet<&str> =
                        listing.iter().map(|s| s.shard_id.as_str()).collect();
                    let has_parent = [&shard.parent, &shard.adjacent_parent]
                        .iter()
                        .any(|p| p.as_deref().is_some_and(|p| listed.contains(p)));
                    let cancel = Arc::new(AtomicBool::new(false));
                    shared.update(&shard.shard_id, |s| {
                        s.leases_taken += 1;
                        s.lease_lost = false;
                        s.finished = false;
                    });
                    let task = ShardTask {
                        source: source.clone(),
                        stream: stream.clone(),
                        shard_id: shard.shard_id.clone(),
                        lease: lease.clone(),
                        position,
                        has_parent,
                        consumer_arn: consumer_arn.clone(),
                        invoker: invoker.clone(),
                        leases: leases.clone(),
                        options: options.clone(),
                        stop: stop.clone(),
                        cancel: cancel.clone(),
                        shared: shared.clone(),
                        taken_from: std::sync::Mutex::new(taken_from),
                    };
                    let id = shard.shard_id.clone();
                    tasks.spawn(async move {
                        let end = task.run().await;
                        (id, end)
                    });
                    let r = Running { lease, cancel };
                    if let Ok(mut h) = held.lock() {
                        h.insert(shard.shard_id.clone(), r.clone());
                    }
                    running.insert(shard.shard_id.clone(), r);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(shard = %shard.shard_id, error = %e, "Cannot take the lease; retrying.")
                }
            }
        }
        if options.until_caught_up
            && !acquired_any
            && caught_up(
                &listing, &finished, &records, &running, &shared, options, started_ms,
            )
        {
            break;
        }
        if running.is_empty()
            && listing
                .iter()
                .all(|s| finished.contains(&s.shard_id) || failed.contains(&s.shard_id))
        {
            break; // nothing left that this run can read
        }
        tokio::select! {
            _ = tokio::time::sleep(options.discover_every) => {}
            _ = shared.wake.notified() => {}
        }
    }
    // Stop what is running: in-flight batches finish and write their positions.
    for r in running.values() {
        r.cancel.store(true, Ordering::Relaxed);
    }
    while let Some(done) = tasks.join_next().await {
        if let Ok((shard, end)) = done {
            if let Ok(mut h) = held.lock() {
                h.remove(&shard);
            }
            if let Some(r) = running.remove(&shard) {
                if end != TaskEnd::Lost {
                    release(&*leases, &r.lease).await;
                }
            }
        }
    }
    keeper.abort();
    if let Some(p) = printer {
        p.abort();
        if std::io::stderr().is_terminal() {
            eprintln!();
        }
    }
    Ok(RunSummary {
        shards: shared.snapshot(),
        elapsed: started.elapsed(),
    })
}

async fn release<L: LeaseStore>(leases: &L, lease: &Lease) {
    match leases.release(lease, now_ms()).await {
        Ok(true) => {
            tracing::info!(shard = %lease.shard_id, counter = lease.counter, "Released the lease of {}.", lease.shard_id)
        }
        Ok(false) => {
            tracing::debug!(shard = %lease.shard_id, "Lease already taken by another runner.")
        }
        Err(e) => tracing::warn!(
            shard = %lease.shard_id,
            error = %e,
            "Could not release the lease; another runner can take it once it expires."
        ),
    }
}

/// Every shard is finished, stopped, caught up here, or caught up at another live runner (a
/// heartbeat since this run started, fresh within half a lease: a runner that died does not
/// count, its shards wait for the lease to expire and are read here).
fn caught_up(
    listing: &[ShardInfo],
    finished: &HashSet<String>,
    records: &HashMap<String, LeaseRecord>,
    running: &HashMap<String, Running>,
    shared: &Shared,
    options: &RunnerOptions,
    started_ms: i64,
) -> bool {
    let now = now_ms();
    let fresh = options.lease_ttl.as_millis() as i64 / 2;
    let ready: HashSet<&str> = lineage::ready(listing, finished, &HashSet::new())
        .into_iter()
        .map(|s| s.shard_id.as_str())
        .collect();
    listing.iter().all(|s| {
        let id = s.shard_id.as_str();
        if finished.contains(id) || !ready.contains(id) {
            return true; // finished, or waiting for a parent (judged on its own)
        }
        if running.contains_key(id) {
            let p = shared.get(id);
            return p.caught_up || p.stopped.is_some();
        }
        if shared.get(id).stopped.is_some() {
            return true;
        }
        records.get(id).is_some_and(|r| {
            r.held_by_other(&options.owner, now)
                && r.caught_up
                && r.heartbeat_ms >= started_ms
                && now - r.heartbeat_ms <= fresh
        })
    })
}

async fn print_progress(shared: Arc<Shared>, stop: Arc<AtomicBool>, started: Instant) {
    let tty = std::io::stderr().is_terminal();
    let every = if tty {
        Duration::from_secs(1)
    } else {
        Duration::from_secs(5)
    };
    let mut last = (0u64, Instant::now());
    loop {
        tokio::time::sleep(every).await;
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let now = shared.delivered();
        let rate = (now - last.0) as f64 / last.1.elapsed().as_secs_f64().max(0.001);
        last = (now, Instant::now());
        let behind: Vec<String> = shared
            .snapshot()
            .iter()
            .map(|(id, s)| {
                let short = id.trim_start_matches("shardId-").trim_start_matches('0');
                let state = if s.stopped.is_some() {
                    "STOPPED".to_owned()
                } else if s.held.is_some() {
                    "HELD".to_owned()
                } else if s.lease_lost {
                    "moved".to_owned()
                } else if s.finished {
                    "done".to_owned()
                } else {
                    format!("{}ms", s.millis_behind)
                };
                format!("{}:{state}", if short.is_empty() { "0" } else { short })
            })
            .collect();
        let line = format!(
            "{:>6.1}s  {now} records  {rate:.0} rec/s  behind per shard: {}",
            started.elapsed().as_secs_f64(),
            behind.join(" ")
        );
        if tty {
            eprint!("\r\x1b[2K{line}");
        } else {
            eprintln!("{line}");
        }
    }
}

struct ShardTask<I, L> {
    source: KinesisSource,
    stream: StreamArn,
    shard_id: String,
    lease: Lease,
    position: Position,
    /// A listed parent was read before this shard: start at its beginning.
    has_parent: bool,
    /// Read with enhanced fan-out through this consumer.
    consumer_arn: Option<String>,
    invoker: Arc<I>,
    leases: Arc<L>,
    options: RunnerOptions,
    stop: Arc<AtomicBool>,
    cancel: Arc<AtomicBool>,
    shared: Arc<Shared>,
    /// The owner this run took the lease from, which stopped without releasing it; cleared
    /// once the first batch after it is counted.
    taken_from: std::sync::Mutex<Option<String>>,
}

impl<I: Invoker, L: LeaseStore> ShardTask<I, L> {
    fn update(&self, f: impl FnOnce(&mut ShardProgress)) {
        self.shared.update(&self.shard_id, f);
    }

    /// Adds a handler report to the shard's figures; a batch held back or a route stopped
    /// becomes the shard's `held` reason, said once (WARN) each time it changes.
    fn note_report(&self, report: &crate::replicate::BatchReport) {
        use crate::replicate::StopReason;
        let mut counts = HandledCounts {
            reports: 1,
            ..HandledCounts::default()
        };
        let mut stops: Vec<String> = Vec::new();
        for r in &report.routes {
            counts.written += r.written as u64;
            counts.dead_lettered += r.dead_lettered as u64;
            counts.skipped += r.skipped as u64;
            counts.possible_duplicates += r.possible_duplicates as u64;
            counts.retries += r.retries.values().sum::<u64>();
            counts.repairs += r.repairs as u64;
            let why = match &r.stop {
                None | Some(StopReason::Deadline) => None,
                Some(StopReason::Systemic { code, message }) => Some(format!("{code}: {message}")),
                Some(StopReason::CheckpointUnreadable { message }) => {
                    Some(format!("cannot read its checkpoint: {message}"))
                }
                Some(StopReason::DeadLetterFailed { message }) => {
                    Some(format!("cannot store a dead letter: {message}"))
                }
            };
            if let Some(why) = why {
                stops.push(format!("route {} stopped ({why})", r.route));
            }
        }
        // The first records written after taking a lease over from an owner that did not
        // release it may have been written by that owner too (up to one batch of its, past
        // its last checkpoint): count them, and say so.
        if counts.written > 0 {
            let taken_from = self
                .taken_from
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(owner) = taken_from {
                counts.possible_duplicates += counts.written;
                tracing::warn!(
                    shard = %self.shard_id,
                    previous_owner = %owner,
                    possible_duplicates = counts.written,
                    "Shard {}: took it over from {owner}, which stopped without releasing it \
                     (killed, or cut off); the {} record(s) written again from its last checkpoint \
                     may already be in the target (counted as possible duplicates).",
                    self.shard_id,
                    counts.written
                );
            }
        }
        let held = report
            .held
            .clone()
            .or_else(|| (!stops.is_empty()).then(|| stops.join("; ")));
        let before = self.shared.get(&self.shard_id).held;
        if held.is_some() && held != before {
            tracing::warn!(
                shard = %self.shard_id,
                "Shard {}: {}. Its records wait in the stream; this run retries them.",
                self.shard_id,
                held.as_deref().unwrap_or_default()
            );
        }
        self.update(|s| {
            s.handled.add(&counts);
            s.held = held;
        });
    }

    fn halted(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.cancel.load(Ordering::Relaxed)
    }

    fn start_position(&self) -> StartPosition {
        match &self.position {
            Position::After(seq) => StartPosition::AfterSequence(seq.clone()),
            _ => match &self.options.start {
                StartPosition::Latest if self.has_parent => StartPosition::TrimHorizon,
                other => other.clone(),
            },
        }
    }

    fn fail(&self, e: &RequestError) -> TaskEnd {
        tracing::error!(
            stream = %self.stream,
            shard = %self.shard_id,
            error_code = %e.code,
            "Reading shard {} of {} stopped: {e}. Check the stream and the reader's credentials, then run again; other shards continue.",
            self.shard_id,
            self.stream
        );
        self.update(|s| s.stopped = Some(e.to_string()));
        TaskEnd::Failed
    }

    /// Writes the position (fenced by the lease counter), retrying store errors briefly.
    /// `Err(end)`: stop the task.
    async fn save(&mut self, position: Position) -> Result<(), TaskEnd> {
        let p = self.shared.get(&self.shard_id);
        let hb = Heartbeat {
            millis_behind: Some(p.millis_behind),
            caught_up: p.at_tip,
        };
        let ttl = self.options.lease_ttl.as_millis() as i64;
        for attempt in 1..=6u32 {
            match self
                .leases
                .checkpoint(&self.lease, &position, hb, ttl, now_ms())
                .await
            {
                Ok(true) => {
                    self.position = position;
                    return Ok(());
                }
                Ok(false) => {
                    tracing::warn!(shard = %self.shard_id, lease_name = %self.lease.name, "Lease of {} was taken by another runner; stopping this shard here (the other runner resumes from the last saved position).", self.shard_id);
                    self.update(|s| s.lease_lost = true);
                    return Err(TaskEnd::Lost);
                }
                Err(e) if attempt < 6 => {
                    tracing::warn!(shard = %self.shard_id, error = %e, "Saving the position failed; retrying.");
                    tokio::time::sleep(plan::backoff(
                        attempt,
                        Duration::from_millis(100),
                        Duration::from_secs(2),
                        rand::random(),
                    ))
                    .await;
                }
                Err(e) => {
                    tracing::error!(shard = %self.shard_id, error = %e, "Cannot save the position of {} in the state table: {e}. Stopping this shard; records after the last saved position will be read again.", self.shard_id);
                    self.update(|s| s.stopped = Some(format!("cannot save position: {e}")));
                    return Err(TaskEnd::Failed);
                }
            }
        }
        Err(TaskEnd::Failed)
    }

    /// Cuts a page at the end of a bounded window; `true` when the window is done.
    fn window(&self, mut records: Vec<SourceRecord>, at_tip: bool) -> (Vec<SourceRecord>, bool) {
        let Some(until) = self.options.until_ms else {
            return (records, false);
        };
        if let Some(i) = records
            .iter()
            .position(|r| r.arrival_ms.is_some_and(|a| a > until))
        {
            records.truncate(i);
            return (records, true);
        }
        // At the tip after the window's end: nothing more can arrive inside it.
        (records, at_tip && now_ms() > until)
    }

    /// Completes once the task is asked to stop.
    async fn until_halted(&self) {
        while !self.halted() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Delivers records in batches and saves the position after each. `Err(end)`: stop.
    async fn deliver_all(&mut self, mut records: Vec<SourceRecord>) -> Result<(), TaskEnd> {
        while !records.is_empty() {
            let take = records.len().min(self.options.batch_size.max(1) as usize);
            let rest = records.split_off(take);
            let (handled, complete) = self.deliver(records).await;
            if let Some((seq, arrival)) = handled {
                self.update(|s| s.last_arrival_ms = arrival.or(s.last_arrival_ms));
                self.save(Position::After(seq)).await?;
            }
            if !complete {
                return Err(if self.shared.get(&self.shard_id).stopped.is_some() {
                    TaskEnd::Failed
                } else {
                    TaskEnd::Stopped
                });
            }
            records = rest;
        }
        Ok(())
    }

    /// The shard is read to its end (or past the window): save SHARD_END and say so.
    async fn finish(&mut self, children: &[ShardInfo]) -> TaskEnd {
        if !children.is_empty() {
            if let Ok(mut h) = self.shared.hints.lock() {
                h.extend(children.iter().cloned());
            }
        }
        if let Err(end) = self.save(Position::End).await {
            return end;
        }
        self.update(|s| {
            s.finished = true;
            s.caught_up = true;
            s.at_tip = true;
        });
        self.shared.wake.notify_one();
        TaskEnd::Finished
    }

    /// Enhanced fan-out: one subscription at a time, re-subscribing from the continuation
    /// sequence number (or the saved position) whenever one ends.
    async fn run_fan_out(mut self, consumer_arn: String) -> TaskEnd {
        let mut failures = 0u32;
        // The continuation of the last event fully handled: a new subscription starts after it.
        let mut resume: Option<SequenceNumber> = None;
        loop {
            if self.halted() {
                return TaskEnd::Stopped;
            }
            let start = match (&self.position, &resume) {
                (Position::After(s), Some(r)) if r > s => StartPosition::AfterSequence(r.clone()),
                (Position::After(s), _) => StartPosition::AfterSequence(s.clone()),
                (_, Some(r)) => StartPosition::AfterSequence(r.clone()),
                _ => self.start_position(),
            };
            let mut sub = match self
                .source
                .subscribe(&self.stream, &consumer_arn, &self.shard_id, &start)
                .await
            {
                Ok(sub) => sub,
                // ResourceInUse: the previous subscription of this consumer is still closing.
                Err(e)
                    if e.class == FailureClass::Transient || e.code == "ResourceInUseException" =>
                {
                    failures += 1;
                    self.backoff(failures, &e).await;
                    continue;
                }
                Err(e) => return self.fail(&e),
            };
            let opened = Instant::now();
            loop {
                if self
                    .options
                    .subscription_max
                    .is_some_and(|max| opened.elapsed() >= max)
                {
                    break;
                }
                let next = tokio::select! {
                    ev = sub.next() => ev,
                    _ = self.until_halted() => return TaskEnd::Stopped,
                };
                let event = match next {
                    Ok(Some(ev)) => {
                        failures = 0;
                        ev
                    }
                    Ok(None) => break, // the subscription ended: subscribe again
                    Err(e) if e.class == FailureClass::Systemic => return self.fail(&e),
                    Err(e) => {
                        failures += 1;
                        self.backoff(failures, &e).await;
                        break;
                    }
                };
                let at_tip = event.records.is_empty() && event.millis_behind_latest == 0;
                let (records, window_done) = self.window(event.records, at_tip);
                if let Err(end) = self.deliver_all(records).await {
                    return end;
                }
                self.update(|s| {
                    s.millis_behind = event.millis_behind_latest;
                    s.at_tip = at_tip;
                    s.caught_up |= at_tip;
                });
                if window_done {
                    return self.finish(&[]).await;
                }
                match event.continuation {
                    None => return self.finish(&event.child_shards).await,
                    Some(c) => resume = Some(c),
                }
            }
        }
    }

    async fn run(mut self) -> TaskEnd {
        if let Some(arn) = self.consumer_arn.clone() {
            return self.run_fan_out(arn).await;
        }
        let mut iterator: Option<String> = None;
        let mut failures = 0u32;
        let mut next_read = Instant::now();
        loop {
            if self.halted() {
                return TaskEnd::Stopped;
            }
            let it = match iterator.take() {
                Some(it) => it,
                None => match self
                    .source
                    .shard_iterator(&self.stream, &self.shard_id, &self.start_position())
                    .await
                {
                    Ok(it) => it,
                    Err(e) if e.class == FailureClass::Transient => {
                        failures += 1;
                        self.backoff(failures, &e).await;
                        continue;
                    }
                    Err(e) => return self.fail(&e),
                },
            };
            tokio::time::sleep_until(next_read).await;
            let page = match self
                .source
                .get_records(&self.stream, &it, self.options.batch_size)
                .await
            {
                Ok(p) => {
                    failures = 0;
                    p
                }
                Err(e) if e.code == "ExpiredIteratorException" => {
                    tracing::debug!(shard = %self.shard_id, "Iterator expired; getting a new one from the position.");
                    next_read = Instant::now() + self.options.min_read_interval;
                    continue; // iterator is None: a fresh one comes from the position
                }
                Err(e) if e.class == FailureClass::Transient => {
                    failures += 1;
                    self.backoff(failures, &e).await;
                    iterator = Some(it);
                    next_read = Instant::now() + self.options.min_read_interval;
                    continue;
                }
                Err(e) => return self.fail(&e),
            };
            let bytes: u64 = page.records.iter().map(|r| r.data.len() as u64).sum();
            let pace = Duration::from_secs_f64(
                bytes as f64 / self.options.read_bytes_per_second.max(1) as f64,
            );
            next_read = Instant::now() + self.options.min_read_interval.max(pace);
            let behind = page.millis_behind_latest.unwrap_or(0);
            // MillisBehindLatest is time-based: records written a moment ago read as 0 behind
            // although more follow. Only an empty page at the tip means caught up.
            let at_tip = page.records.is_empty() && behind == 0;
            let (records, window_done) = self.window(page.records, at_tip);
            if let Err(end) = self.deliver_all(records).await {
                return end;
            }
            self.update(|s| {
                s.millis_behind = behind;
                s.at_tip = at_tip;
                s.caught_up |= at_tip;
            });
            if page.next_iterator.is_none() {
                return self.finish(&page.child_shards).await;
            }
            if window_done {
                return self.finish(&[]).await;
            }
            iterator = page.next_iterator;
            if at_tip {
                tokio::time::sleep(self.options.idle_poll).await;
            }
        }
    }

    async fn backoff(&self, failures: u32, e: &RequestError) {
        if failures % 10 == 1 {
            tracing::warn!(shard = %self.shard_id, error = %e, attempt = failures, "Reading {} failed ({}); retrying with backoff.", self.shard_id, e.code);
        }
        tokio::time::sleep(plan::backoff(
            failures,
            Duration::from_millis(200),
            Duration::from_secs(5),
            rand::random(),
        ))
        .await;
    }

    /// Invokes until the whole page is handled. Returns the last handled record (sequence
    /// number, arrival time) and whether the whole page was handled (false: stopped first).
    async fn deliver(
        &self,
        mut records: Vec<SourceRecord>,
    ) -> (Option<(SequenceNumber, Option<i64>)>, bool) {
        let mut attempt = 0u32;
        let mut last: Option<(SequenceNumber, Option<i64>)> = None;
        while !records.is_empty() {
            let event =
                event::build_event(&self.stream, &self.shard_id, &self.options.region, &records);
            let payload = match serde_json::to_vec(&event) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(shard = %self.shard_id, error = %e, "Cannot serialise the event.");
                    self.update(|s| s.stopped = Some(format!("cannot serialise the event: {e}")));
                    return (last, false);
                }
            };
            self.update(|s| s.invocations += 1);
            let outcome = self
                .invoker
                .invoke(payload, self.options.function_timeout)
                .await;
            let outcome = outcome.map(|invoked| {
                if let Some(report) = &invoked.report {
                    self.note_report(report);
                }
                invoked.body
            });
            let failed_at: Result<Option<String>, String> = outcome.and_then(|body| {
                serde_json::from_slice::<KinesisEventResponse>(&body)
                    .map(|r| {
                        r.batch_item_failures
                            .into_iter()
                            .filter_map(|f| f.item_identifier)
                            .next()
                    })
                    .map_err(|e| {
                        format!(
                            "unreadable answer ({e}): {}",
                            String::from_utf8_lossy(&body)
                        )
                    })
            });
            let handled = match &failed_at {
                Ok(None) => records.len(),
                Ok(Some(id)) => match SequenceNumber::parse(id) {
                    Ok(seq) => records
                        .iter()
                        .position(|r| r.seq >= seq)
                        .unwrap_or(records.len()),
                    Err(_) => 0, // an unknown identifier: Lambda retries the whole batch
                },
                Err(_) => 0,
            };
            self.shared
                .delivered
                .fetch_add(handled as u64, Ordering::Relaxed);
            self.update(|s| s.records_delivered += handled as u64);
            if handled > 0 {
                let r = &records[handled - 1];
                last = Some((r.seq.clone(), r.arrival_ms));
            }
            records.drain(..handled);
            if records.is_empty() {
                return (last, true);
            }
            attempt += 1;
            self.update(|s| s.retried_invocations += 1);
            match &failed_at {
                Err(e) => {
                    tracing::warn!(shard = %self.shard_id, error = %e, "Invocation failed; retrying the whole batch.")
                }
                Ok(Some(id)) => {
                    tracing::debug!(shard = %self.shard_id, sequence_number = %id, "Batch partially handled; resuming at the reported record.")
                }
                Ok(None) => {}
            }
            if self.halted() {
                return (last, false);
            }
            if self.options.max_attempts.is_some_and(|max| attempt >= max) {
                let at = records[0].seq.clone();
                let why = match &failed_at {
                    Err(e) => e.clone(),
                    _ => "the handler kept reporting it as failed".to_owned(),
                };
                tracing::error!(
                    shard = %self.shard_id,
                    sequence_number = %at,
                    "Shard {} stopped at record {at} after {attempt} attempts: {why}. The record stays in the stream; fix the cause and run again.",
                    self.shard_id
                );
                self.update(|s| {
                    s.stopped = Some(format!(
                        "stopped at record {at} after {attempt} attempts: {why}"
                    ))
                });
                return (last, false);
            }
            tokio::time::sleep(plan::backoff(
                attempt,
                Duration::from_millis(100),
                Duration::from_secs(5),
                rand::random(),
            ))
            .await;
        }
        (last, true)
    }
}

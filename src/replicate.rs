//! The write path: one source shard's batch replicated to every target route, losslessly and
//! in per-key order, with checkpoints and dead letters.
//!
//! For each route the batch goes through four steps:
//! 1. skip what the route's checkpoint says is already handled (a retried batch);
//! 2. dead-letter the records that can never be written (too large, no key, malformed);
//! 3. write the rest in rounds: each round sends the head record of every partition key, so a
//!    later record of a key is never sent before an earlier one is confirmed written;
//!    throttled or failed entries stay at the head and are retried after a jittered backoff;
//! 4. advance the checkpoint to the end of the contiguous handled prefix and report the first
//!    unhandled record, which the event source mapping retries from.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::{self, FuturesUnordered, StreamExt};
use tokio::time::Instant;

use crate::config::{Limits, POSITION_EVERY};
use crate::control::machine::Mode;
use crate::lock;
use crate::model::{
    AdvanceOutcome, CheckpointAdvance, DeadLetter, EntryResult, FailureClass, HandledBeyond,
    RequestError, Route, SourceBatch, SourceRecord, StoreError, TargetInfo,
};
use crate::pacing::{Bucket, ShardLimits, ShardMap};
use crate::plan;
use crate::ports::{CheckpointStore, DeadLetterStore, OutEntry, ShardHeartbeat, TargetWriter};
use crate::positions::{merge_marks, raise_mark, Marks, PositionPair};
use crate::seq::SequenceNumber;

mod route;
mod schedule;
mod send;
mod store;
mod target;
use schedule::{Entry, Payload, Schedule, Shape};

/// Per (route, source shard) in one container: when it last recorded a position pair, and
/// the marks of everything it wrote.
type Written = (Option<Instant>, Marks);

/// After a refresh that failed without a definite answer, the last known value is used this
/// long before the next try.
const TARGET_INFO_RETRY: Duration = Duration::from_secs(30);
/// The longest a `DescribeStreamSummary` may take before it counts as failed.
const TARGET_INFO_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a route stopped before handling its whole batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// Nothing more can be written until someone acts: access denied, stream missing, KMS, …
    Systemic { code: String, message: String },
    /// The checkpoint could not be read, so what was already written is unknown.
    CheckpointUnreadable { message: String },
    /// A dead letter could not be stored, so that record is not yet handled.
    DeadLetterFailed { message: String },
    /// Retries ran into the invocation deadline.
    Deadline,
}

impl StopReason {
    /// A stable name for metrics and alarms.
    pub fn kind(&self) -> &'static str {
        match self {
            StopReason::Systemic { .. } => "systemic",
            StopReason::CheckpointUnreadable { .. } => "checkpoint_unreadable",
            StopReason::DeadLetterFailed { .. } => "dead_letter_failed",
            StopReason::Deadline => "deadline",
        }
    }
}

/// What happened to one route's share of a batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteReport {
    pub route: String,
    pub shard_id: String,
    pub received: usize,
    /// At or below the checkpoint: already handled by an earlier invocation.
    pub skipped: usize,
    pub written: usize,
    pub bytes_written: u64,
    pub dead_lettered: usize,
    /// Where each dead letter went, in sequence order.
    pub dead_letter_locations: Vec<String>,
    /// Entries re-sent, by error code.
    pub retries: BTreeMap<String, u64>,
    /// Copies that may be in the target more than once: one per ambiguous write (a timeout,
    /// a server error after sending) of a record that was then sent again, one per record
    /// written past the first unhandled record (the event source mapping will send them
    /// again), one per repair (below).
    pub possible_duplicates: usize,
    /// `runs` mode: entries Kinesis accepted after an earlier entry of the same key failed,
    /// written again after it so that the last copy of every record is in order.
    pub repairs: usize,
    /// KPL-aggregated source records re-aggregated per target shard, because the target's
    /// shard map put some of their user records elsewhere than the record itself.
    pub split_records: usize,
    pub requests: usize,
    pub first_unhandled: Option<SequenceNumber>,
    pub stop: Option<StopReason>,
    /// The checkpoint write failed (records are written; a retry may duplicate them).
    pub checkpoint_error: Option<String>,
    /// Arrival time of the newest record in the batch, for "how far behind" metrics.
    pub newest_arrival_ms: Option<i64>,
}

/// What happened to a whole batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    pub source: String,
    pub shard_id: String,
    pub routes: Vec<RouteReport>,
    /// The lowest first-unhandled sequence number over all routes: what to report to Lambda.
    pub first_unhandled: Option<SequenceNumber>,
    pub duration: Duration,
    /// Why nothing of the batch was replicated, when the handler held it back (a route that is
    /// not replicating forward, a source without a route), with what to do.
    pub held: Option<String>,
}

/// Replicates batches to every route whose source they come from.
pub struct Replicator<W, C, D> {
    writer: W,
    checkpoints: C,
    dead_letters: D,
    routes: Vec<Route>,
    limits: Limits,
    target_info: Mutex<HashMap<String, (TargetInfo, Instant)>>,
    /// Per target stream: its shard map and one pacing bucket per shard, kept across batches
    /// (a container's batches share the target shards' limits).
    targets: Mutex<HashMap<String, Arc<TargetPacing>>>,
    /// Who the shard heartbeats say wrote them: `lambda`, or `runner:<owner>`.
    heartbeat_by: String,
    /// Per (route, shard): when this container last wrote the shard's heartbeat, and the mode
    /// it said. A `forward` heartbeat younger than [`HEARTBEAT_EVERY`] is not written again.
    heartbeats: Mutex<HashMap<(String, String), (Instant, Mode)>>,
    /// Per (route, source shard): when this container last recorded a position pair, and the
    /// marks of everything it wrote (kept even if a checkpoint write failed).
    positions: Mutex<HashMap<(String, String), Written>>,
    /// A position pair is recorded at most this often per (route, shard).
    position_every: Duration,
}

/// Longest wait for a heartbeat write: a slow state table must not eat the invocation.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);
/// A shard's `forward` heartbeat is written at most this often by one container (the
/// checkpoint, written every batch, says how far it got; the heartbeat only says the
/// replicator is alive and in which mode, and `status` calls a shard stuck after 60 s
/// without one). A mode change is always written at once.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);

/// How long a target's shard map is trusted before ListShards is called again (sooner when a
/// write lands on a shard the map does not have: the target was resharded).
const SHARD_MAP_TTL: Duration = Duration::from_secs(60);
/// Longest wait for ListShards: pacing is worth less than the invocation's time.
const SHARD_MAP_TIMEOUT: Duration = Duration::from_secs(2);

/// A target stream's shard map and pacing buckets.
struct TargetPacing {
    map: ShardMap,
    /// One per shard of `map`; empty when the map is unknown (pacing off).
    buckets: Mutex<Vec<Bucket>>,
    read_at: Instant,
    /// A write landed on a shard the map does not know.
    stale: AtomicBool,
}

/// What one route's write loop works on; passed whole to [`Replicator::settle`].
struct Progress<'p, 'r> {
    records: &'r [SourceRecord],
    target: &'p TargetPacing,
    sched: &'p mut Schedule<'r>,
    state: &'p mut [State],
    /// Per record: the ambiguous writes it was in.
    ambiguous: &'p mut [u32],
    report: &'p mut RouteReport,
}

/// What a settled request leaves to do: dead letters to store, a systemic stop to apply.
#[derive(Default)]
struct Settled {
    /// (record index, queue item, key slot, error code, message)
    dead_letters: Vec<(usize, usize, usize, String, String)>,
    systemic: Option<(usize, String, String)>,
}

/// What one PutRecords request got back.
type RequestResult = Result<Vec<EntryResult>, RequestError>;

/// The entries of one PutRecords request and what came back: one part, or several when the
/// target refused the request for its contents and it was split to find the records at fault.
type SentRequest = Vec<(Vec<Entry>, RequestResult)>;

/// Kinesis's answer for a shard over its write limits.
fn shard_throttled(code: &str) -> bool {
    crate::errors::kind(code) == crate::errors::Kind::ShardThrottled
}

#[derive(Clone, Debug)]
enum State {
    Pending,
    Written {
        shard_id: String,
        seq: String,
    },
    DeadLettered,
    /// Handled by an earlier invocation past its first unhandled record.
    Handled,
}

impl<W: TargetWriter, C: CheckpointStore, D: DeadLetterStore> Replicator<W, C, D> {
    pub fn new(
        writer: W,
        checkpoints: C,
        dead_letters: D,
        routes: Vec<Route>,
        limits: Limits,
    ) -> Self {
        Replicator {
            writer,
            checkpoints,
            dead_letters,
            routes,
            limits,
            target_info: Mutex::new(HashMap::new()),
            targets: Mutex::new(HashMap::new()),
            heartbeat_by: "lambda".to_owned(),
            heartbeats: Mutex::new(HashMap::new()),
            positions: Mutex::new(HashMap::new()),
            position_every: POSITION_EVERY,
        }
    }

    /// Records position pairs at most this often per (route, shard) (default
    /// [`POSITION_EVERY`]).
    pub fn with_position_every(mut self, every: Duration) -> Self {
        self.position_every = every;
        self
    }

    /// Notes that a heartbeat of `route`'s `shard_id` saying `mode` was written (by the
    /// handler, for the modes in which it does not replicate): the next `forward` heartbeat
    /// is then written at once.
    pub fn heartbeat_written(&self, route: &str, shard_id: &str, mode: Mode) {
        lock(&self.heartbeats).insert(
            (route.to_owned(), shard_id.to_owned()),
            (Instant::now(), mode),
        );
    }

    /// Names the writer of this replicator's heartbeats.
    pub fn with_heartbeat_by(mut self, by: impl Into<String>) -> Self {
        self.heartbeat_by = by.into();
        self
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The state table (checkpoints, replication modes, heartbeats).
    pub fn checkpoints(&self) -> &C {
        &self.checkpoints
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Replicates one shard batch to every route of its source, all routes at once.
    /// Routes with no source match are a configuration error reported by the caller.
    pub async fn replicate(&self, batch: &SourceBatch, deadline: Instant) -> BatchReport {
        let started = Instant::now();
        // Keep time to checkpoint and answer: the configured margin, but never more than a
        // fifth of the invocation, so short function timeouts still get work done.
        let available = deadline.saturating_duration_since(started);
        let send_by = deadline - self.limits.deadline_margin.min(available / 5);
        let routes: Vec<&Route> = self
            .routes
            .iter()
            .filter(|r| r.source == batch.source)
            .collect();
        let reports = futures::future::join_all(
            routes
                .iter()
                .map(|r| self.replicate_route(r, batch, send_by, deadline)),
        )
        .await;
        let first_unhandled = reports
            .iter()
            .filter_map(|r| r.first_unhandled.clone())
            .min();
        BatchReport {
            source: batch.source.to_string(),
            shard_id: batch.shard_id.clone(),
            routes: reports,
            first_unhandled,
            duration: started.elapsed(),
            held: None,
        }
    }
}

/// Why a record is dead-lettered.
struct Refusal<'a> {
    code: &'a str,
    reason: String,
    attempts: u32,
}

/// Runs a store call, giving up at `until` (the SDK's own retries must not eat the deadline).
async fn within<T>(
    until: Instant,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout_at(until, call).await {
        Ok(result) => result,
        Err(_) => Err(StoreError {
            code: "Timeout".to_owned(),
            message: "no answer before the invocation deadline".to_owned(),
        }),
    }
}

fn log_stop(route: &Route, batch: &SourceBatch, report: &RouteReport, stop: &StopReason) {
    let at = report
        .first_unhandled
        .as_ref()
        .map(ToString::to_string)
        .unwrap_or_default();
    match stop {
        StopReason::Systemic { code, message } => tracing::error!(
            route = %route.name,
            shard = %batch.shard_id,
            target = %route.target,
            sequence_number = %at,
            error_code = %code,
            "Replication of shard {} to {} stopped at record {at}: {code}: {message}. {} \
             Nothing was dead-lettered; the shard retries from this record.",
            batch.shard_id,
            route.target,
            fix_for(code, route)
        ),
        StopReason::CheckpointUnreadable { message } => tracing::error!(
            route = %route.name,
            shard = %batch.shard_id,
            sequence_number = %at,
            "Replication of shard {} stopped at record {at}: cannot read its checkpoint ({message}). \
             Check the DynamoDB table and this function's access to it; the shard retries from this record.",
            batch.shard_id
        ),
        StopReason::DeadLetterFailed { message } => tracing::error!(
            route = %route.name,
            shard = %batch.shard_id,
            sequence_number = %at,
            "Replication of shard {} stopped at record {at}: {message}. \
             Check the dead-letter bucket and this function's access to it; the shard retries from this record.",
            batch.shard_id
        ),
        StopReason::Deadline => tracing::warn!(
            route = %route.name,
            shard = %batch.shard_id,
            sequence_number = %at,
            retries = ?report.retries,
            "Ran out of invocation time with {} records written; the shard retries from record {at}. \
             If this repeats, raise the function timeout{}.",
            report.written,
            if report.retries.is_empty() { "" } else { " or the target's capacity (it refused records: see retries)" }
        ),
    }
}

/// What an operator should do about an error that stopped a route, by its kind.
pub fn fix_for(code: &str, route: &Route) -> String {
    use crate::errors::Kind;
    let role = route
        .writer_role
        .as_ref()
        .map(|r| r.role_arn.as_str())
        .unwrap_or("the function's own role");
    match crate::errors::kind(code) {
        Kind::NotFound => format!(
            "Create the target stream {} in account {}, or fix the route in FANOUT_ROUTES.",
            route.target,
            route.target.account()
        ),
        Kind::AccessDenied => format!(
            "Grant {role} kinesis:PutRecords and kinesis:DescribeStreamSummary on {}, and check that it trusts this function (and the external id).",
            route.target
        ),
        Kind::Credentials => match code {
            "CredentialsUnavailable" | "AssumeRoleFailed" => format!(
                "Could not get credentials for {role}; check its trust policy, the external id and sts:AssumeRole permission."
            ),
            _ => format!(
                "The credentials for {role} expired and could not be renewed; check that this function may sts:AssumeRole it."
            ),
        },
        Kind::Kms => format!(
            "The KMS key of {} cannot be used ({code}); check the key's state and that {role} may use it.",
            route.target
        ),
        Kind::Timeout | Kind::Network => format!(
            "Kinesis at the target's endpoint did not answer in time (the network, or the endpoint \
             is overloaded; not a permission problem). Check this function's network path to \
             Kinesis in {}; the shard retries by itself.",
            route.target.region()
        ),
        Kind::Throttled | Kind::ShardThrottled | Kind::ServerError => format!(
            "Kinesis throttled or failed a call on {} ({code}: a passing condition, not a \
             permission problem); the shard retries by itself. If it repeats, check how many \
             functions call DescribeStreamSummary or ListShards on that stream.",
            route.target
        ),
        Kind::ContentsRefused | Kind::Unknown => {
            "Check the target stream and the writer role, then let the shard retry.".to_owned()
        }
    }
}

/// Where to halve a request's entries without splitting a key's entries (they are next to
/// each other): the key boundary nearest the middle, or `None` when all are one key's.
fn key_boundary_near_middle(entries: &[Entry]) -> Option<usize> {
    let middle = entries.len() / 2;
    (1..entries.len())
        .filter(|&i| entries[i].slot != entries[i - 1].slot)
        .min_by_key(|&i| i.abs_diff(middle))
}

#[cfg(test)]
mod tests;

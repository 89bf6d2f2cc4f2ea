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

use crate::config::Limits;
use crate::control::machine::Mode;
use crate::lock;
use crate::model::{
    AdvanceOutcome, CheckpointAdvance, DeadLetter, EntryResult, FailureClass, HandledBeyond,
    RequestError, Route, SourceBatch, SourceRecord, StoreError, TargetInfo,
};
use crate::pacing::{Bucket, ShardLimits, ShardMap};
use crate::plan;
use crate::ports::{CheckpointStore, DeadLetterStore, OutEntry, ShardHeartbeat, TargetWriter};
use crate::seq::SequenceNumber;

mod schedule;
use schedule::{Entry, Payload, Schedule, Shape};

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
        }
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

    /// The target's limits (`DescribeStreamSummary`), cached for `limits.target_info_ttl`. A refresh
    /// that fails without a definite answer (a timeout, a throttle, a server or network error)
    /// keeps the last known value and tries again after [`TARGET_INFO_RETRY`]; only a definite
    /// answer (the stream is gone, access is denied, no credentials), or no value to keep,
    /// is an error.
    async fn target_info(&self, route: &Route, by: Instant) -> Result<TargetInfo, RequestError> {
        let cached = lock(&self.target_info).get(&route.name).copied();
        if let Some((info, fresh_until)) = cached {
            if Instant::now() < fresh_until {
                return Ok(info);
            }
        }
        let wait = TARGET_INFO_TIMEOUT.min(by.saturating_duration_since(Instant::now()));
        let error = match tokio::time::timeout(wait, self.writer.target_info(route)).await {
            Ok(Ok(info)) => {
                lock(&self.target_info).insert(
                    route.name.clone(),
                    (info, Instant::now() + self.limits.target_info_ttl),
                );
                return Ok(info);
            }
            Ok(Err(e)) => e,
            Err(_) => RequestError {
                class: FailureClass::Transient,
                ambiguous: false,
                code: "Timeout".to_owned(),
                message: format!(
                    "DescribeStreamSummary on {} did not answer within {} ms",
                    route.target,
                    wait.as_millis()
                ),
            },
        };
        match cached {
            Some((info, _)) if error.class != FailureClass::Systemic => {
                tracing::warn!(
                    route = %route.name,
                    target = %route.target,
                    error_code = %error.code,
                    "Could not refresh the limits of {} ({}: {}); keeping the last known ones and trying again in {} s.",
                    route.target,
                    error.code,
                    error.message,
                    TARGET_INFO_RETRY.as_secs()
                );
                lock(&self.target_info).insert(
                    route.name.clone(),
                    (info, Instant::now() + TARGET_INFO_RETRY),
                );
                Ok(info)
            }
            _ => Err(error),
        }
    }

    /// The target's shard map and pacing buckets, read with ListShards when missing, older
    /// than [`SHARD_MAP_TTL`] or found stale. If it cannot be read, the last one is kept, or
    /// pacing is off (throttles still slow each key down): replication never waits on it.
    async fn target_pacing(&self, route: &Route) -> Arc<TargetPacing> {
        let key = route.target.as_str();
        let cached = lock(&self.targets).get(key).cloned();
        if let Some(t) = &cached {
            if t.read_at.elapsed() < SHARD_MAP_TTL && !t.stale.load(Ordering::Relaxed) {
                return t.clone();
            }
        }
        let read = tokio::time::timeout(SHARD_MAP_TIMEOUT, self.writer.target_shards(route)).await;
        let shards = match read {
            Ok(Ok(shards)) => shards,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {} ms", SHARD_MAP_TIMEOUT.as_millis()),
                };
                tracing::warn!(
                    route = %route.name,
                    target = %route.target,
                    error = %why,
                    "Cannot read the shard map of {} ({why}); {}. Grant the writer role kinesis:ListShards on the target stream.",
                    route.target,
                    if cached.is_some() { "keeping the previous one" } else { "writes are not paced per target shard until it can be read" }
                );
                let fallback = cached.unwrap_or_else(|| {
                    Arc::new(TargetPacing {
                        map: ShardMap::default(),
                        buckets: Mutex::new(Vec::new()),
                        read_at: Instant::now(),
                        stale: AtomicBool::new(false),
                    })
                });
                // Try again after a TTL, not on every batch.
                let again = Arc::new(TargetPacing {
                    map: fallback.map.clone(),
                    buckets: Mutex::new(lock(&fallback.buckets).clone()),
                    read_at: Instant::now(),
                    stale: AtomicBool::new(false),
                });
                lock(&self.targets).insert(key.to_owned(), again.clone());
                return again;
            }
        };
        let map = ShardMap::new(shards);
        let now = Instant::now();
        // Shards that stay keep their buckets, so a refresh is not a burst.
        let buckets: Vec<Bucket> = map
            .shards()
            .iter()
            .map(|s| {
                cached
                    .as_ref()
                    .and_then(|old| {
                        let i = old
                            .map
                            .shards()
                            .iter()
                            .position(|o| o.shard_id == s.shard_id)?;
                        lock(&old.buckets).get(i).cloned()
                    })
                    .unwrap_or_else(|| Bucket::new(now))
            })
            .collect();
        let fresh = Arc::new(TargetPacing {
            map,
            buckets: Mutex::new(buckets),
            read_at: now,
            stale: AtomicBool::new(false),
        });
        lock(&self.targets).insert(key.to_owned(), fresh.clone());
        fresh
    }

    /// Sends one request, giving up after `timeout` (then its outcome is unknown: ambiguous).
    async fn send(
        &self,
        route: &Route,
        records: &[SourceRecord],
        entries: Vec<Entry>,
        timeout: Duration,
    ) -> SentRequest {
        let out: Vec<OutEntry<'_>> = entries
            .iter()
            .map(|e| match &e.payload {
                Payload::Piece(p) => OutEntry {
                    partition_key: &p.partition_key,
                    explicit_hash_key: Some(&p.explicit_hash_key),
                    data: &p.data,
                },
                payload => OutEntry {
                    partition_key: e
                        .records
                        .first()
                        .and_then(|&i| records[i].partition_key.as_deref())
                        .unwrap_or_default(),
                    explicit_hash_key: None,
                    data: match payload {
                        Payload::Aggregated(bytes) => bytes,
                        Payload::Record(i) => &records[*i].data,
                        Payload::Piece(p) => &p.data,
                    },
                },
            })
            .collect();
        let deadline = Instant::now() + timeout;
        // Ranges of `entries` still to send (the next one last) and those answered, in order.
        let mut to_send: Vec<std::ops::Range<usize>> = Vec::with_capacity(2);
        to_send.push(0..entries.len());
        let mut answered: Vec<(std::ops::Range<usize>, RequestResult)> = Vec::new();
        while let Some(range) = to_send.pop() {
            let left = deadline.saturating_duration_since(Instant::now());
            let result = if left.is_zero() {
                Err(RequestError {
                    class: FailureClass::Transient,
                    ambiguous: false,
                    code: "Timeout".to_owned(),
                    message: format!("not sent: the request's {timeout:?} were used up"),
                })
            } else {
                let put = self.writer.put_records(route, &out[range.clone()]);
                tokio::time::timeout(left, put).await.unwrap_or_else(|_| {
                    Err(RequestError {
                        class: FailureClass::Transient,
                        ambiguous: true,
                        code: "Timeout".to_owned(),
                        message: format!("PutRecords did not answer within {timeout:?}"),
                    })
                })
            };
            match result {
                // The target refused the request for what it holds (a partition key or record
                // it will not take): halve it at a key boundary until the keys at fault are
                // alone, so that everything else is written and only those are refused.
                Err(e) if e.class == FailureClass::Permanent => {
                    match key_boundary_near_middle(&entries[range.clone()]) {
                        Some(mid) => {
                            to_send.push(range.start + mid..range.end);
                            to_send.push(range.start..range.start + mid);
                        }
                        None => {
                            // One key: its one entry is refused (dead-lettered, or sent record
                            // by record if it is an aggregate); several entries (a run) are
                            // failed, and the key's next run is a single record.
                            let class = if range.len() == 1 {
                                FailureClass::Permanent
                            } else {
                                FailureClass::Transient
                            };
                            let failed = EntryResult::Failed {
                                code: e.code.clone(),
                                message: e.message.clone(),
                                class,
                            };
                            answered.push((range.clone(), Ok(vec![failed; range.len()])));
                        }
                    }
                }
                other => answered.push((range, other)),
            }
        }
        drop(out);
        // The ranges were answered in order and cover every entry: cut `entries` into them.
        let mut entries = entries;
        let mut parts: SentRequest = Vec::with_capacity(answered.len());
        for (range, result) in answered.into_iter().rev() {
            parts.push((entries.split_off(range.start), result));
        }
        parts.reverse();
        parts
    }

    /// Applies one request's answer: written records leave their key's queue, a failed head
    /// makes its key (only) back off, a throttle slows its target shard, a refused record is
    /// to be dead-lettered, a systemic error stops the route at its first record.
    fn settle(
        &self,
        p: Progress<'_, '_>,
        shard_limits: &ShardLimits,
        entries: Vec<Entry>,
        result: Result<Vec<EntryResult>, RequestError>,
    ) -> Settled {
        let Progress {
            records,
            target,
            sched,
            state,
            ambiguous,
            report,
        } = p;
        let now = Instant::now();
        let limits = &self.limits;
        // A key's first retry goes with the next request: a one-off failure costs one round
        // trip, not a sleep. From the second failure in a row the key backs off exponentially,
        // unless every failure was a throttle and the target's shards are paced: a throttled
        // shard is slowed and its bucket emptied (below), so its keys go again as its tokens
        // come, and a per-key sleep on top would only idle the shard.
        let paced_shards = target.map.is_known();
        // The wait before a key's next attempt, by attempt count, after failures that were
        // all throttles (`throttles_only`) or not.
        let backoff = |throttles_only: bool| {
            move |attempt: u32| match attempt {
                _ if throttles_only && paced_shards => Duration::ZERO,
                0 | 1 => Duration::ZERO,
                n => plan::backoff(
                    n - 1,
                    limits.backoff_base,
                    limits.backoff_max,
                    rand::random::<f64>(),
                ),
            }
        };
        let mut out = Settled::default();
        let mut note_systemic = |i: usize, code: &str, message: &str| {
            if out.systemic.as_ref().is_none_or(|(j, _, _)| i < *j) {
                out.systemic = Some((i, code.to_owned(), message.to_owned()));
            }
        };
        let mut throttled: Vec<usize> = Vec::new();
        // The entries of one key are next to each other: settle each key once, at its end.
        let slots: Vec<usize> = {
            let mut v: Vec<usize> = entries.iter().map(|e| e.slot).collect();
            v.dedup();
            v
        };
        match result {
            Ok(results) if results.len() == entries.len() => {
                let mut current: Option<usize> = None;
                // This key's later entries are not progress: an earlier one was not written.
                let mut broken = false;
                let mut failed = false;
                // Entries of this key written before its first failure.
                let mut through = 0;
                // This key's failures were all throttles.
                let mut only_throttled = true;
                let done = |sched: &mut Schedule<'_>,
                            slot: usize,
                            failed: bool,
                            through,
                            only_throttled: bool| {
                    if failed {
                        sched.run_failed(slot, through);
                    }
                    sched.settle(slot, failed.then_some(now), backoff(only_throttled));
                };
                for (e, r) in entries.iter().zip(results) {
                    if current != Some(e.slot) {
                        if let Some(slot) = current {
                            done(sched, slot, failed, through, only_throttled);
                        }
                        current = Some(e.slot);
                        broken = false;
                        failed = false;
                        through = 0;
                        only_throttled = true;
                    }
                    let first = e.records[0];
                    match r {
                        EntryResult::Written { .. } if broken => {
                            // runs: written after an earlier record of its key failed; it is
                            // sent again after that one, so its last copy is in order.
                            report.repairs += e.records.len();
                            report.possible_duplicates += e.records.len();
                        }
                        EntryResult::Written { shard_id, seq } => {
                            through += 1;
                            if target.map.is_known() && !target.map.contains(&shard_id) {
                                target.stale.store(true, Ordering::Relaxed);
                            }
                            for (&item, &i) in e.items.iter().zip(&e.records) {
                                if !sched.written(e.slot, item) {
                                    continue; // a split record with pieces still to write
                                }
                                report.written += 1;
                                report.bytes_written += records[i].data.len() as u64;
                                report.possible_duplicates += ambiguous[i] as usize;
                                state[i] = State::Written {
                                    shard_id: shard_id.clone(),
                                    seq: seq.clone(),
                                };
                            }
                        }
                        EntryResult::Failed {
                            code,
                            message,
                            class,
                        } => {
                            broken = true;
                            match class {
                                FailureClass::Transient => {
                                    failed = true;
                                    if shard_throttled(&code) {
                                        throttled.push(sched.shard_of(e.slot));
                                    } else {
                                        only_throttled = false;
                                    }
                                    *report.retries.entry(code).or_default() += 1;
                                }
                                FailureClass::Permanent if e.records.len() > 1 => {
                                    tracing::warn!(
                                        route = %report.route,
                                        error_code = %code,
                                        "The target refused an aggregated record of {} records ({code}: {message}); sending them one by one.",
                                        e.records.len()
                                    );
                                    sched.send_plain(e.slot);
                                    *report.retries.entry(code).or_default() += 1;
                                }
                                FailureClass::Permanent => out
                                    .dead_letters
                                    .push((first, e.items[0], e.slot, code, message)),
                                FailureClass::Systemic => note_systemic(first, &code, &message),
                            }
                        }
                    }
                }
                if let Some(slot) = current {
                    done(sched, slot, failed, through, only_throttled);
                }
            }
            Ok(results) => {
                let message = format!(
                    "PutRecords answered {} results for {} entries",
                    results.len(),
                    entries.len()
                );
                let first = entries.iter().map(|e| e.records[0]).min().unwrap_or(0);
                note_systemic(first, "MalformedResponse", &message);
                for slot in slots {
                    sched.settle(slot, None, backoff(false));
                }
            }
            Err(e) => match e.class {
                FailureClass::Transient | FailureClass::Permanent => {
                    *report.retries.entry(e.code.clone()).or_default() += entries.len() as u64;
                    for entry in &entries {
                        if e.ambiguous {
                            for &i in &entry.records {
                                ambiguous[i] += 1;
                            }
                        }
                        if shard_throttled(&e.code) {
                            throttled.push(sched.shard_of(entry.slot));
                        }
                    }
                    for slot in slots {
                        sched.settle(slot, Some(now), backoff(shard_throttled(&e.code)));
                    }
                }
                FailureClass::Systemic => {
                    let first = entries.iter().map(|e| e.records[0]).min().unwrap_or(0);
                    note_systemic(first, &e.code, &e.message);
                    for slot in slots {
                        sched.settle(slot, None, backoff(false));
                    }
                }
            },
        }
        if !throttled.is_empty() {
            throttled.sort_unstable();
            throttled.dedup();
            let mut buckets = lock(&target.buckets);
            for shard in throttled {
                if let Some(b) = buckets.get_mut(shard) {
                    b.throttled(shard_limits, now);
                }
            }
        }
        out
    }

    async fn replicate_route(
        &self,
        route: &Route,
        batch: &SourceBatch,
        send_by: Instant,
        deadline: Instant,
    ) -> RouteReport {
        let records = &batch.records;
        let mut report = RouteReport {
            route: route.name.clone(),
            shard_id: batch.shard_id.clone(),
            received: records.len(),
            newest_arrival_ms: records.iter().filter_map(|r| r.arrival_ms).max(),
            ..RouteReport::default()
        };
        if records.is_empty() {
            return report;
        }

        // 1. Skip what an earlier invocation already handled: its contiguous prefix, and what
        //    it handled past its first unhandled record.
        let mut earlier: Option<HandledBeyond> = None;
        let mut loaded_last: Option<SequenceNumber> = None;
        let start = match within(send_by, self.checkpoints.load(&route.name, &batch.shard_id)).await
        {
            Ok(Some(cp)) => {
                earlier = cp.beyond;
                let start = records
                    .iter()
                    .position(|r| r.seq > cp.last_seq)
                    .unwrap_or(records.len());
                loaded_last = Some(cp.last_seq);
                start
            }
            Ok(None) => 0,
            Err(e) => {
                let stop = StopReason::CheckpointUnreadable {
                    message: e.to_string(),
                };
                return self
                    .stopped_before_start(route, batch, report, 0, stop, send_by)
                    .await;
            }
        };
        report.skipped = start;
        if start == records.len() {
            self.heartbeat(route, batch, start, send_by).await;
            return report;
        }

        let info = match self.target_info(route, send_by).await {
            Ok(info) => info,
            Err(e) => {
                let stop = StopReason::Systemic {
                    code: e.code.clone(),
                    message: e.message.clone(),
                };
                return self
                    .stopped_before_start(route, batch, report, start, stop, send_by)
                    .await;
            }
        };
        let max_record_bytes = self
            .limits
            .max_record_bytes_override
            .unwrap_or(info.max_record_bytes)
            .min(self.limits.max_request_bytes);

        let mut state: Vec<State> = vec![State::Pending; records.len()];
        if let Some(b) = &earlier {
            match b.align(records) {
                Some(at) => {
                    for i in (at..records.len().min(at + b.len as usize)).filter(|&i| i >= start) {
                        if b.handled(i - at) {
                            state[i] = State::Handled;
                            report.skipped += 1;
                        }
                    }
                }
                // Not the batch that stopped (its first unhandled record is not here): what
                // it handled past that record may be written again.
                None => report.possible_duplicates += b.count(),
            }
        }
        // Records at or after `limit` are left for the retry (a systemic stop happened there).
        let mut limit = records.len();
        let mut stop: Option<StopReason> = None;

        // 2. Dead-letter what can never be written, in order; stop at the first that cannot be stored.
        let defects: Vec<(usize, String, String)> = (start..records.len())
            .filter(|&i| matches!(state[i], State::Pending))
            .filter_map(|i| {
                plan::permanent_defect(&records[i], max_record_bytes)
                    .map(|(c, r)| (i, c.to_owned(), r))
            })
            .collect();
        if !defects.is_empty() {
            let stored: Vec<(usize, Result<String, String>)> = stream::iter(defects)
                .map(|(i, code, reason)| async move {
                    let why = Refusal {
                        code: &code,
                        reason,
                        attempts: 0,
                    };
                    (i, self.dead_letter(route, batch, i, why, send_by).await)
                })
                .buffered(8)
                .collect()
                .await;
            for (i, result) in stored {
                match result {
                    Ok(location) if i < limit => {
                        state[i] = State::DeadLettered;
                        report.dead_letter_locations.push(location);
                    }
                    Ok(_) => {}
                    Err(message) => {
                        if i < limit {
                            limit = i;
                            stop = Some(StopReason::DeadLetterFailed { message });
                        }
                    }
                }
            }
        }

        // 3. Write the rest: each key's head (or run, or aggregate), paced per target shard,
        //    with up to `max_concurrent_requests` requests in flight.
        let target = self.target_pacing(route).await;
        let shard_limits = ShardLimits::new(
            self.limits.shard_records_per_sec,
            self.limits.shard_bytes_per_sec,
            self.limits.shard_headroom_pct,
        );
        let shape = Shape {
            mode: route.order,
            max_entries: self.limits.max_request_entries,
            max_request_bytes: self.limits.max_request_bytes,
            max_record_bytes,
            run_length: self.limits.run_length,
        };
        let mut sched = Schedule::new(
            records,
            (start..limit).filter(|&i| matches!(state[i], State::Pending)),
            shape,
            &target.map,
        );
        report.split_records = sched.split_records();
        let mut ambiguous = vec![0u32; records.len()];
        let mut in_flight = FuturesUnordered::new();
        let mut stopping = false;
        loop {
            let now = Instant::now();
            if now >= send_by && sched.has_pending() {
                stop.get_or_insert(StopReason::Deadline);
                stopping = true;
            }
            if !stopping {
                let mut buckets = lock(&target.buckets);
                while in_flight.len() < self.limits.max_concurrent_requests {
                    // While requests are out, send only full ones: small requests sent as each
                    // answer comes back would multiply the requests (and their per-request
                    // costs) without moving any key faster; the rest go when the answers are in.
                    // Keys that a shard's tokens held back are the exception: they go as the
                    // tokens come, not a round trip later.
                    let most = self.limits.max_request_entries;
                    if !in_flight.is_empty()
                        && !sched.awaits_tokens()
                        && sched.ready_keys(now, most) < most
                    {
                        break;
                    }
                    let Some(entries) = sched.next_request(now, &mut buckets, &shard_limits) else {
                        break;
                    };
                    report.requests += 1;
                    // A request may finish in the first half of the margin left for the
                    // checkpoint: one cut off at the stop would be ambiguous, and its records
                    // written again by the retry.
                    let answer_by = send_by + deadline.saturating_duration_since(send_by) / 2;
                    let timeout = self.limits.request_timeout.min(answer_by - now);
                    in_flight.push(self.send(route, records, entries, timeout));
                }
            }
            let wake = if stopping {
                None
            } else {
                sched
                    .next_wake(now, &mut lock(&target.buckets), &shard_limits)
                    // A key ready now but held back for a fuller request waits for an answer.
                    .filter(|&at| at > now || in_flight.is_empty())
            };
            if in_flight.is_empty() {
                match wake {
                    _ if stopping || !sched.has_pending() => break,
                    None => break,
                    Some(at) if at >= send_by => {
                        stop.get_or_insert(StopReason::Deadline);
                        break;
                    }
                    Some(at) => {
                        tokio::time::sleep_until(at).await;
                        continue;
                    }
                }
            }
            let done = match wake {
                Some(at) if !stopping => tokio::select! {
                    done = in_flight.next() => done,
                    _ = tokio::time::sleep_until(at.min(send_by)) => None,
                },
                _ => in_flight.next().await,
            };
            let Some(parts) = done else {
                continue;
            };
            for (entries, result) in parts {
                let outcome = self.settle(
                    Progress {
                        records,
                        target: &target,
                        sched: &mut sched,
                        state: &mut state,
                        ambiguous: &mut ambiguous,
                        report: &mut report,
                    },
                    &shard_limits,
                    entries,
                    result,
                );
                for (i, item, slot, code, message) in outcome.dead_letters {
                    let reason = format!("the target refused the record ({code}: {message})");
                    let why = Refusal {
                        code: "TargetRejected",
                        reason,
                        attempts: 1,
                    };
                    match self.dead_letter(route, batch, i, why, send_by).await {
                        Ok(location) => {
                            state[i] = State::DeadLettered;
                            report.dead_letter_locations.push(location);
                            sched.pop(slot, item);
                        }
                        Err(message) => {
                            if i < limit {
                                limit = i;
                                stop = Some(StopReason::DeadLetterFailed { message });
                            }
                        }
                    }
                }
                if let Some((i, code, message)) = outcome.systemic {
                    if i < limit {
                        limit = i;
                        stop = Some(StopReason::Systemic { code, message });
                    }
                }
            }
            sched.truncate_at(limit);
        }

        // 4. Checkpoint the contiguous handled prefix and report the first unhandled record.
        let end = (start..records.len())
            .find(|&i| matches!(state[i], State::Pending))
            .unwrap_or(records.len());
        report.dead_lettered = report.dead_letter_locations.len();
        // Written past the first unhandled record: skipped by the retry if the checkpoint
        // below stores them, written again (possible duplicates) if not.
        let mut written_beyond = 0;
        let mut beyond: Option<HandledBeyond> = None;
        if end < records.len() {
            report.first_unhandled = Some(records[end].seq.clone());
            written_beyond = state[end..]
                .iter()
                .filter(|s| matches!(s, State::Written { .. }))
                .count();
            let flags: Vec<(bool, &SequenceNumber)> = (end..records.len())
                .map(|i| (!matches!(state[i], State::Pending), &records[i].seq))
                .collect();
            beyond = HandledBeyond::from_flags(&records[end].seq, &flags);
            // Records whose write may have landed (a timeout, a server error) and that the
            // retry sends again.
            report.possible_duplicates += (end..records.len())
                .filter(|&i| matches!(state[i], State::Pending))
                .map(|i| ambiguous[i] as usize)
                .sum::<usize>();
            report.stop = stop.or(Some(StopReason::Deadline));
        }
        if end > start || beyond.is_some() {
            let prefix = &state[start..end];
            let last_target = prefix.iter().rev().find_map(|s| match s {
                State::Written { shard_id, seq } => Some((shard_id.clone(), seq.clone())),
                _ => None,
            });
            let advance = CheckpointAdvance {
                route: route.name.clone(),
                shard_id: batch.shard_id.clone(),
                source_arn: batch.source.to_string(),
                target_arn: route.target.to_string(),
                // With no new prefix, the stored one (or, on a shard's first batch, a position
                // before every record) is written again with what was handled past it.
                last_seq: match end.checked_sub(1) {
                    Some(last) => records[last].seq.clone(),
                    None => loaded_last.clone().unwrap_or_else(|| {
                        SequenceNumber::parse("0").expect("0 is a sequence number")
                    }),
                },
                last_target,
                written: prefix
                    .iter()
                    .filter(|s| matches!(s, State::Written { .. }))
                    .count() as u64,
                dead_lettered: prefix
                    .iter()
                    .filter(|s| matches!(s, State::DeadLettered))
                    .count() as u64,
                now_ms: chrono::Utc::now().timestamp_millis(),
                beyond: beyond.clone(),
            };
            // The heartbeat goes with the checkpoint, at once: one round trip of waiting.
            let heartbeat = self.heartbeat(route, batch, end, deadline);
            let (advanced, ()) = tokio::join!(
                within(deadline, self.checkpoints.advance(&advance)),
                heartbeat
            );
            match advanced {
                Ok(AdvanceOutcome::Moved) => {}
                Ok(AdvanceOutcome::AlreadyFurther) => {
                    report.possible_duplicates += written_beyond;
                    tracing::warn!(
                        route = %route.name,
                        shard = %batch.shard_id,
                        sequence_number = %advance.last_seq,
                        "Checkpoint was already further than this batch; another invocation handled the same records."
                    )
                }
                Err(e) => {
                    report.possible_duplicates += written_beyond;
                    tracing::warn!(
                        route = %route.name,
                        shard = %batch.shard_id,
                        error = %e,
                        "Could not write the checkpoint. Records are replicated; if this batch is retried they will be sent again."
                    );
                    report.checkpoint_error = Some(e.to_string());
                }
            }
        } else {
            self.heartbeat(route, batch, end, deadline).await;
        }
        if report.repairs > 0 {
            tracing::warn!(
                route = %route.name,
                shard = %batch.shard_id,
                repairs = report.repairs,
                "Wrote {} records a second time after an earlier record of their key failed (runs mode): \
                 the last copy of every record is in order, the first may not be.",
                report.repairs
            );
        }
        if let Some(stop) = &report.stop {
            log_stop(route, batch, &report, stop);
        }
        report
    }

    async fn stopped_before_start(
        &self,
        route: &Route,
        batch: &SourceBatch,
        mut report: RouteReport,
        at: usize,
        stop: StopReason,
        until: Instant,
    ) -> RouteReport {
        self.heartbeat(route, batch, at, until).await;
        report.first_unhandled = Some(batch.records[at].seq.clone());
        log_stop(route, batch, &report, &stop);
        report.stop = Some(stop);
        report
    }

    /// Writes the route's shard heartbeat: `handled` records of the batch are handled (skipped,
    /// written or dead-lettered). A failure is a warning, never a failed batch.
    async fn heartbeat(&self, route: &Route, batch: &SourceBatch, handled: usize, until: Instant) {
        let key = (route.name.clone(), batch.shard_id.clone());
        let recent = lock(&self.heartbeats)
            .get(&key)
            .is_some_and(|(at, mode)| *mode == Mode::Forward && at.elapsed() < HEARTBEAT_EVERY);
        if recent {
            return;
        }
        let done = &batch.records[..handled.min(batch.records.len())];
        let hb = ShardHeartbeat {
            route: route.name.clone(),
            shard_id: batch.shard_id.clone(),
            last_seq: done.last().map(|r| r.seq.clone()),
            millis_behind: None,
            newest_arrival_ms: done.iter().filter_map(|r| r.arrival_ms).max(),
            records: batch.records.len() as u64,
            mode: Mode::Forward,
            by: self.heartbeat_by.clone(),
            now_ms: chrono::Utc::now().timestamp_millis(),
        };
        let budget = until
            .saturating_duration_since(Instant::now())
            .min(HEARTBEAT_TIMEOUT);
        match tokio::time::timeout(budget, self.checkpoints.heartbeat(&hb)).await {
            Ok(Ok(())) => {
                lock(&self.heartbeats).insert(key, (Instant::now(), Mode::Forward));
            }
            Ok(Err(e)) => {
                tracing::warn!(route = %route.name, shard = %batch.shard_id, error = %e, "Heartbeat not written.")
            }
            Err(_) => {
                tracing::debug!(route = %route.name, shard = %batch.shard_id, "Heartbeat not written: no answer within {} ms.", budget.as_millis())
            }
        }
    }

    async fn dead_letter(
        &self,
        route: &Route,
        batch: &SourceBatch,
        index: usize,
        why: Refusal<'_>,
        send_by: Instant,
    ) -> Result<String, String> {
        let Refusal {
            code,
            reason,
            attempts,
        } = why;
        let record = &batch.records[index];
        let letter = DeadLetter {
            route: &route.name,
            source_arn: batch.source.as_str(),
            target_arn: route.target.as_str(),
            shard_id: &batch.shard_id,
            record,
            reason: reason.clone(),
            error_code: code.to_owned(),
            attempts,
        };
        match within(send_by, self.dead_letters.store(&letter)).await {
            Ok(location) => {
                tracing::warn!(
                    route = %route.name,
                    shard = %batch.shard_id,
                    sequence_number = %record.seq,
                    error_code = code,
                    dead_letter = %location,
                    "Record dead-lettered: {reason}."
                );
                Ok(location)
            }
            Err(e) => Err(format!(
                "could not store the dead letter of record {} ({code}): {e}",
                record.seq
            )),
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

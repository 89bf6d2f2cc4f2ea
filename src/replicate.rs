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
use std::sync::Mutex;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use tokio::time::Instant;

use crate::config::Limits;
use crate::model::{
    AdvanceOutcome, CheckpointAdvance, DeadLetter, EntryResult, FailureClass, RequestError, Route,
    SourceBatch, StoreError, TargetInfo,
};
use crate::plan::{self, KeyQueues};
use crate::ports::{CheckpointStore, DeadLetterStore, OutEntry, TargetWriter};
use crate::seq::SequenceNumber;

/// How long a target's `DescribeStreamSummary` answer is trusted.
const TARGET_INFO_TTL: Duration = Duration::from_secs(300);

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
    /// Records that may now be in the target twice: re-sent after an ambiguous write, or
    /// written past the first unhandled record (the event source mapping will send them again).
    pub possible_duplicates: usize,
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
}

/// Replicates batches to every route whose source they come from.
pub struct Replicator<W, C, D> {
    writer: W,
    checkpoints: C,
    dead_letters: D,
    routes: Vec<Route>,
    limits: Limits,
    target_info: Mutex<HashMap<String, (TargetInfo, Instant)>>,
}

/// The record indices of one PutRecords request and what came back.
type SentRequest = (Vec<usize>, Result<Vec<EntryResult>, RequestError>);

#[derive(Clone, Debug)]
enum State {
    Pending,
    Written { shard_id: String, seq: String },
    DeadLettered,
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
        }
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
        }
    }

    async fn target_info(&self, route: &Route) -> Result<TargetInfo, RequestError> {
        if let Ok(cache) = self.target_info.lock() {
            if let Some((info, at)) = cache.get(&route.name) {
                if at.elapsed() < TARGET_INFO_TTL {
                    return Ok(*info);
                }
            }
        }
        let info = self.writer.target_info(route).await?;
        if let Ok(mut cache) = self.target_info.lock() {
            cache.insert(route.name.clone(), (info, Instant::now()));
        }
        Ok(info)
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

        // 1. Skip what an earlier invocation already handled.
        let start = match within(send_by, self.checkpoints.load(&route.name, &batch.shard_id)).await
        {
            Ok(Some(cp)) => records
                .iter()
                .position(|r| r.seq > cp.last_seq)
                .unwrap_or(records.len()),
            Ok(None) => 0,
            Err(e) => {
                let stop = StopReason::CheckpointUnreadable {
                    message: e.to_string(),
                };
                return self.stopped_before_start(route, batch, report, 0, stop);
            }
        };
        report.skipped = start;
        if start == records.len() {
            return report;
        }

        let info = match tokio::time::timeout_at(send_by, self.target_info(route))
            .await
            .unwrap_or_else(|_| {
                Err(RequestError {
                    class: FailureClass::Systemic,
                    ambiguous: false,
                    code: "Timeout".to_owned(),
                    message: format!(
                        "DescribeStreamSummary on {} did not answer in time",
                        route.target
                    ),
                })
            }) {
            Ok(info) => info,
            Err(e) => {
                let stop = StopReason::Systemic {
                    code: e.code.clone(),
                    message: e.message.clone(),
                };
                return self.stopped_before_start(route, batch, report, start, stop);
            }
        };
        let max_record_bytes = self
            .limits
            .max_record_bytes_override
            .unwrap_or(info.max_record_bytes)
            .min(self.limits.max_request_bytes);

        let mut state: Vec<State> = vec![State::Pending; records.len()];
        // Records at or after `limit` are left for the retry (a systemic stop happened there).
        let mut limit = records.len();
        let mut stop: Option<StopReason> = None;

        // 2. Dead-letter what can never be written, in order; stop at the first that cannot be stored.
        let defects: Vec<(usize, String, String)> = (start..records.len())
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

        // 3. Write the rest in rounds of per-key heads.
        let mut queues = KeyQueues::new(
            (start..limit)
                .filter(|&i| matches!(state[i], State::Pending))
                .map(|i| (i, records[i].partition_key.as_deref().unwrap_or_default())),
        );
        let mut ambiguous = vec![false; records.len()];
        let mut attempt: u32 = 0;
        while !queues.is_empty() {
            let heads = queues.heads();
            let items: Vec<(usize, usize)> = heads
                .iter()
                .map(|&i| (i, plan::record_bytes(&records[i])))
                .collect();
            let requests = plan::pack_requests(
                &items,
                self.limits.max_request_entries,
                self.limits.max_request_bytes,
            );
            let now = Instant::now();
            if now >= send_by {
                stop = Some(StopReason::Deadline);
                break;
            }
            let timeout = self.limits.request_timeout.min(send_by - now);
            report.requests += requests.len();
            let results: Vec<SentRequest> = stream::iter(requests)
                .map(|indices| async move {
                    let entries: Vec<OutEntry<'_>> = indices
                        .iter()
                        .map(|&i| OutEntry {
                            partition_key: records[i].partition_key.as_deref().unwrap_or_default(),
                            data: &records[i].data,
                        })
                        .collect();
                    let result = match tokio::time::timeout(
                        timeout,
                        self.writer.put_records(route, &entries),
                    )
                    .await
                    {
                        Ok(r) => r,
                        Err(_) => Err(RequestError {
                            class: FailureClass::Transient,
                            ambiguous: true,
                            code: "Timeout".to_owned(),
                            message: format!("PutRecords did not answer within {timeout:?}"),
                        }),
                    };
                    (indices, result)
                })
                .buffer_unordered(self.limits.max_concurrent_requests)
                .collect()
                .await;

            let mut failed_this_round = false;
            let mut systemic_at: Option<(usize, String, String)> = None;
            let mut note_systemic = |i: usize, code: &str, message: &str| {
                if systemic_at.as_ref().is_none_or(|(j, _, _)| i < *j) {
                    systemic_at = Some((i, code.to_owned(), message.to_owned()));
                }
            };
            let mut late_dead_letters: Vec<(usize, String, String)> = Vec::new();
            for (indices, result) in results {
                match result {
                    Ok(entry_results) if entry_results.len() == indices.len() => {
                        for (&i, entry) in indices.iter().zip(entry_results) {
                            match entry {
                                EntryResult::Written { shard_id, seq } => {
                                    report.written += 1;
                                    report.bytes_written += records[i].data.len() as u64;
                                    if ambiguous[i] {
                                        report.possible_duplicates += 1;
                                    }
                                    state[i] = State::Written { shard_id, seq };
                                    queues.pop(i);
                                }
                                EntryResult::Failed {
                                    code,
                                    message,
                                    class,
                                } => match class {
                                    FailureClass::Transient => {
                                        failed_this_round = true;
                                        *report.retries.entry(code).or_default() += 1;
                                    }
                                    FailureClass::Permanent => {
                                        late_dead_letters.push((i, code, message))
                                    }
                                    FailureClass::Systemic => note_systemic(i, &code, &message),
                                },
                            }
                        }
                    }
                    Ok(entry_results) => {
                        let message = format!(
                            "PutRecords answered {} results for {} entries",
                            entry_results.len(),
                            indices.len()
                        );
                        note_systemic(indices[0], "MalformedResponse", &message);
                    }
                    Err(e) => match e.class {
                        FailureClass::Transient | FailureClass::Permanent => {
                            failed_this_round = true;
                            *report.retries.entry(e.code.clone()).or_default() +=
                                indices.len() as u64;
                            if e.ambiguous {
                                for &i in &indices {
                                    ambiguous[i] = true;
                                }
                            }
                        }
                        FailureClass::Systemic => note_systemic(indices[0], &e.code, &e.message),
                    },
                }
            }
            for (i, code, message) in late_dead_letters {
                let reason = format!("the target refused the record ({code}: {message})");
                match self
                    .dead_letter(
                        route,
                        batch,
                        i,
                        Refusal {
                            code: "TargetRejected",
                            reason,
                            attempts: attempt + 1,
                        },
                        send_by,
                    )
                    .await
                {
                    Ok(location) => {
                        state[i] = State::DeadLettered;
                        report.dead_letter_locations.push(location);
                        queues.pop(i);
                    }
                    Err(message) => {
                        if i < limit {
                            limit = i;
                            stop = Some(StopReason::DeadLetterFailed { message });
                        }
                    }
                }
            }
            if let Some((i, code, message)) = systemic_at {
                if i < limit {
                    limit = i;
                    stop = Some(StopReason::Systemic { code, message });
                }
            }
            queues.truncate_at(limit);
            if queues.is_empty() {
                break;
            }
            if failed_this_round {
                attempt += 1;
                let pause = plan::backoff(
                    attempt,
                    self.limits.backoff_base,
                    self.limits.backoff_max,
                    rand::random::<f64>(),
                );
                if Instant::now() + pause >= send_by {
                    stop = Some(StopReason::Deadline);
                    break;
                }
                tokio::time::sleep(pause).await;
            } else {
                attempt = 0;
            }
        }

        // 4. Checkpoint the contiguous handled prefix and report the first unhandled record.
        let end = (start..records.len())
            .find(|&i| matches!(state[i], State::Pending))
            .unwrap_or(records.len());
        report.dead_lettered = report.dead_letter_locations.len();
        if end < records.len() {
            report.first_unhandled = Some(records[end].seq.clone());
            report.possible_duplicates += state[end..]
                .iter()
                .filter(|s| matches!(s, State::Written { .. }))
                .count();
            report.stop = stop.or(Some(StopReason::Deadline));
        }
        if end > start {
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
                last_seq: records[end - 1].seq.clone(),
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
            };
            match within(deadline, self.checkpoints.advance(&advance)).await {
                Ok(AdvanceOutcome::Moved) => {}
                Ok(AdvanceOutcome::AlreadyFurther) => tracing::warn!(
                    route = %route.name,
                    shard = %batch.shard_id,
                    sequence_number = %advance.last_seq,
                    "Checkpoint was already further than this batch; another invocation handled the same records."
                ),
                Err(e) => {
                    tracing::warn!(
                        route = %route.name,
                        shard = %batch.shard_id,
                        error = %e,
                        "Could not write the checkpoint. Records are replicated; if this batch is retried they will be sent again."
                    );
                    report.checkpoint_error = Some(e.to_string());
                }
            }
        }
        if let Some(stop) = &report.stop {
            log_stop(route, batch, &report, stop);
        }
        report
    }

    fn stopped_before_start(
        &self,
        route: &Route,
        batch: &SourceBatch,
        mut report: RouteReport,
        at: usize,
        stop: StopReason,
    ) -> RouteReport {
        report.first_unhandled = Some(batch.records[at].seq.clone());
        log_stop(route, batch, &report, &stop);
        report.stop = Some(stop);
        report
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

/// What an operator should do about a systemic error code.
pub fn fix_for(code: &str, route: &Route) -> String {
    let role = route
        .writer_role
        .as_ref()
        .map(|r| r.role_arn.as_str())
        .unwrap_or("the function's own role");
    match code {
        "ResourceNotFoundException" => format!(
            "Create the target stream {} in account {}, or fix the route in FANOUT_ROUTES.",
            route.target,
            route.target.account()
        ),
        "AccessDeniedException" | "AccessDenied" | "UnauthorizedOperation" => format!(
            "Grant {role} kinesis:PutRecords and kinesis:DescribeStreamSummary on {}, and check that it trusts this function (and the external id).",
            route.target
        ),
        "ExpiredTokenException" | "ExpiredToken" | "RequestExpired" => format!(
            "The credentials for {role} expired and could not be renewed; check that this function may sts:AssumeRole it."
        ),
        c if c.starts_with("KMS") => format!(
            "The KMS key of {} cannot be used ({c}); check the key's state and that {role} may use it.",
            route.target
        ),
        "CredentialsUnavailable" | "AssumeRoleFailed" => format!(
            "Could not get credentials for {role}; check its trust policy, the external id and sts:AssumeRole permission."
        ),
        _ => "Check the target stream and the writer role, then let the shard retry.".to_owned(),
    }
}

#[cfg(test)]
mod tests;

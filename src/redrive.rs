//! Redrive: replays a route's dead letters into its target through the write path, in sequence
//! order, and removes (or marks) each one only once its record is confirmed written.
//!
//! Per route, dead letters are grouped by source shard; shards go parents before children
//! (lineage from `ListShards`, shard-id order if the source cannot be listed) and each shard's
//! letters in sequence order, in chunks of `batch_size`. Each chunk is one [`SourceBatch`]
//! handed to [`Replicator::replicate`] with:
//! - the real [`TargetWriter`], wrapped to note where each record landed;
//! - a checkpoint store that never skips and never stores: the route's real checkpoint is
//!   already past these records and must not move;
//! - a dead-letter store that only notes which records failed permanently again (their
//!   existing dead letter stays where it is).
//!
//! So redrive keeps per-key order exactly as replication does: a later letter of a key is never
//! sent before an earlier one is written. A letter is removed (or, with `keep`, marked with a
//! `<key>.redriven` object) only after the target answered that its record was written
//! (DESIGN.md §2.1). A systemic error (target missing, access denied) stops that shard and
//! leaves everything not yet written in place; other shards go on.
//!
//! The storage and lineage sides are the ports [`DeadLetterArchive`] and [`ShardLister`],
//! implemented over S3 and Kinesis in `aws/`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use futures::stream::{self, StreamExt};
use serde::Serialize;
use tokio::time::Instant;
use tracing::instrument::WithSubscriber;
use tracing::Instrument;

use crate::config::Limits;
use crate::lock;
use crate::model::{
    AdvanceOutcome, Checkpoint, CheckpointAdvance, DeadLetter, EntryResult, Envelope, RequestError,
    Route, ShardInfo, SourceBatch, SourceRecord, StoreError, StreamArn, TargetInfo,
};
use crate::ports::{CheckpointStore, DeadLetterStore, OutEntry, TargetWriter};
use crate::progress::{Progress, ShardProgress};
use crate::replicate::{fix_for, Replicator, StopReason};
use crate::seq::SequenceNumber;

/// Dead letters replayed per write batch by default (one PutRecords worth).
pub const DEFAULT_BATCH_SIZE: usize = 500;
/// Suffix of the marker object written beside a dead letter kept with `keep`.
pub const MARKER_SUFFIX: &str = ".redriven";
/// Objects read or removed at once.
const CONCURRENCY: usize = 16;
/// Most stored bytes read into one batch: dead letters are often the largest records (up to
/// 10 MiB each), so a count alone would not bound memory.
pub const MAX_CHUNK_BYTES: u64 = 32 * 1024 * 1024;

// ---------------------------------------------------------------------------------------------
// Ports

/// One dead letter found in the archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LetterRef {
    /// Object key (`<prefix>/<route>/<shard>/<padded seq>.json`).
    pub key: String,
    pub shard_id: String,
    /// The 64-digit padded sequence number from the key (sorts like the number).
    pub padded_seq: String,
    /// Size of the stored envelope in bytes (0 if unknown), to bound what is read at once.
    pub size: u64,
    /// A marker says an earlier `keep` run already replayed it.
    pub marked: bool,
}

/// What a marker records about a replayed dead letter.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Marker {
    pub redriven_at: String,
    pub route: String,
    pub source_sequence_number: String,
    pub target_stream_arn: String,
    /// Where the record landed, when the target said so.
    pub target_shard_id: Option<String>,
    pub target_sequence_number: Option<String>,
}

/// Where dead letters are kept, as redrive needs it.
pub trait DeadLetterArchive: Send + Sync {
    /// Every dead letter of `route`, in shard then sequence order.
    fn letters(
        &self,
        route: &str,
    ) -> impl Future<Output = Result<Vec<LetterRef>, StoreError>> + Send;

    /// Reads one envelope; code `CorruptDeadLetter` when it is there but cannot be parsed.
    fn read(&self, key: &str) -> impl Future<Output = Result<Envelope, StoreError>> + Send;

    /// Deletes a replayed dead letter.
    fn remove(&self, key: &str) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Writes the marker of a replayed dead letter beside it.
    fn mark(
        &self,
        key: &str,
        marker: &Marker,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Where a key is, for people (`s3://bucket/key`).
    fn location(&self, key: &str) -> String;
}

/// Lists a source stream's shards with their parents.
pub trait ShardLister: Send + Sync {
    fn list_shards(
        &self,
        stream: &StreamArn,
    ) -> impl Future<Output = Result<Vec<ShardInfo>, RequestError>> + Send;
}

// ---------------------------------------------------------------------------------------------
// Options and outcome

/// How to redrive.
#[derive(Clone, Debug)]
pub struct RedriveOptions {
    /// Only this source shard.
    pub shard: Option<String>,
    /// List what would be replayed; write, remove and mark nothing.
    pub dry_run: bool,
    /// Keep replayed dead letters and write a marker beside each instead of deleting them.
    pub keep: bool,
    /// Dead letters per write batch.
    pub batch_size: usize,
    /// Time one batch may take, retries included, before it is tried again.
    pub attempt_timeout: Duration,
    /// Attempts in a row that write nothing (the target keeps refusing) before a shard stops.
    pub max_stalled_attempts: u32,
}

impl Default for RedriveOptions {
    fn default() -> Self {
        RedriveOptions {
            shard: None,
            dry_run: false,
            keep: false,
            batch_size: DEFAULT_BATCH_SIZE,
            attempt_timeout: Duration::from_secs(120),
            max_stalled_attempts: 3,
        }
    }
}

/// A dead letter redrive could not replay, with what to do about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeftBehind {
    pub route: String,
    pub shard_id: String,
    pub sequence_number: String,
    pub location: String,
    pub error_code: String,
    pub reason: String,
    pub action: String,
}

/// What happened to one source shard's dead letters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ShardOutcome {
    pub shard_id: String,
    /// Dead letters found that no earlier run replayed.
    pub pending: usize,
    /// Dead letters found with a marker from an earlier `keep` run (not replayed again).
    pub already_redriven: usize,
    pub first_sequence_number: Option<String>,
    pub last_sequence_number: Option<String>,
    /// Why the pending letters were dead-lettered, by error code.
    pub reasons: BTreeMap<String, usize>,
    /// Records confirmed written to the target.
    pub replayed: usize,
    /// Replayed dead letters deleted.
    pub removed: usize,
    /// Replayed dead letters kept with a marker.
    pub marked: usize,
    /// Written to the target, but the dead letter could not be removed or marked: a later run
    /// would write it again.
    pub not_cleaned_up: Vec<LeftBehind>,
    /// Failed permanently again; left in place.
    pub still_failing: Vec<LeftBehind>,
    /// Cannot be replayed as stored (no partition key, unreadable original event, corrupt).
    pub cannot_redrive: Vec<LeftBehind>,
    /// Left in place untried because the shard stopped.
    pub not_attempted: usize,
    /// Replayed records that may be in the target twice (a write timed out after landing).
    pub possible_duplicates: usize,
    /// Why the shard stopped early, with the fix.
    pub stopped: Option<String>,
}

impl ShardOutcome {
    /// Dead letters still in place that need a person (not counting markers from `keep`).
    pub fn left_in_place(&self) -> usize {
        self.still_failing.len() + self.cannot_redrive.len() + self.not_attempted
    }
}

/// What happened to one route.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RouteOutcome {
    pub route: String,
    pub source: String,
    pub target: String,
    /// Set when shards could not be put in lineage order.
    pub lineage_warning: Option<String>,
    /// The route could not be redriven at all (its dead letters could not be listed).
    pub error: Option<String>,
    pub shards: Vec<ShardOutcome>,
}

/// What a whole run did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub dry_run: bool,
    pub keep: bool,
    pub routes: Vec<RouteOutcome>,
}

impl Summary {
    fn shards(&self) -> impl Iterator<Item = &ShardOutcome> {
        self.routes.iter().flat_map(|r| &r.shards)
    }

    pub fn replayed(&self) -> usize {
        self.shards().map(|s| s.replayed).sum()
    }

    /// Every dead letter left for a person, in order.
    pub fn left_behind(&self) -> Vec<&LeftBehind> {
        self.shards()
            .flat_map(|s| s.still_failing.iter().chain(&s.cannot_redrive))
            .collect()
    }

    /// 0: everything replayed (or, for a dry run, listed); 1: some dead letters stay in place
    /// for a person; 2: an error stopped a route or a shard (fix it and run again).
    pub fn exit_code(&self) -> u8 {
        let errors = self.routes.iter().any(|r| r.error.is_some())
            || self
                .shards()
                .any(|s| s.stopped.is_some() || !s.not_cleaned_up.is_empty());
        if errors {
            2
        } else if !self.dry_run && self.shards().any(|s| s.left_in_place() > 0) {
            1
        } else {
            0
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Pure parts

/// Splits a route's listing ((key, size) under `<prefix>/<route>/`) into dead letters, each
/// with its marker state, in shard then sequence order. Returns the keys that are neither a
/// dead letter nor a marker as the second value.
pub fn parse_listing(
    route_prefix: &str,
    objects: &[(String, u64)],
) -> (Vec<LetterRef>, Vec<String>) {
    let mut letters: Vec<LetterRef> = Vec::new();
    let mut markers: BTreeSet<(String, String)> = BTreeSet::new();
    let mut unknown = Vec::new();
    for (key, size) in objects {
        let parsed = key.strip_prefix(route_prefix).and_then(|rel| {
            let (shard, file) = rel.split_once('/')?;
            if shard.is_empty() || file.contains('/') {
                return None;
            }
            let (seq, marker) = match file.strip_suffix(MARKER_SUFFIX) {
                Some(f) => (f.strip_suffix(".json")?, true),
                None => (file.strip_suffix(".json")?, false),
            };
            (!seq.is_empty() && seq.bytes().all(|b| b.is_ascii_digit()))
                .then(|| (shard.to_owned(), seq.to_owned(), marker))
        });
        match parsed {
            Some((shard, seq, true)) => {
                markers.insert((shard, seq));
            }
            Some((shard_id, padded_seq, false)) => letters.push(LetterRef {
                key: key.clone(),
                shard_id,
                padded_seq,
                size: *size,
                marked: false,
            }),
            None => unknown.push(key.clone()),
        }
    }
    for l in &mut letters {
        l.marked = markers.contains(&(l.shard_id.clone(), l.padded_seq.clone()));
    }
    letters.sort_by(|a, b| (&a.shard_id, &a.padded_seq).cmp(&(&b.shard_id, &b.padded_seq)));
    (letters, unknown)
}

/// Orders `shards` parents before children, using the stream's lineage; ties go in shard-id
/// order, which is creation order.
///
/// Unlike [`crate::lineage::levels`] (which orders a listing), this also places shards
/// the listing does not show: a parent trimmed away by retention whose dead letters are still
/// in the bucket, or a child ListShards does not show yet. Such a shard is taken when it is
/// the smallest ready id, so it lands where its creation order puts it: before the children
/// that name it as a parent, and after the shards created before it.
pub fn lineage_order(shards: &[String], listing: &[ShardInfo]) -> Vec<String> {
    let mut nodes: BTreeSet<&str> = shards.iter().map(String::as_str).collect();
    nodes.extend(listing.iter().map(|s| s.shard_id.as_str()));
    let mut parents: HashMap<&str, Vec<&str>> = HashMap::new();
    for s in listing {
        for p in [&s.parent, &s.adjacent_parent].into_iter().flatten() {
            nodes.insert(p.as_str());
            parents
                .entry(s.shard_id.as_str())
                .or_default()
                .push(p.as_str());
        }
    }
    // Kahn's algorithm, always taking the smallest ready shard id: deterministic.
    let mut waiting: HashMap<&str, usize> = nodes
        .iter()
        .map(|&n| (n, parents.get(n).map_or(0, Vec::len)))
        .collect();
    let mut children: HashMap<&str, Vec<&str>> = HashMap::new();
    for (&child, ps) in &parents {
        for &p in ps {
            children.entry(p).or_default().push(child);
        }
    }
    let mut ready: BTreeSet<&str> = waiting
        .iter()
        .filter(|(_, &n)| n == 0)
        .map(|(&s, _)| s)
        .collect();
    let mut order = Vec::with_capacity(nodes.len());
    while let Some(next) = ready.pop_first() {
        order.push(next);
        for &c in children.get(next).into_iter().flatten() {
            if let Some(n) = waiting.get_mut(c) {
                *n -= 1;
                if *n == 0 {
                    ready.insert(c);
                }
            }
        }
    }
    // A cycle cannot come from Kinesis; if a listing had one, keep its shards rather than drop them.
    let placed: BTreeSet<&str> = order.iter().copied().collect();
    order.extend(nodes.iter().filter(|n| !placed.contains(*n)));
    let wanted: BTreeSet<&str> = shards.iter().map(String::as_str).collect();
    order
        .into_iter()
        .filter(|s| wanted.contains(s))
        .map(str::to_owned)
        .collect()
}

/// Cuts letters into consecutive batches of at most `max_count` letters and, unless a single
/// letter is larger, at most `max_bytes` stored bytes.
pub fn chunk_letters<'l>(
    letters: &[&'l LetterRef],
    max_count: usize,
    max_bytes: u64,
) -> Vec<Vec<&'l LetterRef>> {
    let mut chunks: Vec<Vec<&LetterRef>> = Vec::new();
    let mut bytes = 0u64;
    for &l in letters {
        match chunks.last_mut() {
            Some(c) if c.len() < max_count.max(1) && bytes + l.size <= max_bytes => {
                bytes += l.size;
                c.push(l);
            }
            _ => {
                bytes = l.size;
                chunks.push(vec![l]);
            }
        }
    }
    chunks
}

/// Why a dead letter cannot be replayed as stored: (error code, reason).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unredrivable {
    pub code: String,
    pub reason: String,
}

/// Rebuilds the source record a dead letter holds, or says why it cannot be replayed as-is.
pub fn to_record(envelope: &Envelope, letter: &LetterRef) -> Result<SourceRecord, Unredrivable> {
    let corrupt = |why: String| Unredrivable {
        code: "CorruptDeadLetter".to_owned(),
        reason: why,
    };
    let seq = SequenceNumber::parse(&envelope.sequence_number)
        .map_err(|e| corrupt(format!("the envelope's sequence number is unusable ({e})")))?;
    if seq.to_padded() != letter.padded_seq {
        return Err(corrupt(format!(
            "the envelope holds record {seq} but its key names {}",
            letter.padded_seq.trim_start_matches('0')
        )));
    }
    if envelope.error_code == "MalformedRecord" {
        return Err(Unredrivable {
            code: "MalformedRecord".to_owned(),
            reason: "the original event record could not be read, so the stored data is the raw \
                     event JSON, not the record"
                .to_owned(),
        });
    }
    let partition_key = match envelope.partition_key.as_deref() {
        Some(k) if !k.is_empty() => k.to_owned(),
        _ => {
            return Err(Unredrivable {
                code: "MissingPartitionKey".to_owned(),
                reason: "the record has no partition key, and Kinesis needs one to write it"
                    .to_owned(),
            })
        }
    };
    let data = base64::engine::general_purpose::STANDARD
        .decode(&envelope.data_base64)
        .map_err(|e| corrupt(format!("its data is not valid base64 ({e})")))?;
    Ok(SourceRecord {
        seq,
        partition_key: Some(partition_key),
        data,
        arrival_ms: envelope
            .approximate_arrival_timestamp
            .as_deref()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_millis()),
        defect: None,
    })
}

/// What an on-call engineer should do about a dead letter left in place.
pub fn action_for(code: &str, location: &str, target: &StreamArn) -> String {
    match code {
        "RecordTooLarge" => format!(
            "Raise the record size limit of {target} (MaxRecordSizeInKiB), then run fanoutctl redrive \
             again; or write a smaller version of the record by hand and delete {location}."
        ),
        "PartitionKeyTooLong" => format!(
            "Write the record by hand with a partition key of at most 256 characters, then delete {location}."
        ),
        "MissingPartitionKey" => format!(
            "Write the record to {target} by hand with the partition key its producer meant \
             (aws kinesis put-record --stream-arn {target} --partition-key KEY --data ...), then delete {location}."
        ),
        "MalformedRecord" => format!(
            "Recover the record from the raw event JSON in {location} (field data_base64), write it \
             to {target} by hand, then delete the dead letter."
        ),
        "CorruptDeadLetter" => format!(
            "Inspect it (aws s3 cp {location} -); if the record can be recovered, write it to {target} by hand, then delete it."
        ),
        _ => format!(
            "Fix what the reason says about {target}, then run fanoutctl redrive again; \
             the dead letter stays at {location} until then."
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// The replicator's collaborators during a redrive

/// Where each written record landed, keyed by the address of its partition key. The write
/// path hands the writer borrowed slices of the batch's own records, so the address names the
/// record exactly; a record not found here is still known to be written from the report.
type Landed = Arc<Mutex<HashMap<usize, (String, String)>>>;

/// The real writer, noting where each record landed.
struct Recording<'a, W> {
    inner: &'a W,
    landed: Landed,
}

impl<W: TargetWriter> TargetWriter for Recording<'_, W> {
    async fn target_info(&self, route: &Route) -> Result<TargetInfo, RequestError> {
        self.inner.target_info(route).await
    }

    async fn target_shards(
        &self,
        route: &Route,
    ) -> Result<Vec<crate::pacing::TargetShard>, RequestError> {
        self.inner.target_shards(route).await
    }

    async fn put_records(
        &self,
        route: &Route,
        entries: &[OutEntry<'_>],
    ) -> Result<Vec<EntryResult>, RequestError> {
        let results = self.inner.put_records(route, entries).await?;
        let mut landed = lock(&self.landed);
        for (entry, result) in entries.iter().zip(&results) {
            if let EntryResult::Written { shard_id, seq } = result {
                landed.insert(
                    entry.partition_key.as_ptr() as usize,
                    (shard_id.clone(), seq.clone()),
                );
            }
        }
        Ok(results)
    }
}

/// Redrive must not move the route's checkpoint (it is past these records) nor skip anything.
struct NoCheckpoint;

impl CheckpointStore for NoCheckpoint {
    async fn load(&self, _route: &str, _shard_id: &str) -> Result<Option<Checkpoint>, StoreError> {
        Ok(None)
    }

    async fn advance(&self, _advance: &CheckpointAdvance) -> Result<AdvanceOutcome, StoreError> {
        Ok(AdvanceOutcome::Moved)
    }
}

/// Notes records that failed permanently again; their dead letter is already stored.
#[derive(Clone, Default)]
struct Refusals {
    /// Existing locations of the batch's letters, by sequence number.
    locations: Arc<Mutex<HashMap<SequenceNumber, String>>>,
    refused: Arc<Mutex<HashMap<SequenceNumber, (String, String)>>>,
}

impl DeadLetterStore for Refusals {
    async fn store(&self, letter: &DeadLetter<'_>) -> Result<String, StoreError> {
        let seq = letter.record.seq.clone();
        lock(&self.refused).insert(
            seq.clone(),
            (letter.error_code.clone(), letter.reason.clone()),
        );
        Ok(lock(&self.locations)
            .get(&seq)
            .cloned()
            .unwrap_or_else(|| "(its existing dead letter)".to_owned()))
    }
}

// ---------------------------------------------------------------------------------------------
// Orchestration

/// Redrives every route in `routes`, one after the other.
pub async fn redrive_routes<W, A, L>(
    routes: &[Route],
    limits: &Limits,
    writer: &W,
    archive: &A,
    lister: &L,
    options: &RedriveOptions,
    progress: &Progress,
) -> Summary
where
    W: TargetWriter,
    A: DeadLetterArchive,
    L: ShardLister,
{
    let mut summary = Summary {
        dry_run: options.dry_run,
        keep: options.keep,
        routes: Vec::new(),
    };
    for route in routes {
        summary
            .routes
            .push(redrive_route(route, limits, writer, archive, lister, options, progress).await);
    }
    summary
}

/// Redrives one route's dead letters (see the module documentation).
pub async fn redrive_route<W, A, L>(
    route: &Route,
    limits: &Limits,
    writer: &W,
    archive: &A,
    lister: &L,
    options: &RedriveOptions,
    progress: &Progress,
) -> RouteOutcome
where
    W: TargetWriter,
    A: DeadLetterArchive,
    L: ShardLister,
{
    let mut outcome = RouteOutcome {
        route: route.name.clone(),
        source: route.source.to_string(),
        target: route.target.to_string(),
        ..RouteOutcome::default()
    };
    let letters = match archive.letters(&route.name).await {
        Ok(l) => l,
        Err(e) => {
            outcome.error = Some(format!(
                "cannot list the dead letters of route {}: {e}. Check FANOUT_DEAD_LETTER_BUCKET \
                 and that these credentials may s3:ListBucket and s3:GetObject on it.",
                route.name
            ));
            return outcome;
        }
    };
    let mut by_shard: BTreeMap<String, Vec<LetterRef>> = BTreeMap::new();
    for l in letters {
        if options.shard.as_ref().is_none_or(|s| *s == l.shard_id) {
            by_shard.entry(l.shard_id.clone()).or_default().push(l);
        }
    }
    if by_shard.is_empty() {
        return outcome;
    }
    let ids: Vec<String> = by_shard.keys().cloned().collect();
    let order = match lister.list_shards(&route.source).await {
        Ok(listing) => lineage_order(&ids, &listing),
        Err(e) => {
            let warning = format!(
                "could not list the shards of {} ({e}); shards are replayed in shard-id order, \
                 which puts parents before children unless shard ids were reused",
                route.source
            );
            tracing::warn!(route = %route.name, source = %route.source, "Redrive: {warning}.");
            outcome.lineage_warning = Some(warning);
            ids
        }
    };

    let landed: Landed = Arc::default();
    let refusals = Refusals::default();
    let replicator = Replicator::new(
        Recording {
            inner: writer,
            landed: landed.clone(),
        },
        NoCheckpoint,
        refusals.clone(),
        // Dead letters go back one record per entry whatever the route's order mode: each
        // letter is removed only once its own record is confirmed written, and plain records
        // are what every consumer reads (deaggregating ones pass them through).
        vec![Route {
            order: crate::model::OrderMode::Strict,
            ..route.clone()
        }],
        limits.clone(),
    );
    let ctx = Ctx {
        route,
        archive,
        options,
        replicator: &replicator,
        landed,
        refusals,
    };
    for shard_id in order {
        let Some(letters) = by_shard.remove(&shard_id) else {
            continue;
        };
        let shard = if options.dry_run {
            ctx.list_shard(&shard_id, &letters).await
        } else {
            let bar = progress.shard(
                &shard_id,
                Some(letters.iter().filter(|l| !l.marked).count() as u64),
            );
            let span = tracing::info_span!("redrive", route = %route.name, shard = %shard_id);
            let shard = ctx
                .replay_shard(&shard_id, &letters, &bar)
                .instrument(span)
                .await;
            bar.finish(&shard_message(&shard, options.keep));
            shard
        };
        outcome.shards.push(shard);
    }
    outcome
}

fn shard_message(s: &ShardOutcome, keep: bool) -> String {
    let mut msg = format!(
        "{} replayed, {} {}",
        s.replayed,
        if keep { s.marked } else { s.removed },
        if keep { "marked" } else { "removed" }
    );
    if s.left_in_place() > 0 {
        msg.push_str(&format!(", {} left in place", s.left_in_place()));
    }
    if s.stopped.is_some() {
        msg.push_str(", STOPPED");
    }
    msg
}

struct Ctx<'a, W, A> {
    route: &'a Route,
    archive: &'a A,
    options: &'a RedriveOptions,
    replicator: &'a Replicator<Recording<'a, W>, NoCheckpoint, Refusals>,
    landed: Landed,
    refusals: Refusals,
}

/// A record confirmed written, and where.
struct Confirmed<'l> {
    letter: &'l LetterRef,
    seq: SequenceNumber,
    at: Option<(String, String)>,
}

impl<W: TargetWriter, A: DeadLetterArchive> Ctx<'_, W, A> {
    fn left(&self, letter: &LetterRef, seq: &str, code: &str, reason: &str) -> LeftBehind {
        let location = self.archive.location(&letter.key);
        LeftBehind {
            route: self.route.name.clone(),
            shard_id: letter.shard_id.clone(),
            sequence_number: seq.to_owned(),
            action: action_for(code, &location, &self.route.target),
            location,
            error_code: code.to_owned(),
            reason: reason.to_owned(),
        }
    }

    fn start_outcome(&self, shard_id: &str, letters: &[LetterRef]) -> ShardOutcome {
        let pending: Vec<&LetterRef> = letters.iter().filter(|l| !l.marked).collect();
        let seq = |l: Option<&&LetterRef>| {
            l.map(|l| match l.padded_seq.trim_start_matches('0') {
                "" => "0".to_owned(),
                s => s.to_owned(),
            })
        };
        ShardOutcome {
            shard_id: shard_id.to_owned(),
            pending: pending.len(),
            already_redriven: letters.len() - pending.len(),
            first_sequence_number: seq(pending.first()),
            last_sequence_number: seq(pending.last()),
            ..ShardOutcome::default()
        }
    }

    /// Reads a chunk's envelopes in order.
    async fn read_all(&self, letters: &[&LetterRef]) -> Vec<Result<Envelope, StoreError>> {
        stream::iter(letters)
            .map(|l| self.archive.read(&l.key))
            .buffered(CONCURRENCY)
            .collect()
            .await
    }

    /// Dry run: what would be replayed, and why each letter was dead-lettered.
    async fn list_shard(&self, shard_id: &str, letters: &[LetterRef]) -> ShardOutcome {
        let mut out = self.start_outcome(shard_id, letters);
        let pending: Vec<&LetterRef> = letters.iter().filter(|l| !l.marked).collect();
        for chunk in chunk_letters(&pending, self.options.batch_size, MAX_CHUNK_BYTES) {
            for (letter, read) in chunk.iter().zip(self.read_all(&chunk).await) {
                let seq = letter.padded_seq.trim_start_matches('0').to_owned();
                match read {
                    Ok(envelope) => {
                        *out.reasons.entry(envelope.error_code.clone()).or_default() += 1;
                        if let Err(u) = to_record(&envelope, letter) {
                            out.cannot_redrive
                                .push(self.left(letter, &seq, &u.code, &u.reason));
                        }
                    }
                    Err(e) => {
                        *out.reasons.entry("Unreadable".to_owned()).or_default() += 1;
                        out.cannot_redrive.push(self.left(
                            letter,
                            &seq,
                            &e.code,
                            &format!("the dead letter could not be read: {e}"),
                        ));
                    }
                }
            }
        }
        out
    }

    /// Replays one shard's letters in sequence order, chunk by chunk.
    async fn replay_shard(
        &self,
        shard_id: &str,
        letters: &[LetterRef],
        bar: &ShardProgress,
    ) -> ShardOutcome {
        let mut out = self.start_outcome(shard_id, letters);
        let pending: Vec<&LetterRef> = letters.iter().filter(|l| !l.marked).collect();
        let mut settled = 0usize;
        for chunk in chunk_letters(&pending, self.options.batch_size, MAX_CHUNK_BYTES) {
            let mut refs: Vec<&LetterRef> = Vec::with_capacity(chunk.len());
            let mut records: Vec<SourceRecord> = Vec::with_capacity(chunk.len());
            for (letter, read) in chunk.iter().zip(self.read_all(&chunk).await) {
                let seq = letter.padded_seq.trim_start_matches('0').to_owned();
                match read {
                    Ok(envelope) => {
                        *out.reasons.entry(envelope.error_code.clone()).or_default() += 1;
                        match to_record(&envelope, letter) {
                            Ok(r) => {
                                refs.push(letter);
                                records.push(r);
                            }
                            Err(u) => {
                                tracing::warn!(
                                    sequence_number = %seq,
                                    error_code = %u.code,
                                    dead_letter = %self.archive.location(&letter.key),
                                    "Dead letter cannot be redriven automatically: {}; it is left in place.",
                                    u.reason
                                );
                                out.cannot_redrive
                                    .push(self.left(letter, &seq, &u.code, &u.reason));
                                settled += 1;
                                bar.inc(1);
                            }
                        }
                    }
                    Err(e) if e.code == "CorruptDeadLetter" => {
                        out.cannot_redrive.push(self.left(
                            letter,
                            &seq,
                            &e.code,
                            &format!("the dead letter could not be parsed: {e}"),
                        ));
                        settled += 1;
                        bar.inc(1);
                    }
                    Err(e) => {
                        // Replaying later letters of this shard could overtake this one.
                        out.stopped = Some(format!(
                            "could not read {} ({e}); check the dead-letter bucket and these \
                             credentials' s3:GetObject, then run fanoutctl redrive again. Nothing \
                             after it on this shard was replayed.",
                            self.archive.location(&letter.key)
                        ));
                        break;
                    }
                }
            }
            if out.stopped.is_none() {
                settled += self
                    .replay_chunk(shard_id, refs, records, &mut out, bar)
                    .await;
            }
            if out.stopped.is_some() {
                break;
            }
        }
        out.not_attempted = pending.len() - settled;
        if let Some(why) = &out.stopped {
            tracing::error!(
                route = %self.route.name,
                shard = %shard_id,
                target = %self.route.target,
                left_in_place = out.not_attempted,
                "Redrive of shard {shard_id} stopped: {why}"
            );
        }
        out
    }

    /// Replays one chunk until every record is written or refused for good, or the shard must
    /// stop. Returns how many letters were settled (written or refused again).
    async fn replay_chunk(
        &self,
        shard_id: &str,
        mut refs: Vec<&LetterRef>,
        mut records: Vec<SourceRecord>,
        out: &mut ShardOutcome,
        bar: &ShardProgress,
    ) -> usize {
        let mut settled = 0;
        let mut stalled = 0;
        while !records.is_empty() {
            let settled_before = settled;
            *lock(&self.refusals.locations) = refs
                .iter()
                .zip(&records)
                .map(|(l, r)| (r.seq.clone(), self.archive.location(&l.key)))
                .collect();
            lock(&self.refusals.refused).clear();
            lock(&self.landed).clear();
            let batch = SourceBatch {
                source: self.route.source.clone(),
                shard_id: shard_id.to_owned(),
                records: std::mem::take(&mut records),
            };
            // The write path's own log lines speak of Lambda retries and of storing dead
            // letters, which would mislead here: redrive logs what happened itself.
            let report = self
                .replicator
                .replicate(&batch, Instant::now() + self.options.attempt_timeout)
                .with_subscriber(tracing::subscriber::NoSubscriber::default())
                .await;
            let Some(report) = report.routes.into_iter().next() else {
                out.stopped = Some(format!(
                    "route {} does not read from {}; check FANOUT_ROUTES",
                    self.route.name, self.route.source
                ));
                return settled;
            };
            out.possible_duplicates += report.possible_duplicates;
            let refused = std::mem::take(&mut *lock(&self.refusals.refused));
            let landed = std::mem::take(&mut *lock(&self.landed));
            // Everything before the first unhandled record is handled: written or refused.
            let handled_prefix = report
                .first_unhandled
                .as_ref()
                .map_or(batch.records.len(), |f| {
                    batch.records.iter().position(|r| r.seq >= *f).unwrap_or(0)
                });
            let mut confirmed: Vec<Confirmed<'_>> = Vec::new();
            let mut next_refs = Vec::new();
            for (i, (letter, record)) in refs.into_iter().zip(batch.records).enumerate() {
                let at = record
                    .partition_key
                    .as_ref()
                    .and_then(|k| landed.get(&(k.as_ptr() as usize)).cloned());
                if let Some((code, reason)) = refused.get(&record.seq) {
                    let left = self.left(letter, record.seq.as_str(), code, reason);
                    tracing::warn!(
                        sequence_number = %record.seq,
                        error_code = %code,
                        dead_letter = %left.location,
                        "Dead letter still cannot be written: {reason}. It is left in place."
                    );
                    out.still_failing.push(left);
                    settled += 1;
                } else if i < handled_prefix || at.is_some() {
                    confirmed.push(Confirmed {
                        letter,
                        seq: record.seq,
                        at,
                    });
                } else {
                    next_refs.push(letter);
                    records.push(record);
                }
            }
            refs = next_refs;
            out.replayed += confirmed.len();
            settled += confirmed.len();
            let progressed = settled > settled_before;
            self.clean_up(confirmed, out).await;
            bar.set_position(
                (out.replayed + out.still_failing.len() + out.cannot_redrive.len()) as u64,
            );
            if !out.not_cleaned_up.is_empty() {
                out.stopped =
                    Some(format!(
                    "{} replayed dead letter(s) could not be {} (see not_cleaned_up); stopped so \
                     that fewer records are written twice by the next run. Check the dead-letter \
                     bucket and these credentials' s3:DeleteObject/s3:PutObject.",
                    out.not_cleaned_up.len(),
                    if self.options.keep { "marked" } else { "removed" }
                ));
                return settled;
            }
            match report.stop {
                None if records.is_empty() => {}
                None => {
                    out.stopped = Some(format!(
                        "the write path left {} record(s) unhandled without saying why; run \
                         fanoutctl redrive again",
                        records.len()
                    ));
                    return settled;
                }
                Some(StopReason::Systemic { code, message }) => {
                    let at = report
                        .first_unhandled
                        .map(|s| s.to_string())
                        .unwrap_or_default();
                    out.stopped = Some(format!(
                        "writing to {} failed at record {at}: {code}: {message}. {} Every dead \
                         letter not yet replayed on this shard is left in place; run fanoutctl \
                         redrive again once fixed.",
                        self.route.target,
                        fix_for(&code, self.route)
                    ));
                    return settled;
                }
                Some(StopReason::Deadline) => {
                    stalled = if progressed { 0 } else { stalled + 1 };
                    if stalled >= self.options.max_stalled_attempts {
                        out.stopped = Some(format!(
                            "{} kept refusing writes for {} attempts of {:?} each (retries by \
                             error: {:?}); raise its capacity or wait, then run fanoutctl redrive \
                             again",
                            self.route.target,
                            stalled,
                            self.options.attempt_timeout,
                            report.retries
                        ));
                        return settled;
                    }
                }
                Some(other) => {
                    out.stopped = Some(format!(
                        "the write path stopped ({}); run fanoutctl redrive again",
                        other.kind()
                    ));
                    return settled;
                }
            }
        }
        settled
    }

    /// Removes (or marks) the dead letters of confirmed writes.
    async fn clean_up(&self, confirmed: Vec<Confirmed<'_>>, out: &mut ShardOutcome) {
        let keep = self.options.keep;
        let results: Vec<(Confirmed<'_>, Result<(), StoreError>)> = stream::iter(confirmed)
            .map(|c| async move {
                let result = if keep {
                    let marker = Marker {
                        redriven_at: chrono::Utc::now().to_rfc3339(),
                        route: self.route.name.clone(),
                        source_sequence_number: c.seq.to_string(),
                        target_stream_arn: self.route.target.to_string(),
                        target_shard_id: c.at.as_ref().map(|(s, _)| s.clone()),
                        target_sequence_number: c.at.as_ref().map(|(_, q)| q.clone()),
                    };
                    self.archive.mark(&c.letter.key, &marker).await
                } else {
                    self.archive.remove(&c.letter.key).await
                };
                (c, result)
            })
            .buffered(CONCURRENCY)
            .collect()
            .await;
        for (c, result) in results {
            match result {
                Ok(()) if keep => out.marked += 1,
                Ok(()) => out.removed += 1,
                Err(e) => {
                    let location = self.archive.location(&c.letter.key);
                    tracing::warn!(
                        sequence_number = %c.seq,
                        dead_letter = %location,
                        error = %e,
                        "Record redriven to the target, but its dead letter could not be {}; a later redrive would write it again.",
                        if keep { "marked" } else { "removed" }
                    );
                    out.not_cleaned_up.push(LeftBehind {
                        route: self.route.name.clone(),
                        shard_id: c.letter.shard_id.clone(),
                        sequence_number: c.seq.to_string(),
                        action: format!(
                            "The record is in {}. Delete {location} by hand (aws s3 rm {location}) so it is not replayed again.",
                            self.route.target
                        ),
                        location,
                        error_code: e.code.clone(),
                        reason: e.message.clone(),
                    });
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;

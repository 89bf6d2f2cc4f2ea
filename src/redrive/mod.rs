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

mod collaborators;
mod orchestration;
mod pure;

use collaborators::*;
pub use orchestration::*;
pub use pure::*;

#[cfg(test)]
mod tests;

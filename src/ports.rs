//! The narrow traits between the write path and the outside world.
//!
//! `aws/` implements them over the SDK; unit tests implement them with scripted fakes.

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use crate::capacity::{ConfiguredRoute, RouteCapacity, Sides};
use crate::control::guards::{ShardLag, StreamFacts};
use crate::control::machine::{Mode, RouteMode};
use crate::control::record::{HistoryEntry, Migration, StoredState};
use crate::model::{
    AdvanceOutcome, Checkpoint, CheckpointAdvance, DeadLetter, EntryResult, RequestError, Route,
    ShardInfo, SourceRecord, StoreError, StreamArn, TargetInfo,
};
use crate::pacing::TargetShard;
use crate::routing::RoutingDocument;
use crate::seq::SequenceNumber;
use crate::verify::VerificationRecord;

/// One entry of a PutRecords request.
#[derive(Clone, Copy, Debug)]
pub struct OutEntry<'a> {
    pub partition_key: &'a str,
    /// Places the record on the shard owning this hash key instead of the key's MD5.
    pub explicit_hash_key: Option<&'a str>,
    pub data: &'a [u8],
}

/// Writes records to a route's target stream.
pub trait TargetWriter: Send + Sync {
    /// Reads what the target accepts. Errors are classified like request errors.
    fn target_info(
        &self,
        route: &Route,
    ) -> impl Future<Output = Result<TargetInfo, RequestError>> + Send;

    /// The target's open shards and their hash ranges, for pacing. The default, an empty
    /// list, means "unknown": writes are not paced (throttles still slow keys down).
    fn target_shards(
        &self,
        _route: &Route,
    ) -> impl Future<Output = Result<Vec<TargetShard>, RequestError>> + Send {
        async { Ok(Vec::new()) }
    }

    /// Sends one PutRecords request; on success returns one result per entry, in order.
    fn put_records(
        &self,
        route: &Route,
        entries: &[OutEntry<'_>],
    ) -> impl Future<Output = Result<Vec<EntryResult>, RequestError>> + Send;
}

/// A shard's sign of life, written by the replicator after each batch (and by the local
/// runner while a shard is idle), so an idle shard can be told from a stuck one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardHeartbeat {
    pub route: String,
    pub shard_id: String,
    /// The last record handled (written or dead-lettered), if any in this batch.
    pub last_seq: Option<SequenceNumber>,
    /// How far behind the shard's newest record the reader was, when known: the event
    /// source mapping does not say; the local runner's GetRecords does.
    pub millis_behind: Option<i64>,
    /// Arrival time of the batch's newest record (the batch's iterator age is now − this).
    pub newest_arrival_ms: Option<i64>,
    /// Records in the batch (0: an idle read).
    pub records: u64,
    /// The replication mode the batch met.
    pub mode: Mode,
    /// Who wrote it: `lambda`, or `runner:<owner>`.
    pub by: String,
    pub now_ms: i64,
}

/// Stores per-(route, shard) checkpoints, and holds the control items the replicator reads
/// from the same table: each route's replication mode, and per-shard heartbeats.
pub trait CheckpointStore: Send + Sync {
    fn load(
        &self,
        route: &str,
        shard_id: &str,
    ) -> impl Future<Output = Result<Option<Checkpoint>, StoreError>> + Send;

    /// Moves the checkpoint forward; never backwards.
    fn advance(
        &self,
        advance: &CheckpointAdvance,
    ) -> impl Future<Output = Result<AdvanceOutcome, StoreError>> + Send;

    /// The replication mode the controller set for `route`; a route it never set is
    /// [`RouteMode::FORWARD`].
    fn mode(&self, _route: &str) -> impl Future<Output = Result<RouteMode, StoreError>> + Send {
        async { Ok(RouteMode::FORWARD) }
    }

    /// Records a shard heartbeat.
    fn heartbeat(
        &self,
        _heartbeat: &ShardHeartbeat,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }
}

/// Stores dead letters durably. Returns where the letter was stored.
pub trait DeadLetterStore: Send + Sync {
    fn store(
        &self,
        letter: &DeadLetter<'_>,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;
}

/// Where to start reading a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartPosition {
    TrimHorizon,
    Latest,
    /// Milliseconds since the epoch.
    AtTimestamp(i64),
    AtSequence(SequenceNumber),
    AfterSequence(SequenceNumber),
}

/// One GetRecords answer.
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub records: Vec<SourceRecord>,
    /// `None`: the shard is closed and fully read.
    pub next_iterator: Option<String>,
    pub millis_behind_latest: Option<i64>,
    /// From GetRecords' `ChildShards` when the shard has ended (with their parents).
    pub child_shards: Vec<ShardInfo>,
}

/// One event of an enhanced fan-out subscription.
#[derive(Clone, Debug, Default)]
pub struct FanOutEvent {
    pub records: Vec<SourceRecord>,
    /// Where a new subscription resumes (`AFTER_SEQUENCE_NUMBER`). `None`: the shard has
    /// ended (`child_shards` then names its children).
    pub continuation: Option<SequenceNumber>,
    pub millis_behind_latest: i64,
    pub child_shards: Vec<ShardInfo>,
}

/// An open enhanced fan-out subscription to one shard.
pub trait Subscription: Send {
    /// The next event; `Ok(None)` when the subscription has ended (subscribe again).
    fn next(&mut self) -> impl Future<Output = Result<Option<FanOutEvent>, RequestError>> + Send;
}

/// Reads a stream's shards: what the shard reader ([`crate::runner`]) and `verify` need.
/// `aws::source::KinesisSource` implements it over Kinesis; unit tests script one in memory.
pub trait ShardReader: Clone + Send + Sync + 'static {
    type Subscription: Subscription;

    /// Every shard of the stream, open and closed, with their parents.
    fn list_shards(
        &self,
        stream: &StreamArn,
    ) -> impl Future<Output = Result<Vec<ShardInfo>, RequestError>> + Send;

    /// An iterator for `shard_id` from `start`.
    fn shard_iterator(
        &self,
        stream: &StreamArn,
        shard_id: &str,
        start: &StartPosition,
    ) -> impl Future<Output = Result<String, RequestError>> + Send;

    /// One GetRecords call of at most `limit` records.
    fn get_records(
        &self,
        stream: &StreamArn,
        iterator: &str,
        limit: i32,
    ) -> impl Future<Output = Result<Page, RequestError>> + Send;

    /// The ARN of the stream's enhanced fan-out consumer `name`, registered if needed.
    fn ensure_consumer(
        &self,
        stream: &StreamArn,
        name: &str,
    ) -> impl Future<Output = Result<String, RequestError>> + Send;

    /// Opens a subscription to `shard_id` from `start` through `consumer_arn`.
    fn subscribe(
        &self,
        stream: &StreamArn,
        consumer_arn: &str,
        shard_id: &str,
        start: &StartPosition,
    ) -> impl Future<Output = Result<Self::Subscription, RequestError>> + Send;
}

/// The outcome of a conditional write on a migration's state item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Write {
    Done,
    /// The condition failed: someone else wrote first (or the item already exists).
    Lost,
}

/// How to find the round trip to the target.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RoundTrip {
    /// The median of a few DescribeStreamSummary calls through the writer role.
    Measure,
    /// This many ms, not measured (what-ifs: "what if the target were 30 ms away").
    Assume(f64),
    /// Measured, but at least this many ms (a cutover given `--assume-rtt-ms`: an assumption
    /// may make the guard stricter, never more lenient).
    AtLeast(f64),
}

/// What a capacity check reads, and for how long.
#[derive(Clone, Debug)]
pub struct CapacityOptions {
    /// The newest stretch of each shard that is read.
    pub window: Duration,
    pub sides: Sides,
    pub round_trip: RoundTrip,
    /// Longest time reading may take per route.
    pub read_time: Duration,
    /// DescribeStreamSummary calls whose median is the round trip.
    pub probes: usize,
    /// Least time between two GetRecords on one shard.
    pub read_interval: Duration,
}

impl Default for CapacityOptions {
    fn default() -> Self {
        CapacityOptions {
            window: Duration::from_secs(30),
            sides: Sides::Both,
            round_trip: RoundTrip::Measure,
            read_time: Duration::from_secs(20),
            probes: 5,
            read_interval: Duration::from_millis(250),
        }
    }
}

/// What the controller's commands read and write: the migration's items in the state table
/// (state, history, route modes, acknowledgements, verifications), the facts its guards draw
/// from the streams and the dead-letter bucket, and the routing document producers follow.
/// `aws::control::AwsControl` implements it over DynamoDB, Kinesis and S3; the controller's
/// unit tests use an in-memory one.
pub trait ControlStore: Send + Sync {
    /// The state table's name, for messages.
    fn table(&self) -> &str;

    /// The state item, if the migration was started.
    fn load(
        &self,
        migration: &str,
    ) -> impl Future<Output = Result<Option<StoredState>, StoreError>> + Send;

    /// Writes the state item if its version is still `expected` (`None`: if it does not exist).
    fn write_state(
        &self,
        expected: Option<u64>,
        next: &StoredState,
    ) -> impl Future<Output = Result<Write, StoreError>> + Send;

    fn append_history(
        &self,
        migration: &str,
        entry: &HistoryEntry,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The history, oldest first (only the `last` entries, if given).
    fn history(
        &self,
        migration: &str,
        last: Option<usize>,
    ) -> impl Future<Output = Result<Vec<HistoryEntry>, StoreError>> + Send;

    /// Sets a route's replication mode, unless a later version of the migration set it.
    fn set_mode(
        &self,
        route: &str,
        mode: RouteMode,
        version: u64,
        migration: &str,
        actor: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<Write, StoreError>> + Send;

    fn mode(&self, route: &str) -> impl Future<Output = Result<RouteMode, StoreError>> + Send;

    /// Every shard of `source` on `route`: how far replication is behind.
    fn lag(
        &self,
        route: &str,
        source: &StreamArn,
        since_ms: Option<i64>,
        old_side: bool,
        now_ms: i64,
    ) -> impl Future<Output = Result<Vec<ShardLag>, StoreError>> + Send;

    /// What the `streams` guard needs to know about one stream.
    fn stream_facts(
        &self,
        stream: &str,
        old_side: bool,
    ) -> impl Future<Output = StreamFacts> + Send;

    fn acknowledge(
        &self,
        migration: &str,
        keys: &[String],
        actor: &str,
        reason: &str,
        now_ms: i64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The dead-letter and on-failure keys acknowledged for `migration`.
    fn acknowledged(
        &self,
        migration: &str,
    ) -> impl Future<Output = Result<HashSet<String>, StoreError>> + Send;

    /// The most recent verification of `route`, if any.
    fn latest_verification(
        &self,
        route: &str,
    ) -> impl Future<Output = Result<Option<VerificationRecord>, StoreError>> + Send;

    /// Every key under the migration's dead-letter prefix for `route`: letters (`.json`) and
    /// the markers of those redriven (`.json.redriven`).
    fn dead_letter_keys(
        &self,
        migration: &Migration,
        route: &str,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// The keys of on-failure records (batches Lambda's event source mapping discarded) in
    /// the migration's bucket.
    fn discarded_batch_keys(
        &self,
        migration: &Migration,
    ) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

    /// Writes the migration's routing document.
    fn publish_routing(
        &self,
        migration: &Migration,
        doc: &RoutingDocument,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The migration's routing document as producers read it.
    fn fetch_routing(
        &self,
        migration: &Migration,
    ) -> impl Future<Output = Result<Option<RoutingDocument>, StoreError>> + Send;

    /// Measures what a forward route can carry (the `capacity` guard).
    fn measure_capacity(
        &self,
        route: &ConfiguredRoute,
        opts: &CapacityOptions,
        now_ms: i64,
    ) -> impl Future<Output = Result<RouteCapacity, String>> + Send;
}

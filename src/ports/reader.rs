//! The shard reader's port: listing a stream's shards and reading them (GetRecords or
//! enhanced fan-out). Used by [`crate::runner`] and [`crate::verify`].

use std::future::Future;

use crate::model::{RequestError, ShardInfo, SourceRecord, StreamArn};
use crate::seq::SequenceNumber;

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

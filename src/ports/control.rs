//! The controller's port: its items in the state table, the facts its guards read, and the
//! routing document. Used by [`crate::control::commands`].

use std::collections::HashSet;
use std::future::Future;
use std::time::Duration;

use crate::capacity::{ConfiguredRoute, RouteCapacity, Sides};
pub use crate::control::guards::MappingFacts;
use crate::control::guards::{ShardLag, StreamFacts};
use crate::control::machine::RouteMode;
use crate::control::record::{HistoryEntry, Migration, StoredState};
use crate::model::{StoreError, StreamArn};
use crate::routing::RoutingDocument;
use crate::verify::VerificationRecord;

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

    /// `e` with where it happened, for a person (the endpoint of a service that did not
    /// answer, the table that does not exist).
    fn locate(&self, e: StoreError) -> StoreError {
        e
    }

    /// The names of every migration started in the table.
    fn migrations(&self) -> impl Future<Output = Result<Vec<String>, StoreError>> + Send;

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

    /// Sets a route's replication mode, unless a later version of the same migration set
    /// it; an item another migration wrote is replaced.
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

    /// The migration that last set `route`'s mode, if any.
    fn mode_owner(
        &self,
        route: &str,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

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

    /// The event source mappings of `function` on `stream` (Lambda's ListEventSourceMappings)
    /// in the new account, or the old one when `old`.
    fn mappings(
        &self,
        old: bool,
        function: &str,
        stream: &str,
    ) -> impl Future<Output = Result<Vec<MappingFacts>, StoreError>> + Send;

    /// One event source mapping (in the old account when `old`); `None` when it does not
    /// exist.
    fn mapping(
        &self,
        old: bool,
        uuid: &str,
    ) -> impl Future<Output = Result<Option<MappingFacts>, StoreError>> + Send;

    /// Enables or disables a mapping (in the old account when `old`); returns it as Lambda
    /// then describes it.
    fn enable_mapping(
        &self,
        old: bool,
        uuid: &str,
        enabled: bool,
    ) -> impl Future<Output = Result<MappingFacts, StoreError>> + Send;

    /// Creates an enabled mapping of `function` on `stream` in the new account, starting at
    /// `start_ms` (`AT_TIMESTAMP`), or at the trim horizon when `None`.
    fn create_mapping(
        &self,
        function: &str,
        stream: &str,
        start_ms: Option<i64>,
    ) -> impl Future<Output = Result<MappingFacts, StoreError>> + Send;

    /// What the position map knows of each source shard of `route` (pairs and checkpoint).
    fn route_positions(
        &self,
        route: &str,
    ) -> impl Future<Output = Result<Vec<crate::positions::ShardPositions>, StoreError>> + Send;

    /// The shards of one of the new account's streams, open and closed.
    fn stream_shards(
        &self,
        stream: &str,
    ) -> impl Future<Output = Result<Vec<crate::positions::StreamShard>, StoreError>> + Send;

    /// Measures what a forward route can carry (the `capacity` guard).
    fn measure_capacity(
        &self,
        route: &ConfiguredRoute,
        opts: &CapacityOptions,
        now_ms: i64,
    ) -> impl Future<Output = Result<RouteCapacity, String>> + Send;
}

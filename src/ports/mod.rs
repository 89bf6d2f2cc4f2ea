//! The narrow traits between the core and the outside world: here the write path's (target
//! writer, checkpoint and mode store, dead-letter store); [`reader`] the shard reader's;
//! [`control`] the controller's. `aws/` implements them over the SDK; unit tests implement
//! them with scripted fakes. Import from the submodule that holds a port (nothing is
//! re-exported), so a module depends only on the ports it uses.

pub mod control;
pub mod reader;

use std::future::Future;

use crate::control::machine::{Mode, RouteMode};
use crate::model::{
    AdvanceOutcome, Checkpoint, CheckpointAdvance, DeadLetter, EntryResult, RequestError, Route,
    StoreError, TargetInfo,
};
use crate::pacing::TargetShard;
use crate::positions::PositionPair;
use crate::seq::SequenceNumber;

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

    /// Records one batch's position pair (source positions ↔ target positions), which
    /// `fanoutctl positions translate` and `consumers move` read.
    fn record_position(
        &self,
        _pair: &PositionPair,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
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

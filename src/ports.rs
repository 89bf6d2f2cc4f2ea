//! The narrow traits between the write path and the outside world.
//!
//! `aws/` implements them over the SDK; unit tests implement them with scripted fakes.

use std::future::Future;

use crate::model::{
    AdvanceOutcome, Checkpoint, CheckpointAdvance, DeadLetter, EntryResult, RequestError, Route,
    StoreError, TargetInfo,
};

/// One entry of a PutRecords request.
#[derive(Clone, Copy, Debug)]
pub struct OutEntry<'a> {
    pub partition_key: &'a str,
    pub data: &'a [u8],
}

/// Writes records to a route's target stream.
pub trait TargetWriter: Send + Sync {
    /// Reads what the target accepts. Errors are classified like request errors.
    fn target_info(
        &self,
        route: &Route,
    ) -> impl Future<Output = Result<TargetInfo, RequestError>> + Send;

    /// Sends one PutRecords request; on success returns one result per entry, in order.
    fn put_records(
        &self,
        route: &Route,
        entries: &[OutEntry<'_>],
    ) -> impl Future<Output = Result<Vec<EntryResult>, RequestError>> + Send;
}

/// Stores per-(route, shard) checkpoints.
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
}

/// Stores dead letters durably. Returns where the letter was stored.
pub trait DeadLetterStore: Send + Sync {
    fn store(
        &self,
        letter: &DeadLetter<'_>,
    ) -> impl Future<Output = Result<String, StoreError>> + Send;
}

//! The replicator's collaborators during a redrive: a target writer that remembers where each record landed, and no checkpoints.

#[allow(unused_imports)]
use super::*;

// ---------------------------------------------------------------------------------------------
// The replicator's collaborators during a redrive

/// Where each written record landed, keyed by the address of its partition key. The write
/// path hands the writer borrowed slices of the batch's own records, so the address names the
/// record exactly; a record not found here is still known to be written from the report.
pub(super) type Landed = Arc<Mutex<HashMap<usize, (String, String)>>>;

/// The real writer, noting where each record landed.
pub(super) struct Recording<'a, W> {
    pub(super) inner: &'a W,
    pub(super) landed: Landed,
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
pub(super) struct NoCheckpoint;

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
pub(super) struct Refusals {
    /// Existing locations of the batch's letters, by sequence number.
    pub(super) locations: Arc<Mutex<HashMap<SequenceNumber, String>>>,
    pub(super) refused: Arc<Mutex<HashMap<SequenceNumber, (String, String)>>>,
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

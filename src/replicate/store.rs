//! What a route leaves behind: shard heartbeats, dead letters, a stop before its first write.

#[allow(unused_imports)]
use super::*;

impl<W: TargetWriter, C: CheckpointStore, D: DeadLetterStore> Replicator<W, C, D> {
    pub(super) async fn stopped_before_start(
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
    pub(super) async fn heartbeat(
        &self,
        route: &Route,
        batch: &SourceBatch,
        handled: usize,
        until: Instant,
    ) {
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

    /// The marks of everything this container wrote for `route`'s share of the batch's shard.
    pub(super) fn written_marks(&self, route: &Route, batch: &SourceBatch) -> Marks {
        lock(&self.positions)
            .get(&(route.name.clone(), batch.shard_id.clone()))
            .map(|(_, marks)| marks.clone())
            .unwrap_or_default()
    }

    /// Keeps `marks` (everything written so far) and says whether a position pair is due:
    /// `advanced` (the checkpoint moves) and none recorded for [`Self::with_position_every`].
    pub(super) fn position_due(
        &self,
        route: &Route,
        batch: &SourceBatch,
        marks: &Marks,
        advanced: bool,
    ) -> bool {
        let mut positions = lock(&self.positions);
        let (last, kept) = positions
            .entry((route.name.clone(), batch.shard_id.clone()))
            .or_default();
        merge_marks(kept, marks);
        let due = advanced && last.is_none_or(|at| at.elapsed() >= self.position_every);
        if due {
            *last = Some(Instant::now());
        }
        due
    }

    /// Makes a position pair due at the next batch of every shard of `route` this container
    /// handles: the handler calls it when the route's mode changes (a flip), so the map has a
    /// pair at each flip whatever the pair rate.
    pub fn force_positions(&self, route: &str) {
        for ((r, _), (last, _)) in lock(&self.positions).iter_mut() {
            if r == route {
                *last = None;
            }
        }
    }

    /// Records a position pair; like a heartbeat, a failure is a warning, never a failed batch.
    pub(super) async fn record_position(&self, pair: Option<PositionPair>, until: Instant) {
        let Some(pair) = pair else { return };
        let budget = until
            .saturating_duration_since(Instant::now())
            .min(HEARTBEAT_TIMEOUT);
        match tokio::time::timeout(budget, self.checkpoints.record_position(&pair)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(route = %pair.route, shard = %pair.shard_id, error = %e, "Position pair not recorded.")
            }
            Err(_) => {
                tracing::debug!(route = %pair.route, shard = %pair.shard_id, "Position pair not recorded: no answer within {} ms.", budget.as_millis())
            }
        }
    }

    pub(super) async fn dead_letter(
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

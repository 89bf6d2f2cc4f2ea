//! A redrive, route by route and shard by shard.

#[allow(unused_imports)]
use super::*;

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

pub(super) fn shard_message(s: &ShardOutcome, keep: bool) -> String {
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

pub(super) struct Ctx<'a, W, A> {
    route: &'a Route,
    archive: &'a A,
    options: &'a RedriveOptions,
    replicator: &'a Replicator<Recording<'a, W>, NoCheckpoint, Refusals>,
    landed: Landed,
    refusals: Refusals,
}

/// A record confirmed written, and where.
pub(super) struct Confirmed<'l> {
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

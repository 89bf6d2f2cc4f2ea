//! One shard's reader: GetRecords or an enhanced fan-out subscription, invocations in
//! batches, the position saved after each, SHARD_END at the end.

#[allow(unused_imports)]
use super::*;

pub(super) struct ShardTask<R, I, L> {
    pub(super) source: R,
    pub(super) stream: StreamArn,
    pub(super) shard_id: String,
    pub(super) lease: Lease,
    pub(super) position: Position,
    /// A listed parent was read before this shard: start at its beginning.
    pub(super) has_parent: bool,
    /// Read with enhanced fan-out through this consumer.
    pub(super) consumer_arn: Option<String>,
    pub(super) invoker: Arc<I>,
    pub(super) leases: Arc<L>,
    pub(super) options: RunnerOptions,
    pub(super) stop: Arc<AtomicBool>,
    pub(super) cancel: Arc<AtomicBool>,
    pub(super) shared: Arc<Shared>,
    /// The owner this run took the lease from, which stopped without releasing it; cleared
    /// once the first batch after it is counted.
    pub(super) taken_from: std::sync::Mutex<Option<String>>,
}

impl<R: ShardReader, I: Invoker, L: LeaseStore> ShardTask<R, I, L> {
    fn update(&self, f: impl FnOnce(&mut ShardProgress)) {
        self.shared.update(&self.shard_id, f);
    }

    /// Adds a handler report to the shard's figures; a batch held back or a route stopped
    /// becomes the shard's `held` reason, said once (WARN) each time it changes.
    fn note_report(&self, report: &crate::replicate::BatchReport) {
        use crate::replicate::StopReason;
        let mut counts = HandledCounts {
            reports: 1,
            ..HandledCounts::default()
        };
        let mut stops: Vec<String> = Vec::new();
        for r in &report.routes {
            counts.written += r.written as u64;
            counts.dead_lettered += r.dead_lettered as u64;
            counts.skipped += r.skipped as u64;
            counts.possible_duplicates += r.possible_duplicates as u64;
            counts.retries += r.retries.values().sum::<u64>();
            counts.repairs += r.repairs as u64;
            let why = match &r.stop {
                None | Some(StopReason::Deadline) => None,
                Some(StopReason::Systemic { code, message }) => Some(format!("{code}: {message}")),
                Some(StopReason::CheckpointUnreadable { message }) => {
                    Some(format!("cannot read its checkpoint: {message}"))
                }
                Some(StopReason::DeadLetterFailed { message }) => {
                    Some(format!("cannot store a dead letter: {message}"))
                }
            };
            if let Some(why) = why {
                stops.push(format!("route {} stopped ({why})", r.route));
            }
        }
        // The first records written after taking a lease over from an owner that did not
        // release it may have been written by that owner too (up to one batch of its, past
        // its last checkpoint): count them, and say so.
        if counts.written > 0 {
            let taken_from = self
                .taken_from
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(owner) = taken_from {
                counts.possible_duplicates += counts.written;
                tracing::warn!(
                    shard = %self.shard_id,
                    previous_owner = %owner,
                    possible_duplicates = counts.written,
                    "Shard {}: took it over from {owner}, which stopped without releasing it \
                     (killed, or cut off); the {} record(s) written again from its last checkpoint \
                     may already be in the target (counted as possible duplicates).",
                    self.shard_id,
                    counts.written
                );
            }
        }
        let held = report
            .held
            .clone()
            .or_else(|| (!stops.is_empty()).then(|| stops.join("; ")));
        let before = self.shared.get(&self.shard_id).held;
        if held.is_some() && held != before {
            tracing::warn!(
                shard = %self.shard_id,
                "Shard {}: {}. Its records wait in the stream; this run retries them.",
                self.shard_id,
                held.as_deref().unwrap_or_default()
            );
        }
        self.update(|s| {
            s.handled.add(&counts);
            s.held = held;
        });
    }

    fn halted(&self) -> bool {
        self.stop.load(Ordering::Relaxed) || self.cancel.load(Ordering::Relaxed)
    }

    fn start_position(&self) -> StartPosition {
        match &self.position {
            Position::After(seq) => StartPosition::AfterSequence(seq.clone()),
            _ => match &self.options.start {
                StartPosition::Latest if self.has_parent => StartPosition::TrimHorizon,
                other => other.clone(),
            },
        }
    }

    fn fail(&self, e: &RequestError) -> TaskEnd {
        tracing::error!(
            stream = %self.stream,
            shard = %self.shard_id,
            error_code = %e.code,
            "Reading shard {} of {} stopped: {e}. Check the stream and the reader's credentials, then run again; other shards continue.",
            self.shard_id,
            self.stream
        );
        self.update(|s| s.stopped = Some(e.to_string()));
        TaskEnd::Failed
    }

    /// Writes the position (fenced by the lease counter), retrying store errors briefly.
    /// `Err(end)`: stop the task.
    async fn save(&mut self, position: Position) -> Result<(), TaskEnd> {
        let p = self.shared.get(&self.shard_id);
        let hb = Heartbeat {
            millis_behind: Some(p.millis_behind),
            caught_up: p.at_tip,
        };
        let ttl = self.options.lease_ttl.as_millis() as i64;
        for attempt in 1..=6u32 {
            match self
                .leases
                .checkpoint(&self.lease, &position, hb, ttl, now_ms())
                .await
            {
                Ok(true) => {
                    self.position = position;
                    return Ok(());
                }
                Ok(false) => {
                    tracing::warn!(shard = %self.shard_id, lease_name = %self.lease.name, "Lease of {} was taken by another runner; stopping this shard here (the other runner resumes from the last saved position).", self.shard_id);
                    self.update(|s| s.lease_lost = true);
                    return Err(TaskEnd::Lost);
                }
                Err(e) if attempt < 6 => {
                    tracing::warn!(shard = %self.shard_id, error = %e, "Saving the position failed; retrying.");
                    tokio::time::sleep(plan::backoff(
                        attempt,
                        Duration::from_millis(100),
                        Duration::from_secs(2),
                        rand::random(),
                    ))
                    .await;
                }
                Err(e) => {
                    tracing::error!(shard = %self.shard_id, error = %e, "Cannot save the position of {} in the state table: {e}. Stopping this shard; records after the last saved position will be read again.", self.shard_id);
                    self.update(|s| s.stopped = Some(format!("cannot save position: {e}")));
                    return Err(TaskEnd::Failed);
                }
            }
        }
        Err(TaskEnd::Failed)
    }

    /// Cuts a page at the end of a bounded window; `true` when the window is done.
    fn window(&self, mut records: Vec<SourceRecord>, at_tip: bool) -> (Vec<SourceRecord>, bool) {
        let Some(until) = self.options.until_ms else {
            return (records, false);
        };
        if let Some(i) = records
            .iter()
            .position(|r| r.arrival_ms.is_some_and(|a| a > until))
        {
            records.truncate(i);
            return (records, true);
        }
        // At the tip after the window's end: nothing more can arrive inside it.
        (records, at_tip && now_ms() > until)
    }

    /// Completes once the task is asked to stop.
    async fn until_halted(&self) {
        while !self.halted() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Delivers records in batches and saves the position after each. `Err(end)`: stop.
    async fn deliver_all(&mut self, mut records: Vec<SourceRecord>) -> Result<(), TaskEnd> {
        while !records.is_empty() {
            let take = records.len().min(self.options.batch_size.max(1) as usize);
            let rest = records.split_off(take);
            let (handled, complete) = self.deliver(records).await;
            if let Some((seq, arrival)) = handled {
                self.update(|s| s.last_arrival_ms = arrival.or(s.last_arrival_ms));
                self.save(Position::After(seq)).await?;
            }
            if !complete {
                return Err(if self.shared.get(&self.shard_id).stopped.is_some() {
                    TaskEnd::Failed
                } else {
                    TaskEnd::Stopped
                });
            }
            records = rest;
        }
        Ok(())
    }

    /// The shard is read to its end (or past the window): save SHARD_END and say so.
    async fn finish(&mut self, children: &[ShardInfo]) -> TaskEnd {
        if !children.is_empty() {
            if let Ok(mut h) = self.shared.hints.lock() {
                h.extend(children.iter().cloned());
            }
        }
        if let Err(end) = self.save(Position::End).await {
            return end;
        }
        self.update(|s| {
            s.finished = true;
            s.caught_up = true;
            s.at_tip = true;
        });
        self.shared.wake.notify_one();
        TaskEnd::Finished
    }

    /// Enhanced fan-out: one subscription at a time, re-subscribing from the continuation
    /// sequence number (or the saved position) whenever one ends.
    async fn run_fan_out(mut self, consumer_arn: String) -> TaskEnd {
        let mut failures = 0u32;
        // The continuation of the last event fully handled: a new subscription starts after it.
        let mut resume: Option<SequenceNumber> = None;
        loop {
            if self.halted() {
                return TaskEnd::Stopped;
            }
            let start = match (&self.position, &resume) {
                (Position::After(s), Some(r)) if r > s => StartPosition::AfterSequence(r.clone()),
                (Position::After(s), _) => StartPosition::AfterSequence(s.clone()),
                (_, Some(r)) => StartPosition::AfterSequence(r.clone()),
                _ => self.start_position(),
            };
            let mut sub = match self
                .source
                .subscribe(&self.stream, &consumer_arn, &self.shard_id, &start)
                .await
            {
                Ok(sub) => sub,
                // ResourceInUse: the previous subscription of this consumer is still closing.
                Err(e)
                    if e.class == FailureClass::Transient || e.code == "ResourceInUseException" =>
                {
                    failures += 1;
                    self.backoff(failures, &e).await;
                    continue;
                }
                Err(e) => return self.fail(&e),
            };
            let opened = Instant::now();
            loop {
                if self
                    .options
                    .subscription_max
                    .is_some_and(|max| opened.elapsed() >= max)
                {
                    break;
                }
                let next = tokio::select! {
                    ev = sub.next() => ev,
                    _ = self.until_halted() => return TaskEnd::Stopped,
                };
                let event = match next {
                    Ok(Some(ev)) => {
                        failures = 0;
                        ev
                    }
                    Ok(None) => break, // the subscription ended: subscribe again
                    Err(e) if e.class == FailureClass::Systemic => return self.fail(&e),
                    Err(e) => {
                        failures += 1;
                        self.backoff(failures, &e).await;
                        break;
                    }
                };
                let at_tip = event.records.is_empty() && event.millis_behind_latest == 0;
                let (records, window_done) = self.window(event.records, at_tip);
                if let Err(end) = self.deliver_all(records).await {
                    return end;
                }
                self.update(|s| {
                    s.millis_behind = event.millis_behind_latest;
                    s.at_tip = at_tip;
                    s.caught_up |= at_tip;
                });
                if window_done {
                    return self.finish(&[]).await;
                }
                match event.continuation {
                    None => return self.finish(&event.child_shards).await,
                    Some(c) => resume = Some(c),
                }
            }
        }
    }

    pub(super) async fn run(mut self) -> TaskEnd {
        if let Some(arn) = self.consumer_arn.clone() {
            return self.run_fan_out(arn).await;
        }
        let mut iterator: Option<String> = None;
        let mut failures = 0u32;
        let mut next_read = Instant::now();
        loop {
            if self.halted() {
                return TaskEnd::Stopped;
            }
            let it = match iterator.take() {
                Some(it) => it,
                None => match self
                    .source
                    .shard_iterator(&self.stream, &self.shard_id, &self.start_position())
                    .await
                {
                    Ok(it) => it,
                    Err(e) if e.class == FailureClass::Transient => {
                        failures += 1;
                        self.backoff(failures, &e).await;
                        continue;
                    }
                    Err(e) => return self.fail(&e),
                },
            };
            tokio::time::sleep_until(next_read).await;
            let page = match self
                .source
                .get_records(&self.stream, &it, self.options.batch_size)
                .await
            {
                Ok(p) => {
                    failures = 0;
                    p
                }
                Err(e) if e.code == "ExpiredIteratorException" => {
                    tracing::debug!(shard = %self.shard_id, "Iterator expired; getting a new one from the position.");
                    next_read = Instant::now() + self.options.min_read_interval;
                    continue; // iterator is None: a fresh one comes from the position
                }
                Err(e) if e.class == FailureClass::Transient => {
                    failures += 1;
                    self.backoff(failures, &e).await;
                    iterator = Some(it);
                    next_read = Instant::now() + self.options.min_read_interval;
                    continue;
                }
                Err(e) => return self.fail(&e),
            };
            let bytes: u64 = page.records.iter().map(|r| r.data.len() as u64).sum();
            let pace = Duration::from_secs_f64(
                bytes as f64 / self.options.read_bytes_per_second.max(1) as f64,
            );
            next_read = Instant::now() + self.options.min_read_interval.max(pace);
            let behind = page.millis_behind_latest.unwrap_or(0);
            // MillisBehindLatest is time-based: records written a moment ago read as 0 behind
            // although more follow. Only an empty page at the tip means caught up.
            let at_tip = page.records.is_empty() && behind == 0;
            let (records, window_done) = self.window(page.records, at_tip);
            if let Err(end) = self.deliver_all(records).await {
                return end;
            }
            self.update(|s| {
                s.millis_behind = behind;
                s.at_tip = at_tip;
                s.caught_up |= at_tip;
            });
            if page.next_iterator.is_none() {
                return self.finish(&page.child_shards).await;
            }
            if window_done {
                return self.finish(&[]).await;
            }
            iterator = page.next_iterator;
            if at_tip {
                tokio::time::sleep(self.options.idle_poll).await;
            }
        }
    }

    async fn backoff(&self, failures: u32, e: &RequestError) {
        if failures % 10 == 1 {
            tracing::warn!(shard = %self.shard_id, error = %e, attempt = failures, "Reading {} failed ({}); retrying with backoff.", self.shard_id, e.code);
        }
        tokio::time::sleep(plan::backoff(
            failures,
            Duration::from_millis(200),
            Duration::from_secs(5),
            rand::random(),
        ))
        .await;
    }

    /// Invokes until the whole page is handled. Returns the last handled record (sequence
    /// number, arrival time) and whether the whole page was handled (false: stopped first).
    async fn deliver(
        &self,
        mut records: Vec<SourceRecord>,
    ) -> (Option<(SequenceNumber, Option<i64>)>, bool) {
        let mut attempt = 0u32;
        let mut last: Option<(SequenceNumber, Option<i64>)> = None;
        while !records.is_empty() {
            let event =
                event::build_event(&self.stream, &self.shard_id, &self.options.region, &records);
            let payload = match serde_json::to_vec(&event) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(shard = %self.shard_id, error = %e, "Cannot serialise the event.");
                    self.update(|s| s.stopped = Some(format!("cannot serialise the event: {e}")));
                    return (last, false);
                }
            };
            self.update(|s| s.invocations += 1);
            let outcome = self
                .invoker
                .invoke(payload, self.options.function_timeout)
                .await;
            let outcome = outcome.map(|invoked| {
                if let Some(report) = &invoked.report {
                    self.note_report(report);
                }
                invoked.body
            });
            let failed_at: Result<Option<String>, String> = outcome.and_then(|body| {
                serde_json::from_slice::<KinesisEventResponse>(&body)
                    .map(|r| {
                        r.batch_item_failures
                            .into_iter()
                            .filter_map(|f| f.item_identifier)
                            .next()
                    })
                    .map_err(|e| {
                        format!(
                            "unreadable answer ({e}): {}",
                            String::from_utf8_lossy(&body)
                        )
                    })
            });
            let handled = match &failed_at {
                Ok(None) => records.len(),
                Ok(Some(id)) => match SequenceNumber::parse(id) {
                    Ok(seq) => records
                        .iter()
                        .position(|r| r.seq >= seq)
                        .unwrap_or(records.len()),
                    Err(_) => 0, // an unknown identifier: Lambda retries the whole batch
                },
                Err(_) => 0,
            };
            self.shared
                .delivered
                .fetch_add(handled as u64, Ordering::Relaxed);
            self.update(|s| s.records_delivered += handled as u64);
            if handled > 0 {
                let r = &records[handled - 1];
                last = Some((r.seq.clone(), r.arrival_ms));
            }
            records.drain(..handled);
            if records.is_empty() {
                return (last, true);
            }
            attempt += 1;
            self.update(|s| s.retried_invocations += 1);
            match &failed_at {
                Err(e) => {
                    tracing::warn!(shard = %self.shard_id, error = %e, "Invocation failed; retrying the whole batch.")
                }
                Ok(Some(id)) => {
                    tracing::debug!(shard = %self.shard_id, sequence_number = %id, "Batch partially handled; resuming at the reported record.")
                }
                Ok(None) => {}
            }
            if self.halted() {
                return (last, false);
            }
            if self.options.max_attempts.is_some_and(|max| attempt >= max) {
                let at = records[0].seq.clone();
                let why = match &failed_at {
                    Err(e) => e.clone(),
                    _ => "the handler kept reporting it as failed".to_owned(),
                };
                tracing::error!(
                    shard = %self.shard_id,
                    sequence_number = %at,
                    "Shard {} stopped at record {at} after {attempt} attempts: {why}. The record stays in the stream; fix the cause and run again.",
                    self.shard_id
                );
                self.update(|s| {
                    s.stopped = Some(format!(
                        "stopped at record {at} after {attempt} attempts: {why}"
                    ))
                });
                return (last, false);
            }
            tokio::time::sleep(plan::backoff(
                attempt,
                Duration::from_millis(100),
                Duration::from_secs(5),
                rand::random(),
            ))
            .await;
        }
        (last, true)
    }
}

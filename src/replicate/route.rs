//! One route's share of a batch: skip, dead-letter, write in rounds, advance the checkpoint.

#[allow(unused_imports)]
use super::*;

impl<W: TargetWriter, C: CheckpointStore, D: DeadLetterStore> Replicator<W, C, D> {
    pub(super) async fn replicate_route(
        &self,
        route: &Route,
        batch: &SourceBatch,
        send_by: Instant,
        deadline: Instant,
    ) -> RouteReport {
        let records = &batch.records;
        let mut report = RouteReport {
            route: route.name.clone(),
            shard_id: batch.shard_id.clone(),
            received: records.len(),
            newest_arrival_ms: records.iter().filter_map(|r| r.arrival_ms).max(),
            ..RouteReport::default()
        };
        if records.is_empty() {
            return report;
        }

        // 1. Skip what an earlier invocation already handled: its contiguous prefix, and what
        //    it handled past its first unhandled record.
        let mut earlier: Option<HandledBeyond> = None;
        let mut loaded_last: Option<SequenceNumber> = None;
        // Where this shard's records were written before this batch (positions.rs).
        let mut before = self.written_marks(route, batch);
        let start = match within(send_by, self.checkpoints.load(&route.name, &batch.shard_id)).await
        {
            Ok(Some(cp)) => {
                earlier = cp.beyond;
                merge_marks(&mut before, &cp.marks);
                let start = records
                    .iter()
                    .position(|r| r.seq > cp.last_seq)
                    .unwrap_or(records.len());
                loaded_last = Some(cp.last_seq);
                start
            }
            Ok(None) => 0,
            Err(e) => {
                let stop = StopReason::CheckpointUnreadable {
                    message: e.to_string(),
                };
                return self
                    .stopped_before_start(route, batch, report, 0, stop, send_by)
                    .await;
            }
        };
        report.skipped = start;
        if start == records.len() {
            self.heartbeat(route, batch, start, send_by).await;
            return report;
        }

        let info = match self.target_info(route, send_by).await {
            Ok(info) => info,
            Err(e) => {
                let stop = StopReason::Systemic {
                    code: e.code.clone(),
                    message: e.message.clone(),
                };
                return self
                    .stopped_before_start(route, batch, report, start, stop, send_by)
                    .await;
            }
        };
        let max_record_bytes = self
            .limits
            .max_record_bytes_override
            .unwrap_or(info.max_record_bytes)
            .min(self.limits.max_request_bytes);

        let started_ms = chrono::Utc::now().timestamp_millis();
        let mut state: Vec<State> = vec![State::Pending; records.len()];
        if let Some(b) = &earlier {
            match b.align(records) {
                Some(at) => {
                    for i in (at..records.len().min(at + b.len as usize)).filter(|&i| i >= start) {
                        if b.handled(i - at) {
                            state[i] = State::Handled;
                            report.skipped += 1;
                        }
                    }
                }
                // Not the batch that stopped (its first unhandled record is not here): what
                // it handled past that record may be written again.
                None => report.possible_duplicates += b.count(),
            }
        }
        // Records at or after `limit` are left for the retry (a systemic stop happened there).
        let mut limit = records.len();
        let mut stop: Option<StopReason> = None;

        // 2. Dead-letter what can never be written, in order; stop at the first that cannot be stored.
        let defects: Vec<(usize, String, String)> = (start..records.len())
            .filter(|&i| matches!(state[i], State::Pending))
            .filter_map(|i| {
                plan::permanent_defect(&records[i], max_record_bytes)
                    .map(|(c, r)| (i, c.to_owned(), r))
            })
            .collect();
        if !defects.is_empty() {
            let stored: Vec<(usize, Result<String, String>)> = stream::iter(defects)
                .map(|(i, code, reason)| async move {
                    let why = Refusal {
                        code: &code,
                        reason,
                        attempts: 0,
                    };
                    (i, self.dead_letter(route, batch, i, why, send_by).await)
                })
                .buffered(8)
                .collect()
                .await;
            for (i, result) in stored {
                match result {
                    Ok(location) if i < limit => {
                        state[i] = State::DeadLettered;
                        report.dead_letter_locations.push(location);
                    }
                    Ok(_) => {}
                    Err(message) => {
                        if i < limit {
                            limit = i;
                            stop = Some(StopReason::DeadLetterFailed { message });
                        }
                    }
                }
            }
        }

        // 3. Write the rest: each key's head (or run, or aggregate), paced per target shard,
        //    with up to `max_concurrent_requests` requests in flight.
        let target = self.target_pacing(route).await;
        let shard_limits = ShardLimits::new(
            self.limits.shard_records_per_sec,
            self.limits.shard_bytes_per_sec,
            self.limits.shard_headroom_pct,
        );
        let shape = Shape {
            mode: route.order,
            max_entries: self.limits.max_request_entries,
            max_request_bytes: self.limits.max_request_bytes,
            max_record_bytes,
            run_length: self.limits.run_length,
        };
        let mut sched = Schedule::new(
            records,
            (start..limit).filter(|&i| matches!(state[i], State::Pending)),
            shape,
            &target.map,
        );
        report.split_records = sched.split_records();
        let mut ambiguous = vec![0u32; records.len()];
        let mut in_flight = FuturesUnordered::new();
        let mut stopping = false;
        loop {
            let now = Instant::now();
            if now >= send_by && sched.has_pending() {
                stop.get_or_insert(StopReason::Deadline);
                stopping = true;
            }
            if !stopping {
                let mut buckets = lock(&target.buckets);
                while in_flight.len() < self.limits.max_concurrent_requests {
                    // While requests are out, send only full ones: small requests sent as each
                    // answer comes back would multiply the requests (and their per-request
                    // costs) without moving any key faster; the rest go when the answers are in.
                    // Keys that a shard's tokens held back are the exception: they go as the
                    // tokens come, not a round trip later.
                    let most = self.limits.max_request_entries;
                    if !in_flight.is_empty()
                        && !sched.awaits_tokens()
                        && sched.ready_keys(now, most) < most
                    {
                        break;
                    }
                    let Some(entries) = sched.next_request(now, &mut buckets, &shard_limits) else {
                        break;
                    };
                    report.requests += 1;
                    // A request may finish in the first half of the margin left for the
                    // checkpoint: one cut off at the stop would be ambiguous, and its records
                    // written again by the retry.
                    let answer_by = send_by + deadline.saturating_duration_since(send_by) / 2;
                    let timeout = self.limits.request_timeout.min(answer_by - now);
                    in_flight.push(self.send(route, records, entries, timeout));
                }
            }
            let wake = if stopping {
                None
            } else {
                sched
                    .next_wake(now, &mut lock(&target.buckets), &shard_limits)
                    // A key ready now but held back for a fuller request waits for an answer.
                    .filter(|&at| at > now || in_flight.is_empty())
            };
            if in_flight.is_empty() {
                match wake {
                    _ if stopping || !sched.has_pending() => break,
                    None => break,
                    Some(at) if at >= send_by => {
                        stop.get_or_insert(StopReason::Deadline);
                        break;
                    }
                    Some(at) => {
                        tokio::time::sleep_until(at).await;
                        continue;
                    }
                }
            }
            let done = match wake {
                Some(at) if !stopping => tokio::select! {
                    done = in_flight.next() => done,
                    _ = tokio::time::sleep_until(at.min(send_by)) => None,
                },
                _ => in_flight.next().await,
            };
            let Some(parts) = done else {
                continue;
            };
            for (entries, result) in parts {
                let outcome = self.settle(
                    Progress {
                        records,
                        target: &target,
                        sched: &mut sched,
                        state: &mut state,
                        ambiguous: &mut ambiguous,
                        report: &mut report,
                    },
                    &shard_limits,
                    entries,
                    result,
                );
                for (i, item, slot, code, message) in outcome.dead_letters {
                    let reason = format!("the target refused the record ({code}: {message})");
                    let why = Refusal {
                        code: "TargetRejected",
                        reason,
                        attempts: 1,
                    };
                    match self.dead_letter(route, batch, i, why, send_by).await {
                        Ok(location) => {
                            state[i] = State::DeadLettered;
                            report.dead_letter_locations.push(location);
                            sched.pop(slot, item);
                        }
                        Err(message) => {
                            if i < limit {
                                limit = i;
                                stop = Some(StopReason::DeadLetterFailed { message });
                            }
                        }
                    }
                }
                if let Some((i, code, message)) = outcome.systemic {
                    if i < limit {
                        limit = i;
                        stop = Some(StopReason::Systemic { code, message });
                    }
                }
            }
            sched.truncate_at(limit);
        }

        // 4. Checkpoint the contiguous handled prefix and report the first unhandled record.
        let end = (start..records.len())
            .find(|&i| matches!(state[i], State::Pending))
            .unwrap_or(records.len());
        report.dead_lettered = report.dead_letter_locations.len();
        // Written past the first unhandled record: skipped by the retry if the checkpoint
        // below stores them, written again (possible duplicates) if not.
        let mut written_beyond = 0;
        let mut beyond: Option<HandledBeyond> = None;
        if end < records.len() {
            report.first_unhandled = Some(records[end].seq.clone());
            written_beyond = state[end..]
                .iter()
                .filter(|s| matches!(s, State::Written { .. }))
                .count();
            let flags: Vec<(bool, &SequenceNumber)> = (end..records.len())
                .map(|i| (!matches!(state[i], State::Pending), &records[i].seq))
                .collect();
            beyond = HandledBeyond::from_flags(&records[end].seq, &flags);
            // Records whose write may have landed (a timeout, a server error) and that the
            // retry sends again.
            report.possible_duplicates += (end..records.len())
                .filter(|&i| matches!(state[i], State::Pending))
                .map(|i| ambiguous[i] as usize)
                .sum::<usize>();
            report.stop = stop.or(Some(StopReason::Deadline));
        }
        if end > start || beyond.is_some() {
            let prefix = &state[start..end];
            let mut marks = before.clone();
            for s in &state[start..] {
                if let State::Written { shard_id, seq } = s {
                    if let Ok(seq) = SequenceNumber::parse(seq) {
                        raise_mark(&mut marks, shard_id, &seq);
                    }
                }
            }
            let advance = CheckpointAdvance {
                route: route.name.clone(),
                shard_id: batch.shard_id.clone(),
                source_arn: batch.source.to_string(),
                target_arn: route.target.to_string(),
                // With no new prefix, the stored one (or, on a shard's first batch, a position
                // before every record) is written again with what was handled past it.
                last_seq: match end.checked_sub(1) {
                    Some(last) => records[last].seq.clone(),
                    None => loaded_last.clone().unwrap_or_else(|| {
                        SequenceNumber::parse("0").expect("0 is a sequence number")
                    }),
                },
                marks,
                written: prefix
                    .iter()
                    .filter(|s| matches!(s, State::Written { .. }))
                    .count() as u64,
                dead_lettered: prefix
                    .iter()
                    .filter(|s| matches!(s, State::DeadLettered))
                    .count() as u64,
                now_ms: chrono::Utc::now().timestamp_millis(),
                beyond: beyond.clone(),
            };
            // The heartbeat and the position pair go with the checkpoint, at once: one round
            // trip of waiting.
            let due = self.position_due(route, batch, &advance.marks, end > start);
            let pair = due.then(|| PositionPair {
                route: route.name.clone(),
                shard_id: batch.shard_id.clone(),
                from: loaded_last
                    .clone()
                    .unwrap_or_else(|| SequenceNumber::parse("0").expect("0 is a sequence number")),
                to: advance.last_seq.clone(),
                before,
                after: advance.marks.clone(),
                started_ms,
                at_ms: advance.now_ms,
                to_arrival_ms: records[end - 1].arrival_ms,
            });
            let heartbeat = self.heartbeat(route, batch, end, deadline);
            let (advanced, (), ()) = tokio::join!(
                within(deadline, self.checkpoints.advance(&advance)),
                heartbeat,
                self.record_position(pair, deadline)
            );
            match advanced {
                Ok(AdvanceOutcome::Moved) => {}
                Ok(AdvanceOutcome::AlreadyFurther) => {
                    report.possible_duplicates += written_beyond;
                    tracing::warn!(
                        route = %route.name,
                        shard = %batch.shard_id,
                        sequence_number = %advance.last_seq,
                        "Checkpoint was already further than this batch; another invocation handled the same records."
                    )
                }
                Err(e) => {
                    report.possible_duplicates += written_beyond;
                    tracing::warn!(
                        route = %route.name,
                        shard = %batch.shard_id,
                        error = %e,
                        "Could not write the checkpoint. Records are replicated; if this batch is retried they will be sent again."
                    );
                    report.checkpoint_error = Some(e.to_string());
                }
            }
        } else {
            self.heartbeat(route, batch, end, deadline).await;
        }
        if report.repairs > 0 {
            tracing::warn!(
                route = %route.name,
                shard = %batch.shard_id,
                repairs = report.repairs,
                "Wrote {} records a second time after an earlier record of their key failed (runs mode): \
                 the last copy of every record is in order, the first may not be.",
                report.repairs
            );
        }
        if let Some(stop) = &report.stop {
            log_stop(route, batch, &report, stop);
        }
        report
    }
}

//! One PutRecords request sent (split when refused for its contents), and its answer settled.

#[allow(unused_imports)]
use super::*;

impl<W: TargetWriter, C: CheckpointStore, D: DeadLetterStore> Replicator<W, C, D> {
    /// Sends one request, giving up after `timeout` (then its outcome is unknown: ambiguous).
    pub(super) async fn send(
        &self,
        route: &Route,
        records: &[SourceRecord],
        entries: Vec<Entry>,
        timeout: Duration,
    ) -> SentRequest {
        let out: Vec<OutEntry<'_>> = entries
            .iter()
            .map(|e| match &e.payload {
                Payload::Piece(p) => OutEntry {
                    partition_key: &p.partition_key,
                    explicit_hash_key: Some(&p.explicit_hash_key),
                    data: &p.data,
                },
                payload => OutEntry {
                    partition_key: e
                        .records
                        .first()
                        .and_then(|&i| records[i].partition_key.as_deref())
                        .unwrap_or_default(),
                    explicit_hash_key: None,
                    data: match payload {
                        Payload::Aggregated(bytes) => bytes,
                        Payload::Record(i) => &records[*i].data,
                        Payload::Piece(p) => &p.data,
                    },
                },
            })
            .collect();
        let deadline = Instant::now() + timeout;
        // Ranges of `entries` still to send (the next one last) and those answered, in order.
        let mut to_send: Vec<std::ops::Range<usize>> = Vec::with_capacity(2);
        to_send.push(0..entries.len());
        let mut answered: Vec<(std::ops::Range<usize>, RequestResult)> = Vec::new();
        while let Some(range) = to_send.pop() {
            let left = deadline.saturating_duration_since(Instant::now());
            let result = if left.is_zero() {
                Err(RequestError {
                    class: FailureClass::Transient,
                    ambiguous: false,
                    code: "Timeout".to_owned(),
                    message: format!("not sent: the request's {timeout:?} were used up"),
                })
            } else {
                let put = self.writer.put_records(route, &out[range.clone()]);
                tokio::time::timeout(left, put).await.unwrap_or_else(|_| {
                    Err(RequestError {
                        class: FailureClass::Transient,
                        ambiguous: true,
                        code: "Timeout".to_owned(),
                        message: format!("PutRecords did not answer within {timeout:?}"),
                    })
                })
            };
            match result {
                // The target refused the request for what it holds (a partition key or record
                // it will not take): halve it at a key boundary until the keys at fault are
                // alone, so that everything else is written and only those are refused.
                Err(e) if e.class == FailureClass::Permanent => {
                    match key_boundary_near_middle(&entries[range.clone()]) {
                        Some(mid) => {
                            to_send.push(range.start + mid..range.end);
                            to_send.push(range.start..range.start + mid);
                        }
                        None => {
                            // One key: its one entry is refused (dead-lettered, or sent record
                            // by record if it is an aggregate); several entries (a run) are
                            // failed, and the key's next run is a single record.
                            let class = if range.len() == 1 {
                                FailureClass::Permanent
                            } else {
                                FailureClass::Transient
                            };
                            let failed = EntryResult::Failed {
                                code: e.code.clone(),
                                message: e.message.clone(),
                                class,
                            };
                            answered.push((range.clone(), Ok(vec![failed; range.len()])));
                        }
                    }
                }
                other => answered.push((range, other)),
            }
        }
        drop(out);
        // The ranges were answered in order and cover every entry: cut `entries` into them.
        let mut entries = entries;
        let mut parts: SentRequest = Vec::with_capacity(answered.len());
        for (range, result) in answered.into_iter().rev() {
            parts.push((entries.split_off(range.start), result));
        }
        parts.reverse();
        parts
    }

    /// Applies one request's answer: written records leave their key's queue, a failed head
    /// makes its key (only) back off, a throttle slows its target shard, a refused record is
    /// to be dead-lettered, a systemic error stops the route at its first record.
    pub(super) fn settle(
        &self,
        p: Progress<'_, '_>,
        shard_limits: &ShardLimits,
        entries: Vec<Entry>,
        result: Result<Vec<EntryResult>, RequestError>,
    ) -> Settled {
        let Progress {
            records,
            target,
            sched,
            state,
            ambiguous,
            report,
        } = p;
        let now = Instant::now();
        let limits = &self.limits;
        // A key's first retry goes with the next request: a one-off failure costs one round
        // trip, not a sleep. From the second failure in a row the key backs off exponentially,
        // unless every failure was a throttle and the target's shards are paced: a throttled
        // shard is slowed and its bucket emptied (below), so its keys go again as its tokens
        // come, and a per-key sleep on top would only idle the shard.
        let paced_shards = target.map.is_known();
        // The wait before a key's next attempt, by attempt count, after failures that were
        // all throttles (`throttles_only`) or not.
        let backoff = |throttles_only: bool| {
            move |attempt: u32| match attempt {
                _ if throttles_only && paced_shards => Duration::ZERO,
                0 | 1 => Duration::ZERO,
                n => plan::backoff(
                    n - 1,
                    limits.backoff_base,
                    limits.backoff_max,
                    rand::random::<f64>(),
                ),
            }
        };
        let mut out = Settled::default();
        let mut note_systemic = |i: usize, code: &str, message: &str| {
            if out.systemic.as_ref().is_none_or(|(j, _, _)| i < *j) {
                out.systemic = Some((i, code.to_owned(), message.to_owned()));
            }
        };
        let mut throttled: Vec<usize> = Vec::new();
        // The entries of one key are next to each other: settle each key once, at its end.
        let slots: Vec<usize> = {
            let mut v: Vec<usize> = entries.iter().map(|e| e.slot).collect();
            v.dedup();
            v
        };
        match result {
            Ok(results) if results.len() == entries.len() => {
                let mut current: Option<usize> = None;
                // This key's later entries are not progress: an earlier one was not written.
                let mut broken = false;
                let mut failed = false;
                // Entries of this key written before its first failure.
                let mut through = 0;
                // This key's failures were all throttles.
                let mut only_throttled = true;
                let done = |sched: &mut Schedule<'_>,
                            slot: usize,
                            failed: bool,
                            through,
                            only_throttled: bool| {
                    if failed {
                        sched.run_failed(slot, through);
                    }
                    sched.settle(slot, failed.then_some(now), backoff(only_throttled));
                };
                for (e, r) in entries.iter().zip(results) {
                    if current != Some(e.slot) {
                        if let Some(slot) = current {
                            done(sched, slot, failed, through, only_throttled);
                        }
                        current = Some(e.slot);
                        broken = false;
                        failed = false;
                        through = 0;
                        only_throttled = true;
                    }
                    let first = e.records[0];
                    match r {
                        EntryResult::Written { .. } if broken => {
                            // runs: written after an earlier record of its key failed; it is
                            // sent again after that one, so its last copy is in order.
                            report.repairs += e.records.len();
                            report.possible_duplicates += e.records.len();
                        }
                        EntryResult::Written { shard_id, seq } => {
                            through += 1;
                            if target.map.is_known() && !target.map.contains(&shard_id) {
                                target.stale.store(true, Ordering::Relaxed);
                            }
                            for (&item, &i) in e.items.iter().zip(&e.records) {
                                if !sched.written(e.slot, item) {
                                    continue; // a split record with pieces still to write
                                }
                                report.written += 1;
                                report.bytes_written += records[i].data.len() as u64;
                                report.possible_duplicates += ambiguous[i] as usize;
                                state[i] = State::Written {
                                    shard_id: shard_id.clone(),
                                    seq: seq.clone(),
                                };
                            }
                        }
                        EntryResult::Failed {
                            code,
                            message,
                            class,
                        } => {
                            broken = true;
                            match class {
                                FailureClass::Transient => {
                                    failed = true;
                                    if shard_throttled(&code) {
                                        throttled.push(sched.shard_of(e.slot));
                                    } else {
                                        only_throttled = false;
                                    }
                                    *report.retries.entry(code).or_default() += 1;
                                }
                                FailureClass::Permanent if e.records.len() > 1 => {
                                    tracing::warn!(
                                        route = %report.route,
                                        error_code = %code,
                                        "The target refused an aggregated record of {} records ({code}: {message}); sending them one by one.",
                                        e.records.len()
                                    );
                                    sched.send_plain(e.slot);
                                    *report.retries.entry(code).or_default() += 1;
                                }
                                FailureClass::Permanent => out
                                    .dead_letters
                                    .push((first, e.items[0], e.slot, code, message)),
                                FailureClass::Systemic => note_systemic(first, &code, &message),
                            }
                        }
                    }
                }
                if let Some(slot) = current {
                    done(sched, slot, failed, through, only_throttled);
                }
            }
            Ok(results) => {
                let message = format!(
                    "PutRecords answered {} results for {} entries",
                    results.len(),
                    entries.len()
                );
                let first = entries.iter().map(|e| e.records[0]).min().unwrap_or(0);
                note_systemic(first, "MalformedResponse", &message);
                for slot in slots {
                    sched.settle(slot, None, backoff(false));
                }
            }
            Err(e) => match e.class {
                FailureClass::Transient | FailureClass::Permanent => {
                    *report.retries.entry(e.code.clone()).or_default() += entries.len() as u64;
                    for entry in &entries {
                        if e.ambiguous {
                            for &i in &entry.records {
                                ambiguous[i] += 1;
                            }
                        }
                        if shard_throttled(&e.code) {
                            throttled.push(sched.shard_of(entry.slot));
                        }
                    }
                    for slot in slots {
                        sched.settle(slot, Some(now), backoff(shard_throttled(&e.code)));
                    }
                }
                FailureClass::Systemic => {
                    let first = entries.iter().map(|e| e.records[0]).min().unwrap_or(0);
                    note_systemic(first, &e.code, &e.message);
                    for slot in slots {
                        sched.settle(slot, None, backoff(false));
                    }
                }
            },
        }
        if !throttled.is_empty() {
            throttled.sort_unstable();
            throttled.dedup();
            let mut buckets = lock(&target.buckets);
            for shard in throttled {
                if let Some(b) = buckets.get_mut(shard) {
                    b.throttled(shard_limits, now);
                }
            }
        }
        out
    }
}

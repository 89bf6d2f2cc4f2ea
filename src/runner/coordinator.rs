//! The coordinator: lists shards, takes leases, starts a task per shard, renews leases,
//! and decides when a run is over (caught up, or nothing left to read).

#[allow(unused_imports)]
use super::*;

/// Renews every held lease each third of the lease time, all at once, apart from the
/// coordinator's listing and taking of shards (which a slow store can hold up for longer than
/// a lease lasts). A lease found taken over cancels its shard task.
async fn keep_leases<L: LeaseStore>(
    leases: Arc<L>,
    held: Held,
    shared: Arc<Shared>,
    ttl: Duration,
    lease_name: String,
) {
    let ttl_ms = ttl.as_millis() as i64;
    loop {
        tokio::time::sleep(ttl / 3).await;
        let now: Vec<(String, Running)> = held
            .lock()
            .map(|h| h.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        let renewals = now.iter().map(|(shard, r)| {
            let p = shared.get(shard);
            let hb = Heartbeat {
                millis_behind: Some(p.millis_behind),
                caught_up: p.at_tip,
            };
            let leases = leases.clone();
            async move { (shard, r, leases.renew(&r.lease, hb, ttl_ms, now_ms()).await) }
        });
        for (shard, r, outcome) in futures::future::join_all(renewals).await {
            match outcome {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(shard = %shard, lease_name = %lease_name, "Lease of {shard} was taken by another runner; stopping this shard here.");
                    r.cancel.store(true, Ordering::Relaxed);
                    shared.update(shard, |s| s.lease_lost = true);
                }
                Err(e) => {
                    tracing::warn!(shard = %shard, error = %e, "Lease renewal failed; retrying.")
                }
            }
        }
    }
}

/// Runs until caught up (if asked), until `stop` is set, or until every shard stops.
/// `progress`, if given, receives live figures (the CLI renders them); otherwise, with
/// `options.progress`, a plain progress line is printed.
pub async fn run<R: ShardReader, I: Invoker + 'static, L: LeaseStore + 'static>(
    source: &R,
    stream: &StreamArn,
    invoker: Arc<I>,
    leases: Arc<L>,
    options: &RunnerOptions,
    stop: Arc<AtomicBool>,
) -> Result<RunSummary, RequestError> {
    run_with(
        source,
        stream,
        invoker,
        leases,
        options,
        stop,
        Arc::new(Shared::default()),
    )
    .await
}

/// [`run`] with the shared state supplied by the caller (to render progress itself).
pub async fn run_with<R: ShardReader, I: Invoker + 'static, L: LeaseStore + 'static>(
    source: &R,
    stream: &StreamArn,
    invoker: Arc<I>,
    leases: Arc<L>,
    options: &RunnerOptions,
    stop: Arc<AtomicBool>,
    shared: Arc<Shared>,
) -> Result<RunSummary, RequestError> {
    let started = Instant::now();
    let started_ms = now_ms();
    let ttl_ms = options.lease_ttl.as_millis() as i64;
    let mut running: HashMap<String, Running> = HashMap::new();
    let held: Held = Arc::default();
    let keeper = tokio::spawn(keep_leases(
        leases.clone(),
        held.clone(),
        shared.clone(),
        options.lease_ttl,
        options.lease_name.clone(),
    ));
    let mut tasks: tokio::task::JoinSet<(String, TaskEnd)> = tokio::task::JoinSet::new();
    let mut first_round = true;
    let printer = options.progress.then(|| {
        let shared = shared.clone();
        let stop = stop.clone();
        tokio::spawn(async move { print_progress(shared, stop).await })
    });
    let consumer_arn = match &options.fan_out_consumer {
        Some(name) => Some(source.ensure_consumer(stream, name).await?),
        None => None,
    };
    let mut failed_lists = 0u32;
    // Shards that stopped on an error: not read again by this run (they wait for a person).
    let mut failed: HashSet<String> = HashSet::new();
    loop {
        // Shard tasks that ended: release their leases (positions are already written).
        while let Some(done) = tasks.try_join_next() {
            if let Ok((shard, end)) = done {
                if end == TaskEnd::Failed {
                    failed.insert(shard.clone());
                }
                ended(&shard, &end, &held, &mut running, &*leases).await;
            }
        }
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let listing = match source.list_shards(stream).await {
            Ok(l) => {
                failed_lists = 0;
                let hints = shared.hints.lock().map(|h| h.clone()).unwrap_or_default();
                lineage::merge(l, &hints)
            }
            Err(e) if first_round => return Err(e),
            Err(e) => {
                failed_lists += 1;
                if failed_lists % 10 == 1 {
                    tracing::warn!(stream = %stream, error = %e, "ListShards failed; shards being read continue, new shards wait.");
                }
                tokio::time::sleep(options.discover_every).await;
                continue;
            }
        };
        first_round = false;
        let records: HashMap<String, LeaseRecord> = match leases.list(&options.lease_name).await {
            Ok(v) => v.into_iter().map(|r| (r.shard_id.clone(), r)).collect(),
            Err(e) => {
                tracing::warn!(lease_name = %options.lease_name, error = %e, "Cannot read the leases; retrying.");
                tokio::time::sleep(options.discover_every).await;
                continue;
            }
        };
        let now = now_ms();
        let finished: HashSet<String> = records
            .values()
            .filter(|r| r.position == Position::End)
            .map(|r| r.shard_id.clone())
            .collect();
        let running_ids: HashSet<String> = running.keys().chain(failed.iter()).cloned().collect();
        let ready: Vec<ShardInfo> = lineage::ready(&listing, &finished, &running_ids)
            .into_iter()
            .cloned()
            .collect();
        let mut acquired_any = false;
        // Take at most half of what is free per round (at least one), so runners started
        // together share the shards instead of the first one taking all of them.
        let mut budget = ready.len().div_ceil(2).max(1);
        for shard in &ready {
            if budget == 0 {
                break;
            }
            if records
                .get(&shard.shard_id)
                .is_some_and(|r| !r.claimable(now))
            {
                continue;
            }
            match leases
                .acquire(
                    &options.lease_name,
                    &shard.shard_id,
                    &options.owner,
                    ttl_ms,
                    now_ms(),
                )
                .await
            {
                Ok(Some((lease, position))) => {
                    acquired_any = true;
                    budget -= 1;
                    // An owner still named on an expired lease stopped without releasing it
                    // (killed, or cut off): it may have written records past its last
                    // checkpoint, which this run writes again.
                    let taken_from = records
                        .get(&shard.shard_id)
                        .and_then(|r| r.owner.clone())
                        .filter(|o| *o != options.owner);
                    tracing::info!(shard = %shard.shard_id, counter = lease.counter, position = ?position, owner = %options.owner, "Took the lease of {}.", shard.shard_id);
                    let listed: HashSet<&str> =
                        listing.iter().map(|s| s.shard_id.as_str()).collect();
                    let has_parent = [&shard.parent, &shard.adjacent_parent]
                        .iter()
                        .any(|p| p.as_deref().is_some_and(|p| listed.contains(p)));
                    let cancel = Arc::new(AtomicBool::new(false));
                    shared.update(&shard.shard_id, |s| {
                        s.leases_taken += 1;
                        s.lease_lost = false;
                        s.finished = false;
                    });
                    let task = ShardTask {
                        source: source.clone(),
                        stream: stream.clone(),
                        shard_id: shard.shard_id.clone(),
                        lease: lease.clone(),
                        position,
                        has_parent,
                        consumer_arn: consumer_arn.clone(),
                        invoker: invoker.clone(),
                        leases: leases.clone(),
                        options: options.clone(),
                        stop: stop.clone(),
                        cancel: cancel.clone(),
                        shared: shared.clone(),
                        taken_from: std::sync::Mutex::new(taken_from),
                    };
                    let id = shard.shard_id.clone();
                    tasks.spawn(async move {
                        let end = task.run().await;
                        (id, end)
                    });
                    let r = Running { lease, cancel };
                    if let Ok(mut h) = held.lock() {
                        h.insert(shard.shard_id.clone(), r.clone());
                    }
                    running.insert(shard.shard_id.clone(), r);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(shard = %shard.shard_id, error = %e, "Cannot take the lease; retrying.")
                }
            }
        }
        if options.until_caught_up
            && !acquired_any
            && caught_up(
                &listing, &finished, &records, &running, &shared, options, started_ms,
            )
        {
            break;
        }
        if running.is_empty()
            && listing
                .iter()
                .all(|s| finished.contains(&s.shard_id) || failed.contains(&s.shard_id))
        {
            break; // nothing left that this run can read
        }
        tokio::select! {
            _ = tokio::time::sleep(options.discover_every) => {}
            _ = shared.wake.notified() => {}
        }
    }
    // Stop what is running: in-flight batches finish and write their positions.
    for r in running.values() {
        r.cancel.store(true, Ordering::Relaxed);
    }
    while let Some(done) = tasks.join_next().await {
        if let Ok((shard, end)) = done {
            ended(&shard, &end, &held, &mut running, &*leases).await;
        }
    }
    keeper.abort();
    if let Some(p) = printer {
        p.abort();
    }
    Ok(RunSummary {
        shards: shared.snapshot(),
        elapsed: started.elapsed(),
    })
}

/// A shard task ended: stop renewing its lease and give it back, unless it was lost
/// (its position is already written).
async fn ended<L: LeaseStore>(
    shard: &str,
    end: &TaskEnd,
    held: &Held,
    running: &mut HashMap<String, Running>,
    leases: &L,
) {
    if let Ok(mut h) = held.lock() {
        h.remove(shard);
    }
    if let Some(r) = running.remove(shard) {
        if *end != TaskEnd::Lost {
            release(leases, &r.lease).await;
        }
    }
}

async fn release<L: LeaseStore>(leases: &L, lease: &Lease) {
    match leases.release(lease, now_ms()).await {
        Ok(true) => {
            tracing::info!(shard = %lease.shard_id, counter = lease.counter, "Released the lease of {}.", lease.shard_id)
        }
        Ok(false) => {
            tracing::debug!(shard = %lease.shard_id, "Lease already taken by another runner.")
        }
        Err(e) => tracing::warn!(
            shard = %lease.shard_id,
            error = %e,
            "Could not release the lease; another runner can take it once it expires."
        ),
    }
}

/// Every shard is finished, stopped, caught up here, or caught up at another live runner (a
/// heartbeat since this run started, fresh within half a lease: a runner that died does not
/// count, its shards wait for the lease to expire and are read here).
fn caught_up(
    listing: &[ShardInfo],
    finished: &HashSet<String>,
    records: &HashMap<String, LeaseRecord>,
    running: &HashMap<String, Running>,
    shared: &Shared,
    options: &RunnerOptions,
    started_ms: i64,
) -> bool {
    let now = now_ms();
    let fresh = options.lease_ttl.as_millis() as i64 / 2;
    let ready: HashSet<&str> = lineage::ready(listing, finished, &HashSet::new())
        .into_iter()
        .map(|s| s.shard_id.as_str())
        .collect();
    listing.iter().all(|s| {
        let id = s.shard_id.as_str();
        if finished.contains(id) || !ready.contains(id) {
            return true; // finished, or waiting for a parent (judged on its own)
        }
        if running.contains_key(id) {
            let p = shared.get(id);
            return p.caught_up || p.stopped.is_some();
        }
        if shared.get(id).stopped.is_some() {
            return true;
        }
        records.get(id).is_some_and(|r| {
            r.held_by_other(&options.owner, now)
                && r.caught_up
                && r.heartbeat_ms >= started_ms
                && now - r.heartbeat_ms <= fresh
        })
    })
}

//! What the replicator keeps of each target: its limits, its shard map and pacing buckets.

#[allow(unused_imports)]
use super::*;

impl<W: TargetWriter, C: CheckpointStore, D: DeadLetterStore> Replicator<W, C, D> {
    /// The target's limits (`DescribeStreamSummary`), cached for `limits.target_info_ttl`. A refresh
    /// that fails without a definite answer (a timeout, a throttle, a server or network error)
    /// keeps the last known value and tries again after [`TARGET_INFO_RETRY`]; only a definite
    /// answer (the stream is gone, access is denied, no credentials), or no value to keep,
    /// is an error.
    pub(super) async fn target_info(
        &self,
        route: &Route,
        by: Instant,
    ) -> Result<TargetInfo, RequestError> {
        let cached = lock(&self.target_info).get(&route.name).copied();
        if let Some((info, fresh_until)) = cached {
            if Instant::now() < fresh_until {
                return Ok(info);
            }
        }
        let wait = TARGET_INFO_TIMEOUT.min(by.saturating_duration_since(Instant::now()));
        let error = match tokio::time::timeout(wait, self.writer.target_info(route)).await {
            Ok(Ok(info)) => {
                lock(&self.target_info).insert(
                    route.name.clone(),
                    (info, Instant::now() + self.limits.target_info_ttl),
                );
                return Ok(info);
            }
            Ok(Err(e)) => e,
            Err(_) => RequestError {
                class: FailureClass::Transient,
                ambiguous: false,
                code: "Timeout".to_owned(),
                message: format!(
                    "DescribeStreamSummary on {} did not answer within {} ms",
                    route.target,
                    wait.as_millis()
                ),
            },
        };
        match cached {
            Some((info, _)) if error.class != FailureClass::Systemic => {
                tracing::warn!(
                    route = %route.name,
                    target = %route.target,
                    error_code = %error.code,
                    "Could not refresh the limits of {} ({}: {}); keeping the last known ones and trying again in {} s.",
                    route.target,
                    error.code,
                    error.message,
                    TARGET_INFO_RETRY.as_secs()
                );
                lock(&self.target_info).insert(
                    route.name.clone(),
                    (info, Instant::now() + TARGET_INFO_RETRY),
                );
                Ok(info)
            }
            _ => Err(error),
        }
    }

    /// The target's shard map and pacing buckets, read with ListShards when missing, older
    /// than [`SHARD_MAP_TTL`] or found stale. If it cannot be read, the last one is kept, or
    /// pacing is off (throttles still slow each key down): replication never waits on it.
    pub(super) async fn target_pacing(&self, route: &Route) -> Arc<TargetPacing> {
        let key = route.target.as_str();
        let cached = lock(&self.targets).get(key).cloned();
        if let Some(t) = &cached {
            if t.read_at.elapsed() < SHARD_MAP_TTL && !t.stale.load(Ordering::Relaxed) {
                return t.clone();
            }
        }
        let read = tokio::time::timeout(SHARD_MAP_TIMEOUT, self.writer.target_shards(route)).await;
        let shards = match read {
            Ok(Ok(shards)) => shards,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {} ms", SHARD_MAP_TIMEOUT.as_millis()),
                };
                tracing::warn!(
                    route = %route.name,
                    target = %route.target,
                    error = %why,
                    "Cannot read the shard map of {} ({why}); {}. Grant the writer role kinesis:ListShards on the target stream.",
                    route.target,
                    if cached.is_some() { "keeping the previous one" } else { "writes are not paced per target shard until it can be read" }
                );
                let fallback = cached.unwrap_or_else(|| {
                    Arc::new(TargetPacing {
                        map: ShardMap::default(),
                        buckets: Mutex::new(Vec::new()),
                        read_at: Instant::now(),
                        stale: AtomicBool::new(false),
                    })
                });
                // Try again after a TTL, not on every batch.
                let again = Arc::new(TargetPacing {
                    map: fallback.map.clone(),
                    buckets: Mutex::new(lock(&fallback.buckets).clone()),
                    read_at: Instant::now(),
                    stale: AtomicBool::new(false),
                });
                lock(&self.targets).insert(key.to_owned(), again.clone());
                return again;
            }
        };
        let map = ShardMap::new(shards);
        let now = Instant::now();
        // Shards that stay keep their buckets, so a refresh is not a burst.
        let buckets: Vec<Bucket> = map
            .shards()
            .iter()
            .map(|s| {
                cached
                    .as_ref()
                    .and_then(|old| {
                        let i = old
                            .map
                            .shards()
                            .iter()
                            .position(|o| o.shard_id == s.shard_id)?;
                        lock(&old.buckets).get(i).cloned()
                    })
                    .unwrap_or_else(|| Bucket::new(now))
            })
            .collect();
        let fresh = Arc::new(TargetPacing {
            map,
            buckets: Mutex::new(buckets),
            read_at: now,
            stale: AtomicBool::new(false),
        });
        lock(&self.targets).insert(key.to_owned(), fresh.clone());
        fresh
    }
}

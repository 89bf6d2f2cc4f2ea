//! What a check starts from: shard reads made into samples, and the routes as the replicator runs them.

#[allow(unused_imports)]
use super::*;

/// One stream read over `[from_ms, until_ms]`, shard by shard: what was read, and how far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardRead {
    pub shard_id: String,
    pub records: Vec<SampledRecord>,
    /// The whole window was read (else: up to `read_until_ms`).
    pub complete: bool,
    /// The newest arrival read (for an incomplete read: how far it got).
    pub read_until_ms: i64,
}

/// One sample per source shard from the source's reads and (optionally) the target's.
///
/// Before the first cutover producers write to the target (the old streams); the source holds
/// only test traffic. The target holds that traffic plus the source's replicated copies, so
/// per key, the side with more records in the window counts (never both: that would count
/// the copies twice); a key taken from the target goes to the source shard `shard_of` says
/// (the partition key's MD5 against the source's hash ranges).
///
/// Every read ends where the shortest one ended: the sample is one window for all, from
/// `from_ms` to the returned end.
pub fn combine(
    from_ms: i64,
    until_ms: i64,
    source: &[ShardRead],
    target: &[ShardRead],
    shard_of: impl Fn(&str) -> usize,
) -> (Vec<ShardSample>, i64) {
    let end = source
        .iter()
        .chain(target)
        .map(|r| {
            if r.complete {
                until_ms
            } else {
                r.read_until_ms.min(until_ms)
            }
        })
        .min()
        .unwrap_or(until_ms);
    let window_ms = (end - from_ms).max(0);
    let inside = |r: &&SampledRecord| r.arrival_ms >= from_ms && r.arrival_ms <= end;
    let mut target_by_key: HashMap<&str, Vec<&SampledRecord>> = HashMap::new();
    for r in target.iter().flat_map(|s| s.records.iter()).filter(inside) {
        target_by_key.entry(r.key.as_str()).or_default().push(r);
    }
    let mut source_counts: HashMap<&str, usize> = HashMap::new();
    for r in source.iter().flat_map(|s| s.records.iter()).filter(inside) {
        *source_counts.entry(r.key.as_str()).or_default() += 1;
    }
    let mut samples: Vec<ShardSample> = source
        .iter()
        .map(|s| ShardSample {
            shard_id: s.shard_id.clone(),
            window_ms,
            records: s
                .records
                .iter()
                .filter(inside)
                .filter(|r| {
                    target_by_key
                        .get(r.key.as_str())
                        .is_none_or(|t| t.len() <= source_counts[r.key.as_str()])
                })
                .cloned()
                .collect(),
        })
        .collect();
    if !samples.is_empty() {
        let mut keys: Vec<(&str, Vec<&SampledRecord>)> = target_by_key.into_iter().collect();
        keys.sort_by(|a, b| a.0.cmp(b.0));
        for (key, records) in keys {
            if records.len() > source_counts.get(key).copied().unwrap_or(0) {
                let i = shard_of(key).min(samples.len() - 1);
                samples[i].records.extend(records.into_iter().cloned());
            }
        }
        for s in &mut samples {
            s.records.sort_by_key(|r| r.arrival_ms);
        }
    }
    (samples, window_ms)
}

/// Which streams a capacity check reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Sides {
    /// The route's source (the new stream): its traffic now.
    Source,
    /// The route's target (the old stream), read with the writer role: where producers write
    /// before the first cutover (and, replication being caught up, copies of the source).
    Target,
    /// Both; per key the busier side counts ([`combine`]). A target that cannot be read is
    /// noted and the source alone decides.
    Both,
}

/// A route as the replicator runs it, for a capacity check: its order mode and writer role
/// (FANOUT_ROUTES) and the replicator's limits.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfiguredRoute {
    pub route: Route,
    pub limits: Limits,
    /// Set when the route's order is assumed (the route is not in FANOUT_ROUTES): why.
    pub note: Option<String>,
}

/// The forward routes of a migration's `streams`, with the order mode, writer role and limits
/// the replicator has: from `FANOUT_ROUTES` and the other `FANOUT_*` variables read through
/// `get` (the controller Lambda and `fanoutctl` have the replicator's values). A route missing
/// from FANOUT_ROUTES (or FANOUT_ROUTES unset) is checked as `strict`, the mode that needs the
/// most, with the default writer role, and says so. An unreadable FANOUT_ROUTES is an error.
pub fn configured_routes(
    streams: &[LogicalStream],
    get: impl Fn(&str) -> Option<String>,
) -> Result<Vec<ConfiguredRoute>, String> {
    let get = |name: &str| get(name).filter(|v| !v.trim().is_empty());
    let load = |routes: String| ReplicatorConfig::routes_and_limits(&routes, get);
    let configured = match ReplicatorConfig::routes_var(get) {
        Some(text) => Some(load(text).map_err(|e| {
            format!("{e}. The capacity check reads the replicator's routes: set FANOUT_ROUTES to the replicator's value")
        })?),
        None => None,
    };
    let mut out = Vec::new();
    for s in streams {
        let found = configured.as_ref().and_then(|c| {
            c.routes
                .iter()
                .find(|r| r.name == s.forward_route)
                .map(|r| (r, c))
        });
        if let Some((route, config)) = found {
            out.push(ConfiguredRoute {
                route: route.clone(),
                limits: config.limits.clone(),
                note: None,
            });
            continue;
        }
        let routes = serde_json::json!([{
            "source": s.new, "target": s.old, "name": s.forward_route
        }])
        .to_string();
        let config = load(routes).map_err(|e| format!("route {}: {e}", s.forward_route))?;
        let why = if configured.is_some() {
            format!("route {} is not in FANOUT_ROUTES", s.forward_route)
        } else {
            "FANOUT_ROUTES is not set".to_owned()
        };
        out.push(ConfiguredRoute {
            route: config.routes[0].clone(),
            limits: config.limits,
            note: Some(format!(
                "{why}: checked as strict, the order mode that needs the most (set FANOUT_ROUTES \
                 to the replicator's value to check the route's own mode)"
            )),
        });
    }
    Ok(out)
}

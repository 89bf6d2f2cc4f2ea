//! The model's arithmetic: per-key totals, each mode's constraints, a shard's and a route's assessment.

#[allow(unused_imports)]
use super::*;

/// One key's totals in a window.
#[derive(Clone, Debug, Default)]
struct KeyTotals {
    records: u64,
    bytes: u64,
}

/// A constraint: what is needed, what is sustained, and in words which limit it is.
struct Constraint {
    needed: f64,
    sustainable: f64,
    unit: &'static str,
    bound: Bound,
    /// Who needs it: `key "tenant-7"`, `the shard`, `the route`.
    subject: String,
    /// The limit that sustains it: `one record per round trip at 25 ms`.
    limit: String,
}

impl Constraint {
    fn margin(&self) -> f64 {
        if self.needed <= 0.0 {
            f64::INFINITY
        } else {
            self.sustainable / self.needed
        }
    }
}

/// The tightest of `cs` as a [`ModeCapacity`] (idle when nothing is needed).
fn tightest(
    mode: OrderMode,
    per_round_trip: f64,
    hottest_key_ceiling: Option<f64>,
    cs: Vec<Constraint>,
) -> ModeCapacity {
    let worst = cs
        .into_iter()
        .filter(|c| c.needed > 0.0)
        .min_by(|a, b| a.margin().total_cmp(&b.margin()));
    match worst {
        None => ModeCapacity {
            mode: mode.as_str(),
            per_round_trip,
            hottest_key_ceiling: None,
            margin: None,
            keeps_up: true,
            bound: Bound::Idle,
            limited_by: "idle: nothing arrived in the window".to_owned(),
            subject: String::new(),
            limit: String::new(),
            needed: 0.0,
            sustainable: 0.0,
            unit: "records/s",
            shard_id: None,
        },
        Some(c) => {
            let margin = c.margin();
            ModeCapacity {
                mode: mode.as_str(),
                per_round_trip,
                hottest_key_ceiling,
                margin: Some(margin),
                keeps_up: margin >= 1.0,
                bound: c.bound,
                limited_by: format!("{}: {}", c.subject, c.limit),
                subject: c.subject,
                limit: c.limit,
                needed: c.needed,
                sustainable: c.sustainable,
                unit: c.unit,
                shard_id: None,
            }
        }
    }
}

/// Records of one key that fit in one aggregated record, for records of `mean_bytes` (data +
/// key) with a key of `key_len` bytes: at least 1 (a record that fits nothing goes alone).
pub(super) fn per_aggregate(mean_bytes: f64, key_len: usize, max_record_bytes: usize) -> f64 {
    let data = (mean_bytes - key_len as f64).max(0.0);
    let room = max_record_bytes.saturating_sub(AGGREGATE_FIXED_OVERHEAD + key_len) as f64;
    (room / (data + AGGREGATE_RECORD_OVERHEAD as f64))
        .floor()
        .max(1.0)
}

/// Records of one key per request in `runs` mode.
pub(super) fn run_of(limits: &ModelLimits, mean_bytes: f64) -> f64 {
    let by_bytes = (limits.max_request_bytes as f64 / mean_bytes.max(1.0)).floor();
    (limits.run_length.min(limits.max_request_entries) as f64)
        .min(by_bytes)
        .max(1.0)
}

/// Records/s one key of `mean_bytes` records (key of `key_len` bytes) can move in `mode`.
fn key_ceiling(
    mode: OrderMode,
    mean_bytes: f64,
    key_len: usize,
    target: &TargetFacts,
    limits: &ModelLimits,
) -> f64 {
    let f = target.round_trips_per_sec();
    let by_bytes = limits.shard_bytes() / mean_bytes.max(1.0);
    match mode {
        OrderMode::Strict => f.min(limits.shard_records()).min(by_bytes),
        OrderMode::Runs => (run_of(limits, mean_bytes) * f)
            .min(limits.shard_records())
            .min(by_bytes),
        OrderMode::Aggregated => {
            let n = per_aggregate(mean_bytes, key_len, target.max_record_bytes);
            (n * f).min(n * limits.shard_records()).min(by_bytes)
        }
    }
}

/// Aggregated records/s a key sends at `rate` records/s: each round trip carries what
/// accumulated (a key slower than the round trips sends its records one by one), and never
/// fewer than its records ÷ what fits in one.
fn aggregates_per_sec(rate: f64, n: f64, f: f64) -> f64 {
    rate.min(f).max(rate / n)
}

/// Per-key totals of `records` (keys as given).
fn totals_by_key(records: &[SampledRecord]) -> HashMap<&str, KeyTotals> {
    let mut by_key: HashMap<&str, KeyTotals> = HashMap::new();
    for r in records {
        let t = by_key.entry(r.key.as_str()).or_default();
        t.records += 1;
        t.bytes += r.bytes;
    }
    by_key
}

/// The constraints of `mode` for one shard whose keys are `by_key`, over `secs` seconds.
fn shard_constraints(
    mode: OrderMode,
    by_key: &HashMap<&str, KeyTotals>,
    secs: f64,
    target: &TargetFacts,
    limits: &ModelLimits,
) -> Vec<Constraint> {
    let f = target.round_trips_per_sec();
    let rtt = fmt_ms(target.rtt_ms);
    let (r_lim, b_lim) = (limits.shard_records(), limits.shard_bytes());
    // The tightest key constraint of each kind, kept as the loop goes (a shard can have
    // hundreds of thousands of keys).
    fn keep(c: Constraint, slot: &mut Option<Constraint>) {
        if c.needed > 0.0 && slot.as_ref().is_none_or(|s| c.margin() < s.margin()) {
            *slot = Some(c);
        }
    }
    let (mut trips, mut key_records, mut key_bytes) = (None, None, None);
    let (mut records, mut bytes, mut aggregates) = (0.0, 0.0, 0.0);
    for (key, t) in by_key {
        let rate = t.records as f64 / secs;
        let brate = t.bytes as f64 / secs;
        let mean = t.bytes as f64 / t.records.max(1) as f64;
        records += rate;
        bytes += brate;
        let subject = format!("key {:?}", shown_key(key));
        let (per_trip, how) = match mode {
            OrderMode::Strict => (1.0, "one record per round trip".to_owned()),
            OrderMode::Runs => {
                let run = run_of(limits, mean);
                (run, format!("{} records per round trip", fmt_rate(run)))
            }
            OrderMode::Aggregated => {
                let n = per_aggregate(mean, key.len(), target.max_record_bytes);
                aggregates += aggregates_per_sec(rate, n, f);
                (
                    n,
                    format!(
                        "one aggregated record ({} records) per round trip",
                        fmt_rate(n)
                    ),
                )
            }
        };
        keep(
            Constraint {
                needed: rate,
                sustainable: per_trip * f,
                unit: "records/s",
                bound: Bound::KeyRoundTrips,
                subject: subject.clone(),
                limit: format!("{how} at {rtt}"),
            },
            &mut trips,
        );
        if mode != OrderMode::Aggregated {
            keep(
                Constraint {
                    needed: rate,
                    sustainable: r_lim,
                    unit: "records/s",
                    bound: Bound::KeyShardLimit,
                    subject: subject.clone(),
                    limit: "one target shard's records/s".to_owned(),
                },
                &mut key_records,
            );
        }
        keep(
            Constraint {
                needed: brate,
                sustainable: b_lim,
                unit: "bytes/s",
                bound: Bound::KeyShardLimit,
                subject,
                limit: "one target shard's bytes/s".to_owned(),
            },
            &mut key_bytes,
        );
    }
    let mut out: Vec<Constraint> = [trips, key_records, key_bytes]
        .into_iter()
        .flatten()
        .collect();
    let entries_unit = if mode == OrderMode::Aggregated {
        "aggregated records/s"
    } else {
        "records/s"
    };
    let entries_needed = if mode == OrderMode::Aggregated {
        aggregates
    } else {
        records
    };
    out.extend(total_constraints(
        "the shard",
        entries_needed,
        entries_unit,
        bytes,
        target,
        limits,
    ));
    let conc = limits.max_concurrent_requests.max(1) as f64;
    let in_flight = |what: String| {
        format!(
            "{} requests in flight of {what} at {rtt}",
            limits.max_concurrent_requests
        )
    };
    out.push(Constraint {
        needed: entries_needed,
        sustainable: conc * limits.max_request_entries as f64 * f,
        unit: entries_unit,
        bound: Bound::RequestsInFlight,
        subject: "the shard".to_owned(),
        limit: in_flight(format!("{} entries", limits.max_request_entries)),
    });
    out.push(Constraint {
        needed: bytes,
        sustainable: conc * limits.max_request_bytes as f64 * f,
        unit: "bytes/s",
        bound: Bound::RequestsInFlight,
        subject: "the shard".to_owned(),
        limit: in_flight(format!("{} bytes", limits.max_request_bytes)),
    });
    out
}

/// `subject`'s records (or aggregated records) and bytes against all the target's shards.
fn total_constraints(
    subject: &str,
    entries: f64,
    entries_unit: &'static str,
    bytes: f64,
    target: &TargetFacts,
    limits: &ModelLimits,
) -> [Constraint; 2] {
    let t = f64::from(target.shards.max(1));
    let shards = format!("{} target shard{}", target.shards, plural(target.shards));
    [
        Constraint {
            needed: entries,
            sustainable: t * limits.shard_records(),
            unit: entries_unit,
            bound: Bound::TargetShards,
            subject: subject.to_owned(),
            limit: format!("the records/s of {shards}"),
        },
        Constraint {
            needed: bytes,
            sustainable: t * limits.shard_bytes(),
            unit: "bytes/s",
            bound: Bound::TargetShards,
            subject: subject.to_owned(),
            limit: format!("the bytes/s of {shards}"),
        },
    ]
}

pub(super) fn plural(n: u32) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// What one source shard needs and what each order mode sustains.
pub fn assess_shard(
    sample: &ShardSample,
    target: &TargetFacts,
    limits: &ModelLimits,
) -> ShardCapacity {
    let secs = (sample.window_ms.max(1) as f64) / 1000.0;
    let by_key = totals_by_key(&sample.records);
    let records = sample.records.len() as u64;
    let bytes: u64 = sample.records.iter().map(|r| r.bytes).sum();
    let hottest = by_key.iter().max_by(|(ka, a), (kb, b)| {
        (a.records, a.bytes)
            .cmp(&(b.records, b.bytes))
            .then_with(|| kb.cmp(ka))
    });
    let hottest_key = hottest.map(|(k, t)| KeyLoad {
        key: shown_key(k),
        records_per_sec: t.records as f64 / secs,
        bytes_per_sec: t.bytes as f64 / secs,
        mean_record_bytes: t.bytes as f64 / t.records.max(1) as f64,
    });
    let modes = MODES
        .iter()
        .map(|&mode| {
            let (per_trip, ceiling) = match hottest {
                Some((k, t)) => {
                    let mean = t.bytes as f64 / t.records.max(1) as f64;
                    let per_trip = match mode {
                        OrderMode::Strict => 1.0,
                        OrderMode::Runs => run_of(limits, mean),
                        OrderMode::Aggregated => {
                            per_aggregate(mean, k.len(), target.max_record_bytes)
                        }
                    };
                    (
                        per_trip,
                        Some(key_ceiling(mode, mean, k.len(), target, limits)),
                    )
                }
                None => (
                    match mode {
                        OrderMode::Strict => 1.0,
                        OrderMode::Runs => limits.run_length.min(limits.max_request_entries) as f64,
                        OrderMode::Aggregated => 1.0,
                    },
                    None,
                ),
            };
            let cs = shard_constraints(mode, &by_key, secs, target, limits);
            tightest(mode, per_trip, ceiling, cs)
        })
        .collect();
    ShardCapacity {
        shard_id: sample.shard_id.clone(),
        window_ms: sample.window_ms,
        records,
        bytes,
        keys: by_key.len(),
        records_per_sec: records as f64 / secs,
        bytes_per_sec: bytes as f64 / secs,
        hottest_key,
        modes,
    }
}

/// Every shard of a route, and each mode over the route: the worst shard, or the route's
/// total over the target's shards (every source shard writes to the same target shards).
pub fn assess_route(
    samples: &[ShardSample],
    target: &TargetFacts,
    limits: &ModelLimits,
) -> RouteAssessment {
    let shards: Vec<ShardCapacity> = samples
        .iter()
        .map(|s| assess_shard(s, target, limits))
        .collect();
    let records_per_sec: f64 = shards.iter().map(|s| s.records_per_sec).sum();
    let bytes_per_sec: f64 = shards.iter().map(|s| s.bytes_per_sec).sum();
    let f = target.round_trips_per_sec();
    let modes = MODES
        .iter()
        .enumerate()
        .map(|(i, &mode)| {
            let worst = shards
                .iter()
                .filter(|s| s.modes[i].margin.is_some())
                .min_by(|a, b| {
                    a.modes[i]
                        .margin
                        .unwrap_or(f64::INFINITY)
                        .total_cmp(&b.modes[i].margin.unwrap_or(f64::INFINITY))
                });
            let mut best = match worst {
                Some(s) => ModeCapacity {
                    shard_id: Some(s.shard_id.clone()),
                    ..s.modes[i].clone()
                },
                None => {
                    // Every shard idle.
                    return tightest(
                        mode,
                        shards.first().map_or(1.0, |s| s.modes[i].per_round_trip),
                        None,
                        Vec::new(),
                    );
                }
            };
            if shards.len() > 1 {
                // The route's total against the target's shards.
                let (entries, unit) = if mode == OrderMode::Aggregated {
                    let aggregates = samples
                        .iter()
                        .map(|s| {
                            let secs = (s.window_ms.max(1) as f64) / 1000.0;
                            totals_by_key(&s.records)
                                .iter()
                                .map(|(k, kt)| {
                                    let rate = kt.records as f64 / secs;
                                    let mean = kt.bytes as f64 / kt.records.max(1) as f64;
                                    let n = per_aggregate(mean, k.len(), target.max_record_bytes);
                                    aggregates_per_sec(rate, n, f)
                                })
                                .sum::<f64>()
                        })
                        .sum();
                    (aggregates, "aggregated records/s")
                } else {
                    (records_per_sec, "records/s")
                };
                let subject = format!("the route ({} source shards)", shards.len());
                for c in total_constraints(&subject, entries, unit, bytes_per_sec, target, limits) {
                    let m = c.margin();
                    if c.needed > 0.0 && best.margin.is_none_or(|b| m < b) {
                        best.margin = Some(m);
                        best.keeps_up = m >= 1.0;
                        best.bound = c.bound;
                        best.limited_by = format!("{}: {}", c.subject, c.limit);
                        best.subject = c.subject;
                        best.limit = c.limit;
                        best.needed = c.needed;
                        best.sustainable = c.sustainable;
                        best.unit = c.unit;
                        best.shard_id = None;
                    }
                }
            }
            best
        })
        .collect();
    RouteAssessment {
        shards,
        records_per_sec,
        bytes_per_sec,
        modes,
    }
}

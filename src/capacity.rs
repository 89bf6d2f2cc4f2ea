//! Capacity: whether a route's order mode can keep up with its traffic. A pure model over a
//! sample of each source shard (every record's partition key, size and arrival time in a
//! window), the round trip to the target, the target's shard count and the write limits;
//! `fanoutctl capacity` and the controller's `capacity` guard gather the sample
//! ([`crate::aws::capacity`]) and print what this module concludes.
//!
//! # The physics
//!
//! Let `f = 1000 / rtt_ms` be the round trips one key can make per second, `R` and `B` one
//! target shard's write limits in records/s and bytes/s less the headroom
//! (`FANOUT_SHARD_RECORDS_PER_SEC`, `FANOUT_SHARD_BYTES_PER_SEC`, `FANOUT_SHARD_HEADROOM_PCT`),
//! and `T` the target's open shards.
//!
//! - **`strict`**: a key has at most one record in flight, so it moves at most one record per
//!   round trip: `f` records/s (40 at 25 ms), whatever the shard could take.
//! - **`runs`**: a key moves up to `run` records per round trip, `run` = the smallest of
//!   `FANOUT_RUN_LENGTH`, `FANOUT_MAX_REQUEST_ENTRIES` and how many of its records fit in
//!   `FANOUT_MAX_REQUEST_BYTES`: `run × f` records/s.
//! - **`aggregated`**: a key moves one aggregated record per round trip, holding `n` of its
//!   records, as many as fit in the target's record limit (1 MiB): `n × f` records/s. An
//!   aggregated record counts as one record against the shard's records/s, so only `B` (bytes)
//!   really limits it: the whole shard's bytes must fit.
//! - **Every mode**: a key lands on one target shard, so one key never gets more than `B`
//!   bytes/s, nor (`strict`, `runs`) more than `R` records/s. The source shard's traffic spreads
//!   over the `T` target shards: at most `T × R` records/s (aggregated: aggregated records) and
//!   `T × B` bytes/s, for each source shard and for the route as a whole. A shard batch has at
//!   most `FANOUT_MAX_CONCURRENT_REQUESTS` requests in flight, each of at most
//!   `FANOUT_MAX_REQUEST_ENTRIES` entries and `FANOUT_MAX_REQUEST_BYTES`.
//!
//! What is needed is the sample's sustained rate: records (bytes) in the window ÷ its length,
//! per key and per shard. A constraint's margin is what it sustains ÷ what is needed; a mode's
//! margin is the smallest over every key, every shard and the route (∞, shown as `idle`, when
//! nothing arrived). A mode keeps up when its margin is at least 1.
//!
//! The model is optimistic in one way: the round trip is measured with DescribeStreamSummary, a
//! light call, and PutRecords takes at least as long; margins under about 2× deserve a look. It
//! spreads a shard's keys evenly over the target's shards (only each key's own limit is exact),
//! and bursts shorter than the window are averaged out (the `lag` guard sees those).

use std::collections::HashMap;

use serde::Serialize;

use crate::config::{Limits, ReplicatorConfig};
use crate::control::record::LogicalStream;
use crate::model::{OrderMode, Route};

/// Characters of a partition key shown in reports (keys are not secret, but can be long).
pub const KEY_SHOWN_CHARS: usize = 32;

/// Bytes an aggregated record spends besides its records' data: magic, MD5 digest, and the
/// partition-key table entry (one key; its own length is added).
const AGGREGATE_FIXED_OVERHEAD: usize = 4 + 16 + 6;
/// Bytes each sub-record adds besides its data (protobuf tags, lengths, key index): at most
/// 10 for records under 2 MiB.
const AGGREGATE_RECORD_OVERHEAD: usize = 10;

/// One record of a sample.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SampledRecord {
    pub key: String,
    /// What Kinesis counts against its limits: data + partition key.
    pub bytes: u64,
    /// Approximate arrival time in the stream, ms since the epoch.
    pub arrival_ms: i64,
}

/// The records of one source shard over a window.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShardSample {
    pub shard_id: String,
    /// The window's length: rates are counts ÷ this.
    pub window_ms: i64,
    pub records: Vec<SampledRecord>,
}

/// The limits the model applies (the replicator's, from [`Limits`]).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct ModelLimits {
    pub shard_records_per_sec: u32,
    pub shard_bytes_per_sec: u32,
    pub shard_headroom_pct: u32,
    pub run_length: usize,
    pub max_request_entries: usize,
    pub max_request_bytes: usize,
    pub max_concurrent_requests: usize,
}

impl ModelLimits {
    pub fn from_limits(l: &Limits) -> ModelLimits {
        ModelLimits {
            shard_records_per_sec: l.shard_records_per_sec,
            shard_bytes_per_sec: l.shard_bytes_per_sec,
            shard_headroom_pct: l.shard_headroom_pct,
            run_length: l.run_length,
            max_request_entries: l.max_request_entries,
            max_request_bytes: l.max_request_bytes,
            max_concurrent_requests: l.max_concurrent_requests,
        }
    }

    fn keep(&self) -> f64 {
        1.0 - f64::from(self.shard_headroom_pct.min(99)) / 100.0
    }

    /// `R`: one target shard's records/s, less the headroom.
    pub fn shard_records(&self) -> f64 {
        f64::from(self.shard_records_per_sec) * self.keep()
    }

    /// `B`: one target shard's bytes/s, less the headroom.
    pub fn shard_bytes(&self) -> f64 {
        f64::from(self.shard_bytes_per_sec) * self.keep()
    }
}

impl Default for ModelLimits {
    fn default() -> Self {
        ModelLimits::from_limits(&Limits::default())
    }
}

/// What the model knows of the target.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct TargetFacts {
    /// The round trip to the target, ms (median of a few DescribeStreamSummary calls, or assumed).
    pub rtt_ms: f64,
    /// Open shards of the target stream.
    pub shards: u32,
    /// Largest record the target accepts (data + partition key): an aggregated record's limit.
    pub max_record_bytes: usize,
}

impl TargetFacts {
    /// `f`: round trips per second.
    fn round_trips_per_sec(&self) -> f64 {
        1000.0 / self.rtt_ms.max(0.001)
    }
}

/// What limits a mode, as a kind (so the fix can be named).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    /// Nothing arrived: nothing limits.
    Idle,
    /// A key's records per round trip (the order mode's own limit).
    KeyRoundTrips,
    /// One key is more than one target shard takes (no mode helps).
    KeyShardLimit,
    /// A source shard's (or the route's) traffic is more than the target's shards take.
    TargetShards,
    /// Requests in flight per shard batch.
    RequestsInFlight,
}

/// One order mode against a shard (or a whole route).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModeCapacity {
    pub mode: &'static str,
    /// Records of one key per round trip (strict 1, runs the run, aggregated the records of the
    /// hottest key that fit in one aggregated record).
    pub per_round_trip: f64,
    /// The most records/s the mode moves for the hottest key; `None` when idle.
    pub hottest_key_ceiling: Option<f64>,
    /// Sustainable ÷ needed at the tightest constraint; `None`: idle (∞).
    pub margin: Option<f64>,
    pub keeps_up: bool,
    pub bound: Bound,
    /// The tightest constraint, in words (`key "tenant-7": one record per round trip at 25 ms`):
    /// `subject: limit`.
    pub limited_by: String,
    /// Who needs what the tightest constraint gives: `key "tenant-7"`, `the shard`, `the route`.
    pub subject: String,
    /// The tightest limit: `one record per round trip at 25 ms`, `one target shard's bytes/s`.
    pub limit: String,
    /// At the tightest constraint: what is needed and what the mode sustains, in `unit`.
    pub needed: f64,
    pub sustainable: f64,
    pub unit: &'static str,
    /// The source shard the route-wide verdict comes from (`None` for a shard's own, or when
    /// the route total binds).
    pub shard_id: Option<String>,
}

/// The busiest key of a shard.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KeyLoad {
    /// Truncated to [`KEY_SHOWN_CHARS`].
    pub key: String,
    pub records_per_sec: f64,
    pub bytes_per_sec: f64,
    pub mean_record_bytes: f64,
}

/// One source shard: what it needs and what each order mode sustains.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ShardCapacity {
    pub shard_id: String,
    pub window_ms: i64,
    pub records: u64,
    pub bytes: u64,
    pub keys: usize,
    pub records_per_sec: f64,
    pub bytes_per_sec: f64,
    pub hottest_key: Option<KeyLoad>,
    /// strict, runs, aggregated.
    pub modes: Vec<ModeCapacity>,
}

/// Every shard of a route, and each mode over the whole route.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RouteAssessment {
    pub shards: Vec<ShardCapacity>,
    pub records_per_sec: f64,
    pub bytes_per_sec: f64,
    /// strict, runs, aggregated: the worst over the shards and the route's total.
    pub modes: Vec<ModeCapacity>,
}

/// The modes in the order reports show them.
pub const MODES: [OrderMode; 3] = [OrderMode::Strict, OrderMode::Runs, OrderMode::Aggregated];

/// `key`, cut to [`KEY_SHOWN_CHARS`] characters (with `…` when cut).
pub fn shown_key(key: &str) -> String {
    match key.char_indices().nth(KEY_SHOWN_CHARS) {
        Some((i, _)) => format!("{}…", &key[..i]),
        None => key.to_owned(),
    }
}

/// A margin as reports print it: `0.21×`, `4.1×`, `21×`, `idle`.
pub fn fmt_margin(margin: Option<f64>) -> String {
    match margin {
        None => "idle".to_owned(),
        Some(m) if m.is_infinite() => "∞".to_owned(),
        Some(m) if m < 1.0 => format!("{m:.2}×"),
        Some(m) if m < 10.0 => format!("{m:.1}×"),
        Some(m) => format!("{m:.0}×"),
    }
}

/// A rate as reports print it: `0.5`, `42`, `190`, `12,400`.
pub fn fmt_rate(r: f64) -> String {
    if r < 10.0 && r.fract() != 0.0 {
        return format!("{r:.1}");
    }
    let whole = r.round() as u64;
    let digits = whole.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Milliseconds as reports print them: `25 ms`, `1.2 ms`, `0.40 ms`.
pub fn fmt_ms(ms: f64) -> String {
    if ms >= 10.0 {
        format!("{ms:.0} ms")
    } else if ms >= 1.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.2} ms")
    }
}

/// Bytes/s as reports print them: `512 B/s`, `19.4 KiB/s`, `1.2 MiB/s`.
pub fn fmt_bytes_rate(b: f64) -> String {
    if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB/s", b / (1024.0 * 1024.0))
    } else if b >= 1024.0 {
        format!("{:.1} KiB/s", b / 1024.0)
    } else {
        format!("{b:.0} B/s")
    }
}

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
fn per_aggregate(mean_bytes: f64, key_len: usize, max_record_bytes: usize) -> f64 {
    let data = (mean_bytes - key_len as f64).max(0.0);
    let room = max_record_bytes.saturating_sub(AGGREGATE_FIXED_OVERHEAD + key_len) as f64;
    (room / (data + AGGREGATE_RECORD_OVERHEAD as f64))
        .floor()
        .max(1.0)
}

/// Records of one key per request in `runs` mode.
fn run_of(limits: &ModelLimits, mean_bytes: f64) -> f64 {
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

fn plural(n: u32) -> &'static str {
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

impl ShardCapacity {
    pub fn mode(&self, mode: OrderMode) -> &ModeCapacity {
        let i = MODES.iter().position(|m| *m == mode).unwrap_or(0);
        &self.modes[i]
    }

    /// The shard in one line: `hottest key "tenant-7" 190 rec/s; strict keeps up to 40 rec/s
    /// per key at 25 ms: NO (0.21×); runs (100 per request): yes, 5.1× [key "tenant-7": one
    /// target shard's records/s]; aggregated: yes, 5.2× [...]`: each mode's margin and, when
    /// under 10× and not the key's round trips, what limits it.
    pub fn line(&self, target: &TargetFacts) -> String {
        let Some(hot) = &self.hottest_key else {
            return format!("idle: no records in the {} s window", self.window_ms / 1000);
        };
        let verdict = |m: &ModeCapacity| {
            let mut s = if m.keeps_up {
                format!("yes, {}", fmt_margin(m.margin))
            } else {
                format!("NO ({})", fmt_margin(m.margin))
            };
            // What limits a mode matters when the margin is thin; the key's round trips are
            // already in the line.
            let thin = m.margin.is_some_and(|x| x < 10.0);
            if thin && m.bound != Bound::KeyRoundTrips && m.bound != Bound::Idle {
                s.push_str(&format!(" [{}]", m.limited_by));
            }
            s
        };
        let strict = self.mode(OrderMode::Strict);
        let runs = self.mode(OrderMode::Runs);
        let aggregated = self.mode(OrderMode::Aggregated);
        format!(
            "hottest key {:?} {} rec/s; strict keeps up to {} rec/s per key at {}: {}; runs ({} per request): {}; aggregated: {}",
            hot.key,
            fmt_rate(hot.records_per_sec),
            fmt_rate(strict.hottest_key_ceiling.unwrap_or(0.0)),
            fmt_ms(target.rtt_ms),
            verdict(strict),
            fmt_rate(runs.per_round_trip),
            verdict(runs),
            verdict(aggregated),
        )
    }
}

impl RouteAssessment {
    pub fn mode(&self, mode: OrderMode) -> &ModeCapacity {
        let i = MODES.iter().position(|m| *m == mode).unwrap_or(0);
        &self.modes[i]
    }

    /// The verdict for the route's configured `order`, in one sentence that names the shard,
    /// the key, and the fix (or the other modes that would keep up).
    pub fn verdict(&self, route: &str, order: OrderMode, target: &TargetFacts) -> String {
        let m = self.mode(order);
        let shard = |m: &ModeCapacity| {
            m.shard_id
                .as_deref()
                .map(|s| format!(" on {s}"))
                .unwrap_or_default()
        };
        if m.margin.is_none() {
            return format!(
                "{route} ({order}): keeps up (idle: no records in the window, nothing to measure)"
            );
        }
        let hottest = self
            .shards
            .iter()
            .filter_map(|s| s.hottest_key.as_ref().map(|k| (s, k)))
            .max_by(|a, b| a.1.records_per_sec.total_cmp(&b.1.records_per_sec));
        let hot = hottest
            .map(|(s, k)| {
                format!(
                    "hottest key {:?} {} rec/s on {}; {order} moves up to {} rec/s per key at {}",
                    k.key,
                    fmt_rate(k.records_per_sec),
                    s.shard_id,
                    fmt_rate(s.mode(order).hottest_key_ceiling.unwrap_or(0.0)),
                    fmt_ms(target.rtt_ms)
                )
            })
            .unwrap_or_default();
        if m.keeps_up {
            return format!(
                "{route} ({order}): keeps up, {} margin ({hot})",
                fmt_margin(m.margin)
            );
        }
        let others: Vec<String> = MODES
            .iter()
            .filter(|o| **o != order && self.mode(**o).keeps_up)
            .map(|o| format!("{o} ({})", fmt_margin(self.mode(*o).margin)))
            .collect();
        let fix = match m.bound {
            Bound::KeyRoundTrips if !others.is_empty() => format!(
                "{} would keep up: set \"order\" for this route in FANOUT_ROUTES (and the \
                 Terraform route object); see the README's Order modes for what each promises \
                 consumers",
                others.join(" or ")
            ),
            Bound::KeyRoundTrips => "no order mode keeps up at this round trip: run the \
                 replicator closer to the target (same region), or spread the key's records \
                 over more keys"
                .to_owned(),
            Bound::KeyShardLimit => "one key needs more than a target shard takes, in every \
                 mode: producers must spread it over more partition keys"
                .to_owned(),
            Bound::TargetShards if !others.is_empty() => format!(
                "{} would keep up; otherwise add shards to the target stream (UpdateShardCount)",
                others.join(" or ")
            ),
            Bound::TargetShards => "add shards to the target stream (UpdateShardCount), or raise \
                 FANOUT_SHARD_*_PER_SEC if the target's limits are higher"
                .to_owned(),
            Bound::RequestsInFlight => "raise FANOUT_MAX_CONCURRENT_REQUESTS".to_owned(),
            Bound::Idle => String::new(),
        };
        format!(
            "{route} ({order}): CANNOT KEEP UP{}: {} needs {} {} and {order} moves {} ({}): {} \
             margin. {fix}",
            shard(m),
            m.subject,
            fmt_rate(m.needed),
            m.unit,
            fmt_rate(m.sustainable),
            m.limit,
            fmt_margin(m.margin)
        )
    }
}

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

/// A route's capacity check: what was read, the target's facts, each shard and mode, and
/// the verdict for the route's configured order mode.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RouteCapacity {
    pub route: String,
    pub source: String,
    pub target: String,
    /// The route's configured order mode (the verdict's).
    pub order: &'static str,
    /// The window read: `[from_ms, from_ms + window_ms]`.
    pub from_ms: i64,
    pub window_ms: i64,
    /// What was read: `source (2 shards)`, `target (1 shard)`.
    pub sampled: Vec<String>,
    pub target_facts: TargetFacts,
    /// How the round trip was found: measured (median of N), or assumed.
    pub round_trip: String,
    pub limits: ModelLimits,
    pub assessment: RouteAssessment,
    /// The configured mode keeps up.
    pub keeps_up: bool,
    pub verdict: String,
    /// Anything the reader should know: an assumed order mode, a side that could not be read,
    /// a window cut short.
    pub notes: Vec<String>,
}

impl RouteCapacity {
    /// Runs the model over `samples` and states the verdict for `route`'s order mode.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        route: &Route,
        limits: &Limits,
        samples: &[ShardSample],
        from_ms: i64,
        window_ms: i64,
        target: TargetFacts,
        round_trip: String,
        sampled: Vec<String>,
        notes: Vec<String>,
    ) -> RouteCapacity {
        let model_limits = ModelLimits::from_limits(limits);
        let assessment = assess_route(samples, &target, &model_limits);
        let verdict = assessment.verdict(&route.name, route.order, &target);
        RouteCapacity {
            route: route.name.clone(),
            source: route.source.to_string(),
            target: route.target.to_string(),
            order: route.order.as_str(),
            from_ms,
            window_ms,
            sampled,
            target_facts: target,
            round_trip,
            limits: model_limits,
            keeps_up: assessment.mode(route.order).keeps_up,
            assessment,
            verdict,
            notes,
        }
    }

    /// The report for a person: the route, a table of its shards, one line per busy shard,
    /// the notes, and the verdict.
    pub fn render_text(&self) -> String {
        let t = &self.target_facts;
        let mut out = format!(
            "route {}   order {}\n  source {}\n  target {} ({} shard{}, round trip {}: {})\n  \
             read the newest {} s of: {}\n\n",
            self.route,
            self.order,
            self.source,
            self.target,
            t.shards,
            plural(t.shards),
            fmt_ms(t.rtt_ms),
            self.round_trip,
            self.window_ms / 1000,
            self.sampled.join(", ")
        );
        out.push_str(&format!(
            "  {:<24} {:>8} {:>12} {:>6}  {:<35} {:>7}  {:<11} {:<11} {:<11}\n",
            "shard",
            "rec/s",
            "bytes/s",
            "keys",
            "hottest key",
            "rec/s",
            "strict",
            "runs",
            "aggregated"
        ));
        let cell = |m: &ModeCapacity| match m.margin {
            None => "idle".to_owned(),
            Some(_) if m.keeps_up => format!("yes {}", fmt_margin(m.margin)),
            Some(_) => format!("NO {}", fmt_margin(m.margin)),
        };
        for s in &self.assessment.shards {
            let (key, rate) = match &s.hottest_key {
                Some(k) => (format!("{:?}", k.key), fmt_rate(k.records_per_sec)),
                None => ("-".to_owned(), "-".to_owned()),
            };
            out.push_str(&format!(
                "  {:<24} {:>8} {:>12} {:>6}  {:<35} {:>7}  {:<11} {:<11} {:<11}\n",
                s.shard_id,
                fmt_rate(s.records_per_sec),
                fmt_bytes_rate(s.bytes_per_sec),
                s.keys,
                key,
                rate,
                cell(s.mode(OrderMode::Strict)),
                cell(s.mode(OrderMode::Runs)),
                cell(s.mode(OrderMode::Aggregated)),
            ));
        }
        let a = &self.assessment;
        out.push_str(&format!(
            "  {:<24} {:>8} {:>12} {:>6}  {:<35} {:>7}  {:<11} {:<11} {:<11}\n\n",
            "route",
            fmt_rate(a.records_per_sec),
            fmt_bytes_rate(a.bytes_per_sec),
            "",
            "",
            "",
            cell(a.mode(OrderMode::Strict)),
            cell(a.mode(OrderMode::Runs)),
            cell(a.mode(OrderMode::Aggregated)),
        ));
        for s in a.shards.iter().filter(|s| s.hottest_key.is_some()) {
            out.push_str(&format!("  {}: {}\n", s.shard_id, s.line(t)));
        }
        for n in &self.notes {
            out.push_str(&format!("  note: {n}\n"));
        }
        out.push_str(&format!("  {}\n", self.verdict));
        out.lines().map(|l| format!("{}\n", l.trim_end())).collect()
    }
}

#[cfg(test)]
mod tests;

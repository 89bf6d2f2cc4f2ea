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

mod inputs;
mod model;
mod report;

pub use inputs::*;
pub use model::*;
pub use report::*;

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

#[cfg(test)]
mod tests;

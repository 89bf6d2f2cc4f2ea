//! Target-shard pacing: the target stream's shard map (which shard a partition key lands on)
//! and one token bucket per target shard that keeps the replicator under the shard's write
//! limits, slowing down when Kinesis throttles and recovering when it stops.
//!
//! Pure code: time comes in as an argument, so tests drive it without sleeping.

use std::time::Duration;

use tokio::time::Instant;

/// One open shard of the target stream and the hash keys it owns (inclusive).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetShard {
    pub shard_id: String,
    pub start: u128,
    pub end: u128,
}

/// The target stream's open shards, sorted by hash range.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShardMap {
    shards: Vec<TargetShard>,
}

impl ShardMap {
    /// Builds the map from the open shards (closed shards take no writes and are left out by
    /// the caller). An empty map means "unknown": every key maps to shard 0 and pacing is off.
    pub fn new(mut shards: Vec<TargetShard>) -> Self {
        shards.sort_by_key(|s| s.start);
        ShardMap { shards }
    }

    pub fn is_known(&self) -> bool {
        !self.shards.is_empty()
    }

    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    pub fn shards(&self) -> &[TargetShard] {
        &self.shards
    }

    /// The index of the shard that owns `hash` (0 when the map is unknown or has a gap, as
    /// during a reshard seen half-way).
    pub fn shard_for(&self, hash: u128) -> usize {
        let i = self.shards.partition_point(|s| s.start <= hash);
        match i.checked_sub(1) {
            Some(j) if self.shards[j].end >= hash => j,
            _ => 0,
        }
    }

    /// Whether `shard_id` is one of the map's shards (a write landing elsewhere means the
    /// target was resharded and the map must be read again).
    pub fn contains(&self, shard_id: &str) -> bool {
        self.shards.iter().any(|s| s.shard_id == shard_id)
    }
}

/// A target shard's write limits, already reduced by the configured headroom.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ShardLimits {
    pub records_per_sec: f64,
    pub bytes_per_sec: f64,
}

impl ShardLimits {
    pub fn new(records_per_sec: u32, bytes_per_sec: u32, headroom_pct: u32) -> Self {
        let keep = 1.0 - f64::from(headroom_pct.min(99)) / 100.0;
        ShardLimits {
            records_per_sec: f64::from(records_per_sec) * keep,
            bytes_per_sec: f64::from(bytes_per_sec) * keep,
        }
    }
}

/// How much of the limit a throttle takes away, and the floor it never goes under.
const THROTTLE_FACTOR: f64 = 0.7;
const MIN_FRACTION: f64 = 0.05;
/// Fraction of the limit regained per second without a throttle.
const RECOVERY_PER_SEC: f64 = 0.1;

/// One target shard's token bucket. Capacity is one second of the current rate (Kinesis
/// measures its limits per second); a record larger than the whole bucket may go when the
/// bucket is full, taking it below zero.
#[derive(Clone, Debug)]
pub struct Bucket {
    /// The current rate as a fraction of the limit: lowered by throttles, regained over time.
    fraction: f64,
    records: f64,
    bytes: f64,
    at: Instant,
    /// The pacer's takes emptied the bucket: it gives out tokens again once it holds a
    /// gathering's worth ([`GATHER`]), so that a paced shard gets a few fuller requests rather
    /// than one request per token.
    dry: bool,
}

/// How much a paced shard that ran dry gathers before it sends again: this long at its
/// rate, at most a full request's entries (500), at least one record.
pub const GATHER: Duration = Duration::from_millis(20);
const GATHER_MOST: f64 = 500.0;

impl Bucket {
    pub fn new(now: Instant) -> Self {
        Bucket {
            fraction: 1.0,
            records: f64::MAX,
            bytes: f64::MAX,
            at: now,
            dry: false,
        }
    }

    /// Records a dry bucket must hold before the pacer takes from it again: [`GATHER`] at the
    /// configured rate, at most a full request's entries and the bucket's capacity.
    fn gathered(&self, limits: &ShardLimits) -> f64 {
        let (cap_records, _) = self.capacity(limits);
        (limits.records_per_sec * GATHER.as_secs_f64())
            .min(GATHER_MOST)
            .min(cap_records)
            .max(1.0)
    }

    /// The pacer's take: like [`Bucket::try_take`], but a bucket the pacer's takes emptied
    /// gives out nothing until it has gathered [`GATHER`]'s worth of records.
    pub fn take_paced(&mut self, limits: &ShardLimits, bytes: usize, now: Instant) -> bool {
        self.refill(limits, now);
        if self.dry {
            if self.records < self.gathered(limits) {
                return false;
            }
            self.dry = false;
        }
        let taken = self.try_take(limits, bytes, now);
        // Emptied by the pacer's own takes (not by a throttle, which only slows the rate).
        if taken && self.records < 1.0 {
            self.dry = true;
        }
        taken
    }

    fn refill(&mut self, limits: &ShardLimits, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now.max(self.at);
        self.fraction = (self.fraction + RECOVERY_PER_SEC * dt).min(1.0);
        let (cap_records, cap_bytes) = self.capacity(limits);
        self.records = (self.records + cap_records * dt).min(cap_records);
        self.bytes = (self.bytes + cap_bytes * dt).min(cap_bytes);
    }

    fn capacity(&self, limits: &ShardLimits) -> (f64, f64) {
        (
            (limits.records_per_sec * self.fraction).max(1.0),
            (limits.bytes_per_sec * self.fraction).max(1.0),
        )
    }

    /// Takes one record of `bytes` if the bucket allows it now.
    pub fn try_take(&mut self, limits: &ShardLimits, bytes: usize, now: Instant) -> bool {
        self.refill(limits, now);
        let (_, cap_bytes) = self.capacity(limits);
        let bytes = bytes as f64;
        if self.records >= 1.0 && (self.bytes >= bytes || self.bytes >= cap_bytes) {
            self.records -= 1.0;
            self.bytes -= bytes;
            true
        } else {
            false
        }
    }

    /// The bytes left in the bucket now: the most an aggregate built now should take.
    pub fn room(&mut self, limits: &ShardLimits, now: Instant) -> usize {
        self.refill(limits, now);
        self.bytes.max(0.0) as usize
    }

    /// How long until a record of `bytes` may go (zero if it may now).
    pub fn wait_for(&mut self, limits: &ShardLimits, bytes: usize, now: Instant) -> Duration {
        self.refill(limits, now);
        let (cap_records, cap_bytes) = self.capacity(limits);
        let need_bytes = (bytes as f64).min(cap_bytes);
        let need_records = if self.dry { self.gathered(limits) } else { 1.0 };
        let records_wait = (need_records - self.records).max(0.0) / cap_records;
        let bytes_wait = (need_bytes - self.bytes).max(0.0) / cap_bytes;
        let wait = records_wait.max(bytes_wait);
        if wait > 0.0 {
            // Rounded up, so that a caller waking at `now + wait` finds the tokens there.
            Duration::from_secs_f64(wait) + Duration::from_micros(100)
        } else {
            Duration::ZERO
        }
    }

    /// How long a shard takes to gather `records` records' tokens at its configured rate
    /// (the bucket's own rate, lowered by throttles, is enforced by [`Bucket::wait_for`]).
    pub fn time_to_gather(limits: &ShardLimits, records: usize) -> Duration {
        Duration::from_secs_f64(records as f64 / limits.records_per_sec.max(1.0))
    }

    /// Kinesis throttled a write to this shard: someone else writes to it too, or the limits
    /// are set too high. Slow down and empty the bucket.
    pub fn throttled(&mut self, limits: &ShardLimits, now: Instant) {
        self.refill(limits, now);
        self.fraction = (self.fraction * THROTTLE_FACTOR).max(MIN_FRACTION);
        let (cap_records, cap_bytes) = self.capacity(limits);
        self.records = self.records.min(cap_records).min(0.0);
        self.bytes = self.bytes.min(cap_bytes).min(0.0);
    }

    /// The current rate as a fraction of the limit.
    pub fn fraction(&self) -> f64 {
        self.fraction
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, start: u128, end: u128) -> TargetShard {
        TargetShard {
            shard_id: id.into(),
            start,
            end,
        }
    }

    #[test]
    fn a_hash_finds_the_shard_whose_range_holds_it() {
        let half = u128::MAX / 2;
        let map = ShardMap::new(vec![shard("b", half + 1, u128::MAX), shard("a", 0, half)]);
        let cases = [(0, 0), (half, 0), (half + 1, 1), (u128::MAX, 1)];
        for (hash, want) in cases {
            assert_eq!(map.shard_for(hash), want, "{hash}");
        }
        assert!(map.contains("b") && !map.contains("c"));
        assert_eq!(ShardMap::default().shard_for(12345), 0);
        // A gap (a reshard seen half-way) falls back to shard 0 instead of panicking.
        let gappy = ShardMap::new(vec![shard("a", 10, 20), shard("b", 30, 40)]);
        assert_eq!(gappy.shard_for(25), 0);
        assert_eq!(gappy.shard_for(5), 0);
        assert_eq!(gappy.shard_for(35), 1);
    }

    /// Takes as many 1 KiB records as the bucket allows, at 1 ms steps, for `secs` seconds.
    fn admitted(bucket: &mut Bucket, limits: &ShardLimits, start: Instant, secs: u64) -> usize {
        let mut n = 0;
        for ms in 0..secs * 1000 {
            let now = start + Duration::from_millis(ms);
            while bucket.try_take(limits, 1024, now) {
                n += 1;
            }
        }
        n
    }

    #[test]
    fn a_bucket_keeps_to_its_records_and_bytes_limits() {
        let start = Instant::now();
        // 1,000 records/s with 3% headroom: one second of burst, then 970/s.
        let limits = ShardLimits::new(1000, 10 << 20, 3);
        let mut b = Bucket::new(start);
        let n = admitted(&mut b, &limits, start, 5);
        assert!(
            (5810..=5830).contains(&n),
            "{n} records: 970 at once, then 970/s for 5 s"
        );
        // Bytes bind instead: 100 KiB/s of 1 KiB records is 100 records/s.
        let limits = ShardLimits::new(1000, 100 * 1024, 0);
        let mut b = Bucket::new(start);
        let n = admitted(&mut b, &limits, start, 5);
        assert!(
            (595..=605).contains(&n),
            "{n} records: 100 at once, then 100/s for 5 s"
        );
    }

    #[test]
    fn a_paced_shard_that_ran_dry_gathers_before_it_sends_again() {
        let start = Instant::now();
        let limits = ShardLimits::new(1000, 10 << 20, 0);
        let mut b = Bucket::new(start);
        let mut n = 0;
        while b.take_paced(&limits, 100, start) {
            n += 1;
        }
        assert_eq!(n, 1000, "the full bucket first");
        // 2 ms later two tokens are back: a plain take would send them one request each.
        let soon = start + Duration::from_millis(2);
        assert!(!b.take_paced(&limits, 100, soon), "gathering");
        let wait = b.wait_for(&limits, 100, soon);
        assert!(
            wait >= Duration::from_millis(17) && wait <= Duration::from_millis(19),
            "{wait:?}: until 20 records are there"
        );
        let ready = soon + wait;
        let mut m = 0;
        while b.take_paced(&limits, 100, ready) {
            m += 1;
        }
        assert_eq!(m, 20, "a gathering's worth in one go");
        // A throttle empties the bucket without making it gather: its lowered rate paces it.
        let mut t = Bucket::new(start);
        t.throttled(&limits, start);
        assert!(t.take_paced(&limits, 100, start + Duration::from_millis(2)));
    }

    #[test]
    fn a_throttle_slows_the_shard_and_it_recovers_without_throttles() {
        let start = Instant::now();
        let limits = ShardLimits::new(1000, 1 << 20, 0);
        let mut b = Bucket::new(start);
        b.throttled(&limits, start);
        assert!((b.fraction() - 0.7).abs() < 1e-9);
        assert!(!b.try_take(&limits, 1, start), "an emptied bucket");
        assert!(b.wait_for(&limits, 1, start) > Duration::ZERO);
        for _ in 0..100 {
            b.throttled(&limits, start);
        }
        assert!(
            (b.fraction() - MIN_FRACTION).abs() < 1e-9,
            "never below the floor"
        );
        let later = start + Duration::from_secs(20);
        b.refill(&limits, later);
        assert_eq!(b.fraction(), 1.0, "recovered after 10 s at 10%/s");
    }

    #[test]
    fn a_record_larger_than_the_bucket_goes_when_the_bucket_is_full() {
        let start = Instant::now();
        let limits = ShardLimits::new(1000, 1 << 20, 3);
        let mut b = Bucket::new(start);
        assert!(b.try_take(&limits, 1 << 20, start));
        assert!(!b.try_take(&limits, 1 << 20, start));
        let wait = b.wait_for(&limits, 1 << 20, start);
        assert!(
            wait >= Duration::from_millis(900) && wait <= Duration::from_millis(1100),
            "{wait:?}"
        );
        assert!(b.try_take(&limits, 1 << 20, start + wait));
    }
}

//! Table-style tests of the write path over scripted in-memory fakes of the ports.
//! Here: the fakes and the helpers; the tests, by topic, in the submodules.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rand::{Rng, SeedableRng};

use super::*;
use crate::model::{Checkpoint, OrderMode, SourceRecord, StoreError, StreamArn};

mod checkpoints;
mod failures;
mod modes;
mod pacing;

/// Kinesis's answer for a shard over its write limits.
const THROTTLED: &str = "ProvisionedThroughputExceededException";
const SRC: &str = "arn:aws:kinesis:us-east-1:123456789012:stream/src";

/// What the fake target does with one entry.
#[derive(Clone, Debug)]
enum Fault {
    None,
    Throttle,
    /// A transient failure that is not a throttle (InternalFailure).
    Internal,
    Systemic(&'static str),
}

#[derive(Default)]
struct TargetState {
    /// Everything written, per route, in arrival order: (partition key, data).
    written: HashMap<String, Vec<(String, Vec<u8>)>>,
    /// When each write landed (tokio time, so paused-time tests see virtual time) and on
    /// which shard.
    landed: Vec<(Instant, usize)>,
    calls: usize,
    next_seq: u64,
    /// Per shard: a token bucket the fake enforces like Kinesis (records/s), when set.
    enforced: Vec<crate::pacing::Bucket>,
    throttled: usize,
    /// Requests refused whole for a record they held.
    refused: usize,
}

type EntryScript = dyn Fn(usize, &str, &[u8]) -> Fault + Send + Sync;

#[derive(Clone)]
struct FakeTarget {
    state: Arc<Mutex<TargetState>>,
    /// Decides each entry's fate from (call number, route, data).
    script: Arc<EntryScript>,
    /// Call numbers whose whole request is applied and then reported as a timeout.
    ambiguous_calls: Arc<Vec<usize>>,
    max_record_bytes: usize,
    /// The target's shards (empty: the fake does not say, and writes are not paced).
    shards: Arc<Vec<crate::pacing::TargetShard>>,
    /// Records per second each shard takes before it throttles (0: no limit).
    enforce_per_shard: u32,
    /// How long each PutRecords takes to answer (the entries land when it is called).
    round_trip: Duration,
    /// What DescribeStreamSummary does instead of answering, when set.
    info_fault: Arc<Mutex<Option<InfoFault>>>,
}

#[derive(Clone, Debug)]
enum InfoFault {
    Fail(RequestError),
    Hang,
}

impl FakeTarget {
    fn new(script: impl Fn(usize, &str, &[u8]) -> Fault + Send + Sync + 'static) -> Self {
        FakeTarget {
            state: Arc::default(),
            script: Arc::new(script),
            ambiguous_calls: Arc::new(vec![]),
            max_record_bytes: 1024,
            shards: Arc::new(vec![]),
            enforce_per_shard: 0,
            round_trip: Duration::ZERO,
            info_fault: Arc::default(),
        }
    }

    fn with_round_trip(mut self, round_trip: Duration) -> Self {
        self.round_trip = round_trip;
        self
    }

    /// `n` shards splitting the hash space evenly, named shardId-0…
    fn with_shards(mut self, n: u128, enforce_per_shard: u32) -> Self {
        let step = u128::MAX / n;
        self.shards = Arc::new(
            (0..n)
                .map(|i| crate::pacing::TargetShard {
                    shard_id: format!("shardId-{i}"),
                    start: if i == 0 { 0 } else { i * step + 1 },
                    end: if i == n - 1 {
                        u128::MAX
                    } else {
                        (i + 1) * step
                    },
                })
                .collect(),
        );
        self.enforce_per_shard = enforce_per_shard;
        self
    }

    fn landed(&self) -> Vec<(Instant, usize)> {
        self.state.lock().unwrap().landed.clone()
    }
    fn written(&self, route: &str) -> Vec<(String, Vec<u8>)> {
        self.state
            .lock()
            .unwrap()
            .written
            .get(route)
            .cloned()
            .unwrap_or_default()
    }
}

impl TargetWriter for FakeTarget {
    async fn target_info(&self, _route: &Route) -> Result<TargetInfo, RequestError> {
        let fault = self.info_fault.lock().unwrap().clone();
        match fault {
            Some(InfoFault::Fail(e)) => Err(e),
            Some(InfoFault::Hang) => std::future::pending().await,
            None => Ok(TargetInfo {
                max_record_bytes: self.max_record_bytes,
            }),
        }
    }

    async fn target_shards(
        &self,
        _route: &Route,
    ) -> Result<Vec<crate::pacing::TargetShard>, RequestError> {
        Ok(self.shards.as_ref().clone())
    }

    async fn put_records(
        &self,
        route: &Route,
        entries: &[OutEntry<'_>],
    ) -> Result<Vec<EntryResult>, RequestError> {
        // A record the target will not take refuses the whole request, as Kinesis does for a
        // partition key or record over its limits; nothing of it is written.
        if let Some(at) = entries
            .iter()
            .position(|e| e.data.windows(6).any(|w| w == b"POISON"))
        {
            self.state.lock().unwrap().refused += 1;
            return Err(RequestError {
                class: FailureClass::Permanent,
                ambiguous: false,
                code: "InvalidArgumentException".into(),
                message: format!(
                    "Value at 'records.{}.member.partitionKey' failed to satisfy constraint",
                    at + 1
                ),
            });
        }
        let (call, out) = self.apply(route, entries);
        if !self.round_trip.is_zero() {
            tokio::time::sleep(self.round_trip).await;
        }
        if self.ambiguous_calls.contains(&call) {
            return Err(RequestError {
                class: FailureClass::Transient,
                ambiguous: true,
                code: "Timeout".into(),
                message: "timed out".into(),
            });
        }
        Ok(out)
    }
}

impl FakeTarget {
    /// Applies one request at once: (its call number, each entry's result).
    fn apply(&self, route: &Route, entries: &[OutEntry<'_>]) -> (usize, Vec<EntryResult>) {
        let mut st = self.state.lock().unwrap();
        st.calls += 1;
        let call = st.calls;
        let mut out = Vec::new();
        let now = Instant::now();
        let map = crate::pacing::ShardMap::new(self.shards.as_ref().clone());
        let enforce = crate::pacing::ShardLimits::new(self.enforce_per_shard, u32::MAX, 0);
        if self.enforce_per_shard > 0 && st.enforced.is_empty() {
            st.enforced = vec![crate::pacing::Bucket::new(now); map.len()];
        }
        for e in entries {
            let hash = e
                .explicit_hash_key
                .and_then(crate::kpl::parse_explicit_hash_key)
                .unwrap_or_else(|| crate::kpl::hash_key(e.partition_key));
            let shard = map.shard_for(hash);
            let over = self.enforce_per_shard > 0 && !st.enforced[shard].try_take(&enforce, 0, now);
            let fault = if over {
                st.throttled += 1;
                Fault::Throttle
            } else {
                (self.script)(call, &route.name, e.data)
            };
            match fault {
                Fault::None => {
                    st.landed.push((now, shard));
                    st.next_seq += 1;
                    let seq = st.next_seq.to_string();
                    st.written
                        .entry(route.name.clone())
                        .or_default()
                        .push((e.partition_key.to_owned(), e.data.to_vec()));
                    out.push(EntryResult::Written {
                        shard_id: map
                            .shards()
                            .get(shard)
                            .map_or("shardId-000000000000".into(), |s| s.shard_id.clone()),
                        seq,
                    });
                }
                Fault::Throttle => out.push(EntryResult::Failed {
                    code: "ProvisionedThroughputExceededException".into(),
                    message: "Rate exceeded".into(),
                    class: FailureClass::Transient,
                }),
                Fault::Internal => out.push(EntryResult::Failed {
                    code: "InternalFailure".into(),
                    message: "Internal service failure.".into(),
                    class: FailureClass::Transient,
                }),
                Fault::Systemic(code) => out.push(EntryResult::Failed {
                    code: code.into(),
                    message: "key disabled".into(),
                    class: FailureClass::Systemic,
                }),
            }
        }
        (call, out)
    }
}

#[derive(Clone, Default)]
struct FakeCheckpoints {
    items: Arc<Mutex<HashMap<(String, String), Checkpoint>>>,
    fail_load: bool,
    heartbeats: Arc<Mutex<Vec<crate::ports::ShardHeartbeat>>>,
    pairs: Arc<Mutex<Vec<crate::positions::PositionPair>>>,
}

impl CheckpointStore for FakeCheckpoints {
    async fn load(&self, route: &str, shard_id: &str) -> Result<Option<Checkpoint>, StoreError> {
        if self.fail_load {
            return Err(StoreError {
                code: "ResourceNotFoundException".into(),
                message: "no table".into(),
            });
        }
        Ok(self
            .items
            .lock()
            .unwrap()
            .get(&(route.to_owned(), shard_id.to_owned()))
            .cloned())
    }

    async fn advance(&self, a: &CheckpointAdvance) -> Result<AdvanceOutcome, StoreError> {
        let mut items = self.items.lock().unwrap();
        let key = (a.route.clone(), a.shard_id.clone());
        match items.get(&key) {
            Some(c) if c.last_seq > a.last_seq => Ok(AdvanceOutcome::AlreadyFurther),
            _ => {
                items.insert(
                    key,
                    Checkpoint {
                        last_seq: a.last_seq.clone(),
                        updated_at_ms: a.now_ms,
                        beyond: a.beyond.clone(),
                        marks: a.marks.clone(),
                    },
                );
                Ok(AdvanceOutcome::Moved)
            }
        }
    }

    async fn record_position(
        &self,
        pair: &crate::positions::PositionPair,
    ) -> Result<(), StoreError> {
        self.pairs.lock().unwrap().push(pair.clone());
        Ok(())
    }

    async fn heartbeat(&self, hb: &crate::ports::ShardHeartbeat) -> Result<(), StoreError> {
        self.heartbeats.lock().unwrap().push(hb.clone());
        Ok(())
    }
}

type Letter = (String, String, Vec<u8>);

#[derive(Clone, Default)]
struct FakeDeadLetters {
    /// (location, error code, payload) of each stored letter.
    letters: Arc<Mutex<Vec<Letter>>>,
    fail: bool,
}

impl DeadLetterStore for FakeDeadLetters {
    async fn store(&self, letter: &DeadLetter<'_>) -> Result<String, StoreError> {
        if self.fail {
            return Err(StoreError {
                code: "NoSuchBucket".into(),
                message: "bucket missing".into(),
            });
        }
        let key = format!(
            "dl/{}/{}/{}",
            letter.route,
            letter.shard_id,
            letter.record.seq.to_padded()
        );
        self.letters.lock().unwrap().push((
            key.clone(),
            letter.error_code.clone(),
            letter.record.data.clone(),
        ));
        Ok(key)
    }
}

fn route(target: &str) -> Route {
    let source = StreamArn::parse(SRC).unwrap();
    let target = StreamArn::parse(&format!(
        "arn:aws:kinesis:us-east-1:222222222222:stream/{target}"
    ))
    .unwrap();
    Route {
        name: Route::default_name(&source, &target),
        source,
        target,
        writer_role: None,
        order: Default::default(),
    }
}

fn limits() -> Limits {
    Limits {
        backoff_base: Duration::from_millis(1),
        backoff_max: Duration::from_millis(5),
        deadline_margin: Duration::from_millis(50),
        ..Limits::default()
    }
}

/// Records with data "key:n" so the target content shows key and source position.
fn batch(n: usize, keys: usize) -> SourceBatch {
    let records = (0..n)
        .map(|i| {
            let key = format!("k{}", i % keys);
            SourceRecord {
                seq: SequenceNumber::parse(&(1000 + i).to_string()).unwrap(),
                data: format!("{key}:{i}").into_bytes(),
                partition_key: Some(key),
                arrival_ms: Some(1_700_000_000_000 + i as i64),
                defect: None,
            }
        })
        .collect();
    SourceBatch {
        source: StreamArn::parse(SRC).unwrap(),
        shard_id: "shardId-000000000001".into(),
        records,
    }
}

type FakeReplicator = Replicator<FakeTarget, FakeCheckpoints, FakeDeadLetters>;

/// A replicator with one route "t" and fresh checkpoint and dead-letter fakes.
fn one_route(target: &FakeTarget) -> FakeReplicator {
    one_route_with(target, limits())
}

/// [`one_route`] with these limits.
fn one_route_with(target: &FakeTarget, limits: Limits) -> FakeReplicator {
    Replicator::new(
        target.clone(),
        FakeCheckpoints::default(),
        FakeDeadLetters::default(),
        vec![route("t")],
        limits,
    )
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

/// Per key: the source positions in order of first arrival in the target.
fn first_arrivals(written: &[(String, Vec<u8>)]) -> HashMap<String, Vec<usize>> {
    let mut seen = std::collections::HashSet::new();
    let mut out: HashMap<String, Vec<usize>> = HashMap::new();
    for (key, data) in written {
        let text = String::from_utf8(data.clone()).unwrap();
        let pos: usize = text.split(':').nth(1).unwrap().parse().unwrap();
        if seen.insert(pos) {
            out.entry(key.clone()).or_default().push(pos);
        }
    }
    out
}

fn assert_complete_and_ordered(written: &[(String, Vec<u8>)], n: usize, missing_ok: &[usize]) {
    let arrivals = first_arrivals(written);
    let mut all: Vec<usize> = arrivals.values().flatten().copied().collect();
    all.sort_unstable();
    let want: Vec<usize> = (0..n).filter(|i| !missing_ok.contains(i)).collect();
    assert_eq!(all, want, "every record exactly once (first arrivals)");
    for (key, positions) in arrivals {
        assert!(
            positions.windows(2).all(|w| w[0] < w[1]),
            "key {key} out of order: {positions:?}"
        );
    }
}

/// A route with the given order mode.
fn route_in(target: &str, order: crate::model::OrderMode) -> Route {
    Route {
        order,
        ..route(target)
    }
}

/// Per key: the source positions of the copies in the target, in arrival order, after
/// deaggregating KPL aggregated records.
fn arrivals(written: &[(String, Vec<u8>)]) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for (key, data) in written {
        let users: Vec<(String, Vec<u8>)> = if crate::kpl::is_aggregated(data) {
            crate::kpl::deaggregate(data)
                .unwrap()
                .into_iter()
                .map(|r| (r.partition_key, r.data))
                .collect()
        } else {
            vec![(key.clone(), data.clone())]
        };
        for (k, d) in users {
            let text = String::from_utf8(d).unwrap();
            let (dk, pos) = text.split_once(':').unwrap();
            assert_eq!(dk, k, "a record under its own key");
            out.push((k, pos.parse().unwrap()));
        }
    }
    out
}

/// `n` records of `keys` keys whose sequence numbers start at `first`.
fn batch_from(first: usize, n: usize, keys: usize) -> SourceBatch {
    let mut b = batch(n, keys);
    for (i, r) in b.records.iter_mut().enumerate() {
        r.seq = SequenceNumber::parse(&(first + i).to_string()).unwrap();
    }
    b
}

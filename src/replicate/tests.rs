//! Table-style tests of the write path over scripted in-memory fakes of the ports.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rand::{Rng, SeedableRng};

use super::*;
use crate::model::{Checkpoint, OrderMode, SourceRecord, StoreError, StreamArn};

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
                    },
                );
                Ok(AdvanceOutcome::Moved)
            }
        }
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

#[tokio::test]
async fn clean_batch_is_written_in_order_and_checkpointed() {
    let target = FakeTarget::new(|_, _, _| Fault::None);
    let cps = FakeCheckpoints::default();
    let r = Replicator::new(
        target.clone(),
        cps.clone(),
        FakeDeadLetters::default(),
        vec![route("t")],
        limits(),
    );
    let b = batch(1200, 1200);
    let rep = r.replicate(&b, far()).await;
    assert_eq!(rep.first_unhandled, None);
    assert_eq!(rep.routes[0].written, 1200);
    assert_eq!(
        rep.routes[0].requests, 3,
        "1200 distinct keys pack into 500 + 500 + 200"
    );
    assert_complete_and_ordered(&target.written(&route("t").name), 1200, &[]);
    let stored = cps.items.lock().unwrap().values().next().cloned().unwrap();
    assert_eq!(stored.last_seq, b.records[1199].seq);
}

#[tokio::test]
async fn a_hot_key_is_sent_one_record_per_round() {
    let target = FakeTarget::new(|_, _, _| Fault::None);
    let r = one_route(&target);
    let rep = r.replicate(&batch(1200, 7), far()).await;
    assert_eq!(
        rep.routes[0].requests, 172,
        "ceil(1200 / 7) rounds of 7 heads"
    );
    assert_complete_and_ordered(&target.written(&route("t").name), 1200, &[]);
}

#[tokio::test]
async fn partial_failures_lose_nothing_and_keep_per_key_order() {
    for (fraction, seed) in [(0.1, 1u64), (0.3, 2), (0.5, 3)] {
        let rng = Arc::new(Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)));
        let target = FakeTarget::new(move |_, _, _| {
            if rng.lock().unwrap().random_bool(fraction) {
                Fault::Throttle
            } else {
                Fault::None
            }
        });
        let r = one_route(&target);
        let rep = r.replicate(&batch(3000, 13), far()).await;
        let rr = &rep.routes[0];
        assert_eq!(rep.first_unhandled, None, "fraction {fraction}");
        assert_eq!(rr.written, 3000);
        assert_eq!(
            rr.possible_duplicates, 0,
            "throttled entries are not written, so nothing repeats"
        );
        assert!(rr.retries["ProvisionedThroughputExceededException"] > 0);
        let written = target.written(&route("t").name);
        assert_eq!(written.len(), 3000);
        assert_complete_and_ordered(&written, 3000, &[]);
    }
}

#[tokio::test]
async fn a_retried_batch_is_skipped_from_the_checkpoint() {
    let target = FakeTarget::new(|_, _, _| Fault::None);
    let r = one_route(&target);
    let b = batch(300, 5);
    r.replicate(&b, far()).await;
    let again = r.replicate(&b, far()).await;
    assert_eq!(again.routes[0].skipped, 300);
    assert_eq!(again.routes[0].written, 0);
    assert_eq!(target.written(&route("t").name).len(), 300);
}

#[tokio::test]
async fn too_large_and_keyless_records_are_dead_lettered_and_the_rest_flows() {
    let target = FakeTarget::new(|_, _, _| Fault::None);
    let dls = FakeDeadLetters::default();
    let r = Replicator::new(
        target.clone(),
        FakeCheckpoints::default(),
        dls.clone(),
        vec![route("t")],
        limits(),
    );
    let mut b = batch(50, 3);
    b.records[10].data = vec![b'x'; 5000];
    b.records[20].partition_key = None;
    let rep = r.replicate(&b, far()).await;
    assert_eq!(rep.first_unhandled, None);
    assert_eq!(rep.routes[0].dead_lettered, 2);
    assert_eq!(rep.routes[0].written, 48);
    let letters = dls.letters.lock().unwrap().clone();
    assert_eq!(
        letters.iter().map(|l| l.1.as_str()).collect::<Vec<_>>(),
        ["RecordTooLarge", "MissingPartitionKey"]
    );
    assert_eq!(
        letters[0].2.len(),
        5000,
        "the dead letter keeps the full payload"
    );
    assert_complete_and_ordered(&target.written(&route("t").name), 50, &[10, 20]);
}

#[tokio::test]
async fn a_systemic_error_stops_at_the_first_unwritten_record_without_dead_letters() {
    // Entries with data "k0:40" onwards hit a disabled KMS key.
    let target = FakeTarget::new(|_, _, data| {
        let pos: usize = String::from_utf8_lossy(data)
            .split(':')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        if pos >= 40 {
            Fault::Systemic("KMSDisabledException")
        } else {
            Fault::None
        }
    });
    let dls = FakeDeadLetters::default();
    let cps = FakeCheckpoints::default();
    let r = Replicator::new(
        target.clone(),
        cps.clone(),
        dls.clone(),
        vec![route("t")],
        limits(),
    );
    let b = batch(100, 4);
    let rep = r.replicate(&b, far()).await;
    assert_eq!(rep.first_unhandled, Some(b.records[40].seq.clone()));
    assert!(
        matches!(&rep.routes[0].stop, Some(StopReason::Systemic { code, .. }) if code == "KMSDisabledException")
    );
    assert!(dls.letters.lock().unwrap().is_empty());
    assert_eq!(
        cps.items
            .lock()
            .unwrap()
            .values()
            .next()
            .map(|c| c.last_seq.clone()),
        Some(b.records[39].seq.clone())
    );
    assert_complete_and_ordered(&target.written(&route("t").name), 40, &[]);
}

#[tokio::test]
async fn endless_throttling_stops_at_the_deadline_and_reports_the_first_record() {
    let target = FakeTarget::new(|_, _, _| Fault::Throttle);
    let r = one_route(&target);
    let b = batch(20, 2);
    let rep = r
        .replicate(&b, Instant::now() + Duration::from_millis(300))
        .await;
    assert_eq!(rep.first_unhandled, Some(b.records[0].seq.clone()));
    assert_eq!(rep.routes[0].stop, Some(StopReason::Deadline));
    assert!(
        rep.duration < Duration::from_millis(300),
        "answers before the deadline"
    );
}

#[tokio::test]
async fn an_ambiguous_timeout_is_resent_and_counted_as_possible_duplicates() {
    let mut target = FakeTarget::new(|_, _, _| Fault::None);
    target.ambiguous_calls = Arc::new(vec![1]);
    let r = one_route(&target);
    let rep = r.replicate(&batch(30, 3), far()).await;
    let rr = &rep.routes[0];
    assert_eq!(rep.first_unhandled, None);
    // The first request held the 3 key heads; they were applied, then re-sent.
    assert_eq!(rr.possible_duplicates, 3);
    let written = target.written(&route("t").name);
    assert_eq!(written.len(), 33);
    assert_complete_and_ordered(&written, 30, &[]);
}

#[tokio::test]
async fn one_failing_route_does_not_duplicate_into_the_healthy_one_on_retry() {
    let target = FakeTarget::new(|_, route, _| {
        if route.ends_with("--bad") {
            Fault::Systemic("ResourceNotFoundException")
        } else {
            Fault::None
        }
    });
    let r = Replicator::new(
        target.clone(),
        FakeCheckpoints::default(),
        FakeDeadLetters::default(),
        vec![route("good"), route("bad")],
        limits(),
    );
    let b = batch(40, 4);
    let first = r.replicate(&b, far()).await;
    assert_eq!(first.first_unhandled, Some(b.records[0].seq.clone()));
    let retry = r.replicate(&b, far()).await;
    let good = retry
        .routes
        .iter()
        .find(|x| x.route.ends_with("--good"))
        .unwrap();
    assert_eq!(good.skipped, 40);
    assert_eq!(target.written(&route("good").name).len(), 40);
}

#[tokio::test]
async fn unreadable_checkpoint_or_dead_letter_store_stops_the_shard() {
    let target = FakeTarget::new(|_, _, _| Fault::None);
    let cps = FakeCheckpoints {
        fail_load: true,
        ..Default::default()
    };
    let r = Replicator::new(
        target.clone(),
        cps,
        FakeDeadLetters::default(),
        vec![route("t")],
        limits(),
    );
    let b = batch(10, 2);
    let rep = r.replicate(&b, far()).await;
    assert_eq!(rep.first_unhandled, Some(b.records[0].seq.clone()));
    assert!(target.written(&route("t").name).is_empty());

    let dls = FakeDeadLetters {
        fail: true,
        ..Default::default()
    };
    let r = Replicator::new(
        target.clone(),
        FakeCheckpoints::default(),
        dls,
        vec![route("t")],
        limits(),
    );
    let mut b = batch(10, 2);
    b.records[6].partition_key = None;
    let rep = r.replicate(&b, far()).await;
    assert_eq!(rep.first_unhandled, Some(b.records[6].seq.clone()));
    assert!(matches!(
        rep.routes[0].stop,
        Some(StopReason::DeadLetterFailed { .. })
    ));
    assert_complete_and_ordered(&target.written(&route("t").name), 6, &[]);
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

/// Every record 0..n is there, and per key the *last* copies are in source order.
fn assert_last_arrivals_in_order(written: &[(String, Vec<u8>)], n: usize) {
    let all = arrivals(written);
    let mut last: HashMap<usize, usize> = HashMap::new();
    for (at, (_, pos)) in all.iter().enumerate() {
        last.insert(*pos, at);
    }
    let mut present: Vec<usize> = last.keys().copied().collect();
    present.sort_unstable();
    assert_eq!(
        present,
        (0..n).collect::<Vec<_>>(),
        "every record at least once"
    );
    let mut per_key: HashMap<&str, Vec<(usize, usize)>> = HashMap::new();
    for (pos, at) in &last {
        let key = &all[*at].0;
        per_key.entry(key).or_default().push((*at, *pos));
    }
    for (key, mut v) in per_key {
        v.sort_unstable();
        assert!(
            v.windows(2).all(|w| w[0].1 < w[1].1),
            "key {key}: last copies out of order"
        );
    }
}

/// A target that answers `fault` to the first 4 attempts at k0's first record ("k0:0"), and
/// writes everything else; and the count of those attempts.
fn k0_head_fails_4_times(fault: Fault) -> (FakeTarget, Arc<Mutex<usize>>) {
    let attempts = Arc::new(Mutex::new(0usize));
    let seen = attempts.clone();
    let target = FakeTarget::new(move |_, _, data| {
        if data.starts_with(b"k0:0") && data.len() == 4 {
            let mut n = seen.lock().unwrap();
            *n += 1;
            if *n <= 4 {
                return fault.clone();
            }
        }
        Fault::None
    });
    (target, attempts)
}

#[tokio::test(start_paused = true)]
async fn a_failing_key_waits_alone_while_the_other_keys_finish() {
    // k0's head fails (InternalFailure) on its first 4 attempts; every other entry goes
    // through.
    let (target, attempts) = k0_head_fails_4_times(Fault::Internal);
    let r = one_route_with(
        &target,
        Limits {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            ..limits()
        },
    );
    let started = Instant::now();
    let b = batch(400, 8);
    let rep = r.replicate(&b, started + Duration::from_secs(60)).await;
    assert_eq!(rep.first_unhandled, None);
    assert_eq!(*attempts.lock().unwrap(), 5);
    let written = target.written(&route("t").name);
    assert_complete_and_ordered(&written, 400, &[]);
    // Keys k1..k7 do not wait for k0's backoff: they are all written before k0's first record.
    let k0_first = written.iter().position(|(k, _)| k == "k0").unwrap();
    assert_eq!(
        k0_first, 350,
        "the 350 records of the other keys went first"
    );
    let landed = target.landed();
    assert_eq!(
        landed[349].0, started,
        "no other key slept (virtual time did not move)"
    );
}

#[tokio::test(start_paused = true)]
async fn a_throttled_key_goes_again_with_its_shards_tokens_without_a_back_off_of_its_own() {
    // k0's head is throttled on its first 4 attempts. The target's shards are paced (limits
    // far above the load), so the throttles slow k0's shard instead of putting k0 to sleep:
    // no 100 + 200 + 400 ms of back-off, and the other keys are not held either.
    let (target, attempts) = k0_head_fails_4_times(Fault::Throttle);
    let target = target.with_shards(2, 0);
    let r = one_route_with(
        &target,
        Limits {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            shard_records_per_sec: 1_000_000,
            shard_bytes_per_sec: 1 << 30,
            ..limits()
        },
    );
    let rep = r
        .replicate(&batch(400, 8), Instant::now() + Duration::from_secs(60))
        .await;
    assert_eq!(rep.first_unhandled, None);
    assert_eq!(*attempts.lock().unwrap(), 5);
    assert_eq!(rep.routes[0].retries[THROTTLED], 4);
    assert_complete_and_ordered(&target.written(&route("t").name), 400, &[]);
    assert!(
        rep.duration < Duration::from_millis(20),
        "{:?}: the throttled key waited for its shard's tokens only",
        rep.duration
    );
}

#[tokio::test(start_paused = true)]
async fn writes_are_paced_under_each_target_shards_limit() {
    // 4 target shards, 100 records/s each (no headroom): 2,000 records over 200 keys take
    // about (2,000 - 400 at once) / 400 per s = 4 s, and Kinesis never throttles.
    let target = FakeTarget::new(|_, _, _| Fault::None).with_shards(4, 100);
    let r = one_route_with(
        &target,
        Limits {
            shard_records_per_sec: 100,
            shard_headroom_pct: 0,
            ..limits()
        },
    );
    let started = Instant::now();
    let rep = r
        .replicate(&batch(2000, 200), started + Duration::from_secs(60))
        .await;
    assert_eq!(rep.first_unhandled, None);
    let took = rep.duration.as_secs_f64();
    assert!((3.5..5.5).contains(&took), "took {took:.2} s");
    assert_eq!(
        target.state.lock().unwrap().throttled,
        0,
        "pacing, not throttling"
    );
    let requests = rep.routes[0].requests;
    assert!(
        requests < 400,
        "{requests} requests: tokens are gathered, not spent one request each"
    );
    assert_complete_and_ordered(&target.written(&route("t").name), 2000, &[]);
    // No shard took more than its bucket plus its rate in any second.
    for shard in 0..4 {
        let times: Vec<Instant> = target
            .landed()
            .iter()
            .filter(|(_, s)| *s == shard)
            .map(|(t, _)| *t)
            .collect();
        for (i, t) in times.iter().enumerate() {
            let in_next_second = times[i..]
                .iter()
                .take_while(|u| u.duration_since(*t) < Duration::from_secs(1))
                .count();
            assert!(
                in_next_second <= 201,
                "shard {shard}: {in_next_second} in 1 s"
            );
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_shard_that_throttles_below_the_configured_limit_is_slowed_down() {
    // Configured for 1,000/s per shard, but the target takes only 100/s (other writers):
    // the replicator adapts, loses nothing, keeps order, and throttles stay a minority.
    let target = FakeTarget::new(|_, _, _| Fault::None).with_shards(2, 100);
    let r = one_route_with(
        &target,
        Limits {
            backoff_base: Duration::from_millis(20),
            backoff_max: Duration::from_millis(500),
            ..limits()
        },
    );
    let rep = r
        .replicate(&batch(2000, 100), Instant::now() + Duration::from_secs(120))
        .await;
    assert_eq!(rep.first_unhandled, None);
    assert_complete_and_ordered(&target.written(&route("t").name), 2000, &[]);
    let throttled = target.state.lock().unwrap().throttled;
    let rr = &rep.routes[0];
    assert_eq!(rr.retries[THROTTLED] as usize, throttled);
    assert!(
        throttled < 2000,
        "{throttled} throttled entries for 2,000 records: pacing adapted"
    );
    let took = rep.duration.as_secs_f64();
    assert!(took < 14.0, "took {took:.1} s for 2,000 records at 200/s");
}

#[tokio::test(start_paused = true)]
async fn a_throttle_far_under_a_high_limit_costs_a_round_trip_not_a_pacing_tick() {
    // Configured far above the load (1,000,000 records/s): a throttle empties the shard's
    // bucket, which refills in microseconds at that rate, so the retry must not wait the 20 ms
    // that gathering tokens takes at Kinesis's 1,000/s.
    let target = FakeTarget::new(|call, _, _| {
        if call % 2 == 1 {
            Fault::Throttle
        } else {
            Fault::None
        }
    })
    .with_shards(1, 0);
    let r = one_route_with(
        &target,
        Limits {
            shard_records_per_sec: 1_000_000,
            shard_bytes_per_sec: 1 << 30,
            ..limits()
        },
    );
    let rep = r
        .replicate(&batch(40, 1), Instant::now() + Duration::from_secs(60))
        .await;
    assert_eq!(rep.first_unhandled, None);
    assert_complete_and_ordered(&target.written(&route("t").name), 40, &[]);
    let throttled = rep.routes[0].retries[THROTTLED];
    assert!(throttled >= 20, "{throttled} throttles");
    assert!(
        rep.duration < Duration::from_millis(50),
        "{:?} for {throttled} throttles",
        rep.duration
    );
}

/// A skewed batch: key "k<j>" has about 200 / (j + 1) records (j < 40; 855 records in all),
/// in a seeded random order.
fn skewed_batch() -> SourceBatch {
    let mut keys: Vec<String> = (0..40)
        .flat_map(|j| std::iter::repeat_n(format!("k{j}"), (200 / (j + 1)).max(1)))
        .collect();
    rand::seq::SliceRandom::shuffle(
        keys.as_mut_slice(),
        &mut rand::rngs::StdRng::seed_from_u64(5),
    );
    let mut b = batch(keys.len(), 1);
    for (i, (r, key)) in b.records.iter_mut().zip(keys).enumerate() {
        r.data = format!("{key}:{i}").into_bytes();
        r.partition_key = Some(key);
    }
    b
}

#[tokio::test(start_paused = true)]
async fn random_throttles_under_a_high_limit_cost_a_hot_key_about_a_tenth() {
    // Strict, a skewed batch (the hottest key has 200 records of 855), 25 ms round trips, 4
    // target shards, limits far above the load: the hot key's records take 200 round trips. With 10% of entries throttled
    // at random, each throttled head costs its key a round trip (and a back-off from the
    // second in a row); the throttles must not also hold the other keys of those shards, the
    // hot one among them, back until the next answer.
    let run = |fraction: f64| async move {
        let rng = Arc::new(Mutex::new(rand::rngs::StdRng::seed_from_u64(21)));
        let target = FakeTarget::new(move |_, _, _| {
            if rng.lock().unwrap().random_bool(fraction) {
                Fault::Throttle
            } else {
                Fault::None
            }
        })
        .with_shards(4, 0)
        .with_round_trip(Duration::from_millis(25));
        let r = one_route_with(
            &target,
            Limits {
                shard_records_per_sec: 1_000_000,
                shard_bytes_per_sec: 1 << 30,
                // Short back-offs: the few keys that fail twice in a row add little (and
                // their random jitter little noise).
                backoff_base: Duration::from_millis(5),
                deadline_margin: Duration::from_millis(50),
                ..Limits::default()
            },
        );
        let b = skewed_batch();
        let rep = r
            .replicate(&b, Instant::now() + Duration::from_secs(600))
            .await;
        assert_eq!(rep.first_unhandled, None, "at {fraction}");
        assert_complete_and_ordered(&target.written(&route("t").name), b.records.len(), &[]);
        (rep.duration, rep.routes[0].requests)
    };
    let (clean, clean_requests) = run(0.0).await;
    let (failing, failing_requests) = run(0.1).await;
    let share = clean.as_secs_f64() / failing.as_secs_f64();
    assert!(
        clean >= Duration::from_millis(200 * 25),
        "clean: {clean:?}, the hot key's 200 round trips"
    );
    // At best 90% (a tenth of the hot key's attempts fail); 80% while throttled shards held
    // their keys back until the next answer.
    assert!(
        share >= 0.84,
        "10% throttled: {failing:?} ({failing_requests} requests) against {clean:?} \
         ({clean_requests}) without: {:.0}%",
        share * 100.0
    );
}

#[tokio::test]
async fn runs_mode_keeps_the_last_copies_in_order_and_counts_repairs() {
    for (fraction, seed) in [(0.1, 11u64), (0.3, 12), (0.5, 13)] {
        let rng = Arc::new(Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)));
        let target = FakeTarget::new(move |_, _, _| {
            if rng.lock().unwrap().random_bool(fraction) {
                Fault::Throttle
            } else {
                Fault::None
            }
        });
        let r = Replicator::new(
            target.clone(),
            FakeCheckpoints::default(),
            FakeDeadLetters::default(),
            vec![route_in("t", crate::model::OrderMode::Runs)],
            limits(),
        );
        let rep = r.replicate(&batch(3000, 13), far()).await;
        let rr = &rep.routes[0];
        assert_eq!(rep.first_unhandled, None, "fraction {fraction}");
        let written = target.written(&route("t").name);
        assert_last_arrivals_in_order(&written, 3000);
        assert_eq!(
            written.len(),
            3000 + rr.repairs,
            "every extra copy is a counted repair"
        );
        assert!(
            rr.repairs > 0,
            "fraction {fraction}: some runs were repaired"
        );
        assert_eq!(rr.possible_duplicates, rr.repairs);
        eprintln!(
            "fraction {fraction}: {} repairs, {} requests",
            rr.repairs, rr.requests
        );
        // A failed run shortens the key's next ones: repairs stay under one per record (with
        // every run at 100 records they were 7 to 37 times the records).
        assert!(
            rr.repairs < 3000,
            "fraction {fraction}: {} repairs for 3,000 records",
            rr.repairs
        );
        if fraction <= 0.1 {
            assert!(
                rr.requests < 3000 / 13,
                "fraction {fraction}: runs of a key share requests ({} requests)",
                rr.requests
            );
        }
    }
}

#[tokio::test]
async fn aggregated_mode_writes_each_key_in_order_at_a_fraction_of_the_requests() {
    for (fraction, seed) in [(0.0, 20u64), (0.1, 21), (0.3, 22), (0.5, 23)] {
        let rng = Arc::new(Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)));
        let mut target = FakeTarget::new(move |_, _, _| {
            if fraction > 0.0 && rng.lock().unwrap().random_bool(fraction) {
                Fault::Throttle
            } else {
                Fault::None
            }
        });
        target.max_record_bytes = 1 << 20;
        let r = Replicator::new(
            target.clone(),
            FakeCheckpoints::default(),
            FakeDeadLetters::default(),
            vec![route_in("t", crate::model::OrderMode::Aggregated)],
            limits(),
        );
        let rep = r.replicate(&batch(3000, 3), far()).await;
        let rr = &rep.routes[0];
        assert_eq!(rep.first_unhandled, None, "fraction {fraction}");
        assert_eq!(rr.written, 3000);
        assert_eq!(rr.possible_duplicates, 0);
        let written = target.written(&route("t").name);
        assert!(written.len() <= 3 * (1 + rr.retries.values().sum::<u64>() as usize));
        // Exactly the source records, once each, per key in order.
        assert_complete_and_ordered(
            &arrivals(&written)
                .into_iter()
                .map(|(k, pos)| (k.clone(), format!("{k}:{pos}").into_bytes()))
                .collect::<Vec<_>>(),
            3000,
            &[],
        );
        if fraction == 0.0 {
            assert_eq!(rr.requests, 1, "three keys, one aggregated record each");
        }
    }
}

#[tokio::test]
async fn each_route_writes_its_heartbeat_with_its_checkpoint() {
    let target = FakeTarget::new(|_, route, _| {
        if route.ends_with("--bad") {
            Fault::Systemic("ResourceNotFoundException")
        } else {
            Fault::None
        }
    });
    let cps = FakeCheckpoints::default();
    let r = Replicator::new(
        target,
        cps.clone(),
        FakeDeadLetters::default(),
        vec![route("good"), route("bad")],
        limits(),
    )
    .with_heartbeat_by("runner:test");
    let b = batch(40, 4);
    r.replicate(&b, far()).await;
    let mut hbs = cps.heartbeats.lock().unwrap().clone();
    hbs.sort_by(|a, b| a.route.cmp(&b.route));
    assert_eq!(hbs.len(), 2, "one per route");
    assert!(hbs[0].route.ends_with("--bad") && hbs[0].last_seq.is_none());
    assert_eq!(hbs[1].last_seq.as_ref(), Some(&b.records[39].seq));
    assert!(hbs.iter().all(|h| h.by == "runner:test" && h.records == 40));
}

/// `n` records of `keys` keys whose sequence numbers start at `first`.
fn batch_from(first: usize, n: usize, keys: usize) -> SourceBatch {
    let mut b = batch(n, keys);
    for (i, r) in b.records.iter_mut().enumerate() {
        r.seq = SequenceNumber::parse(&(first + i).to_string()).unwrap();
    }
    b
}

#[tokio::test(start_paused = true)]
async fn a_busy_shard_writes_its_heartbeat_every_few_seconds_and_a_mode_change_at_once() {
    let cps = FakeCheckpoints::default();
    let r = Replicator::new(
        FakeTarget::new(|_, _, _| Fault::None),
        cps.clone(),
        FakeDeadLetters::default(),
        vec![route("t")],
        limits(),
    );
    let written = || cps.heartbeats.lock().unwrap().len();
    let mut next = 1000;
    let mut run = |n: usize| {
        let b = batch_from(next, n, 4);
        next += n;
        b
    };
    // Back-to-back batches: the first writes a heartbeat, the next ones within
    // HEARTBEAT_EVERY only their checkpoints.
    for _ in 0..3 {
        r.replicate(&run(10), far()).await;
    }
    assert_eq!(written(), 1, "one heartbeat for three batches in a row");
    assert_eq!(
        cps.items
            .lock()
            .unwrap()
            .values()
            .next()
            .map(|c| c.last_seq.to_string()),
        Some("1029".to_owned()),
        "every batch still advances the checkpoint"
    );
    // Past the interval: written again, with the newest batch.
    tokio::time::advance(HEARTBEAT_EVERY).await;
    let b = run(10);
    r.replicate(&b, far()).await;
    assert_eq!(written(), 2);
    assert_eq!(
        cps.heartbeats.lock().unwrap()[1].last_seq.as_ref(),
        Some(&b.records[9].seq)
    );
    // The handler wrote a `hold` heartbeat in between: the next forward batch says so at once.
    let name = r.routes()[0].name.clone();
    r.heartbeat_written(&name, &b.shard_id, Mode::Hold);
    r.replicate(&run(10), far()).await;
    assert_eq!(written(), 3, "forward again is written at once");
    r.replicate(&run(10), far()).await;
    assert_eq!(written(), 3);
}

#[tokio::test]
async fn aggregated_source_records_are_split_where_the_target_shards_differ() {
    // Source records are KPL aggregated records of 10 user records each (keys u0..u59); the
    // target has 3 shards, so most aggregated records hold user records of several target
    // shards. A consumer that deaggregates like the KCL keeps only the user records whose hash
    // is in the range of the shard it reads: all of them must survive, in per-key order.
    let target = FakeTarget::new(|_, _, _| Fault::None).with_shards(3, 0);
    let r = one_route_with(
        &target,
        Limits {
            max_record_bytes_override: Some(1 << 20),
            ..limits()
        },
    );
    let mut b = batch(30, 30);
    for (n, rec) in b.records.iter_mut().enumerate() {
        let mut agg = crate::kpl::Aggregator::new();
        for j in 0..10 {
            let i = n * 10 + j;
            let key = format!("u{}", i % 60);
            agg.add(&key, None, format!("{key}:{i}").as_bytes());
        }
        rec.partition_key = Some(format!("u{}", (n * 10) % 60));
        rec.data = agg.finish();
    }
    let rep = r.replicate(&b, far()).await;
    let rr = &rep.routes[0];
    assert_eq!(rep.first_unhandled, None);
    assert_eq!(
        rr.written, 30,
        "every source record counts once, when all its pieces are in"
    );
    assert_eq!(rr.split_records, 30);
    let shards = target.shards.clone();
    let landed = target.landed();
    let written = target.written(&route("t").name);
    // The KCL's filter: a user record counts only on the shard whose range holds its hash.
    let mut kept: Vec<(String, Vec<u8>)> = Vec::new();
    for ((_, shard), (_, data)) in landed.iter().zip(&written) {
        let range = &shards[*shard];
        for u in crate::kpl::deaggregate(data).unwrap() {
            let h = crate::kpl::hash_key(&u.partition_key);
            if range.start <= h && h <= range.end {
                kept.push((u.partition_key, u.data));
            }
        }
    }
    assert_complete_and_ordered(&kept, 300, &[]);
}

#[tokio::test(start_paused = true)]
async fn an_aggregated_key_is_paced_by_bytes_without_waiting_for_a_bucket_it_cannot_fill() {
    // One key of 200 × 500-byte records, 2 target shards at 10 KiB/s each: aggregates are cut
    // to what the bucket holds, so the key moves at the shard's byte rate (about 10 s for
    // 100 KB, 10 KiB at once), never stalls, and Kinesis never throttles.
    let mut target = FakeTarget::new(|_, _, _| Fault::None).with_shards(2, 0);
    target.max_record_bytes = 1 << 20;
    let r = Replicator::new(
        target.clone(),
        FakeCheckpoints::default(),
        FakeDeadLetters::default(),
        vec![route_in("t", crate::model::OrderMode::Aggregated)],
        Limits {
            shard_bytes_per_sec: 10 * 1024,
            shard_headroom_pct: 0,
            ..limits()
        },
    );
    let mut b = batch(200, 1);
    for rec in &mut b.records {
        rec.data.resize(500, b'.');
    }
    let run = r.replicate(&b, Instant::now() + Duration::from_secs(120));
    let rep = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("finished, no stall");
    assert_eq!(rep.first_unhandled, None);
    let took = rep.duration.as_secs_f64();
    assert!((7.0..13.0).contains(&took), "took {took:.1} s");
    let written = target.written(&route("t").name);
    let users: usize = written
        .iter()
        .map(|(_, d)| crate::kpl::deaggregate(d).map_or(1, |u| u.len()))
        .sum();
    assert_eq!(users, 200);
}

#[tokio::test(start_paused = true)]
async fn a_failed_refresh_of_the_targets_limits_keeps_the_last_known_ones() {
    let target = FakeTarget::new(|_, _, _| Fault::None);
    let r = one_route(&target);
    let fault = |f: Option<InfoFault>| *target.info_fault.lock().unwrap() = f;
    let fail = |class, code: &str| {
        Some(InfoFault::Fail(RequestError {
            class,
            ambiguous: false,
            code: code.to_owned(),
            message: "injected".to_owned(),
        }))
    };
    let far = || Instant::now() + Duration::from_secs(60);
    let rep = r.replicate(&batch_from(1000, 20, 4), far()).await;
    assert_eq!(rep.first_unhandled, None);

    // The cached limits expire; the refresh is throttled, then hangs: both keep the last ones.
    for (first, f) in [
        (
            2000,
            fail(FailureClass::Transient, "LimitExceededException"),
        ),
        (2100, Some(InfoFault::Hang)),
    ] {
        tokio::time::advance(Duration::from_secs(301)).await;
        fault(f);
        let rep = r.replicate(&batch_from(first, 20, 4), far()).await;
        assert_eq!(rep.first_unhandled, None, "{:?}", rep.routes[0].stop);
        assert_eq!(rep.routes[0].written, 20);
    }

    // A definite answer stops the route: the stream is gone.
    tokio::time::advance(Duration::from_secs(301)).await;
    fault(fail(FailureClass::Systemic, "ResourceNotFoundException"));
    let rep = r.replicate(&batch_from(3000, 20, 4), far()).await;
    assert!(matches!(
        &rep.routes[0].stop,
        Some(StopReason::Systemic { code, .. }) if code == "ResourceNotFoundException"
    ));

    // Nothing to keep (a cold container): a throttled refresh stops the route, and the fix says
    // it is passing, not a permission problem.
    let cold = one_route(&target);
    fault(fail(FailureClass::Transient, "LimitExceededException"));
    let rep = cold.replicate(&batch_from(3000, 20, 4), far()).await;
    assert!(matches!(
        &rep.routes[0].stop,
        Some(StopReason::Systemic { code, .. }) if code == "LimitExceededException"
    ));
    let fix = fix_for("LimitExceededException", &route("t"));
    assert!(fix.contains("not a permission problem"), "{fix}");
    assert_eq!(target.written(&route("t").name).len(), 60);
}

#[tokio::test]
async fn a_request_refused_for_a_record_is_split_until_that_record_is_alone() {
    // Two records the target refuses (request-level InvalidArgumentException) among 300 over
    // 30 keys, in each order mode: exactly those two are dead-lettered with the target's own
    // message, every other record is written in its key's order, and the route goes on.
    for mode in [OrderMode::Strict, OrderMode::Aggregated, OrderMode::Runs] {
        let target = FakeTarget::new(|_, _, _| Fault::None);
        let letters = FakeDeadLetters::default();
        let r = Replicator::new(
            target.clone(),
            FakeCheckpoints::default(),
            letters.clone(),
            vec![route_in("t", mode)],
            limits(),
        );
        let mut b = batch(300, 30);
        for i in [37, 161] {
            let r = &mut b.records[i];
            r.data = format!("{}:{i}:POISON", r.partition_key.as_deref().unwrap()).into_bytes();
        }
        let rep = r.replicate(&b, far()).await;
        let rr = &rep.routes[0];
        assert_eq!(rep.first_unhandled, None, "{mode}: {:?}", rr.stop);
        assert_eq!(rr.dead_lettered, 2, "{mode}");
        let letters = letters.letters.lock().unwrap().clone();
        let refused: Vec<String> = letters
            .iter()
            .map(|(_, _, data)| String::from_utf8(data.clone()).unwrap())
            .collect();
        assert_eq!(refused, vec!["k7:37:POISON", "k11:161:POISON"], "{mode}");
        assert!(letters.iter().all(|(_, code, _)| code == "TargetRejected"));
        // Per key, the order of first arrivals (strict, aggregated) or last ones (runs).
        let all = arrivals(&target.written(&route_in("t", mode).name));
        let mut kept: Vec<(String, usize)> = Vec::new();
        for (at, (key, pos)) in all.iter().enumerate() {
            let first = !all[..at].iter().any(|(_, p)| p == pos);
            let last = !all[at + 1..].iter().any(|(_, p)| p == pos);
            if (mode == OrderMode::Runs && last) || (mode != OrderMode::Runs && first) {
                kept.push((key.clone(), *pos));
            }
        }
        let mut present: Vec<usize> = kept.iter().map(|(_, p)| *p).collect();
        present.sort_unstable();
        let want: Vec<usize> = (0..300).filter(|i| ![37, 161].contains(i)).collect();
        assert_eq!(present, want, "{mode}: every other record, once");
        for key in (0..30).map(|k| format!("k{k}")) {
            let order: Vec<usize> = kept
                .iter()
                .filter(|(k, _)| *k == key)
                .map(|(_, p)| *p)
                .collect();
            assert!(
                order.windows(2).all(|w| w[0] < w[1]),
                "{mode}: {key} {order:?}"
            );
        }
        let refused_requests = target.state.lock().unwrap().refused;
        assert!(
            refused_requests <= 40,
            "{mode}: {refused_requests} refused requests to find 2 records"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn retries_of_a_stopped_batch_skip_what_it_wrote_past_its_first_unhandled_record() {
    // 1,000 records over 40 keys, half of all entries throttled, 25 ms round trips, and an
    // invocation time that stops every batch part-way: the event source mapping retries from
    // the first unhandled record each time. What an invocation wrote past that record is kept
    // with the checkpoint and skipped by the retry, so copies beyond the first are few (only
    // requests cut off by the deadline, whose outcome is unknown) and every one is counted.
    let rng = Arc::new(Mutex::new(rand::rngs::StdRng::seed_from_u64(50)));
    let target = FakeTarget::new(move |_, _, _| {
        if rng.lock().unwrap().random_bool(0.5) {
            Fault::Throttle
        } else {
            Fault::None
        }
    })
    .with_round_trip(Duration::from_millis(25));
    let r = one_route(&target);
    let all = batch(1000, 40);
    let mut from = 0;
    let (mut invocations, mut counted, mut skipped) = (0, 0, 0);
    while from < all.records.len() {
        invocations += 1;
        assert!(invocations < 500, "no progress");
        let b = SourceBatch {
            records: all.records[from..].to_vec(),
            ..all.clone()
        };
        let rep = r
            .replicate(&b, Instant::now() + Duration::from_millis(400))
            .await;
        counted += rep.routes[0].possible_duplicates;
        skipped += rep.routes[0].skipped;
        from = match &rep.first_unhandled {
            Some(seq) => all.records.iter().position(|x| x.seq == *seq).unwrap(),
            None => all.records.len(),
        };
    }
    let written = target.written(&route("t").name);
    assert_complete_and_ordered(&written, 1000, &[]);
    let duplicates = written.len() - 1000;
    eprintln!(
        "{invocations} invocations, {} copies, {duplicates} duplicates, {counted} counted, {skipped} skipped",
        written.len()
    );
    assert!(invocations > 3, "the batch was stopped and retried");
    assert!(
        skipped > 100,
        "the retries skipped what was written past the stop"
    );
    assert!(duplicates <= 10, "{duplicates} duplicates (at most 1%)");
    assert!(
        counted >= duplicates,
        "{counted} counted, {duplicates} found"
    );
}

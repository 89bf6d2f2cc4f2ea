use super::*;
use crate::pacing::TargetShard;
use crate::seq::SequenceNumber;
use std::time::Duration;

fn records(keys: &[&str], size: usize) -> Vec<SourceRecord> {
    keys.iter()
        .enumerate()
        .map(|(i, k)| SourceRecord {
            seq: SequenceNumber::parse(&(i + 1).to_string()).unwrap(),
            partition_key: Some((*k).to_owned()),
            data: vec![i as u8; size],
            arrival_ms: None,
            defect: None,
        })
        .collect()
}

fn shape(mode: OrderMode) -> Shape {
    Shape {
        mode,
        max_entries: 500,
        max_request_bytes: 5 << 20,
        max_record_bytes: 1 << 20,
        run_length: 3,
    }
}

fn covered(entries: &[Entry]) -> Vec<Vec<usize>> {
    entries.iter().map(|e| e.records.clone()).collect()
}

#[test]
fn each_mode_sends_what_a_key_may_have_in_flight() {
    let recs = records(&["a", "a", "b", "a", "a", "b", "a"], 10);
    let limits = ShardLimits::new(1000, 1 << 20, 0);
    let now = Instant::now();
    let cases: [(OrderMode, Vec<Vec<usize>>); 3] = [
        (OrderMode::Strict, vec![vec![0], vec![2]]),
        (
            OrderMode::Runs,
            vec![vec![0], vec![1], vec![3], vec![2], vec![5]],
        ),
        (OrderMode::Aggregated, vec![vec![0, 1, 3, 4, 6], vec![2, 5]]),
    ];
    for (mode, want) in cases {
        let mut s = Schedule::new(&recs, 0..recs.len(), shape(mode), &ShardMap::default());
        let req = s.next_request(now, &mut [], &limits).unwrap();
        assert_eq!(covered(&req), want, "{mode}");
        assert!(
            s.next_request(now, &mut [], &limits).is_none(),
            "{mode}: keys in flight"
        );
    }
}

#[test]
fn a_failed_key_waits_its_own_backoff_while_others_go() {
    let recs = records(&["a", "b", "a", "b"], 10);
    let limits = ShardLimits::new(1000, 1 << 20, 0);
    let now = Instant::now();
    let mut s = Schedule::new(&recs, 0..4, shape(OrderMode::Strict), &ShardMap::default());
    let req = s.next_request(now, &mut [], &limits).unwrap();
    assert_eq!(covered(&req), vec![vec![0], vec![1]]);
    // a's head failed, b's was written.
    s.settle(0, Some(now), |_| Duration::from_millis(100));
    s.pop(1, 1);
    s.settle(1, None, |_| Duration::ZERO);
    let req = s.next_request(now, &mut [], &limits).unwrap();
    assert_eq!(covered(&req), vec![vec![3]], "b goes on while a waits");
    s.pop(1, 3);
    s.settle(1, None, |_| Duration::ZERO);
    assert!(s.next_request(now, &mut [], &limits).is_none());
    assert_eq!(
        s.next_wake(now, &mut [], &limits),
        Some(now + Duration::from_millis(100))
    );
    let later = now + Duration::from_millis(100);
    assert_eq!(
        covered(&s.next_request(later, &mut [], &limits).unwrap()),
        vec![vec![0]]
    );
}

#[test]
fn a_shard_without_tokens_holds_only_its_own_keys() {
    // Two target shards; "a" and "b" hash to different halves.
    let half = u128::MAX / 2;
    let map = ShardMap::new(vec![
        TargetShard {
            shard_id: "s0".into(),
            start: 0,
            end: half,
        },
        TargetShard {
            shard_id: "s1".into(),
            start: half + 1,
            end: u128::MAX,
        },
    ]);
    let (ka, kb) = ("a", "b");
    let (sa, sb) = (
        map.shard_for(kpl::hash_key(ka)),
        map.shard_for(kpl::hash_key(kb)),
    );
    assert_ne!(sa, sb, "test keys must land on different shards");
    let keys: Vec<&str> = (0..20).map(|i| if i % 2 == 0 { ka } else { kb }).collect();
    let recs = records(&keys, 10);
    // 2 records/s per shard, bucket of 2.
    let limits = ShardLimits::new(2, 1 << 20, 0);
    let now = Instant::now();
    let mut buckets = vec![Bucket::new(now), Bucket::new(now)];
    buckets[sa].throttled(&limits, now);
    let mut s = Schedule::new(&recs, 0..20, shape(OrderMode::Runs), &map);
    let req = s.next_request(now, &mut buckets, &limits).unwrap();
    assert!(
        req.iter().all(|e| s.shard_of(e.slot) == sb),
        "only b's shard has room"
    );
    assert_eq!(req.len(), 2, "b's run is cut to its shard's 2 tokens");
}

#[test]
fn when_tokens_run_short_the_longest_queue_goes_first_and_the_rest_wait_for_tokens() {
    // "x" comes first in the batch, "hot" has the most records; one shard, 1 record/s,
    // its bucket emptied by a throttle and refilled for one second: one token.
    let recs = records(&["x", "hot", "y", "hot", "hot", "y"], 10);
    let limits = ShardLimits::new(1, 1 << 20, 0);
    let now = Instant::now();
    let mut buckets = vec![Bucket::new(now)];
    buckets[0].throttled(&limits, now);
    let later = now + Duration::from_secs(1);
    let mut s = Schedule::new(&recs, 0..6, shape(OrderMode::Strict), &ShardMap::default());
    let req = s.next_request(later, &mut buckets, &limits).unwrap();
    assert_eq!(
        covered(&req),
        vec![vec![1]],
        "hot (3 records) before y (2) and x (1)"
    );
    assert!(s.awaits_tokens(), "y and x are ready but for tokens");
    let wake = s.next_wake(later, &mut buckets, &limits).unwrap();
    assert!(
        wake > later,
        "they wait for the next token, not for an answer"
    );
    // Nothing held back for tokens: a later call with nothing ready says so.
    let mut free: Vec<Bucket> = vec![];
    assert_eq!(
        covered(&s.next_request(later, &mut free, &limits).unwrap()),
        vec![vec![2], vec![0]]
    );
    assert!(!s.awaits_tokens());
    assert!(s.next_request(later, &mut free, &limits).is_none());
    assert!(!s.awaits_tokens());
}

#[test]
fn aggregates_stay_within_the_record_limit_and_sizes_are_exact() {
    let mut size = AggregateSize::new(3);
    let mut agg = kpl::Aggregator::new();
    for len in [0usize, 1, 127, 128, 300, 16_383, 16_384, 70_000] {
        size.add(len);
        agg.add("key", None, &vec![7u8; len]);
    }
    assert_eq!(size.total(), agg.finish().len());

    let recs = records(&["k"; 40], 100 * 1024);
    let mut sh = shape(OrderMode::Aggregated);
    sh.max_record_bytes = 1 << 20;
    let mut s = Schedule::new(&recs, 0..40, sh, &ShardMap::default());
    let req = s
        .next_request(Instant::now(), &mut [], &ShardLimits::new(1000, 1 << 20, 0))
        .unwrap();
    assert_eq!(req.len(), 1);
    assert_eq!(req[0].records.len(), 10, "ten 100 KiB records fit in 1 MiB");
    match &req[0].payload {
        Payload::Aggregated(bytes) => assert!(bytes.len() < 1 << 20),
        other => panic!("{other:?}"),
    }
}

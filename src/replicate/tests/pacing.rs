//! Back-offs and pacing: a failing key waits alone, writes stay under each target shard's limits, throttles slow a shard down.

#[allow(unused_imports)]
use super::*;

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

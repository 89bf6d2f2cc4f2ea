//! The `runs` and `aggregated` order modes: what reaches the target, and in which order.

#[allow(unused_imports)]
use super::*;

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

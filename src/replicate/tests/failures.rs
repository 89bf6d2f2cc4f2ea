//! A clean batch, and the ways writes fail: partly, refused, systemic, timed out, a store or the target's limits unreadable.

#[allow(unused_imports)]
use super::*;

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

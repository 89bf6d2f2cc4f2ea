//! Progress kept across batches: the checkpoint a retried batch skips from, and shard heartbeats.

#[allow(unused_imports)]
use super::*;

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

#[tokio::test(start_paused = true)]
async fn position_pairs_ride_with_the_checkpoint_at_most_every_ten_seconds() {
    let target = FakeTarget::new(|_, _, _| Fault::None).with_shards(3, 0);
    let cps = FakeCheckpoints::default();
    let r = Replicator::new(
        target.clone(),
        cps.clone(),
        FakeDeadLetters::default(),
        vec![route("t")],
        limits(),
    );
    let pairs = || cps.pairs.lock().unwrap().clone();
    r.replicate(&batch_from(1000, 10, 4), far()).await;
    r.replicate(&batch_from(1010, 10, 4), far()).await;
    assert_eq!(pairs().len(), 1, "one pair for two batches within 10 s");
    let first = &pairs()[0];
    assert_eq!((first.from.as_str(), first.to.as_str()), ("0", "1009"));
    assert!(first.before.is_empty());
    // The checkpoint carries the marks of both batches: the highest target position written.
    let cp = cps.items.lock().unwrap().values().next().cloned().unwrap();
    // The fake numbers every write 1, 2, … across shards, in landing order.
    let mut highest = crate::positions::Marks::new();
    for (i, (_, shard)) in target.state.lock().unwrap().landed.iter().enumerate() {
        let seq = SequenceNumber::parse(&(i + 1).to_string()).unwrap();
        highest.insert(format!("shardId-{shard}"), seq);
    }
    assert_eq!(cp.marks, highest);
    assert_eq!(
        highest.len(),
        3,
        "the batches' keys spread over the three target shards"
    );
    tokio::time::advance(crate::config::POSITION_EVERY).await;
    r.replicate(&batch_from(1020, 10, 4), far()).await;
    let second = pairs()[1].clone();
    assert_eq!((second.from.as_str(), second.to.as_str()), ("1019", "1029"));
    assert_eq!(
        second.before, cp.marks,
        "before: everything written by earlier batches"
    );
    assert!(second.started_ms <= second.at_ms);
    // A flip (the handler saw the route's mode change): a pair at the next batch, however
    // soon; then the rate again.
    r.replicate(&batch_from(1030, 10, 4), far()).await;
    assert_eq!(pairs().len(), 2);
    r.force_positions("other-route");
    r.replicate(&batch_from(1040, 10, 4), far()).await;
    assert_eq!(
        pairs().len(),
        2,
        "another route's flip changes nothing here"
    );
    r.force_positions(&route("t").name);
    r.replicate(&batch_from(1050, 10, 4), far()).await;
    assert_eq!(pairs().len(), 3, "a pair right after the flip");
    assert_eq!(pairs()[2].to.as_str(), "1059");
    r.replicate(&batch_from(1060, 10, 4), far()).await;
    assert_eq!(pairs().len(), 3);
}

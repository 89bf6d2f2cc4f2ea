//! What a run reads and reports: a bounded backfill window, retried reads within the shard
//! limit, a systemic read error, enhanced fan-out, and local runs of `fanoutctl` (their
//! report, and a paused route).

use super::*;

#[tokio::test]
async fn backfill_replicates_exactly_its_window_and_resumes_as_a_no_op() {
    let Some(world) = World::create_serialized(Backend::KinesisLocal, 2, 1).await else {
        return;
    };
    let reader = KinesisSource::new(&world.new_account);
    let all = records(90, 7, 30);
    let (before, rest) = all.split_at(20);
    let (inside, after) = rest.split_at(40);
    reader.put_all(&world.source, before).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let from = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    reader.put_all(&world.source, inside).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let until = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(200)).await;
    reader.put_all(&world.source, after).await.unwrap();

    let fmt =
        |t: chrono::DateTime<chrono::Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let (from_s, until_s) = (fmt(from), fmt(until));
    let args = [
        "backfill",
        "--from",
        from_s.as_str(),
        "--until",
        until_s.as_str(),
        "--batch-size",
        "15",
        "--lease-ttl",
        "2",
        "--quiet",
        "--output",
        "json",
    ];
    let (code, out) = wait_child(spawn_fanoutctl(&world, &args), Duration::from_secs(120));
    assert_eq!(code, 0, "{out}");
    let summary: serde_json::Value = serde_json::from_str(&out).expect("JSON summary");
    assert_eq!(summary["records_delivered"], 40, "{summary:#}");

    let source = reader.read_all(&world.source).await.unwrap();
    let inside_keys: HashSet<&[u8]> = inside.iter().map(|(_, d)| d.as_slice()).collect();
    let window: Vec<(String, SourceRecord)> = source
        .into_iter()
        .filter(|(_, r)| inside_keys.contains(r.data.as_slice()))
        .collect();
    assert_eq!(window.len(), 40);
    let c = compare(&world, &window).await;
    assert_eq!(c.target_records, 40, "exactly the window: {c:?}");
    assert!(c.is_clean() && c.duplicates == 0, "{c:?}");

    // The same command again resumes a finished window: nothing is sent twice.
    let (code, out) = wait_child(spawn_fanoutctl(&world, &args), Duration::from_secs(60));
    assert_eq!(code, 0, "{out}");
    let again: serde_json::Value = serde_json::from_str(&out).expect("JSON summary");
    assert_eq!(again["records_delivered"], 0, "{again:#}");
    assert_eq!(compare(&world, &window).await.target_records, 40);
}

#[tokio::test]
async fn expired_iterators_and_throttled_reads_are_retried_and_reads_keep_to_the_shard_limit() {
    let Some(world) = World::create_serialized(Backend::KinesisLocal, 1, 1).await else {
        return;
    };
    let proxy = support::fault_proxy::FaultProxy::start(&world.kinesis_endpoint);
    let through_proxy = KinesisSource::new(&world.sdk_via(&proxy.endpoint()).await);
    let direct = KinesisSource::new(&world.new_account);
    let data = records(300, 9, 30);
    direct.put_all(&world.source, &data).await.unwrap();
    proxy.fail_next_reads(2, 400, "ExpiredIteratorException");
    proxy.fail_next_reads(4, 400, "ProvisionedThroughputExceededException");
    proxy.fail_next_reads(1, 500, "InternalFailure");
    let options = RunnerOptions {
        batch_size: 50,
        until_caught_up: true,
        idle_poll: Duration::from_millis(50),
        discover_every: Duration::from_millis(100),
        lease_name: lease_name(&world),
        ..RunnerOptions::default() // 200 ms between reads: 5 reads/s
    };
    let started = Instant::now();
    let summary = spawn_in_process(&world, &through_proxy, &options, Default::default())
        .await
        .unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    assert_eq!(proxy.read_faults_left(), 0, "every injected fault was met");
    assert!(
        summary.shards.values().all(|s| s.stopped.is_none()),
        "{summary:?}"
    );
    assert_eq!(summary.records_delivered(), 300);
    let source = direct.read_all(&world.source).await.unwrap();
    let c = compare(&world, &source).await;
    assert!(c.is_clean() && c.duplicates == 0, "{c:?}");
    let reads = proxy.get_records_requests();
    assert!(
        reads as f64 <= elapsed * 5.0 + 1.0,
        "{reads} GetRecords in {elapsed:.2}s on one shard: over 5 reads/s"
    );
}

#[tokio::test]
async fn a_systemic_read_error_stops_only_that_shard_with_one_clear_message() {
    let Some(world) = World::create_serialized(Backend::KinesisLocal, 2, 1).await else {
        return;
    };
    let proxy = support::fault_proxy::FaultProxy::start(&world.kinesis_endpoint);
    let through_proxy = KinesisSource::new(&world.sdk_via(&proxy.endpoint()).await);
    let direct = KinesisSource::new(&world.new_account);
    let data = records(200, 20, 30);
    let placed = direct.put_all(&world.source, &data).await.unwrap();
    proxy.fail_next_reads(1, 400, "AccessDeniedException");
    let options = RunnerOptions {
        batch_size: 50,
        until_caught_up: true,
        idle_poll: Duration::from_millis(50),
        discover_every: Duration::from_millis(100),
        min_read_interval: Duration::from_millis(20),
        lease_name: lease_name(&world),
        ..RunnerOptions::default()
    };
    let summary = spawn_in_process(&world, &through_proxy, &options, Default::default())
        .await
        .unwrap();
    let stopped: Vec<(&String, &str)> = summary
        .shards
        .iter()
        .filter_map(|(id, s)| s.stopped.as_deref().map(|w| (id, w)))
        .collect();
    assert_eq!(stopped.len(), 1, "exactly one shard stopped: {summary:?}");
    let (bad, why) = stopped[0];
    assert!(why.contains("AccessDenied"), "{why}");
    let (good, progress) = summary
        .shards
        .iter()
        .find(|(id, _)| *id != bad)
        .expect("the other shard");
    let expected = placed.iter().filter(|(shard, _)| shard == good).count() as u64;
    assert_eq!(
        progress.records_delivered, expected,
        "the other shard carried on"
    );
    assert_eq!(summary.shards[bad].records_delivered, 0);
    // Nothing was skipped: the stopped shard's lease keeps no position, so a rerun starts there.
    let leases = DynamoLeases::new(&world.new_account, &world.table);
    let stored = leases.list(&lease_name(&world)).await.unwrap();
    let bad_lease = stored.iter().find(|r| &r.shard_id == bad).unwrap();
    assert_eq!(bad_lease.position, Position::Start);
    assert!(bad_lease.owner.is_none(), "released for a rerun");
}

#[tokio::test]
async fn enhanced_fan_out_resubscribes_from_the_continuation_and_loses_nothing() {
    let Some(world) = World::create_serialized(Backend::KinesisLocal, 2, 1).await else {
        return;
    };
    let reader = KinesisSource::new(&world.new_account);
    let options = RunnerOptions {
        batch_size: 40,
        idle_poll: Duration::from_millis(50),
        discover_every: Duration::from_millis(200),
        lease_name: lease_name(&world),
        fan_out_consumer: Some("fanout-test".to_owned()),
        // Subscriptions end every 700 ms (Kinesis: 5 minutes), so records keep arriving
        // across re-subscriptions.
        subscription_max: Some(Duration::from_millis(700)),
        ..RunnerOptions::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let run = spawn_in_process(&world, &reader, &options, stop.clone());
    let data = records(600, 30, 30);
    for chunk in data.chunks(100) {
        reader.put_all(&world.source, chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let have = wait_for_target(&world, data.len(), Duration::from_secs(120)).await;
    stop.store(true, Ordering::Relaxed);
    let summary = run.await.unwrap();
    assert!(
        have >= data.len(),
        "target holds {have} of {}: {summary:?}",
        data.len()
    );
    assert!(
        summary.shards.values().all(|s| s.stopped.is_none()),
        "{summary:?}"
    );
    let source = reader.read_all(&world.source).await.unwrap();
    let c = compare(&world, &source).await;
    assert!(c.is_clean(), "{c:?}");
    assert_eq!(c.duplicates, 0, "re-subscribing repeats nothing: {c:?}");
    assert_eq!(summary.records_delivered(), 600);
}

#[tokio::test]
async fn a_local_run_reports_what_the_handler_wrote_dead_lettered_and_skipped_and_its_metrics() {
    let Some(world) = World::create_serialized(Backend::KinesisLocal, 2, 2).await else {
        return;
    };
    let reader = KinesisSource::new(&world.new_account);
    // 400 records, one of them over the target's record limit (1 MiB counting its key).
    let mut data = records(400, 40, 60);
    let mut big = format!("{}|big|", data[100].0).into_bytes();
    big.resize(1024 * 1024, b'z');
    data[100].1 = big;
    reader.put_all(&world.source, &data).await.unwrap();
    let metrics = std::env::temp_dir().join(format!("fanout-metrics-{}.jsonl", world.table));
    let metrics_arg = metrics.to_string_lossy().into_owned();
    let args = [
        "replicate",
        "--from",
        "trim-horizon",
        "--until-caught-up",
        "--quiet",
        "--output",
        "json",
        "--metrics",
        &metrics_arg,
    ];
    let (code, out) = wait_child(spawn_fanoutctl(&world, &args), Duration::from_secs(120));
    assert_eq!(code, 0, "{out}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("JSON summary");
    // The same EMF lines the Lambda writes: they add up to the summary.
    let lines = std::fs::read_to_string(&metrics).expect("metrics file");
    let _ = std::fs::remove_file(&metrics);
    let (mut replicated, mut dead) = (0.0, 0.0);
    for line in lines.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("an EMF line");
        assert!(v["_aws"]["CloudWatchMetrics"].is_array(), "{line}");
        replicated += v["RecordsReplicated"].as_f64().unwrap_or(0.0);
        dead += v["RecordsDeadLettered"].as_f64().unwrap_or(0.0);
    }
    assert_eq!((replicated, dead), (399.0, 1.0), "EMF lines: {lines}");
    let handled = &doc["handled"];
    assert_eq!(handled["written"], 399, "{doc:#}");
    assert_eq!(handled["dead_lettered"], 1, "{doc:#}");
    assert_eq!(handled["possible_duplicates"], 0, "{doc:#}");
    assert!(handled["reports"].as_u64().unwrap() >= 2, "{doc:#}");
    let per_shard: u64 = doc["shards"]
        .as_object()
        .unwrap()
        .values()
        .map(|s| s["handled"]["written"].as_u64().unwrap())
        .sum();
    assert_eq!(per_shard, 399, "the shards add up to the total");
    assert!(doc["shards"]
        .as_object()
        .unwrap()
        .values()
        .all(|s| s["held"].is_null()));
}

#[tokio::test]
async fn a_local_run_on_a_paused_route_says_held_and_writes_nothing_until_resumed() {
    use fanout::aws::control::AwsControl;
    use fanout::control::machine::{Mode, RouteMode};
    use fanout::ports::control::ControlStore;
    let Some(world) = World::create_serialized(Backend::KinesisLocal, 1, 1).await else {
        return;
    };
    let reader = KinesisSource::new(&world.new_account);
    reader
        .put_all(&world.source, &records(50, 5, 40))
        .await
        .unwrap();
    let control = AwsControl::new(&world.new_account, &world.new_account, &world.table);
    let route = world.route().name;
    let set = |mode: Mode| {
        let (control, route) = (&control, &route);
        async move {
            control
                .set_mode(
                    route,
                    RouteMode {
                        mode,
                        since_ms: None,
                    },
                    1,
                    "held-test",
                    "test",
                    chrono::Utc::now().timestamp_millis(),
                )
                .await
                .expect("set the route's mode");
        }
    };
    set(Mode::Hold).await;
    let log = std::env::temp_dir().join(format!("{}.log", support::stack::unique("held")));
    let child = spawn_fanoutctl_logging(
        &world,
        &["replicate", "--from", "trim-horizon", "--quiet"],
        &log,
    );
    tokio::time::sleep(Duration::from_secs(6)).await;
    sigterm(&child);
    let (code, out) = wait_child(child, Duration::from_secs(60));
    let logged = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(code, 0, "{out}\n{logged}");
    assert!(
        out.contains(&format!("HELD: route {route} is hold")),
        "the summary says the shard is held: {out}"
    );
    assert!(
        logged.contains("WARN") && logged.contains("its records wait in the stream"),
        "one visible line says why: {logged}"
    );
    assert!(reader.read_all(&world.target).await.unwrap().is_empty());

    set(Mode::Forward).await;
    let (code, out) = wait_child(
        spawn_fanoutctl(
            &world,
            &[
                "replicate",
                "--from",
                "trim-horizon",
                "--until-caught-up",
                "--quiet",
            ],
        ),
        Duration::from_secs(120),
    );
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("HELD"), "{out}");
    assert_eq!(reader.read_all(&world.target).await.unwrap().len(), 50);
}

//! Bad input and systemic errors: a refused record dead-lettered alone, a batch invoked
//! twice, a record too large, a missing target, denied access, malformed JSON, and throttled
//! or slow refreshes of the target's limits.

use fanout::replicate::StopReason;

use super::*;
use crate::support::fault_proxy::SummaryFault;

async fn a_record_the_target_refuses_is_dead_lettered_alone_and_the_rest_flows(backend: Backend) {
    let Some(world) = World::create(backend, 1, 2).await else {
        return;
    };
    let config = world.config();
    let mut recs = records(300, 30, 100);
    // Two records a target refuses whole requests for (a partition key over its limit, as
    // counted by that target); the proxy refuses any request holding them.
    for i in [40, 222] {
        recs[i].1 = format!("{}|{i}|REFUSED-BY-TARGET", recs[i].0).into_bytes();
    }
    write_source(&world, &recs).await;
    let proxy = FaultProxy::start(&world.kinesis_endpoint);
    proxy.set_plan(FaultPlan::RefuseHolding {
        needle: "REFUSED-BY-TARGET".to_owned(),
    });
    let handler = handler_for(&world, &config, &proxy.endpoint()).await;
    let reports = invoke_per_shard(&world, &handler).await;
    assert!(
        reports.iter().all(|r| r.first_unhandled.is_none()),
        "the shard is not blocked: {:?}",
        reports
            .iter()
            .flat_map(|r| &r.routes)
            .map(|r| &r.stop)
            .collect::<Vec<_>>()
    );
    let letters = dead_letters(&world, &config).await;
    let mut refused: Vec<String> = letters
        .iter()
        .map(|(_, e)| {
            use base64::Engine;
            let data = base64::engine::general_purpose::STANDARD
                .decode(&e.data_base64)
                .unwrap();
            assert_eq!(e.error_code, "TargetRejected");
            assert!(
                e.reason.contains("InvalidArgumentException") && e.reason.contains("records."),
                "the target's own message: {}",
                e.reason
            );
            String::from_utf8(data).unwrap()
        })
        .collect();
    refused.sort();
    assert_eq!(refused.len(), 2, "{refused:?}");
    assert!(refused.iter().all(|d| d.ends_with("|REFUSED-BY-TARGET")));
    let c = compare(&world, &config).await;
    assert!(c.is_clean(), "{c:?}");
    assert_eq!((c.target_records, c.dead_lettered), (298, 2));
    assert!(proxy.refused() >= 2, "the target refused requests");
    eprintln!("{} requests refused to isolate 2 records", proxy.refused());
}

#[tokio::test]
async fn a_record_the_target_refuses_is_dead_lettered_alone_and_the_rest_flows_on_kinesis_local() {
    a_record_the_target_refuses_is_dead_lettered_alone_and_the_rest_flows(Backend::KinesisLocal)
        .await;
}

async fn the_same_batch_invoked_twice_is_skipped_the_second_time(backend: Backend) {
    let Some(world) = World::create(backend, 2, 2).await else {
        return;
    };
    let config = world.config();
    write_source(&world, &records(300, 20, 100)).await;
    let handler = handler_for(&world, &config, &world.kinesis_endpoint).await;
    let first = invoke_per_shard(&world, &handler).await;
    let second = invoke_per_shard(&world, &handler).await;
    assert_eq!(total(&first, |r| r.written), 300);
    assert_eq!(total(&second, |r| r.skipped), 300);
    assert_eq!(total(&second, |r| r.written), 0);
    let c = compare(&world, &config).await;
    assert!(
        c.is_clean() && c.duplicates == 0 && c.target_records == 300,
        "{c:?}"
    );
}

#[tokio::test]
async fn the_same_batch_invoked_twice_is_skipped_the_second_time_on_kinesis_local() {
    the_same_batch_invoked_twice_is_skipped_the_second_time(Backend::KinesisLocal).await;
}

#[tokio::test]
async fn the_same_batch_invoked_twice_is_skipped_the_second_time_on_moto() {
    the_same_batch_invoked_twice_is_skipped_the_second_time(Backend::Moto).await;
}

async fn a_record_too_large_for_the_target_is_dead_lettered_with_its_payload(backend: Backend) {
    let Some(world) = World::create(backend, 1, 1).await else {
        return;
    };
    let mut config = world.config();
    let mut recs = records(50, 5, 100);
    // kinesis-local: 1 MiB of data plus the key; the source took it, the target's 1 MiB limit
    // (read from DescribeStreamSummary) counts the key too. moto refuses such a record in the
    // source, so there the target limit comes from FANOUT_MAX_RECORD_BYTES instead.
    let big_len = if backend == Backend::Moto {
        eprintln!("on moto: the source refuses 1 MiB + key, so the limit is lowered to 64 KiB by configuration");
        config.limits.max_record_bytes_override = Some(64 * 1024);
        100 * 1024
    } else {
        1024 * 1024
    };
    let big_key = recs[20].0.clone();
    let mut big = format!("{big_key}|big|").into_bytes();
    big.resize(big_len, b'z');
    recs[20] = (big_key, big.clone());
    write_source(&world, &recs).await;
    let logs = Logs::default();
    let _guard = logs.capture();
    let handler = handler_for(&world, &config, &world.kinesis_endpoint).await;
    let reports = invoke_per_shard(&world, &handler).await;
    assert!(reports.iter().all(|r| r.first_unhandled.is_none()));
    let letters = dead_letters(&world, &config).await;
    assert_eq!(letters.len(), 1);
    let env = &letters[0].1;
    assert_eq!(env.error_code, "RecordTooLarge");
    use base64::Engine;
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(&env.data_base64)
            .unwrap(),
        big
    );
    assert_eq!(env.source_stream_arn, world.source.to_string());
    let warn = logs.lines("WARN");
    assert_eq!(warn.len(), 1, "{warn:?}");
    assert!(
        warn[0].contains(&env.sequence_number) && warn[0].contains("s3://"),
        "{}",
        warn[0]
    );
    let c = compare(&world, &config).await;
    assert!(c.is_clean(), "{c:?}");
    assert_eq!((c.target_records, c.dead_lettered), (49, 1));
}

#[tokio::test]
async fn a_record_too_large_for_the_target_is_dead_lettered_with_its_payload_on_kinesis_local() {
    a_record_too_large_for_the_target_is_dead_lettered_with_its_payload(Backend::KinesisLocal)
        .await;
}

#[tokio::test]
async fn a_record_too_large_for_the_target_is_dead_lettered_with_its_payload_on_moto() {
    a_record_too_large_for_the_target_is_dead_lettered_with_its_payload(Backend::Moto).await;
}

/// Asserts a systemic stop: first record reported, nothing written or dead-lettered, no
/// checkpoint, and exactly one ERROR line that names the target and says what to do.
async fn assert_stops_cleanly(
    world: &World,
    config: &ReplicatorConfig,
    kinesis: &str,
    code: &str,
    fix: &str,
) {
    let logs = Logs::default();
    let _guard = logs.capture();
    let handler = handler_for(world, config, kinesis).await;
    let batches = source_batches(world).await;
    let (shard, recs) = &batches[0];
    let ev =
        serde_json::to_vec(&event::build_event(&world.source, shard, "us-east-1", recs)).unwrap();
    let (response, report) = handler
        .handle(&ev, Instant::now() + Duration::from_secs(30))
        .await
        .unwrap();
    let reported: Vec<_> = response
        .batch_item_failures
        .iter()
        .filter_map(|f| f.item_identifier.clone())
        .collect();
    assert_eq!(
        reported,
        vec![recs[0].seq.to_string()],
        "the shard stops at its first unwritten record"
    );
    assert!(
        matches!(&report.routes[0].stop, Some(StopReason::Systemic { code: c, .. }) if c == code),
        "{report:?}"
    );
    assert!(
        dead_letters(world, config).await.is_empty(),
        "nothing is dead-lettered for a systemic error"
    );
    let errors = logs.lines("ERROR");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].contains(&config.routes[0].target.to_string()) && errors[0].contains(fix),
        "{}",
        errors[0]
    );
    // The records are still there for the retry: fixing nothing and retrying changes nothing.
    let (again, _) = handler
        .handle(&ev, Instant::now() + Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(again.batch_item_failures.len(), 1);
}

async fn a_missing_target_stream_stops_the_shard_with_one_clear_error(backend: Backend) {
    let Some(world) = World::create(backend, 1, 1).await else {
        return;
    };
    write_source(&world, &records(20, 3, 50)).await;
    let mut config = world.config();
    let account = world.target.account().to_owned();
    config.routes[0].target = StreamArn::parse(&format!(
        "arn:aws:kinesis:us-east-1:{account}:stream/no-such-stream"
    ))
    .unwrap();
    assert_stops_cleanly(
        &world,
        &config,
        &world.kinesis_endpoint,
        "ResourceNotFoundException",
        "Create the target stream",
    )
    .await;
}

#[tokio::test]
async fn a_missing_target_stream_stops_the_shard_with_one_clear_error_on_kinesis_local() {
    a_missing_target_stream_stops_the_shard_with_one_clear_error(Backend::KinesisLocal).await;
}

#[tokio::test]
async fn a_missing_target_stream_stops_the_shard_with_one_clear_error_on_moto() {
    a_missing_target_stream_stops_the_shard_with_one_clear_error(Backend::Moto).await;
}

async fn denied_access_stops_the_shard_with_one_clear_error(backend: Backend) {
    let Some(world) = World::create(backend, 1, 1).await else {
        return;
    };
    write_source(&world, &records(20, 3, 50)).await;
    let config = world.config();
    let proxy = FaultProxy::start(&world.kinesis_endpoint);
    proxy.set_plan(FaultPlan::request_error(
        "AccessDeniedException",
        "User: arn:aws:sts::222222222222:assumed-role/fanout-writer/x is not authorized to perform: kinesis:PutRecords",
    ));
    assert_stops_cleanly(
        &world,
        &config,
        &proxy.endpoint(),
        "AccessDeniedException",
        "Grant",
    )
    .await;
    let target = KinesisSource::new(&world.new_account)
        .read_all(&world.target)
        .await
        .unwrap();
    assert!(target.is_empty());
}

#[tokio::test]
async fn denied_access_stops_the_shard_with_one_clear_error_on_kinesis_local() {
    denied_access_stops_the_shard_with_one_clear_error(Backend::KinesisLocal).await;
}

#[tokio::test]
async fn denied_access_stops_the_shard_with_one_clear_error_on_moto() {
    denied_access_stops_the_shard_with_one_clear_error(Backend::Moto).await;
}

#[tokio::test]
async fn malformed_event_json_is_refused_and_a_malformed_record_is_dead_lettered() {
    let Some(world) = World::create(Backend::KinesisLocal, 1, 1).await else {
        return;
    };
    let config = world.config();
    let handler = handler_for(&world, &config, &world.kinesis_endpoint).await;
    let err = handler
        .handle(
            b"{\"Records\": 42}",
            Instant::now() + Duration::from_secs(10),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Malformed Kinesis event"), "{err}");

    write_source(&world, &records(10, 2, 50)).await;
    let (shard, recs) = source_batches(&world).await.remove(0);
    let mut ev = serde_json::to_value(event::build_event(
        &world.source,
        &shard,
        "us-east-1",
        &recs,
    ))
    .unwrap();
    ev["Records"][3]["kinesis"]["data"] = serde_json::Value::from("%%% not base64 %%%");
    let (response, report) = handler
        .handle(
            &serde_json::to_vec(&ev).unwrap(),
            Instant::now() + Duration::from_secs(10),
        )
        .await
        .unwrap();
    assert!(response.batch_item_failures.is_empty());
    assert_eq!(
        (report.routes[0].written, report.routes[0].dead_lettered),
        (9, 1)
    );
    let letters = dead_letters(&world, &config).await;
    assert_eq!(letters[0].1.error_code, "MalformedRecord");
    assert_eq!(letters[0].1.sequence_number, recs[3].seq.to_string());
    use base64::Engine;
    let raw = base64::engine::general_purpose::STANDARD
        .decode(&letters[0].1.data_base64)
        .unwrap();
    assert!(
        String::from_utf8_lossy(&raw).contains("%%% not base64 %%%"),
        "the raw record JSON is kept"
    );
}

/// With the target's limits read again on every batch (their cache time cut to 0), a refresh
/// that is throttled, or that does not answer in time (the request timeout, 2 s here; at most
/// 5 s), keeps the last known limits: every batch is written, none stops.
#[tokio::test]
async fn a_throttled_or_slow_refresh_of_the_targets_limits_keeps_replicating() {
    let Some(world) = World::create(Backend::KinesisLocal, 1, 2).await else {
        return;
    };
    let mut config = world.config();
    config.limits.target_info_ttl = Duration::ZERO;
    write_source(&world, &records(300, 20, 100)).await;
    let proxy = FaultProxy::start(&world.kinesis_endpoint);
    let handler = handler_for(&world, &config, &proxy.endpoint()).await;
    let (shard, recs) = source_batches(&world).await.remove(0);
    let invoke = |part: &[SourceRecord]| {
        let payload = serde_json::to_vec(&event::build_event(
            &world.source,
            &shard,
            "us-east-1",
            part,
        ))
        .unwrap();
        let handler = &handler;
        async move {
            let (_, report) = handler
                .handle(&payload, Instant::now() + Duration::from_secs(60))
                .await
                .expect("handled");
            report
        }
    };
    let first = invoke(&recs[..100]).await;
    assert!(first.first_unhandled.is_none(), "{first:?}");
    let read = proxy.summary_requests();
    assert!(read >= 1, "the limits were read");

    proxy.fault_next_summaries(
        20,
        SummaryFault::Error {
            status: 400,
            error_type: "LimitExceededException".to_owned(),
        },
    );
    let throttled = invoke(&recs[100..200]).await;
    assert!(
        throttled.first_unhandled.is_none() && throttled.routes[0].stop.is_none(),
        "a throttled refresh stops nothing: {throttled:?}"
    );
    assert!(
        proxy.summary_requests() > read,
        "the refresh was tried (and throttled: every request after the first read is)"
    );

    // A new handler (nothing cached yet) reads the limits, then meets a stalled endpoint.
    let proxy2 = FaultProxy::start(&world.kinesis_endpoint);
    let handler = handler_for(&world, &config, &proxy2.endpoint()).await;
    let payload = |part: &[SourceRecord]| {
        serde_json::to_vec(&event::build_event(
            &world.source,
            &shard,
            "us-east-1",
            part,
        ))
        .unwrap()
    };
    let (_, r) = handler
        .handle(
            &payload(&recs[200..250]),
            Instant::now() + Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert!(r.first_unhandled.is_none(), "{r:?}");
    proxy2.fault_next_summaries(1, SummaryFault::Slow(Duration::from_secs(8)));
    let started = Instant::now();
    let (_, slow) = handler
        .handle(
            &payload(&recs[250..]),
            Instant::now() + Duration::from_secs(60),
        )
        .await
        .unwrap();
    assert!(
        slow.first_unhandled.is_none() && slow.routes[0].stop.is_none(),
        "a refresh that does not answer stops nothing: {slow:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_millis(1500),
        "the slow refresh was waited for until a timeout (2 s here) ({:?})",
        started.elapsed()
    );

    let c = compare(&world, &config).await;
    assert!(c.is_clean(), "{c:?}");
    assert_eq!((c.target_records, c.duplicates), (300, 0));
}

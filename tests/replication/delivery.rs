//! Clean runs through the runner, partial failures, a stopped batch retried under failures,
//! and writes the target accepted but answered as failed (timeouts, 500 and 503): nothing
//! lost, per-key order kept, every duplicate counted.

use std::sync::atomic::AtomicBool;

use fanout::runner::{self, InProcess, RunnerOptions};

use super::*;

async fn replicates_across_accounts_through_the_runner(backend: Backend) {
    let Some(world) = World::create(backend, 4, 3).await else {
        return;
    };
    let config = world.config();
    write_source(&world, &records(2000, 60, 200)).await;
    let handler = Arc::new(handler_for(&world, &config, &world.kinesis_endpoint).await);
    let options = RunnerOptions {
        until_caught_up: true,
        batch_size: 300,
        max_attempts: Some(5),
        ..RunnerOptions::default()
    };
    let summary = runner::run(
        &KinesisSource::new(&world.new_account),
        &world.source,
        Arc::new(InProcess(handler)),
        Arc::new(fanout::lease::MemoryLeases::default()),
        &options,
        Arc::new(AtomicBool::new(false)),
    )
    .await
    .expect("run");
    assert_eq!(summary.records_delivered(), 2000);
    let c = compare(&world, &config).await;
    assert!(c.is_clean(), "{c:?}");
    assert_eq!((c.target_records, c.duplicates), (2000, 0));
}

#[tokio::test]
async fn replicates_across_accounts_through_the_runner_on_kinesis_local() {
    replicates_across_accounts_through_the_runner(Backend::KinesisLocal).await;
}

#[tokio::test]
async fn replicates_across_accounts_through_the_runner_on_moto() {
    replicates_across_accounts_through_the_runner(Backend::Moto).await;
}

async fn partial_failures_lose_nothing_and_keep_order(backend: Backend) {
    for (fraction, seed) in [(0.1, 11u64), (0.3, 12), (0.5, 13)] {
        let Some(world) = World::create(backend, 2, 3).await else {
            return;
        };
        let config = world.config();
        write_source(&world, &records(1500, 40, 120)).await;
        let proxy = FaultProxy::start(&world.kinesis_endpoint);
        proxy.set_plan(FaultPlan::mixed_failures(fraction, seed));
        let handler = handler_for(&world, &config, &proxy.endpoint()).await;
        let reports = invoke_per_shard(&world, &handler).await;
        assert!(
            reports.iter().all(|r| r.first_unhandled.is_none()),
            "{reports:?}"
        );
        let c = compare(&world, &config).await;
        let retries: u64 = reports
            .iter()
            .flat_map(|r| &r.routes)
            .flat_map(|r| r.retries.values())
            .sum();
        eprintln!(
            "{backend:?} fraction {fraction}: injected {} entry failures, {retries} retries, {} written, {} duplicates, {} out of order, {} missing",
            proxy.entries_failed_injected(),
            c.target_records,
            c.duplicates,
            c.out_of_order,
            c.missing.len()
        );
        eprintln!(
            "TABLE | {backend:?} {}% partial failures, one invocation per shard | in 1500 | written {} | lost {} | duplicates {} | counted {}",
            (fraction * 100.0) as u32,
            c.target_records - c.duplicates,
            c.missing.len(),
            c.duplicates,
            total(&reports, |r| r.possible_duplicates)
        );
        assert!(proxy.entries_failed_injected() > 0);
        assert_eq!(
            retries,
            proxy.entries_failed_injected(),
            "every injected failure was retried and counted"
        );
        assert!(c.is_clean(), "fraction {fraction}: {c:?}");
        assert_eq!(
            c.duplicates, 0,
            "rejected entries are not written, so nothing repeats"
        );
        assert_eq!(total(&reports, |r| r.written), 1500);
    }
}

#[tokio::test]
async fn partial_failures_at_10_to_50_percent_lose_nothing_and_keep_order_on_kinesis_local() {
    partial_failures_lose_nothing_and_keep_order(Backend::KinesisLocal).await;
}

#[tokio::test]
async fn partial_failures_at_10_to_50_percent_lose_nothing_and_keep_order_on_moto() {
    partial_failures_lose_nothing_and_keep_order(Backend::Moto).await;
}

async fn a_stopped_batch_retried_under_failures_duplicates_under_1_percent(
    backend: Backend,
    fraction: f64,
) {
    let Some(world) = World::create(backend, 1, 3).await else {
        return;
    };
    let config = world.config();
    write_source(&world, &records(1500, 40, 120)).await;
    let proxy = FaultProxy::start(&world.kinesis_endpoint);
    proxy.set_plan(FaultPlan::mixed_failures(fraction, 51));
    let handler = handler_for(&world, &config, &proxy.endpoint()).await;
    // As the event source mapping does: each invocation gets a short time (the batch stops
    // part-way), and the next starts at the first unhandled record it reported.
    let (mut invocations, mut counted, mut skipped) = (0, 0, 0);
    for (shard, recs) in source_batches(&world).await {
        let mut from = 0;
        while from < recs.len() {
            invocations += 1;
            assert!(invocations < 400, "no progress");
            let ev = event::build_event(&world.source, &shard, "us-east-1", &recs[from..]);
            let payload = serde_json::to_vec(&ev).unwrap();
            // The test configuration keeps a 1 s margin: 300 ms of writing.
            let (_, report) = handler
                .handle(&payload, Instant::now() + Duration::from_millis(1300))
                .await
                .expect("handled");
            counted += total(std::slice::from_ref(&report), |r| r.possible_duplicates);
            skipped += total(std::slice::from_ref(&report), |r| r.skipped);
            from = match &report.first_unhandled {
                Some(seq) => recs.iter().position(|r| r.seq == *seq).unwrap(),
                None => recs.len(),
            };
        }
    }
    let c = compare(&world, &config).await;
    eprintln!(
        "{backend:?}: {invocations} invocations, {} records in the target, {} duplicates, {counted} counted, {skipped} skipped",
        c.target_records, c.duplicates
    );
    eprintln!(
        "TABLE | {backend:?} {}% partial failures, batch stopped and retried ({invocations} invocations) | in 1500 | written {} | lost {} | duplicates {} | counted {counted}",
        (fraction * 100.0) as u32,
        c.target_records - c.duplicates,
        c.missing.len(),
        c.duplicates
    );
    assert!(c.is_clean(), "{c:?}");
    assert!(invocations > 3, "batches were stopped and retried");
    assert!(
        skipped > 0,
        "retries skipped what was written past the stop"
    );
    // Writes left without an answer (a loaded machine stalls the emulator) are re-sent and
    // counted by design; the retried batches themselves add at most 1% on top of those.
    assert!(
        c.duplicates <= 15 + counted,
        "{}%: {} duplicates for 1,500 records, {counted} of them from unanswered writes (at most 1% more)",
        (fraction * 100.0) as u32,
        c.duplicates
    );
    assert!(
        counted >= c.duplicates,
        "{}%: {counted} counted, {} found",
        (fraction * 100.0) as u32,
        c.duplicates
    );
}

#[tokio::test]
async fn a_stopped_batch_retried_at_10_to_50_percent_failures_duplicates_under_1_percent_on_kinesis_local(
) {
    for fraction in [0.1, 0.3, 0.5] {
        a_stopped_batch_retried_under_failures_duplicates_under_1_percent(
            Backend::KinesisLocal,
            fraction,
        )
        .await;
    }
}

/// A write the target stored and then answered without saying so (`plan`, for the first
/// `requests` PutRecords): re-sent, and every copy in the target counted.
async fn an_accepted_write_reported_failed_is_resent_and_counted(
    backend: Backend,
    plan: FaultPlan,
    requests: u64,
    what: &str,
) {
    let Some(world) = World::create(backend, 1, 2).await else {
        return;
    };
    let config = world.config(); // request timeout 2 s
    write_source(&world, &records(400, 30, 100)).await;
    let proxy = FaultProxy::start(&world.kinesis_endpoint);
    proxy.set_plan(plan);
    let handler = handler_for(&world, &config, &proxy.endpoint()).await;
    let reports = invoke_per_shard(&world, &handler).await;
    assert!(reports.iter().all(|r| r.first_unhandled.is_none()));
    let counted = total(&reports, |r| r.possible_duplicates);
    let c = compare(&world, &config).await;
    eprintln!(
        "TABLE | {backend:?} {what} ({requests} request(s)) | in 400 | written {} | lost {} | duplicates {} | counted {counted}",
        c.target_records - c.duplicates,
        c.missing.len(),
        c.duplicates
    );
    assert_eq!(proxy.hangs(), requests);
    assert!(c.is_clean(), "{c:?}");
    assert!(
        c.duplicates > 0,
        "{what}: the accepted requests were re-sent"
    );
    assert_eq!(
        counted, c.duplicates,
        "{what}: every duplicate in the target is counted"
    );
}

fn accept_then_hang() -> FaultPlan {
    FaultPlan::AcceptThenHang {
        requests: 1,
        hang: Duration::from_secs(4),
    }
}

#[tokio::test]
async fn a_write_that_times_out_after_acceptance_is_resent_and_counted_on_kinesis_local() {
    an_accepted_write_reported_failed_is_resent_and_counted(
        Backend::KinesisLocal,
        accept_then_hang(),
        1,
        "accept-then-timeout",
    )
    .await;
}

#[tokio::test]
async fn a_write_that_times_out_after_acceptance_is_resent_and_counted_on_moto() {
    an_accepted_write_reported_failed_is_resent_and_counted(
        Backend::Moto,
        accept_then_hang(),
        1,
        "accept-then-timeout",
    )
    .await;
}

#[tokio::test]
async fn a_write_answered_500_or_503_after_acceptance_is_resent_and_counted_on_kinesis_local() {
    for (status, code) in [(500, "InternalFailure"), (503, "ServiceUnavailable")] {
        an_accepted_write_reported_failed_is_resent_and_counted(
            Backend::KinesisLocal,
            FaultPlan::AcceptThenError {
                requests: 2,
                status,
                error_type: code.to_owned(),
            },
            2,
            &format!("accept-then-{status} {code}"),
        )
        .await;
    }
}

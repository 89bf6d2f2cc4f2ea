//! Replication across two local "accounts" over HTTP against the real emulators: clean runs,
//! injected partial failures, ambiguous timeouts, retried batches, bad input and systemic
//! errors. Each test asserts what a user would see: nothing lost, per-key order kept,
//! duplicates counted, the right dead letters, one clear error line.

mod support;

use std::collections::HashSet;
use std::io::Write;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fanout::aws::dead_letters::S3DeadLetters;
use fanout::aws::source::KinesisSource;
use fanout::aws::{build_handler, AwsHandler};
use fanout::config::ReplicatorConfig;
use fanout::event;
use fanout::handler::MetricsOutput;
use fanout::model::{SourceRecord, StreamArn};
use fanout::replicate::{BatchReport, StopReason};
use fanout::runner::{self, InProcess, RunnerOptions};
use fanout::seq::SequenceNumber;
use fanout::verify::{self, Comparison};
use support::fault_proxy::{FaultPlan, FaultProxy, SummaryFault};
use support::stack::{records, Backend, World};
use tokio::time::Instant;

async fn handler_for(world: &World, config: &ReplicatorConfig, kinesis: &str) -> AwsHandler {
    build_handler(config, &world.sdk_via(kinesis).await, MetricsOutput::None).await
}

/// Reads the source back, grouped per shard: what the event source mapping would deliver.
async fn source_batches(world: &World) -> Vec<(String, Vec<SourceRecord>)> {
    let reader = KinesisSource::new(&world.new_account);
    let mut per_shard: Vec<(String, Vec<SourceRecord>)> = Vec::new();
    for (shard, r) in reader.read_all(&world.source).await.expect("read source") {
        match per_shard.last_mut() {
            Some((s, v)) if *s == shard => v.push(r),
            _ => per_shard.push((shard, vec![r])),
        }
    }
    per_shard
}

/// Invokes the handler once per shard with the shard's whole content as one event.
async fn invoke_per_shard(world: &World, handler: &AwsHandler) -> Vec<BatchReport> {
    let mut reports = Vec::new();
    for (shard, recs) in source_batches(world).await {
        let ev = event::build_event(&world.source, &shard, "us-east-1", &recs);
        let payload = serde_json::to_vec(&ev).unwrap();
        let (_, report) = handler
            .handle(&payload, Instant::now() + Duration::from_secs(60))
            .await
            .expect("handled");
        reports.push(report);
    }
    reports
}

async fn dead_letters(
    world: &World,
    config: &ReplicatorConfig,
) -> Vec<(String, fanout::aws::dead_letters::Envelope)> {
    S3DeadLetters::new(
        &world.new_account,
        &config.dead_letter_bucket,
        &config.dead_letter_prefix,
    )
    .list(None)
    .await
    .expect("list dead letters")
}

async fn compare(world: &World, config: &ReplicatorConfig) -> Comparison {
    let reader = KinesisSource::new(&world.new_account);
    let source = reader.read_all(&world.source).await.expect("read source");
    let target = reader.read_all(&world.target).await.expect("read target");
    let dead: HashSet<SequenceNumber> = dead_letters(world, config)
        .await
        .iter()
        .map(|(_, e)| SequenceNumber::parse(&e.sequence_number).unwrap())
        .collect();
    verify::compare(&source, &target, &dead)
}

async fn write_source(world: &World, recs: &[(String, Vec<u8>)]) {
    KinesisSource::new(&world.new_account)
        .put_all(&world.source, recs)
        .await
        .expect("write source");
}

fn total<F: Fn(&fanout::replicate::RouteReport) -> usize>(reports: &[BatchReport], f: F) -> usize {
    reports.iter().flat_map(|r| &r.routes).map(f).sum()
}

/// Captures log lines of the current thread (tokio tests run on one thread). One global
/// subscriber writes each event to the buffer of the thread it happens on: a per-thread
/// (scoped) subscriber would race with the other tests' over tracing's global interest cache
/// and could miss events.
#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

thread_local! {
    static CAPTURING: std::cell::RefCell<Option<Logs>> = const { std::cell::RefCell::new(None) };
}

/// Writes to the current thread's [`Logs`], if it captures.
struct ThreadWriter;

impl Write for ThreadWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        CAPTURING.with(|c| {
            if let Some(logs) = &*c.borrow() {
                logs.0.lock().unwrap().extend_from_slice(buf);
            }
        });
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Stops the thread's capture when dropped.
struct Capturing;

impl Drop for Capturing {
    fn drop(&mut self) {
        CAPTURING.with(|c| *c.borrow_mut() = None);
    }
}

impl Logs {
    fn capture(&self) -> Capturing {
        static GLOBAL: std::sync::Once = std::sync::Once::new();
        GLOBAL.call_once(|| {
            let sub = tracing_subscriber::fmt()
                .with_ansi(false)
                .with_writer(|| ThreadWriter)
                .finish();
            tracing::subscriber::set_global_default(sub).expect("one global subscriber");
        });
        CAPTURING.with(|c| *c.borrow_mut() = Some(self.clone()));
        Capturing
    }
    fn lines(&self, level: &str) -> Vec<String> {
        String::from_utf8_lossy(&self.0.lock().unwrap())
            .lines()
            .filter(|l| l.contains(level))
            .map(str::to_owned)
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------

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

/// The world's configuration with one route in `order` mode and extra settings.
fn config_in(world: &World, order: &str, extra: &[(&'static str, &str)]) -> ReplicatorConfig {
    let mut vars = world.vars();
    vars.insert(
        "FANOUT_ROUTES",
        format!(
            r#"[{{"source":"{}","target":"{}","order":"{order}"}}]"#,
            world.source, world.target
        ),
    );
    for (k, v) in extra {
        vars.insert(k, (*v).to_owned());
    }
    ReplicatorConfig::from_lookup(|k| vars.get(k).cloned()).expect("test configuration")
}

/// The target as its consumers read it: each shard in order, KPL aggregated records
/// deaggregated by AWS's own deaggregator (plain records pass through it unchanged).
/// Payloads are `key|i|…`: returns (key, i) per user record. `None`: no deaggregator here.
async fn target_as_consumers_read_it(world: &World) -> Option<Vec<(String, usize)>> {
    let reader = KinesisSource::new(&world.new_account);
    let stored: Vec<(String, Vec<u8>)> = reader
        .read_all(&world.target)
        .await
        .expect("read target")
        .into_iter()
        .map(|(_, r)| (r.partition_key.unwrap_or_default(), r.data))
        .collect();
    let users = support::deagg::user_records(&stored)?;
    Some(
        users
            .into_iter()
            .map(|(key, data)| {
                let text = String::from_utf8_lossy(&data).into_owned();
                let mut parts = text.split('|');
                let (k, i) = (parts.next().unwrap(), parts.next().unwrap());
                assert_eq!(k, key, "a user record under its own key");
                (key, i.parse().unwrap())
            })
            .collect(),
    )
}

/// Checks the target against `n` source records numbered 0..n: every one present, per key in
/// order of first arrivals (strict, aggregated) or of last arrivals (runs). Returns the copies
/// beyond one per record.
fn check_order(users: &[(String, usize)], n: usize, last_arrivals: bool) -> usize {
    use std::collections::HashMap;
    let mut position: HashMap<usize, usize> = HashMap::new();
    for (at, (_, i)) in users.iter().enumerate() {
        if last_arrivals {
            position.insert(*i, at);
        } else {
            position.entry(*i).or_insert(at);
        }
    }
    let mut present: Vec<usize> = position.keys().copied().collect();
    present.sort_unstable();
    assert_eq!(present, (0..n).collect::<Vec<_>>(), "every record arrived");
    let mut per_key: HashMap<&str, Vec<(usize, usize)>> = HashMap::new();
    for (i, at) in &position {
        per_key.entry(&users[*at].0).or_default().push((*at, *i));
    }
    for (key, mut v) in per_key {
        v.sort_unstable();
        assert!(
            v.windows(2).all(|w| w[0].1 < w[1].1),
            "key {key}: {} arrivals out of order",
            if last_arrivals { "last" } else { "first" }
        );
    }
    users.len() - n
}

/// Every order mode under partial failures and under enforced shard limits, on kinesis-local:
/// nothing lost, order as the mode promises, every extra copy counted.
async fn each_order_mode_keeps_its_promise(order: &str) {
    let runs = order == "runs";
    // (name, what the proxy does, extra settings)
    type Case = (
        &'static str,
        FaultPlan,
        &'static [(&'static str, &'static str)],
    );
    let cases: [Case; 4] = [
        ("10%", FaultPlan::mixed_failures(0.1, 31), &[]),
        ("30%", FaultPlan::mixed_failures(0.3, 32), &[]),
        ("50%", FaultPlan::mixed_failures(0.5, 33), &[]),
        (
            "limits",
            FaultPlan::ShardLimits {
                records_per_sec: 300.0,
                bytes_per_sec: 48.0 * 1024.0,
            },
            &[
                ("FANOUT_SHARD_RECORDS_PER_SEC", "300"),
                ("FANOUT_SHARD_BYTES_PER_SEC", "49152"),
            ],
        ),
    ];
    for (name, plan, extra) in cases {
        let Some(world) = World::create(Backend::KinesisLocal, 2, 2).await else {
            return;
        };
        let config = config_in(&world, order, extra);
        write_source(&world, &records(1500, 40, 120)).await;
        let proxy = FaultProxy::start(&world.kinesis_endpoint);
        proxy.set_plan(plan);
        let handler = handler_for(&world, &config, &proxy.endpoint()).await;
        let started = Instant::now();
        let reports = invoke_per_shard(&world, &handler).await;
        let took = started.elapsed();
        assert!(
            reports.iter().all(|r| r.first_unhandled.is_none()),
            "{order} {name}: {reports:?}"
        );
        let Some(users) = target_as_consumers_read_it(&world).await else {
            return;
        };
        let extra_copies = check_order(&users, 1500, runs);
        let duplicates = total(&reports, |r| r.possible_duplicates);
        let repairs = total(&reports, |r| r.repairs);
        let requests = total(&reports, |r| r.requests);
        eprintln!(
            "{order} {name}: {} entries failed by the proxy, {requests} requests, {} user records read, \
             {extra_copies} extra copies, {duplicates} counted as possible duplicates, {repairs} repairs, {:.2} s",
            proxy.entries_failed_injected(),
            users.len(),
            took.as_secs_f64()
        );
        assert_eq!(
            extra_copies, duplicates,
            "{order} {name}: every extra copy is counted"
        );
        if runs {
            assert_eq!(
                repairs, duplicates,
                "{order} {name}: runs' copies are repairs"
            );
        } else {
            assert_eq!(
                extra_copies, 0,
                "{order} {name}: failed entries are not written"
            );
            assert_eq!(repairs, 0);
        }
        if name != "limits" {
            assert!(proxy.entries_failed_injected() > 0, "{order} {name}");
        }
        let c = compare(&world, &config).await;
        assert!(
            c.missing.is_empty() && c.extra == 0,
            "{order} {name}: {c:?}"
        );
        if !runs {
            assert!(c.is_clean(), "{order} {name}: verify agrees: {c:?}");
        }
    }
}

#[tokio::test]
async fn strict_mode_keeps_first_arrival_order_under_failures_and_shard_limits() {
    each_order_mode_keeps_its_promise("strict").await;
}

#[tokio::test]
async fn aggregated_mode_keeps_first_arrival_order_under_failures_and_shard_limits() {
    each_order_mode_keeps_its_promise("aggregated").await;
}

#[tokio::test]
async fn runs_mode_keeps_last_arrival_order_under_failures_and_shard_limits() {
    each_order_mode_keeps_its_promise("runs").await;
}

/// Each open shard of `stream` with its hash range (start, end, shard id).
async fn hash_ranges(sdk: &aws_config::SdkConfig, stream: &StreamArn) -> Vec<(u128, u128, String)> {
    let out = aws_sdk_kinesis::Client::new(sdk)
        .list_shards()
        .stream_arn(stream.as_str())
        .send()
        .await
        .expect("list shards");
    out.shards()
        .iter()
        .filter(|s| {
            s.sequence_number_range()
                .is_some_and(|r| r.ending_sequence_number().is_none())
        })
        .map(|s| {
            let r = s.hash_key_range().expect("hash range");
            (
                r.starting_hash_key().parse().unwrap(),
                r.ending_hash_key().parse().unwrap(),
                s.shard_id().to_owned(),
            )
        })
        .collect()
}

/// A producer that uses the KPL writes 4 source shards; the target has 3. The KPL packs the
/// user records of one source shard into each aggregated record, so many of them hold user
/// records of two target shards. A consumer that deaggregates like the KCL keeps only the user
/// records inside the hash range of the shard it reads: none may be lost, per-key order kept.
#[tokio::test]
async fn kpl_aggregated_source_records_survive_a_target_with_other_shards() {
    use fanout::kpl::{hash_key, Aggregator};
    let Some(world) = World::create(Backend::KinesisLocal, 4, 3).await else {
        return;
    };
    let config = world.config();
    let source_ranges = hash_ranges(&world.new_account, &world.source).await;
    // 1,200 user records over 150 keys, aggregated per source shard, 20 per record, in order.
    let mut pending: Vec<Vec<(String, String)>> = vec![Vec::new(); source_ranges.len()];
    let mut aggregated: Vec<(String, Vec<u8>)> = Vec::new();
    let flush = |users: &mut Vec<(String, String)>, out: &mut Vec<(String, Vec<u8>)>| {
        if users.is_empty() {
            return;
        }
        let mut agg = Aggregator::new();
        for (k, d) in users.iter() {
            agg.add(k, None, d.as_bytes());
        }
        out.push((users[0].0.clone(), agg.finish()));
        users.clear();
    };
    for i in 0..1200 {
        let key = format!("user-{}", (i * 7919) % 150);
        let h = hash_key(&key);
        let s = source_ranges
            .iter()
            .position(|(a, b, _)| *a <= h && h <= *b)
            .unwrap();
        pending[s].push((key.clone(), format!("{key}|{i}|")));
        if pending[s].len() == 20 {
            flush(&mut pending[s], &mut aggregated);
        }
    }
    for users in &mut pending {
        flush(users, &mut aggregated);
    }
    write_source(&world, &aggregated).await;

    let handler = handler_for(&world, &config, &world.kinesis_endpoint).await;
    let reports = invoke_per_shard(&world, &handler).await;
    assert!(
        reports.iter().all(|r| r.first_unhandled.is_none()),
        "{reports:?}"
    );
    let split = total(&reports, |r| r.split_records);
    assert!(split > 0, "some aggregated records straddle target shards");

    // Read the target like the KCL: deaggregate, keep what the shard's range holds.
    let target_ranges = hash_ranges(&world.new_account, &world.target).await;
    let reader = KinesisSource::new(&world.new_account);
    let mut kept: Vec<(String, usize)> = Vec::new();
    let mut dropped = 0;
    for (shard, r) in reader.read_all(&world.target).await.expect("read target") {
        let (start, end, _) = target_ranges
            .iter()
            .find(|(_, _, id)| *id == shard)
            .expect("a target shard");
        let stored = [(r.partition_key.clone().unwrap_or_default(), r.data.clone())];
        let Some(users) = support::deagg::user_records_with_hash_keys(&stored) else {
            return;
        };
        for (key, ehk, data) in users {
            let h = ehk.map_or_else(|| hash_key(&key), |e| e.parse().unwrap());
            if h < *start || h > *end {
                dropped += 1;
                continue;
            }
            let text = String::from_utf8(data).unwrap();
            let i: usize = text.split('|').nth(1).unwrap().parse().unwrap();
            kept.push((key, i));
        }
    }
    eprintln!(
        "{} aggregated source records, {split} split by target shard, {} user records kept by a KCL-like reader, {dropped} dropped",
        aggregated.len(),
        kept.len()
    );
    assert_eq!(dropped, 0, "a KCL-like reader drops nothing");
    assert_eq!(check_order(&kept, 1200, false), 0, "no duplicates");
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

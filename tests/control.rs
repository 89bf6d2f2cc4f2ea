//! The controller against the local stack: kinesis-local for Kinesis, and DynamoDB, S3 and
//! STS on the single-threaded moto (whose conditional writes are atomic, as DynamoDB's are;
//! threaded moto's are not). Concurrent conflicting flips, every guard refusing and being
//! forced, replication obeying its mode, and a drill with a producer that follows the
//! routing document through cutover → rollback → cutover → commit.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fanout::aws::build_handler;
use fanout::aws::control::AwsControl;
use fanout::aws::dead_letters::S3DeadLetters;
use fanout::aws::leases::DynamoLeases;
use fanout::aws::routing::S3Routing;
use fanout::aws::source::KinesisSource;
use fanout::aws::verifications;
use fanout::control::commands::{execute, CommandName, Context, Report, Request};
use fanout::control::machine::{Mode, RouteMode, State};
use fanout::control::record::{LogicalStream, Outcome, Settings};
use fanout::handler::MetricsOutput;
use fanout::routing::{RoutingClient, RoutingOptions};
use fanout::runner::{self, InProcess, RunnerOptions};
use fanout::verify::{Totals, Verdict, VerificationRecord};
use support::stack::{records, unique, Backend, World};

const BIN: &str = env!("CARGO_BIN_EXE_fanoutctl");

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn context(world: &World, actor: &str) -> Context<AwsControl> {
    Context {
        control: AwsControl::new(&world.new_account, &world.new_account, &world.table),
        actor: actor.to_owned(),
        poll: Duration::from_millis(100),
    }
}

fn stream_of(world: &World) -> LogicalStream {
    LogicalStream {
        name: world.source.name().to_owned(),
        new: world.source.to_string(),
        old: world.target.to_string(),
        forward_route: world.route().name,
        reverse_route: None,
    }
}

/// Settings scaled for tests: short settle and drain.
fn fast_settings() -> Settings {
    Settings {
        max_lag_ms: 60_000,
        verification_max_age_ms: 3_600_000,
        drain_timeout_ms: 20_000,
        settle_ms: 800,
        two_person: false,
        reverse: false,
    }
}

fn req(migration: &str, command: CommandName) -> Request {
    Request {
        command,
        migration: migration.to_owned(),
        ..Request::default()
    }
}

async fn start(
    world: &World,
    ctx: &Context<AwsControl>,
    migration: &str,
    streams: Vec<LogicalStream>,
    settings: Settings,
) {
    let mut r = req(migration, CommandName::Start);
    r.streams = streams;
    r.settings = Some(settings);
    r.bucket = Some(world.bucket.clone());
    r.reason = Some("test".into());
    let report = execute(ctx, &r).await;
    assert_eq!(report.outcome, Outcome::Applied, "{}", report.message);
}

fn flip(migration: &str, command: CommandName, reason: Option<&str>, force: bool) -> Request {
    let mut r = req(migration, command);
    r.reason = reason.map(str::to_owned);
    r.force = force;
    r
}

/// A verification record of the world's route as `fanoutctl verify` stores it.
fn verification(world: &World, missing: u64, finished_at_ms: i64) -> VerificationRecord {
    VerificationRecord {
        route: world.route().name,
        source_arn: world.source.to_string(),
        target_arn: world.target.to_string(),
        window_from: "trim-horizon".into(),
        window_from_ms: None,
        window_until: "now".into(),
        window_until_ms: finished_at_ms,
        grace_ms: 30_000,
        totals: Totals {
            source_in_window: 10,
            matched: 10 - missing,
            missing,
            keys: 3,
            ..Totals::default()
        },
        verdict: if missing == 0 {
            Verdict::Pass
        } else {
            Verdict::Fail
        },
        dead_letters_checked: true,
        partitions: 1,
        started_at_ms: finished_at_ms - 1000,
        finished_at_ms,
        duration_ms: 1000,
        actor: "test".into(),
        host: "test".into(),
        keys_with_findings: 0,
    }
}

fn guard<'a>(report: &'a Report, name: &str) -> &'a fanout::control::guards::GuardResult {
    report
        .guards
        .iter()
        .find(|g| g.name == name)
        .unwrap_or_else(|| panic!("no {name} guard in {:?}", report.guards))
}

/// Runs the replicator in this process over the world's source until `stop` is set.
fn spawn_replicator(
    world: &World,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<runner::RunSummary> {
    spawn_runner(world, false, stop)
}

/// Runs a replicator in this process until `stop` is set: new → old, or with `reverse`
/// old → new (the reverse replicator of a rollback, writing with its own credentials).
fn spawn_runner(
    world: &World,
    reverse: bool,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<runner::RunSummary> {
    let mut vars = world.vars();
    vars.insert("FANOUT_MODE_CACHE_MS", "200".into());
    let (source, target) = if reverse {
        (world.target.clone(), world.source.clone())
    } else {
        (world.source.clone(), world.target.clone())
    };
    if reverse {
        vars.remove("FANOUT_WRITER_ROLE_ARN");
        vars.remove("FANOUT_WRITER_EXTERNAL_ID");
        vars.insert(
            "FANOUT_ROUTES",
            format!(r#"[{{"source":"{source}","target":"{target}"}}]"#),
        );
    }
    let config = fanout::config::ReplicatorConfig::from_lookup(|k| vars.get(k).cloned()).unwrap();
    let (sdk, table) = (world.new_account.clone(), world.table.clone());
    let options = RunnerOptions {
        batch_size: 100,
        idle_poll: Duration::from_millis(50),
        discover_every: Duration::from_millis(500),
        min_read_interval: Duration::from_millis(20),
        lease_ttl: Duration::from_secs(3),
        lease_name: fanout::model::Route::default_name(&source, &target),
        ..RunnerOptions::default()
    };
    tokio::spawn(async move {
        let handler = Arc::new(build_handler(&config, &sdk, MetricsOutput::None).await);
        let reader = KinesisSource::new(&sdk);
        runner::run(
            &reader,
            &source,
            Arc::new(InProcess(handler)),
            Arc::new(DynamoLeases::new(&sdk, &table)),
            &options,
            stop,
        )
        .await
        .expect("runner")
    })
}

async fn target_count(world: &World) -> usize {
    KinesisSource::new(&world.new_account)
        .read_all(&world.target)
        .await
        .unwrap()
        .len()
}

async fn wait_for_target(world: &World, n: usize, timeout: Duration) -> usize {
    let started = Instant::now();
    loop {
        let have = target_count(world).await;
        if have >= n || started.elapsed() > timeout {
            return have;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_conflicting_flips_one_wins_and_history_holds_every_attempt() {
    let Some(world) = World::create_serialized(Backend::KinesisLocal, 2, 1).await else {
        return;
    };
    let migration = unique("race");
    let ctx = Arc::new(context(
        &world,
        "arn:aws:sts::123456789012:assumed-role/oncall/setup",
    ));
    start(
        &world,
        &ctx,
        &migration,
        vec![stream_of(&world)],
        fast_settings(),
    )
    .await;
    // Producers on the new side first (forced: no verification exists yet).
    let r = execute(
        &ctx,
        &flip(&migration, CommandName::Cutover, Some("race set-up"), true),
    )
    .await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.message);
    let version = r.version.unwrap();

    // 25 engineers roll back and 25 commit, all at once, each from the same version.
    let mut tasks = Vec::new();
    for i in 0..50 {
        let world_ctx = Context {
            control: ctx.control.clone(),
            actor: format!("arn:aws:sts::123456789012:assumed-role/oncall/engineer-{i}"),
            poll: Duration::from_millis(100),
        };
        let command = if i % 2 == 0 {
            CommandName::Rollback
        } else {
            CommandName::Commit
        };
        let r = flip(&migration, command, Some(&format!("engineer {i}")), true);
        tasks.push(tokio::spawn(
            async move { (i, execute(&world_ctx, &r).await) },
        ));
    }
    let mut reports = Vec::new();
    for t in tasks {
        reports.push(t.await.unwrap());
    }
    let applied: Vec<&(usize, Report)> = reports
        .iter()
        .filter(|(_, r)| r.outcome == Outcome::Applied)
        .collect();
    assert_eq!(
        applied.len(),
        1,
        "exactly one wins: {:?}",
        reports
            .iter()
            .map(|(i, r)| (i, r.outcome))
            .collect::<Vec<_>>()
    );
    let (winner, won) = applied[0];
    let lost = reports
        .iter()
        .filter(|(_, r)| r.outcome == Outcome::LostRace)
        .count();
    let refused = reports
        .iter()
        .filter(|(_, r)| r.outcome == Outcome::NotAllowed)
        .count();
    eprintln!(
        "50 concurrent attempts: 1 applied (engineer {winner}), {lost} lost the race, {refused} found the state moved on"
    );
    assert_eq!(
        lost + refused,
        49,
        "every other attempt lost the race or found the state moved on"
    );
    assert!(lost >= 1);
    for (_, r) in &reports {
        if r.outcome == Outcome::LostRace {
            assert_eq!(r.exit_code(), 4);
            assert!(r.message.contains("lost a race"), "{}", r.message);
        }
    }
    // The winner moved the state two versions (begin, finish) past the one everyone read.
    let st = ctx.control.load(&migration).await.unwrap().unwrap();
    assert_eq!(st.version, version + 2);
    assert_eq!(st.state, won.state.unwrap());
    assert!(st.updated_by.ends_with(&format!("engineer-{winner}")));

    // History: one entry per attempt, with the same outcome the engineer was told.
    let history = ctx.control.history(&migration, None).await.unwrap();
    let attempts: Vec<_> = history
        .iter()
        .filter(|e| {
            e.reason
                .as_deref()
                .is_some_and(|r| r.starts_with("engineer "))
        })
        .collect();
    assert_eq!(attempts.len(), 50, "{history:#?}");
    let mut told: HashMap<String, Outcome> = HashMap::new();
    for (i, r) in &reports {
        told.insert(format!("engineer {i}"), r.outcome);
    }
    for e in &attempts {
        assert_eq!(
            Some(&e.outcome),
            told.get(e.reason.as_deref().unwrap()),
            "{e:?}"
        );
    }
    assert_eq!(
        attempts
            .iter()
            .filter(|e| e.outcome == Outcome::Applied)
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_guard_refuses_when_its_condition_is_false_and_force_with_a_reason_is_recorded() {
    let Some(world) = World::create_serialized(Backend::KinesisLocal, 2, 1).await else {
        return;
    };
    let migration = unique("guards");
    let ctx = context(
        &world,
        "arn:aws:sts::123456789012:assumed-role/oncall/alice",
    );
    let settings = Settings {
        max_lag_ms: 300,
        ..fast_settings()
    };
    start(&world, &ctx, &migration, vec![stream_of(&world)], settings).await;

    // Records nobody replicated, a dead letter nobody looked at, no verification.
    let source = KinesisSource::new(&world.new_account);
    source
        .put_all(&world.source, &records(20, 5, 30))
        .await
        .unwrap();
    let letters = S3DeadLetters::new(&world.new_account, &world.bucket, "dead-letters");
    let route = world.route().name;
    let letter_key = S3DeadLetters::key(
        "dead-letters",
        &route,
        "shardId-000000000000",
        "00000000000000000000000000000000000000000000000000000001",
    );
    letters
        .put_json(&letter_key, br#"{"reason":"test"}"#.to_vec())
        .await
        .unwrap();
    // And a batch Lambda's event source mapping gave up on (its on-failure record).
    let discarded_key = "aws/lambda/8e2f6c1a/shardId-000000000000/2026/12/06/2026-12-06T19.00.00-1";
    letters
        .put_json(
            discarded_key,
            br#"{"KinesisBatchInfo":{"shardId":"shardId-000000000000","startSequenceNumber":"1","streamArn":"x"}}"#.to_vec(),
        )
        .await
        .unwrap();
    let status = execute(&ctx, &req(&migration, CommandName::Status)).await;
    let shown = status.render_text();
    assert!(
        shown.contains("unacknowledged dead letters: 1\n"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!(
            "DISCARDED BATCHES: 1 on-failure record(s) at s3://{}/aws/lambda/",
            world.bucket
        )),
        "{shown}"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;

    let r = execute(
        &ctx,
        &flip(&migration, CommandName::Cutover, Some("try"), false),
    )
    .await;
    assert_eq!(r.outcome, Outcome::RefusedByGuard, "{}", r.message);
    assert_eq!(r.exit_code(), 3);
    assert!(
        !guard(&r, "lag").passed && guard(&r, "lag").detail.contains("over the 300 ms limit"),
        "{:?}",
        guard(&r, "lag")
    );
    let dl = guard(&r, "dead_letters");
    assert!(!dl.passed && dl.detail.contains(&letter_key), "{dl:?}");
    assert!(
        dl.detail.contains("1 batch(es) discarded") && dl.detail.contains(discarded_key),
        "{dl:?}"
    );
    assert!(
        !guard(&r, "verification").passed
            && guard(&r, "verification").detail.contains("never verified")
    );
    assert!(guard(&r, "streams").passed, "{:?}", guard(&r, "streams"));
    assert_eq!(
        ctx.control.load(&migration).await.unwrap().unwrap().state,
        State::Replicating
    );

    // Replicate: lag passes.
    let stop = Arc::new(AtomicBool::new(false));
    let replicator = spawn_replicator(&world, stop.clone());
    assert_eq!(
        wait_for_target(&world, 20, Duration::from_secs(30)).await,
        20
    );
    // A failing verification does not count; a passing one does.
    verifications::store(
        &world.new_account,
        &world.table,
        &verification(&world, 2, now_ms()),
    )
    .await
    .unwrap();
    let mut plan = flip(&migration, CommandName::Cutover, None, false);
    plan.dry_run = true;
    let r = execute(&ctx, &plan).await;
    assert!(guard(&r, "lag").passed, "{:?}", guard(&r, "lag"));
    assert!(
        !guard(&r, "verification").passed && guard(&r, "verification").detail.contains("2 missing")
    );
    verifications::store(
        &world.new_account,
        &world.table,
        &verification(&world, 0, now_ms()),
    )
    .await
    .unwrap();
    // Acknowledge the dead letter.
    let mut ack = req(&migration, CommandName::DlqAck);
    ack.all = true;
    assert_eq!(
        execute(&ctx, &ack).await.outcome,
        Outcome::Failed,
        "an acknowledgement needs a reason"
    );
    ack.reason = Some("looked at it: test payload".into());
    let a = execute(&ctx, &ack).await;
    assert_eq!(a.outcome, Outcome::Applied, "{}", a.message);
    assert!(a.message.starts_with("2 "), "{}", a.message);
    let r = execute(&ctx, &plan).await;
    assert_eq!(
        r.outcome,
        Outcome::Applied,
        "dry run passes: {}",
        r.render_text()
    );
    assert!(r.guards.iter().all(|g| g.passed));
    assert_eq!(
        ctx.control.load(&migration).await.unwrap().unwrap().state,
        State::Replicating,
        "a dry run changes nothing"
    );
    stop.store(true, Ordering::SeqCst);
    replicator.await.unwrap();

    // The streams guard: a second migration whose old stream does not exist.
    let broken = unique("guards-streams");
    let mut stream = stream_of(&world);
    stream.old = format!(
        "arn:aws:kinesis:us-east-1:222222222222:stream/{}",
        unique("missing")
    );
    start(&world, &ctx, &broken, vec![stream], fast_settings()).await;
    verifications::store(
        &world.new_account,
        &world.table,
        &verification(&world, 0, now_ms()),
    )
    .await
    .unwrap();
    let r = execute(
        &ctx,
        &flip(&broken, CommandName::Cutover, Some("try"), false),
    )
    .await;
    assert_eq!(r.outcome, Outcome::RefusedByGuard);
    assert!(
        !guard(&r, "streams").passed && guard(&r, "streams").detail.contains("ResourceNotFound"),
        "{:?}",
        guard(&r, "streams")
    );
    let r = execute(&ctx, &flip(&broken, CommandName::Cutover, None, true)).await;
    assert_eq!(r.outcome, Outcome::Failed);
    assert!(r.message.contains("--force needs --reason"));
    let r = execute(
        &ctx,
        &flip(
            &broken,
            CommandName::Cutover,
            Some("old stream is being recreated; CHG-42"),
            true,
        ),
    )
    .await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.message);
    let history = ctx.control.history(&broken, None).await.unwrap();
    let forced = history
        .iter()
        .find(|e| e.forced && e.outcome == Outcome::Applied)
        .expect("the forced flip is in the history");
    assert_eq!(
        forced.reason.as_deref(),
        Some("old stream is being recreated; CHG-42")
    );
    assert!(forced.actor.ends_with("oncall/alice"));
    assert!(forced
        .guards
        .iter()
        .any(|g| g.name == "streams" && !g.passed));
    assert!(
        forced.detail.contains("forced past: streams"),
        "{}",
        forced.detail
    );
    assert_eq!(
        history
            .iter()
            .filter(|e| e.outcome == Outcome::RefusedByGuard)
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_route_writes_nothing_and_loses_nothing_and_heartbeats_tell_idle_from_stuck() {
    let Some(world) = World::create_serialized(Backend::KinesisLocal, 1, 1).await else {
        return;
    };
    let migration = unique("pause");
    let ctx = context(&world, "arn:aws:sts::123456789012:assumed-role/oncall/bob");
    start(
        &world,
        &ctx,
        &migration,
        vec![stream_of(&world)],
        fast_settings(),
    )
    .await;
    let stop = Arc::new(AtomicBool::new(false));
    let replicator = spawn_replicator(&world, stop.clone());
    let source = KinesisSource::new(&world.new_account);
    source
        .put_all(&world.source, &records(10, 3, 20))
        .await
        .unwrap();
    assert_eq!(
        wait_for_target(&world, 10, Duration::from_secs(20)).await,
        10
    );

    let p = execute(&ctx, &req(&migration, CommandName::Pause)).await;
    assert_eq!(p.outcome, Outcome::Applied, "{}", p.message);
    assert_eq!(
        ctx.control.mode(&world.route().name).await.unwrap(),
        RouteMode {
            mode: Mode::Hold,
            since_ms: None
        }
    );
    assert_eq!(
        execute(&ctx, &req(&migration, CommandName::Pause))
            .await
            .outcome,
        Outcome::AlreadyThere
    );
    tokio::time::sleep(Duration::from_millis(500)).await; // the replicator's mode cache
    source
        .put_all(&world.source, &records(10, 3, 20))
        .await
        .unwrap();
    // Wait until the replicator has met the new records and held them (its heartbeat says
    // so), rather than for a fixed time that would pass even if it never ran.
    let started = std::time::Instant::now();
    let status = loop {
        let status = execute(&ctx, &req(&migration, CommandName::Status)).await;
        let met = status.status.as_ref().is_some_and(|v| {
            v.shards
                .iter()
                .any(|s| s.heartbeat_mode.as_deref() == Some("hold"))
        });
        if met || started.elapsed() > Duration::from_secs(20) {
            break status;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        target_count(&world).await,
        10,
        "nothing is written while held"
    );
    let view = status.status.as_ref().unwrap();
    assert!(view.paused);
    let shard = &view.shards[0];
    assert!(shard.pending && shard.lag_ms > 0, "{shard:?}");
    assert_eq!(shard.heartbeat_mode.as_deref(), Some("hold"));
    assert_eq!(
        shard.condition(view.heartbeat_stale_ms),
        "held",
        "behind because held, and alive"
    );
    assert!(status.render_text().contains("REPLICATION PAUSED"));

    let r = execute(&ctx, &req(&migration, CommandName::Resume)).await;
    assert_eq!(r.outcome, Outcome::Applied);
    assert_eq!(
        wait_for_target(&world, 20, Duration::from_secs(20)).await,
        20,
        "held records follow on resume"
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = execute(&ctx, &req(&migration, CommandName::Status)).await;
    let shard = &status.status.as_ref().unwrap().shards[0];
    assert!(!shard.pending && shard.lag_ms == 0, "{shard:?}");
    assert!(
        shard.heartbeat_age_ms.unwrap() < 3000,
        "an idle shard's runner keeps its heartbeat fresh: {shard:?}"
    );
    assert_eq!(shard.condition(60_000), "idle");
    stop.store(true, Ordering::SeqCst);
    replicator.await.unwrap();

    // With no replicator running, records wait and the heartbeat ages: stuck.
    source
        .put_all(&world.source, &records(5, 3, 20))
        .await
        .unwrap();
    let status = execute(&ctx, &req(&migration, CommandName::Status)).await;
    let shard = &status.status.as_ref().unwrap().shards[0];
    assert!(shard.pending);
    assert_eq!(shard.condition(0), "stuck");
}

/// One record the drill's producer wrote: its key, its number within the key, where, when.
#[derive(Clone, Debug)]
struct Produced {
    key: String,
    n: u64,
    stream: String,
    at_ms: i64,
}

/// Per key, the numbers of the drill's records a stream holds, in stream order, every copy.
fn held(stream: &[(String, fanout::model::SourceRecord)]) -> HashMap<String, Vec<u64>> {
    let mut out: HashMap<String, Vec<u64>> = HashMap::new();
    for (_, r) in stream {
        let text = String::from_utf8_lossy(&r.data).into_owned();
        let parts: Vec<&str> = text.split('|').collect();
        if parts.len() == 3 && parts[2] == "drill" {
            out.entry(parts[0].to_owned())
                .or_default()
                .push(parts[1].parse().unwrap());
        }
    }
    out
}

/// (missing, out of order) of `expected` in `held`: per key, the first copies of the
/// expected numbers must all be there, in increasing order.
fn judge(held: &HashMap<String, Vec<u64>>, expected: &[&Produced]) -> (usize, usize) {
    let mut want: HashMap<&str, Vec<u64>> = HashMap::new();
    for p in expected {
        want.entry(p.key.as_str()).or_default().push(p.n);
    }
    let (mut missing, mut out_of_order) = (0, 0);
    for (key, ns) in want {
        let have = held.get(key).cloned().unwrap_or_default();
        let mut firsts: Vec<u64> = Vec::new();
        for n in have.into_iter().filter(|n| ns.contains(n)) {
            if !firsts.contains(&n) {
                firsts.push(n);
            }
        }
        missing += ns.len() - firsts.len();
        out_of_order += firsts.windows(2).filter(|w| w[1] < w[0]).count();
    }
    (missing, out_of_order)
}

/// Copies beyond the first of `records` in `held`.
fn echoes<'a>(
    held: &HashMap<String, Vec<u64>>,
    records: impl Iterator<Item = &'a Produced>,
) -> usize {
    records
        .map(|p| {
            held.get(&p.key).map_or(0, |ns| {
                ns.iter().filter(|n| **n == p.n).count().saturating_sub(1)
            })
        })
        .sum()
}

fn fanoutctl(world: &World, migration: &str, args: &[&str]) -> (i32, String) {
    support::fanoutctl(world, &[("FANOUT_MIGRATION", migration)], args)
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Runs `fanoutctl verify` over [from, until] and returns its JSON report.
fn verify(world: &World, migration: &str, from_ms: i64, until_ms: i64) -> serde_json::Value {
    let (code, out) = fanoutctl(
        world,
        migration,
        &[
            "verify",
            "--from",
            &rfc3339(from_ms),
            "--until",
            &rfc3339(until_ms),
            "--grace",
            "5s",
            "--output",
            "json",
        ][..],
    );
    assert!(code == 0 || code == 1, "verify failed to run: {code}");
    serde_json::from_str(&out).expect("verify --output json")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drill_a_producer_follows_routing_through_cutover_rollback_cutover_commit_losing_and_reordering_nothing(
) {
    drill(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn drill_with_reverse_replication_keeps_the_new_side_current_and_echoes_nothing() {
    drill(true).await;
}

/// The drill: a producer follows the routing document while the CLI performs cutover →
/// rollback → cutover → commit; with `reverse`, a reverse replicator runs too.
async fn drill(reverse: bool) {
    let Some(world) = World::create_serialized(Backend::KinesisLocal, 2, 2).await else {
        return;
    };
    let migration = unique("drill");
    let drill_start = now_ms();
    // Start with the CLI: streams from FANOUT_ROUTES, short settle and drain for the test.
    let mut start = vec![
        "start",
        "--settle",
        "1s",
        "--drain-timeout",
        "30s",
        "--reason",
        "drill",
    ];
    if reverse {
        start.push("--reverse");
    }
    let (code, _) = fanoutctl(&world, &migration, &start);
    assert_eq!(code, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let replicator = spawn_replicator(&world, stop.clone());
    let reverse_replicator = reverse.then(|| spawn_runner(&world, true, stop.clone()));

    // Test traffic on the new side, replicated and verified: what the first cutover needs.
    let kinesis = KinesisSource::new(&world.new_account);
    kinesis
        .put_all(&world.source, &records(30, 5, 20))
        .await
        .unwrap();
    assert_eq!(
        wait_for_target(&world, 30, Duration::from_secs(30)).await,
        30
    );

    // The producer: 12 keys, one record at a time, each to where the routing document says.
    let produced: Arc<Mutex<Vec<Produced>>> = Arc::default();
    let producing = Arc::new(AtomicBool::new(true));
    let producer = {
        let (produced, producing) = (produced.clone(), producing.clone());
        let routing = S3Routing::new(
            &world.new_account,
            &world.bucket,
            &S3Routing::key_for("routing/", &migration),
        );
        let client = aws_sdk_kinesis::Client::new(&world.new_account);
        let logical = world.source.name().to_owned();
        tokio::spawn(async move {
            let routing = RoutingClient::new(
                routing,
                RoutingOptions {
                    cache_ttl: Duration::from_millis(200),
                    hold_poll: Duration::from_millis(50),
                    max_hold_wait: Duration::from_secs(60),
                },
            );
            let mut next: BTreeMap<String, u64> = BTreeMap::new();
            let mut i = 0u64;
            while producing.load(Ordering::SeqCst) {
                let key = format!("user-{}", i % 12);
                let n = *next.entry(key.clone()).or_default();
                let to = routing
                    .resolve(&logical)
                    .await
                    .expect("routing resolves")
                    .stream;
                client
                    .put_record()
                    .stream_arn(&to)
                    .partition_key(&key)
                    .data(aws_sdk_kinesis::primitives::Blob::new(format!(
                        "{key}|{n}|drill"
                    )))
                    .send()
                    .await
                    .expect("put_record");
                produced.lock().unwrap().push(Produced {
                    key: key.clone(),
                    n,
                    stream: to,
                    at_ms: now_ms(),
                });
                next.insert(key, n + 1);
                i += 1;
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let v = verify(&world, &migration, drill_start, now_ms() - 1000);
    assert_eq!(v["totals"]["missing"], 0, "{v}");

    // After each flip, traffic where producers now write: a count of records, not a time,
    // so a slow machine still puts enough records on each side of every flip.
    let step = |args: &'static [&'static str]| {
        let (world, migration, produced) = (&world, &migration, &produced);
        async move {
            let (code, out) = fanoutctl(world, migration, args);
            let flipped_at = now_ms();
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let after = produced
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|p| p.at_ms > flipped_at)
                    .count();
                if after >= 40 || Instant::now() > deadline {
                    break;
                }
            }
            (code, out)
        }
    };
    assert_eq!(
        step(&["cutover", "--reason", "drill: first cutover"])
            .await
            .0,
        0
    );
    assert_eq!(
        step(&["rollback", "--reason", "drill: it looks wrong"])
            .await
            .0,
        0
    );
    assert_eq!(
        step(&["cutover", "--reason", "drill: try again"]).await.0,
        0
    );
    let commit_from = now_ms();
    let v = verify(&world, &migration, drill_start, commit_from - 1000);
    assert_eq!(
        (
            v["totals"]["missing"].as_u64(),
            v["totals"]["out_of_order"].as_u64()
        ),
        (Some(0), Some(0)),
        "{v}"
    );
    let commit_at = now_ms();
    assert_eq!(step(&["commit", "--reason", "drill: done"]).await.0, 0);
    producing.store(false, Ordering::SeqCst);
    producer.await.unwrap();
    stop.store(true, Ordering::SeqCst);
    replicator.await.unwrap();
    if let Some(r) = reverse_replicator {
        r.await.unwrap();
    }

    // Across all flips: nothing produced before the commit is missing from the old stream,
    // and every key's records arrived there in the order they were produced.
    let produced = produced.lock().unwrap().clone();
    let by_stream = produced
        .iter()
        .fold(HashMap::<&str, usize>::new(), |mut m, p| {
            *m.entry(p.stream.as_str()).or_default() += 1;
            m
        });
    assert!(
        by_stream.len() == 2 && by_stream.values().all(|n| *n > 50),
        "{by_stream:?}"
    );
    let old = held(&kinesis.read_all(&world.target).await.unwrap());
    let before_commit: Vec<&Produced> = produced.iter().filter(|p| p.at_ms < commit_at).collect();
    assert_eq!(
        judge(&old, &before_commit),
        (0, 0),
        "old stream per key: {old:?}"
    );
    // Records producers wrote to the old streams are there once: nothing came back.
    let old_echoes = echoes(
        &old,
        produced
            .iter()
            .filter(|p| p.stream == world.target.to_string()),
    );
    assert_eq!(
        old_echoes, 0,
        "records written to the old stream came back: {old:?}"
    );
    if reverse {
        // The new side stayed current: from the first record producers wrote there, it
        // holds every record produced before the commit, wherever it was written, in order,
        // and its own records only once.
        let new = held(&kinesis.read_all(&world.source).await.unwrap());
        let first_new = produced
            .iter()
            .filter(|p| p.stream == world.source.to_string())
            .map(|p| p.at_ms)
            .min()
            .unwrap();
        let since_first: Vec<&Produced> = before_commit
            .iter()
            .copied()
            .filter(|p| p.at_ms >= first_new)
            .collect();
        assert_eq!(
            judge(&new, &since_first),
            (0, 0),
            "new stream per key: {new:?}"
        );
        let rolled_back = since_first
            .iter()
            .filter(|p| p.stream == world.target.to_string())
            .count();
        assert!(
            rolled_back > 20,
            "reverse replication carried {rolled_back} records"
        );
        let new_echoes = echoes(
            &new,
            produced
                .iter()
                .filter(|p| p.stream == world.source.to_string()),
        );
        assert_eq!(
            new_echoes, 0,
            "records written to the new stream came back: {new:?}"
        );
    }

    let (code, history) = fanoutctl(&world, &migration, &["history"]);
    assert_eq!(code, 0);
    let json = fanoutctl(&world, &migration, &["history", "--output", "json"]).1;
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    let steps: Vec<(String, String)> = report["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["outcome"] == "applied")
        .map(|e| {
            (
                e["command"].as_str().unwrap().to_owned(),
                e["to"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("start", "replicating"),
            ("cutover", "cutover"),
            ("rollback", "rolled_back"),
            ("cutover", "cutover"),
            ("commit", "committed")
        ]
        .map(|(a, b)| (a.to_owned(), b.to_owned())),
        "{history}"
    );
    let (code, status) = fanoutctl(&world, &migration, &["status"]);
    assert_eq!(code, 0);
    assert!(status.contains("state COMMITTED"), "{status}");
    history_into_a_closed_pipe_ends_quietly(&world, &migration);
}

/// `fanoutctl history | head -n 1`: the reader goes away before fanoutctl prints. It must end
/// the way `cat` would (killed by SIGPIPE), not panic with "failed printing to stdout".
fn history_into_a_closed_pipe_ends_quietly(world: &World, migration: &str) {
    use std::os::unix::process::ExitStatusExt;
    let mut child = Command::new(BIN)
        .args(["history"])
        .envs(world.process_env())
        .env("FANOUT_MIGRATION", migration)
        .env_remove("AWS_PROFILE")
        .env("FANOUT_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run fanoutctl");
    // Closed before fanoutctl has read its history from DynamoDB, so its first print fails.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("wait for fanoutctl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(out.status.signal(), Some(13), "{:?} {stderr}", out.status);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_a_drain_that_times_out_and_an_abandoned_flip() {
    let Some(world) = World::create_serialized(Backend::KinesisLocal, 1, 1).await else {
        return;
    };
    let migration = unique("two-person");
    let alice = context(
        &world,
        "arn:aws:sts::123456789012:assumed-role/oncall/alice",
    );
    let bob = context(&world, "arn:aws:sts::123456789012:assumed-role/oncall/bob");
    let settings = Settings {
        two_person: true,
        drain_timeout_ms: 1_000,
        settle_ms: 200,
        ..fast_settings()
    };
    start(
        &world,
        &alice,
        &migration,
        vec![stream_of(&world)],
        settings,
    )
    .await;
    let routing = S3Routing::new(
        &world.new_account,
        &world.bucket,
        &S3Routing::key_for("routing/", &migration),
    );
    let producers = RoutingClient::new(
        routing,
        RoutingOptions {
            cache_ttl: Duration::ZERO,
            ..RoutingOptions::default()
        },
    );
    let logical = world.source.name().to_owned();

    // Records wait in the source and no replicator runs: the drain cannot finish.
    KinesisSource::new(&world.new_account)
        .put_all(&world.source, &records(5, 2, 20))
        .await
        .unwrap();
    let cutover = flip(
        &migration,
        CommandName::Cutover,
        Some("CHG-7: replicator is down, test the drain"),
        true,
    );
    let r = execute(&alice, &cutover).await;
    assert_eq!(
        (r.outcome, r.exit_code()),
        (Outcome::AwaitingApproval, 5),
        "{}",
        r.message
    );
    let r = execute(&alice, &cutover).await;
    assert_eq!(r.outcome, Outcome::AwaitingApproval);
    assert!(
        r.message.contains("a different identity must approve"),
        "{}",
        r.message
    );
    assert_eq!(
        alice.control.load(&migration).await.unwrap().unwrap().state,
        State::Replicating
    );

    let r = execute(&bob, &cutover).await;
    assert_eq!(
        (r.outcome, r.exit_code()),
        (Outcome::DrainTimedOut, 2),
        "{}",
        r.message
    );
    assert!(
        r.message.contains("did not catch up within 1000 ms")
            && r.message.contains("released on the old streams"),
        "{}",
        r.message
    );
    let st = alice.control.load(&migration).await.unwrap().unwrap();
    assert_eq!((st.state, st.flip.is_none()), (State::Replicating, true));
    assert_eq!(
        producers.resolve(&logical).await.unwrap().stream,
        world.target.to_string(),
        "producers released where they were"
    );
    let history = alice.control.history(&migration, None).await.unwrap();
    let outcomes: Vec<(&str, Outcome)> = history
        .iter()
        .map(|e| (e.actor.rsplit('/').next().unwrap(), e.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("alice", Outcome::Applied),
            ("alice", Outcome::AwaitingApproval),
            ("alice", Outcome::AwaitingApproval),
            ("bob", Outcome::DrainTimedOut)
        ]
    );
    assert!(
        history[3].detail.contains("still behind"),
        "{}",
        history[3].detail
    );

    // A flip whose process died: its deadline passes, and the next flip releases it first.
    let mut stale = alice.control.load(&migration).await.unwrap().unwrap();
    let expected = stale.version;
    stale.version += 1;
    stale.flip = Some(fanout::control::record::PendingFlip {
        id: "dead".into(),
        action: fanout::control::machine::Action::Cutover,
        actor: "arn:aws:sts::123456789012:assumed-role/oncall/carol".into(),
        started_at_ms: now_ms() - 600_000,
        deadline_ms: now_ms() - 1,
    });
    assert_eq!(
        alice
            .control
            .write_state(Some(expected), &stale)
            .await
            .unwrap(),
        fanout::aws::control::Write::Done
    );
    // A dry run says so and changes nothing.
    let mut dry = flip(&migration, CommandName::Cutover, Some("after carol"), true);
    dry.dry_run = true;
    let r = execute(&bob, &dry).await;
    assert_eq!(r.outcome, Outcome::Applied, "{}", r.message);
    assert!(r.message.contains("the abandoned cutover by arn:aws:sts::123456789012:assumed-role/oncall/carol (flip dead) would be released first"), "{}", r.message);
    assert!(alice
        .control
        .load(&migration)
        .await
        .unwrap()
        .unwrap()
        .flip
        .is_some());
    // The real command releases it, then goes on (here: a new request for approval).
    let r = execute(
        &bob,
        &flip(&migration, CommandName::Cutover, Some("after carol"), true),
    )
    .await;
    assert_eq!(r.outcome, Outcome::AwaitingApproval, "{}", r.message);
    let history = alice.control.history(&migration, None).await.unwrap();
    let release = &history[history.len() - 2];
    assert_eq!(release.command, "release");
    assert!(release.detail.contains("released abandoned flip dead (cutover by arn:aws:sts::123456789012:assumed-role/oncall/carol"), "{}", release.detail);
    assert!(alice
        .control
        .load(&migration)
        .await
        .unwrap()
        .unwrap()
        .flip
        .is_none());
}

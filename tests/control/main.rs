//! The controller against the local stack: kinesis-local for Kinesis, and DynamoDB, S3 and
//! STS on the single-threaded moto (whose conditional writes are atomic, as DynamoDB's are;
//! threaded moto's are not). Concurrent conflicting flips, every guard refusing and being
//! forced, replication obeying its mode, and a drill with a producer that follows the
//! routing document through cutover → rollback → cutover → commit.

// The shared helpers are here; the tests are in the topic modules below.
mod bounded;
mod consumers;
mod drill;
mod flips;
mod forced;
mod guards;
mod interrupt;
mod modes;
#[path = "../support/mod.rs"]
mod support;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout::aws::build_handler;
use fanout::aws::control::AwsControl;
use fanout::aws::leases::DynamoLeases;
use fanout::aws::source::KinesisSource;
use fanout::control::commands::{execute, CommandName, Context, Report, Request};
use fanout::control::record::{LogicalStream, Outcome, Settings};
use fanout::handler::MetricsOutput;
use fanout::ports::control::ControlStore;
use fanout::runner::{self, InProcess, RunnerOptions};
use support::stack::{records, unique, Backend, World};

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn context(world: &World, actor: &str) -> Context<AwsControl> {
    Context {
        control: AwsControl::new(&world.new_account, &world.new_account, &world.table),
        actor: actor.to_owned(),
        poll: Duration::from_millis(100),
        caller_known: true,
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
        // The replicators these tests run (spawn_runner) cache modes for 200 ms.
        mode_cache_ms: Some(200),
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
    // Position pairs every half second (10 s in production): the drills' consumers move
    // within seconds of each other.
    vars.insert("FANOUT_POSITION_EVERY_MS", "500".into());
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

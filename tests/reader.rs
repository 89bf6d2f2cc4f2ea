//! The shard reader against the local stack (kinesis-local for Kinesis, moto for DynamoDB, S3
//! and STS): resharding while records flow, SIGKILL at random moments, two runners on one
//! route, leases fenced by their counter, and a bounded backfill window.

mod support;

use std::collections::{HashMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fanout::aws::build_handler;
use fanout::aws::leases::DynamoLeases;
use fanout::aws::source::KinesisSource;
use fanout::handler::MetricsOutput;
use fanout::lease::{check_history, Heartbeat, LeaseStore, Position};
use fanout::model::SourceRecord;
use fanout::runner::{self, InProcess, RunnerOptions};
use fanout::seq::SequenceNumber;
use fanout::verify;
use support::stack::{records, Backend, World};

const BIN: &str = env!("CARGO_BIN_EXE_fanoutctl");

fn lease_name(world: &World) -> String {
    world.route().name
}

/// Runs the real replicator handler in this process over `reader`, with leases in the
/// world's table, until caught up (if the options say so) or until `stop` is set.
fn spawn_in_process(
    world: &World,
    reader: &KinesisSource,
    options: &RunnerOptions,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<runner::RunSummary> {
    let (config, sdk, table, source, reader, options) = (
        world.config(),
        world.new_account.clone(),
        world.table.clone(),
        world.source.clone(),
        reader.clone(),
        options.clone(),
    );
    tokio::spawn(async move {
        let handler = Arc::new(build_handler(&config, &sdk, MetricsOutput::None).await);
        let leases = Arc::new(DynamoLeases::new(&sdk, &table));
        runner::run(
            &reader,
            &source,
            Arc::new(InProcess(handler)),
            leases,
            &options,
            stop,
        )
        .await
        .expect("runner")
    })
}

/// The lease history of the world's route, after checking no tenure overlapped another.
async fn clean_history(leases: &DynamoLeases, world: &World) -> Vec<fanout::lease::Epoch> {
    let history = leases.history(&lease_name(world)).await.unwrap();
    let problems = check_history(&history);
    assert!(problems.is_empty(), "{problems:?}");
    history
}

async fn compare(world: &World, source: &[(String, SourceRecord)]) -> verify::Comparison {
    let reader = KinesisSource::new(&world.new_account);
    let target = reader.read_all(&world.target).await.expect("read target");
    verify::compare(source, &target, &HashSet::new())
}

/// Waits until the target holds at least `n` records.
async fn wait_for_target(world: &World, n: usize, timeout: Duration) -> usize {
    let reader = KinesisSource::new(&world.new_account);
    let started = Instant::now();
    loop {
        let have = reader
            .read_all(&world.target)
            .await
            .expect("read target")
            .len();
        if have >= n || started.elapsed() > timeout {
            return have;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn spawn_fanoutctl(world: &World, args: &[&str]) -> Child {
    Command::new(BIN)
        .args(args)
        .envs(world.process_env())
        .env_remove("AWS_PROFILE")
        // A loaded test machine can stall an emulator for seconds: a short request timeout
        // would then turn accepted writes into ambiguous ones (duplicates by design, §2.3)
        // and blur what these tests measure, which is the reader's own hand-overs.
        .env("FANOUT_REQUEST_TIMEOUT_MS", "15000")
        .env(
            "FANOUT_LOG",
            std::env::var("FANOUT_TEST_CHILD_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start fanoutctl")
}

/// [`spawn_fanoutctl`] with its log (stderr) appended to `log`.
fn spawn_fanoutctl_logging(world: &World, args: &[&str], log: &std::path::Path) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open the log");
    Command::new(BIN)
        .args(args)
        .envs(world.process_env())
        .env_remove("AWS_PROFILE")
        .env("FANOUT_REQUEST_TIMEOUT_MS", "15000")
        .env("FANOUT_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(file)
        .spawn()
        .expect("start fanoutctl")
}

/// Possible duplicates the runs reported: PossibleDuplicates in the EMF lines of `metrics`,
/// plus the records each run wrote again after taking a shard over from a killed run (its
/// WARN line in `log`).
fn duplicates_reported(metrics: &std::path::Path, log: &std::path::Path) -> (u64, u64) {
    let emf: u64 = std::fs::read_to_string(metrics)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["PossibleDuplicates"].as_f64())
        .map(|n| n as u64)
        .sum();
    let taken_over: u64 = std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let before = l
                .split(" record(s) written again from its last checkpoint")
                .next()?;
            if before.len() == l.len() {
                return None;
            }
            before.rsplit(' ').next()?.parse::<u64>().ok()
        })
        .sum();
    (emf, taken_over)
}

fn wait_child(mut child: Child, timeout: Duration) -> (i32, String) {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            let mut out = String::new();
            if let Some(mut o) = child.stdout.take() {
                use std::io::Read;
                let _ = o.read_to_string(&mut out);
            }
            return (status.code().unwrap_or(-1), out);
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            panic!("fanoutctl did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .expect("kill -TERM");
    assert!(status.success());
}

#[tokio::test]
async fn a_lost_lease_cannot_move_the_position_and_history_records_each_owner() {
    let Some(world) = World::create_serialized(Backend::KinesisLocal, 1, 1).await else {
        return;
    };
    let leases = DynamoLeases::new(&world.new_account, &world.table);
    let hb = Heartbeat::default();
    let seq = |n: u64| Position::After(SequenceNumber::parse(&n.to_string()).unwrap());
    // The leases' clock is the one the test hands them: expiry is decided by it, not by
    // how long the test happens to sleep.
    let clock = std::sync::atomic::AtomicI64::new(chrono::Utc::now().timestamp_millis());
    let now = || clock.load(Ordering::SeqCst);
    let (a, from) = leases
        .acquire("r", "shard-0", "A", 300, now())
        .await
        .unwrap()
        .expect("A takes the free lease");
    assert_eq!((a.counter, from), (1, Position::Start));
    assert!(leases
        .acquire("r", "shard-0", "B", 300, now())
        .await
        .unwrap()
        .is_none());
    assert!(leases
        .checkpoint(&a, &seq(7), hb, 300, now())
        .await
        .unwrap());
    clock.fetch_add(400, Ordering::SeqCst); // A stops renewing; its 300 ms run out
    let (b, from) = leases
        .acquire("r", "shard-0", "B", 5000, now())
        .await
        .unwrap()
        .expect("B takes the expired lease");
    assert_eq!((b.counter, from), (2, seq(7)));
    // A comes back: every write of its is refused by the counter.
    assert!(!leases
        .checkpoint(&a, &seq(99), hb, 300, now())
        .await
        .unwrap());
    assert!(!leases.renew(&a, hb, 300, now()).await.unwrap());
    assert!(!leases.release(&a, now()).await.unwrap());
    assert!(leases
        .checkpoint(&b, &seq(9), hb, 5000, now())
        .await
        .unwrap());
    let listed = leases.list("r").await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].owner.as_deref(), Some("B"));
    assert_eq!(listed[0].position, seq(9));
    assert!(leases.release(&b, now()).await.unwrap());
    let history = leases.history("r").await.unwrap();
    assert_eq!(
        history
            .iter()
            .map(|e| (e.owner.as_str(), e.counter))
            .collect::<Vec<_>>(),
        vec![("A", 1), ("B", 2)]
    );
    assert_eq!(
        (history[0].last.clone(), history[1].last.clone()),
        (seq(7), seq(9))
    );
    assert!(history[1].released_at_ms.is_some());
    assert!(
        check_history(&history).is_empty(),
        "{:?}",
        check_history(&history)
    );
}

#[tokio::test]
async fn split_and_merge_while_records_flow_lose_and_reorder_nothing() {
    let Some(world) = World::create_serialized(Backend::KinesisLocal, 3, 2).await else {
        return;
    };
    let reader = KinesisSource::new(&world.new_account);
    let options = RunnerOptions {
        batch_size: 100,
        idle_poll: Duration::from_millis(50),
        discover_every: Duration::from_millis(200),
        min_read_interval: Duration::from_millis(20),
        lease_ttl: Duration::from_secs(3),
        lease_name: lease_name(&world),
        ..RunnerOptions::default()
    };
    let stop = Arc::new(AtomicBool::new(false));
    let run = spawn_in_process(&world, &reader, &options, stop.clone());
    let client = aws_sdk_kinesis::Client::new(&world.new_account);
    let data = records(1500, 60, 40);
    for (round, chunk) in data.chunks(50).enumerate() {
        reader.put_all(&world.source, chunk).await.unwrap();
        if round == 10 {
            // Split shard 0 at the middle of its hash key range.
            let shards = client
                .list_shards()
                .stream_arn(world.source.as_str())
                .send()
                .await
                .unwrap();
            let s0 = &shards.shards()[0];
            let range = s0.hash_key_range().unwrap();
            let lo: u128 = range.starting_hash_key().parse().unwrap();
            let hi: u128 = range.ending_hash_key().parse().unwrap();
            client
                .split_shard()
                .stream_arn(world.source.as_str())
                .shard_to_split(s0.shard_id())
                .new_starting_hash_key((lo + (hi - lo) / 2).to_string())
                .send()
                .await
                .expect("split shard 0");
            reader.wait_active(&world.source).await.unwrap();
        }
        if round == 20 {
            client
                .merge_shards()
                .stream_arn(world.source.as_str())
                .shard_to_merge("shardId-000000000001")
                .adjacent_shard_to_merge("shardId-000000000002")
                .send()
                .await
                .expect("merge shards 1 and 2");
            reader.wait_active(&world.source).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let have = wait_for_target(&world, data.len(), Duration::from_secs(120)).await;
    stop.store(true, Ordering::Relaxed);
    let summary = run.await.unwrap();
    assert!(have >= data.len(), "target holds {have} of {}", data.len());

    let source = reader.read_all(&world.source).await.unwrap();
    assert_eq!(source.len(), data.len());
    let c = compare(&world, &source).await;
    eprintln!("reshard: {c:?}; shards read: {}", summary.shards.len());
    assert!(c.missing.is_empty(), "missing {:?}", c.missing);
    assert_eq!(c.out_of_order, 0);
    assert_eq!(c.extra, 0);
    // 3 original shards, 2 children of the split, 1 child of the merge.
    let listing = reader.list_shards(&world.source).await.unwrap();
    assert_eq!(listing.len(), 6);
    assert_eq!(summary.shards.len(), 6, "{summary:?}");
    // Every child was first taken only after each of its parents had been read to its end.
    let leases = DynamoLeases::new(&world.new_account, &world.table);
    let history = clean_history(&leases, &world).await;
    let ended_at: HashMap<&str, i64> = history
        .iter()
        .filter(|e| e.last == Position::End)
        .map(|e| (e.shard_id.as_str(), e.last_checkpoint_ms.unwrap()))
        .collect();
    for child in listing.iter().filter(|s| s.parent.is_some()) {
        let first = history
            .iter()
            .find(|e| e.shard_id == child.shard_id)
            .expect("child was read");
        for parent in [&child.parent, &child.adjacent_parent]
            .into_iter()
            .flatten()
        {
            let parent_end = ended_at
                .get(parent.as_str())
                .unwrap_or_else(|| panic!("parent {parent} never reached SHARD_END"));
            assert!(
                first.acquired_at_ms >= *parent_end,
                "{} taken at {} before parent {parent} ended at {parent_end}",
                child.shard_id,
                first.acquired_at_ms
            );
        }
    }
}

#[tokio::test]
async fn sigkill_at_random_moments_loses_and_reorders_nothing() {
    let Some(world) = World::create_serialized(Backend::KinesisLocal, 2, 2).await else {
        return;
    };
    const BATCH: usize = 25;
    const KILLS: usize = 10;
    let reader = KinesisSource::new(&world.new_account);
    let data = records(2000, 50, 40);
    let producer = {
        let (reader, source, data) = (reader.clone(), world.source.clone(), data.clone());
        tokio::spawn(async move {
            for chunk in data.chunks(50) {
                reader.put_all(&source, chunk).await.unwrap();
                tokio::time::sleep(Duration::from_millis(400)).await;
            }
        })
    };
    let args = [
        "replicate",
        "--from",
        "trim-horizon",
        "--batch-size",
        "25",
        "--lease-ttl",
        "2",
        "--quiet",
    ];
    let dir = std::env::temp_dir().join(support::stack::unique("sigkill"));
    std::fs::create_dir_all(&dir).unwrap();
    let (metrics, log) = (dir.join("metrics.jsonl"), dir.join("runs.log"));
    let metrics_arg = metrics.to_str().unwrap().to_owned();
    let args = [&args[..], &["--metrics", &metrics_arg]].concat();
    // The kill times come from a seed, printed so a failure can be replayed with it.
    let seed = std::env::var("FANOUT_TEST_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(rand::random);
    eprintln!("sigkill: seed {seed} (replay with FANOUT_TEST_SEED={seed})");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
    for kill in 0..KILLS {
        let mut child = spawn_fanoutctl_logging(&world, &args, &log);
        let wait = 1500 + rand::Rng::random_range(&mut rng, 0..2500u64);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.kill().expect("SIGKILL"); // Child::kill sends SIGKILL
        let _ = child.wait();
        eprintln!("kill {} after {wait} ms", kill + 1);
    }
    producer.await.unwrap();
    let mut final_args = args.to_vec();
    final_args.extend(["--until-caught-up", "--output", "json"]);
    let (code, out) = wait_child(
        spawn_fanoutctl_logging(&world, &final_args, &log),
        Duration::from_secs(240),
    );
    assert_eq!(code, 0, "final run: {out}");
    let source = reader.read_all(&world.source).await.unwrap();
    assert_eq!(source.len(), data.len());
    let c = compare(&world, &source).await;
    let (emf, taken_over) = duplicates_reported(&metrics, &log);
    eprintln!(
        "sigkill: {KILLS} kills, {} source records, {} target records, {} duplicates, {} missing, {} out of order, \
         counted: {emf} in the metrics (ambiguous writes) + {taken_over} written again after a take-over",
        c.source_records,
        c.target_records,
        c.duplicates,
        c.missing.len(),
        c.out_of_order
    );
    eprintln!(
        "TABLE | KinesisLocal {KILLS} kill -9s of fanoutctl replicate, then a run to the end | in {} | written {} | lost {} | duplicates {} | counted {}",
        c.source_records,
        c.target_records - c.duplicates,
        c.missing.len(),
        c.duplicates,
        emf + taken_over
    );
    assert!(
        emf + taken_over >= c.duplicates as u64,
        "every duplicate is counted: {} in the target, {emf} + {taken_over} reported\n{}",
        c.duplicates,
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        c.missing.is_empty(),
        "missing {:?} (seed {seed})",
        c.missing
    );
    assert_eq!(c.out_of_order, 0, "seed {seed}");
    assert_eq!(c.extra, 0, "seed {seed}");
    // A kill can land between a write and its checkpoint on each shard being read.
    assert!(
        c.duplicates <= KILLS * BATCH * 2,
        "{} duplicates after {KILLS} kills",
        c.duplicates
    );
    let leases = DynamoLeases::new(&world.new_account, &world.table);
    clean_history(&leases, &world).await;
}

#[tokio::test]
async fn two_runners_never_read_one_shard_at_once_and_hand_over_on_sigterm() {
    let Some(world) = World::create_serialized(Backend::KinesisLocal, 4, 2).await else {
        return;
    };
    let reader = KinesisSource::new(&world.new_account);
    let args = [
        "replicate",
        "--batch-size",
        "50",
        "--lease-ttl",
        "3",
        "--quiet",
        "--output",
        "json",
    ];
    let a = spawn_fanoutctl(&world, &args);
    let b = spawn_fanoutctl(&world, &args);
    let data = records(1200, 80, 40);
    for chunk in data.chunks(100) {
        reader.put_all(&world.source, chunk).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    sigterm(&a);
    let (code_a, out_a) = wait_child(a, Duration::from_secs(60));
    assert_eq!(code_a, 0, "runner A after SIGTERM: {out_a}");
    // More records after A left: B must take A's shards over and deliver them.
    let more = records(1400, 80, 40).split_off(1200);
    reader.put_all(&world.source, &more).await.unwrap();
    let have = wait_for_target(&world, 1400, Duration::from_secs(240)).await;
    sigterm(&b);
    let (code_b, out_b) = wait_child(b, Duration::from_secs(60));
    assert_eq!(code_b, 0, "runner B after SIGTERM: {out_b}");
    assert!(have >= 1400, "target holds {have} of 1400");

    let leases = DynamoLeases::new(&world.new_account, &world.table);
    let history = clean_history(&leases, &world).await;
    let owners: HashSet<&str> = history.iter().map(|e| e.owner.as_str()).collect();
    assert_eq!(owners.len(), 2, "both runners held leases: {history:?}");
    // Every tenure ended with a release (SIGTERM is a clean stop), and A's shards went to B.
    assert!(
        history.iter().all(|e| e.released_at_ms.is_some()),
        "{history:?}"
    );
    let handed_over = history
        .windows(2)
        .filter(|w| w[0].shard_id == w[1].shard_id && w[0].owner != w[1].owner)
        .count();
    assert!(handed_over >= 1, "no shard changed hands: {history:?}");
    let source = reader.read_all(&world.source).await.unwrap();
    let c = compare(&world, &source).await;
    eprintln!(
        "two runners: {} epochs, {handed_over} hand-overs; {c:?}",
        history.len()
    );
    assert!(c.missing.is_empty() && c.out_of_order == 0 && c.extra == 0);
    assert_eq!(c.duplicates, 0, "a clean hand-over repeats nothing");
}

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

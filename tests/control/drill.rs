//! The drill: a producer that follows the routing document through cutover → rollback →
//! cutover → commit, driven by `fanoutctl`, with and without reverse replication.

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use fanout::aws::routing::S3Routing;
use fanout::routing::{RoutingClient, RoutingOptions};

use super::*;

const BIN: &str = env!("CARGO_BIN_EXE_fanoutctl");

/// One record the drill's producer wrote: its key, its number within the key, where, when.
#[derive(Clone, Debug)]
pub(crate) struct Produced {
    pub key: String,
    pub n: u64,
    pub stream: String,
    pub at_ms: i64,
}

/// The drill's producer: 12 keys, one record every 15 ms, each to the stream the routing
/// document names; every record it wrote, and the switch that stops it.
pub(crate) fn spawn_producer(
    world: &World,
    migration: &str,
) -> (
    Arc<Mutex<Vec<Produced>>>,
    Arc<AtomicBool>,
    tokio::task::JoinHandle<()>,
) {
    let produced: Arc<Mutex<Vec<Produced>>> = Arc::default();
    let producing = Arc::new(AtomicBool::new(true));
    let producer = {
        let (produced, producing) = (produced.clone(), producing.clone());
        let routing = S3Routing::new(
            &world.new_account,
            &world.bucket,
            &S3Routing::key_for("routing/", migration),
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
    (produced, producing, producer)
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

/// `fanoutctl` on `migration`. The flips' capacity guard describes the target through the
/// writer role with the writer's request timeout (2 s in these tests): on a machine busy with
/// the other drills moto can take longer, so the drills' own commands allow 10 s.
pub(crate) fn fanoutctl(world: &World, migration: &str, args: &[&str]) -> (i32, String) {
    support::fanoutctl(
        world,
        &[
            ("FANOUT_MIGRATION", migration),
            ("FANOUT_REQUEST_TIMEOUT_MS", "10000"),
        ],
        args,
    )
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Runs `fanoutctl verify` over [from, until] and returns its JSON report.
pub(crate) fn verify(
    world: &World,
    migration: &str,
    from_ms: i64,
    until_ms: i64,
) -> serde_json::Value {
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
    let (produced, producing, producer) = spawn_producer(&world, &migration);
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
    if reverse {
        // A consumer of the old stream, part-way, translated to the new one over both routes.
        let (unseen, to_read, again) =
            super::consumers::reverse::translation_holds_both_ways(&world, &migration).await;
        eprintln!(
            "translation over both routes: {unseen} records not seen and on the new stream, \
             all to be read; {to_read} to read there, {again} of them seen already"
        );
    }
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

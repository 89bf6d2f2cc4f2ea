//! Redrive over HTTP against the real emulators: dead letters stored the way the replicator
//! stores them (through `S3DeadLetters` as its `DeadLetterStore`), replayed by the library and
//! by the real `fanoutctl` binary. Each test checks what an on-call engineer would see: the
//! records in the target in per-key order, the dead letters gone (or marked), the one that
//! cannot be written still there and named, nothing replayed twice, and a missing target
//! stopping with its name and nothing removed.

mod support;

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Output};

use fanout::aws::dead_letters::S3DeadLetters;
use fanout::aws::source::KinesisSource;
use fanout::aws::target::KinesisTarget;
use fanout::config::ReplicatorConfig;
use fanout::model::{DeadLetter, Route, SourceRecord, StreamArn};
use fanout::ports::DeadLetterStore;
use fanout::progress::{Mode, Progress};
use fanout::redrive::{self, RedriveOptions, Summary, MARKER_SUFFIX};
use fanout::seq::SequenceNumber;
use support::stack::{records, Backend, World, EXTERNAL_ID, OLD_ACCOUNT, WRITER_ROLE};

/// A dead-lettered record as the test expects to find it in the target.
#[derive(Clone, Debug)]
struct Letter {
    seq: SequenceNumber,
    key: String,
    data: Vec<u8>,
}

/// Dead letters as the test stored them.
struct Stored {
    /// Replayable letters, in (shard, sequence) order.
    letters: Vec<Letter>,
    /// The record larger than the target accepts: (sequence number, S3 location).
    oversize: (SequenceNumber, String),
}

fn archive(world: &World, config: &ReplicatorConfig) -> S3DeadLetters {
    S3DeadLetters::new(
        &world.new_account,
        &config.dead_letter_bucket,
        &config.dead_letter_prefix,
    )
}

/// Adds one to a decimal sequence number (a sequence number the source never handed out).
fn next_seq(seq: &SequenceNumber) -> SequenceNumber {
    let mut digits: Vec<u8> = seq.as_str().bytes().collect();
    let mut i = digits.len();
    loop {
        if i == 0 {
            digits.insert(0, b'1');
            break;
        }
        i -= 1;
        if digits[i] == b'9' {
            digits[i] = b'0';
        } else {
            digits[i] += 1;
            break;
        }
    }
    SequenceNumber::parse(std::str::from_utf8(&digits).unwrap()).unwrap()
}

/// Writes records to the source, then stores every other record of each shard as a dead
/// letter of `route` (several per key, on every shard), plus one record of 1 MiB + key that no
/// target accepts, the way the replicator stores them.
async fn store_dead_letters(world: &World, config: &ReplicatorConfig, route: &Route) -> Stored {
    let reader = KinesisSource::new(&world.new_account);
    reader
        .put_all(&world.source, &records(160, 8, 120))
        .await
        .expect("write source");
    let mut per_shard: BTreeMap<String, Vec<SourceRecord>> = BTreeMap::new();
    for (shard, r) in reader.read_all(&world.source).await.expect("read source") {
        per_shard.entry(shard).or_default().push(r);
    }
    assert!(per_shard.len() >= 2, "records should reach every shard");
    let store = archive(world, config);
    let mut letters = Vec::new();
    let mut oversize = None;
    for (shard, recs) in &per_shard {
        let chosen: Vec<&SourceRecord> = recs.iter().step_by(2).collect();
        for r in &chosen {
            store
                .store(&DeadLetter {
                    route: &route.name,
                    source_arn: route.source.as_str(),
                    target_arn: route.target.as_str(),
                    shard_id: shard,
                    record: r,
                    reason: "the target refused the record (InternalFailure: test)".to_owned(),
                    error_code: "TargetRejected".to_owned(),
                    attempts: 3,
                })
                .await
                .expect("store dead letter");
            letters.push(Letter {
                seq: r.seq.clone(),
                key: r.partition_key.clone().unwrap(),
                data: r.data.clone(),
            });
        }
        if oversize.is_none() {
            let key = chosen[0].partition_key.clone().unwrap();
            let mut data = format!("{key}|oversize|").into_bytes();
            data.resize(1024 * 1024, b'z');
            let big = SourceRecord {
                seq: next_seq(&recs.last().unwrap().seq),
                partition_key: Some(key),
                data,
                arrival_ms: None,
                defect: None,
            };
            let location = store
                .store(&DeadLetter {
                    route: &route.name,
                    source_arn: route.source.as_str(),
                    target_arn: route.target.as_str(),
                    shard_id: shard,
                    record: &big,
                    reason: "the record is too large for the target".to_owned(),
                    error_code: "RecordTooLarge".to_owned(),
                    attempts: 0,
                })
                .await
                .expect("store oversize dead letter");
            oversize = Some((big.seq, location));
        }
    }
    Stored {
        letters,
        oversize: oversize.unwrap(),
    }
}

/// Checks the target holds exactly `letters`, each key's records in source sequence order.
async fn assert_target_holds_in_order(world: &World, letters: &[Letter]) {
    let reader = KinesisSource::new(&world.new_account);
    let target = reader.read_all(&world.target).await.expect("read target");
    let by_data: HashMap<&[u8], &Letter> = letters.iter().map(|l| (l.data.as_slice(), l)).collect();
    assert_eq!(target.len(), letters.len(), "records in the target");
    let mut arrived: BTreeMap<&str, Vec<SequenceNumber>> = BTreeMap::new();
    for (_, r) in &target {
        let letter = by_data
            .get(r.data.as_slice())
            .unwrap_or_else(|| panic!("unexpected record in the target: {:?}", r.data));
        assert_eq!(r.partition_key.as_deref(), Some(letter.key.as_str()));
        arrived
            .entry(&letter.key)
            .or_default()
            .push(letter.seq.clone());
    }
    assert!(arrived.len() > 2, "several keys");
    for (key, seqs) in &arrived {
        let mut sorted = seqs.clone();
        sorted.sort();
        assert_eq!(seqs, &sorted, "per-key order of {key}");
        assert!(seqs.len() > 1, "several records of {key}");
    }
}

async fn run_library(
    world: &World,
    config: &ReplicatorConfig,
    options: &RedriveOptions,
) -> Summary {
    let writer = KinesisTarget::new(&world.new_account, &config.routes, &config.limits).await;
    redrive::redrive_routes(
        &config.routes,
        &config.limits,
        &writer,
        &archive(world, config),
        &KinesisSource::new(&world.new_account),
        options,
        &Progress::with_mode(Mode::Off),
    )
    .await
}

async fn redrive_restores_dead_letters_in_order(backend: Backend) {
    let Some(world) = World::create(backend, 2, 3).await else {
        return;
    };
    let config = world.config();
    let route = world.route();
    let stored = store_dead_letters(&world, &config, &route).await;
    let options = RedriveOptions {
        batch_size: 7,
        ..RedriveOptions::default()
    };

    let summary = run_library(&world, &config, &options).await;
    assert_eq!(summary.replayed(), stored.letters.len(), "{summary:#?}");
    assert_target_holds_in_order(&world, &stored.letters).await;
    let left = summary.left_behind();
    assert_eq!(left.len(), 1, "{left:#?}");
    assert_eq!(left[0].sequence_number, stored.oversize.0.to_string());
    assert_eq!(left[0].error_code, "RecordTooLarge");
    assert_eq!(left[0].location, stored.oversize.1);
    assert_eq!(summary.exit_code(), 1);

    // Only the oversize letter is left in the bucket.
    let remaining = archive(&world, &config).list(None).await.unwrap();
    assert_eq!(remaining.len(), 1);
    assert_eq!(remaining[0].0, stored.oversize.1);

    let again = run_library(&world, &config, &options).await;
    assert_eq!(again.replayed(), 0);
    assert_eq!(again.left_behind().len(), 1);
    assert_target_holds_in_order(&world, &stored.letters).await;
}

#[tokio::test]
async fn redrive_restores_dead_letters_in_order_on_kinesis_local() {
    redrive_restores_dead_letters_in_order(Backend::KinesisLocal).await;
}

#[tokio::test]
async fn redrive_restores_dead_letters_in_order_on_moto() {
    redrive_restores_dead_letters_in_order(Backend::Moto).await;
}

// ---------------------------------------------------------------------------------------------
// The real binary

/// Runs `fanoutctl` with the environment `scripts/lib.sh use_local_stack` sets, and the
/// world's FANOUT_* configuration with `routes` as FANOUT_ROUTES.
fn fanoutctl(world: &World, routes: &str, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fanoutctl"));
    // Nothing from the caller's AWS or fanout settings leaks in (profiles, other endpoints).
    for (name, _) in std::env::vars() {
        if name.starts_with("AWS_") || name.starts_with("FANOUT_") {
            command.env_remove(name);
        }
    }
    command
        .args(args)
        .env("AWS_ENDPOINT_URL", &world.stack.moto)
        .env("AWS_ENDPOINT_URL_KINESIS", &world.kinesis_endpoint)
        .env("AWS_ACCESS_KEY_ID", "123456789012")
        .env("AWS_SECRET_ACCESS_KEY", "local")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("FANOUT_LOG", "warn")
        .env("FANOUT_ROUTES", routes)
        .env("FANOUT_TABLE", &world.table)
        .env("FANOUT_DEAD_LETTER_BUCKET", &world.bucket)
        .env("FANOUT_WRITER_ROLE_ARN", WRITER_ROLE)
        .env("FANOUT_WRITER_EXTERNAL_ID", EXTERNAL_ID)
        .env("FANOUT_BACKOFF_BASE_MS", "10")
        .env("FANOUT_BACKOFF_MAX_MS", "200")
        .output()
        .expect("run fanoutctl")
}

fn world_routes(world: &World) -> String {
    format!(
        r#"[{{"source":"{}","target":"{}"}}]"#,
        world.source, world.target
    )
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test]
async fn fanoutctl_redrive_keep_marks_letters_and_a_second_run_replays_nothing() {
    let Some(world) = World::create(Backend::KinesisLocal, 2, 2).await else {
        return;
    };
    let config = world.config();
    let route = world.route();
    let stored = store_dead_letters(&world, &config, &route).await;
    let routes = world_routes(&world);

    let dry = fanoutctl(&world, &routes, &["redrive", "--dry-run"]);
    let dry_out = text(&dry.stdout);
    assert_eq!(
        dry.status.code(),
        Some(0),
        "{dry_out}\n{}",
        text(&dry.stderr)
    );
    assert!(dry_out.contains("Dry run"), "{dry_out}");
    assert!(dry_out.contains("TargetRejected x"), "{dry_out}");
    assert!(dry_out.contains("RecordTooLarge x1"), "{dry_out}");
    assert_eq!(
        archive(&world, &config).list(None).await.unwrap().len(),
        stored.letters.len() + 1
    );

    let run = fanoutctl(
        &world,
        &routes,
        &[
            "redrive",
            "--keep",
            "--output",
            "json",
            "--batch-size",
            "10",
        ],
    );
    let stdout = text(&run.stdout);
    assert_eq!(
        run.status.code(),
        Some(1),
        "{stdout}\n{}",
        text(&run.stderr)
    );
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("JSON summary");
    let shards = doc["routes"][0]["shards"].as_array().unwrap();
    let sum = |field: &str| -> u64 { shards.iter().map(|s| s[field].as_u64().unwrap()).sum() };
    assert_eq!(sum("replayed"), stored.letters.len() as u64, "{stdout}");
    assert_eq!(sum("marked"), stored.letters.len() as u64);
    assert_eq!(sum("removed"), 0);
    assert_eq!(doc["exit_code"], 1);
    let failing: Vec<&serde_json::Value> = shards
        .iter()
        .flat_map(|s| s["still_failing"].as_array().unwrap())
        .collect();
    assert_eq!(failing.len(), 1, "{stdout}");
    assert_eq!(failing[0]["location"], stored.oversize.1.as_str());
    assert_eq!(failing[0]["sequence_number"], stored.oversize.0.as_str());
    assert_target_holds_in_order(&world, &stored.letters).await;

    // Every replayed letter is still there, with a marker beside it naming where it landed.
    let keys = archive(&world, &config).list_keys(None).await.unwrap();
    let markers: Vec<&String> = keys.iter().filter(|k| k.ends_with(MARKER_SUFFIX)).collect();
    assert_eq!(markers.len(), stored.letters.len());
    assert_eq!(keys.len(), 2 * stored.letters.len() + 1);
    assert!(!keys
        .iter()
        .any(|k| k.contains(&stored.oversize.0.to_padded()) && k.ends_with(MARKER_SUFFIX)));

    // A second run, even without --keep, replays nothing and names the oversize letter again.
    let again = fanoutctl(&world, &routes, &["redrive", "--quiet"]);
    let again_out = text(&again.stdout);
    assert_eq!(
        again.status.code(),
        Some(1),
        "{again_out}\n{}",
        text(&again.stderr)
    );
    assert!(
        again_out.contains("Replayed 0 dead letter(s); 1 left for a person"),
        "{again_out}"
    );
    assert!(again_out.contains(&stored.oversize.1), "{again_out}");
    assert!(again_out.contains("RecordTooLarge"), "{again_out}");
    assert!(
        again_out.contains("already redriven by an earlier --keep run"),
        "{again_out}"
    );
    assert_target_holds_in_order(&world, &stored.letters).await;
}

#[tokio::test]
async fn fanoutctl_redrive_removes_replayed_letters_and_prints_progress_lines() {
    let Some(world) = World::create(Backend::KinesisLocal, 2, 1).await else {
        return;
    };
    let config = world.config();
    let stored = store_dead_letters(&world, &config, &world.route()).await;
    let run = fanoutctl(&world, &world_routes(&world), &["redrive"]);
    let (stdout, stderr) = (text(&run.stdout), text(&run.stderr));
    assert_eq!(run.status.code(), Some(1), "{stdout}\n{stderr}");
    // stderr is a pipe here: plain lines, one per finished shard.
    assert!(stderr.contains(": done, "), "{stderr}");
    assert!(
        stdout.contains(&format!(
            "Replayed {} dead letter(s); 1 left",
            stored.letters.len()
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("What to do: Raise the record size limit"),
        "{stdout}"
    );
    let remaining = archive(&world, &config).list_keys(None).await.unwrap();
    assert_eq!(remaining.len(), 1, "{remaining:?}");
    assert!(stored.oversize.1.ends_with(&remaining[0]));
    assert_target_holds_in_order(&world, &stored.letters).await;
}

#[tokio::test]
async fn fanoutctl_redrive_to_a_missing_target_removes_nothing_and_names_the_stream() {
    let Some(world) = World::create(Backend::KinesisLocal, 2, 1).await else {
        return;
    };
    let config = world.config();
    let missing = StreamArn::parse(&format!(
        "arn:aws:kinesis:us-east-1:{OLD_ACCOUNT}:stream/{}",
        support::stack::unique("gone")
    ))
    .unwrap();
    let route = Route {
        name: Route::default_name(&world.source, &missing),
        target: missing.clone(),
        ..world.route()
    };
    let stored = store_dead_letters(&world, &config, &route).await;
    let routes = format!(
        r#"[{{"source":"{}","target":"{}"}}]"#,
        world.source, missing
    );

    let run = fanoutctl(&world, &routes, &["redrive", "--quiet"]);
    let (stdout, stderr) = (text(&run.stdout), text(&run.stderr));
    assert_eq!(run.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(stdout.contains("STOPPED"), "{stdout}");
    assert!(stdout.contains(missing.as_str()), "{stdout}");
    assert!(stdout.contains("Create the target stream"), "{stdout}");
    assert!(stdout.contains("Replayed 0 dead letter(s)"), "{stdout}");
    // One ERROR line per stopped shard, naming the stream.
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("ERROR")).collect();
    assert_eq!(errors.len(), 2, "{stderr}");
    assert!(
        errors.iter().all(|l| l.contains(missing.as_str())),
        "{stderr}"
    );
    let left = archive(&world, &config).list(None).await.unwrap();
    assert_eq!(left.len(), stored.letters.len() + 1, "nothing removed");
    assert!(KinesisSource::new(&world.new_account)
        .read_all(&world.target)
        .await
        .unwrap()
        .is_empty());
}

/// Puts an on-failure record where Lambda writes one (`aws/lambda/<mapping>/<shard>/...`), in
/// the form Lambda gives it: the batch's metadata, and the invocation event as `payload` when
/// `records` are given.
async fn put_on_failure_record(
    store: &S3DeadLetters,
    world: &World,
    shard: &str,
    records: &[SourceRecord],
    with_payload: bool,
) -> String {
    let first = records.first().unwrap();
    let last = records.last().unwrap();
    let at = |r: &SourceRecord| {
        chrono::DateTime::from_timestamp_millis(r.arrival_ms.unwrap_or(0))
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    };
    let mut doc = serde_json::json!({
        "requestContext": {"requestId": "3c1a2d4e", "functionArn": "arn:aws:lambda:us-east-1:123456789012:function:fanout-replicator",
                           "condition": "RecordAgeExceeded", "approximateInvokeCount": 4},
        "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": ""},
        "version": "1.0",
        "timestamp": "2026-12-06T19:00:00.000Z",
        "KinesisBatchInfo": {
            "shardId": shard,
            "startSequenceNumber": first.seq.to_string(),
            "endSequenceNumber": last.seq.to_string(),
            "approximateArrivalOfFirstRecord": at(first),
            "approximateArrivalOfLastRecord": at(last),
            "batchSize": records.len(),
            "streamArn": world.source.to_string(),
        }
    });
    if with_payload {
        let event = fanout::event::build_event(&world.source, shard, "us-east-1", records);
        doc["payload"] = serde_json::Value::String(serde_json::to_string(&event).unwrap());
    }
    let key = format!(
        "aws/lambda/8e2f6c1a-3b5d-4f7e-9a0c-1d2e3f4a5b6c/{shard}/2026/12/06/2026-12-06T19.00.00-{}",
        support::stack::unique("o")
    );
    store
        .put_json(&key, serde_json::to_vec(&doc).unwrap())
        .await
        .unwrap();
    key
}

#[tokio::test]
async fn fanoutctl_redrive_lists_discarded_batches_and_replays_the_records_one_holds() {
    let Some(world) = World::create(Backend::KinesisLocal, 2, 1).await else {
        return;
    };
    let config = world.config();
    let store = archive(&world, &config);
    let reader = KinesisSource::new(&world.new_account);
    reader
        .put_all(&world.source, &records(80, 8, 60))
        .await
        .expect("write source");
    let mut per_shard: BTreeMap<String, Vec<SourceRecord>> = BTreeMap::new();
    for (shard, r) in reader.read_all(&world.source).await.expect("read source") {
        per_shard.entry(shard).or_default().push(r);
    }
    let mut shards = per_shard.into_iter();
    let (held_shard, held) = shards.next().unwrap();
    let (bare_shard, bare) = shards.next().expect("records on both shards");
    let held_key = put_on_failure_record(&store, &world, &held_shard, &held, true).await;
    let bare_key = put_on_failure_record(&store, &world, &bare_shard, &bare, false).await;
    let routes = world_routes(&world);

    // Listed, with what can be recovered; nothing changes.
    let dry = fanoutctl(&world, &routes, &["redrive", "--dry-run"]);
    let out = text(&dry.stdout);
    assert_eq!(dry.status.code(), Some(0), "{out}\n{}", text(&dry.stderr));
    assert!(
        out.contains("DISCARDED (on-failure records; not replicated): 2"),
        "{out}"
    );
    assert!(out.contains(&store.location(&held_key)), "{out}");
    assert!(
        out.contains(&format!("it holds the {} records themselves", held.len())),
        "{out}"
    );
    assert!(out.contains("positions only"), "{out}");
    assert!(out.contains("fanoutctl backfill --from "), "{out}");
    assert!(out.contains("Run with --on-failure"), "{out}");
    assert_eq!(store.list_on_failure().await.unwrap().len(), 2);
    assert!(reader.read_all(&world.target).await.unwrap().is_empty());

    // Without --on-failure the records stay where they are and the exit code says so.
    let plain = fanoutctl(&world, &routes, &["redrive", "--quiet"]);
    assert_eq!(plain.status.code(), Some(1), "{}", text(&plain.stdout));
    assert!(reader.read_all(&world.target).await.unwrap().is_empty());

    // --on-failure: the held records are replayed, their on-failure record deleted; the one
    // with positions only stays, named, and the exit code says something is left.
    let run = fanoutctl(&world, &routes, &["redrive", "--on-failure", "--quiet"]);
    let out = text(&run.stdout);
    assert_eq!(run.status.code(), Some(1), "{out}\n{}", text(&run.stderr));
    assert!(
        out.contains(&format!("imported: {} record(s)", held.len())),
        "{out}"
    );
    assert!(
        out.contains(&format!("Replayed {} dead letter(s); 0 left", held.len())),
        "{out}"
    );
    let left: Vec<String> = store
        .list_on_failure()
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    assert_eq!(
        left,
        vec![bare_key],
        "only the record without records stays"
    );
    assert!(
        store.list_keys(None).await.unwrap().is_empty(),
        "no dead letter left"
    );
    let letters: Vec<Letter> = held
        .iter()
        .map(|r| Letter {
            seq: r.seq.clone(),
            key: r.partition_key.clone().unwrap(),
            data: r.data.clone(),
        })
        .collect();
    let target = reader.read_all(&world.target).await.unwrap();
    assert_eq!(target.len(), letters.len(), "exactly the held records");
    let mut per_key: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for (_, r) in &target {
        per_key
            .entry(r.partition_key.clone().unwrap())
            .or_default()
            .push(r.data.clone());
    }
    for l in &letters {
        let seen = per_key.get_mut(&l.key).expect("key in the target");
        assert_eq!(seen.remove(0), l.data, "per-key order of {}", l.key);
    }
}

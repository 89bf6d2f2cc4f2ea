//! Consumers through a migration: a KCL-style application (its positions in a lease table,
//! KCL's schema) reads the old stream while producers follow the routing document through
//! cutover → rollback → cutover → commit; `fanoutctl positions translate` is checked against
//! the streams mid-way, and at commit `fanoutctl consumers move` moves the application to
//! the new stream, where it carries on. Every record is processed, none out of order, and
//! the ones processed twice are inside the window the translation stated.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Mutex;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use fanout::aws::source::StartPosition;
use fanout::model::StreamArn;
use fanout::ports::reader::ShardReader;
use fanout::seq::SequenceNumber;

use super::drill::{spawn_producer, verify, Produced};
use super::*;

/// One record the application processed: from which stream and shard, at which sequence
/// number, and the drill record it held (key, number).
#[derive(Clone, Debug)]
struct Processed {
    stream: String,
    shard: String,
    seq: SequenceNumber,
    key: String,
    n: u64,
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

async fn create_lease_table(world: &World, name: &str) {
    aws_sdk_dynamodb::Client::new(&world.new_account)
        .create_table()
        .table_name(name)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(
            AttributeDefinition::builder()
                .attribute_name("leaseKey")
                .attribute_type(ScalarAttributeType::S)
                .build()
                .unwrap(),
        )
        .key_schema(
            KeySchemaElement::builder()
                .attribute_name("leaseKey")
                .key_type(KeyType::Hash)
                .build()
                .unwrap(),
        )
        .send()
        .await
        .expect("create the lease table");
}

/// Every lease: key → (checkpoint, leaseCounter).
async fn leases(world: &World, table: &str) -> BTreeMap<String, (String, i64)> {
    let out = aws_sdk_dynamodb::Client::new(&world.new_account)
        .scan()
        .table_name(table)
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    out.items()
        .iter()
        .map(|i| {
            let get = |n: &str| {
                i.get(n)
                    .and_then(|v| v.as_s().ok())
                    .cloned()
                    .unwrap_or_default()
            };
            let counter = i
                .get("leaseCounter")
                .and_then(|v| v.as_n().ok())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            (get("leaseKey"), (get("checkpoint"), counter))
        })
        .collect()
}

/// Reads shards of a stream from given positions, page by page, keeping its place: what a
/// KCL worker's record processor and Lambda's event source mapping both do.
struct Follower {
    reader: KinesisSource,
    stream: StreamArn,
    /// Per shard: its iterator (`None`: read to its end).
    iterators: Vec<(String, Option<String>)>,
}

impl Follower {
    async fn new(
        sdk: &aws_config::SdkConfig,
        stream: &StreamArn,
        start: impl Fn(&str) -> Option<StartPosition>,
    ) -> Follower {
        let reader = KinesisSource::new(sdk);
        let mut iterators = Vec::new();
        for shard in reader.list_shards(stream).await.unwrap() {
            let it = match start(&shard.shard_id) {
                Some(at) => Some(
                    reader
                        .shard_iterator(stream, &shard.shard_id, &at)
                        .await
                        .unwrap(),
                ),
                None => None,
            };
            iterators.push((shard.shard_id, it));
        }
        Follower {
            reader,
            stream: stream.clone(),
            iterators,
        }
    }

    /// One page of every shard: the drill records read, with each shard's last sequence
    /// number read (for a checkpoint).
    async fn poll(&mut self) -> (Vec<Processed>, Vec<(String, SequenceNumber)>) {
        let (mut read, mut last) = (Vec::new(), Vec::new());
        for (shard, it) in self.iterators.iter_mut() {
            let Some(current) = it.clone() else { continue };
            let page = self
                .reader
                .get_records(&self.stream, &current, 100)
                .await
                .unwrap();
            *it = page.next_iterator.clone();
            for r in &page.records {
                let text = String::from_utf8_lossy(&r.data).into_owned();
                let parts: Vec<&str> = text.split('|').collect();
                if parts.len() == 3 && parts[2] == "drill" {
                    read.push(Processed {
                        stream: self.stream.to_string(),
                        shard: shard.clone(),
                        seq: r.seq.clone(),
                        key: parts[0].to_owned(),
                        n: parts[1].parse().unwrap(),
                    });
                }
            }
            if let Some(r) = page.records.last() {
                last.push((shard.clone(), r.seq.clone()));
            }
        }
        (read, last)
    }

    fn shards(&self) -> Vec<String> {
        self.iterators.iter().map(|(s, _)| s.clone()).collect()
    }
}

/// A KCL-style worker: takes every lease of `stream` in `table` (creating TRIM_HORIZON ones
/// for shards without), reads each shard from its checkpoint, records what it processed,
/// checkpoints after every page and renews its leases (raising leaseCounter) every second,
/// as a KCL worker does. Stops when `stop` is set, leaving its leases as a crashed worker
/// would.
fn spawn_worker(
    world: &World,
    table: &str,
    stream: StreamArn,
    owner: &str,
    processed: Arc<Mutex<Vec<Processed>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let sdk = world.new_account.clone();
    let (table, owner) = (table.to_owned(), owner.to_owned());
    tokio::spawn(async move {
        let ddb = aws_sdk_dynamodb::Client::new(&sdk);
        let have = leases_of(&ddb, &table).await;
        for shard in KinesisSource::new(&sdk)
            .list_shards(&stream)
            .await
            .unwrap()
            .iter()
            .filter(|s| !have.contains_key(&s.shard_id))
        {
            ddb.put_item()
                .table_name(&table)
                .item("leaseKey", s(&shard.shard_id))
                .item("checkpoint", s("TRIM_HORIZON"))
                .item("checkpointSubSequenceNumber", AttributeValue::N("0".into()))
                .item("leaseCounter", AttributeValue::N("0".into()))
                .item(
                    "ownerSwitchesSinceCheckpoint",
                    AttributeValue::N("0".into()),
                )
                .send()
                .await
                .unwrap();
        }
        let mut follower = Follower::new(&sdk, &stream, |shard| {
            match have.get(shard).map(String::as_str) {
                Some("SHARD_END") => None,
                None | Some("TRIM_HORIZON") => Some(StartPosition::TrimHorizon),
                Some(seq) => Some(StartPosition::AfterSequence(
                    SequenceNumber::parse(seq).unwrap(),
                )),
            }
        })
        .await;
        let renew = |shard: String, checkpoint: Option<SequenceNumber>| {
            let (ddb, table, owner) = (ddb.clone(), table.clone(), owner.clone());
            async move {
                let mut update = ddb
                    .update_item()
                    .table_name(&table)
                    .key("leaseKey", s(&shard))
                    .expression_attribute_values(":one", AttributeValue::N("1".into()))
                    .expression_attribute_values(":owner", s(&owner));
                let mut set =
                    "SET leaseOwner = :owner, leaseCounter = leaseCounter + :one".to_owned();
                if let Some(seq) = checkpoint {
                    set.push_str(", checkpoint = :seq");
                    update = update.expression_attribute_values(":seq", s(seq.as_str()));
                }
                update.update_expression(set).send().await.unwrap();
            }
        };
        let mut renewed = Instant::now() - Duration::from_secs(5);
        while !stop.load(Ordering::SeqCst) {
            let (read, last) = follower.poll().await;
            processed.lock().unwrap().extend(read);
            for (shard, seq) in last {
                renew(shard, Some(seq)).await;
            }
            if renewed.elapsed() > Duration::from_secs(1) {
                for shard in follower.shards() {
                    renew(shard, None).await;
                }
                renewed = Instant::now();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// A Lambda consumer of the new stream as Lambda's event source mapping runs it: while the
/// mapping (on moto) is Enabled, the stream is read from where it left off (the trim horizon
/// the first time) and each record "invokes" the function (is recorded); while Disabled,
/// nothing is read and the place is kept.
fn spawn_mapping(
    world: &World,
    uuid: &str,
    processed: Arc<Mutex<Vec<Processed>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let (sdk, source, uuid) = (
        world.new_account.clone(),
        world.source.clone(),
        uuid.to_owned(),
    );
    tokio::spawn(async move {
        let lambda = aws_sdk_lambda::Client::new(&sdk);
        let mut follower: Option<Follower> = None;
        while !stop.load(Ordering::SeqCst) {
            let state = lambda
                .get_event_source_mapping()
                .uuid(&uuid)
                .send()
                .await
                .unwrap()
                .state()
                .unwrap_or_default()
                .to_owned();
            if state == "Enabled" {
                if follower.is_none() {
                    follower = Some(
                        Follower::new(&sdk, &source, |_| Some(StartPosition::TrimHorizon)).await,
                    );
                }
                let (read, _) = follower.as_mut().unwrap().poll().await;
                processed.lock().unwrap().extend(read);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// A Lambda function and its mapping on the new stream, created disabled (tests/lambda_consumer.py).
fn lambda_consumer(world: &World, function: &str) -> Option<(String, String)> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(root.join(".local/venv/bin/python"))
        .arg(root.join("tests/lambda_consumer.py"))
        .args([world.state_endpoint.as_str(), world.source.name(), function])
        .output()
        .expect("run tests/lambda_consumer.py");
    if out.status.code() == Some(3) {
        support::stack::not_running(&String::from_utf8_lossy(&out.stderr));
        return None;
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["stream"],
        world.source.to_string(),
        "moto's copy of the stream has its ARN"
    );
    Some((
        v["mapping"].as_str().unwrap().to_owned(),
        v["function"].as_str().unwrap().to_owned(),
    ))
}

async fn leases_of(ddb: &aws_sdk_dynamodb::Client, table: &str) -> HashMap<String, String> {
    let out = ddb
        .scan()
        .table_name(table)
        .consistent_read(true)
        .send()
        .await
        .unwrap();
    out.items()
        .iter()
        .filter_map(|i| {
            Some((
                i.get("leaseKey")?.as_s().ok()?.clone(),
                i.get("checkpoint")?.as_s().ok()?.clone(),
            ))
        })
        .collect()
}

/// Reads `stream` whole: per shard, (sequence number, key, number) of each drill record.
async fn drill_records(
    world: &World,
    stream: &StreamArn,
) -> Vec<(String, SequenceNumber, String, u64)> {
    KinesisSource::new(&world.new_account)
        .read_all(stream)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|(shard, r)| {
            let text = String::from_utf8_lossy(&r.data).into_owned();
            let parts: Vec<&str> = text.split('|').collect();
            (parts.len() == 3 && parts[2] == "drill").then(|| {
                (
                    shard,
                    r.seq.clone(),
                    parts[0].to_owned(),
                    parts[1].parse().unwrap(),
                )
            })
        })
        .collect()
}

/// `fanoutctl positions translate` of the application's checkpoints on the old stream,
/// checked against the new stream: every record the answer skips was processed, and every
/// record the application would process again is inside the stated window.
async fn translation_holds(world: &World, migration: &str, table: &str, processed: &[Processed]) {
    let now = leases(world, table).await;
    let mut args = vec![
        "positions".to_owned(),
        "translate".to_owned(),
        "--from".to_owned(),
        world.target.name().to_owned(),
        "--to".to_owned(),
        world.source.name().to_owned(),
        "--output".to_owned(),
        "json".to_owned(),
    ];
    for (shard, (checkpoint, _)) in &now {
        args.push("--position".to_owned());
        args.push(format!("{shard}={checkpoint}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out) = support::fanoutctl(world, &[("FANOUT_MIGRATION", migration)], &args);
    assert_eq!(code, 0, "{out}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    // What the checkpoints say was processed: on each old shard, up to its checkpoint.
    let seen: HashSet<(String, u64)> = processed
        .iter()
        .filter(|p| {
            now.get(&p.shard)
                .and_then(|(c, _)| SequenceNumber::parse(c).ok())
                .is_some_and(|c| p.seq <= c)
        })
        .map(|p| (p.key.clone(), p.n))
        .collect();
    let new = drill_records(world, &world.source).await;
    let (mut skipped, mut again) = (0, 0);
    for r in answer["resume"].as_array().unwrap() {
        let shard = r["shard_id"].as_str().unwrap();
        let after = match r["type"].as_str().unwrap() {
            "AFTER_SEQUENCE_NUMBER" => {
                Some(SequenceNumber::parse(r["sequence_number"].as_str().unwrap()).unwrap())
            }
            "TRIM_HORIZON" => None,
            other => panic!("unexpected {other} in {answer}"),
        };
        let window = answer["may_repeat"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["shard_id"] == shard && w["stream"] == world.source.name())
            .unwrap_or_else(|| panic!("no window for {shard}: {answer}"));
        let bound = |w: &serde_json::Value| w.as_str().map(|t| SequenceNumber::parse(t).unwrap());
        let (w_after, w_through) = (bound(&window["after"]), bound(&window["through"]));
        for (_, seq, key, n) in new.iter().filter(|(s, ..)| s == shard) {
            let skips = after.as_ref().is_some_and(|a| seq <= a);
            let was_seen = seen.contains(&(key.clone(), *n));
            assert!(
                !skips || was_seen,
                "{shard} {seq} ({key} {n}) is skipped but was never processed: {answer}"
            );
            if skips {
                skipped += 1;
            } else if was_seen {
                again += 1;
                assert!(
                    w_after.as_ref().is_none_or(|a| seq > a)
                        && w_through.as_ref().is_none_or(|t| seq <= t),
                    "{shard} {seq} ({key} {n}) is read again outside the stated window: {answer}"
                );
            }
        }
    }
    eprintln!(
        "translation mid-drill: {skipped} records of the new stream skipped (all processed), \
         {again} read again (all inside the stated window)"
    );
    assert!(skipped > 0, "the translation skipped nothing: {answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_kcl_application_follows_the_migration_and_moves_to_the_new_stream_at_commit() {
    let Some(world) = World::create_serialized(Backend::KinesisLocal, 2, 2).await else {
        return;
    };
    let migration = unique("consumers");
    let lease_table = unique("kcl-billing");
    create_lease_table(&world, &lease_table).await;
    let ctl = |args: &[&str]| support::fanoutctl(&world, &[("FANOUT_MIGRATION", &migration)], args);
    let (code, _) = ctl(&[
        "start",
        "--settle",
        "1s",
        "--drain-timeout",
        "30s",
        "--reason",
        "consumers drill",
    ]);
    assert_eq!(code, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let replicator = spawn_replicator(&world, stop.clone());

    // The new environment's Lambda consumer: its mapping on the new stream, registered with
    // the migration; off until producers are on the new streams.
    let Some((mapping, function)) = lambda_consumer(&world, &unique("billing")) else {
        return;
    };
    let (code, out) = ctl(&[
        "consumers",
        "add",
        "--name",
        "billing-lambda",
        "--function",
        &function,
        "--stream",
        world.source.name(),
        "--reason",
        "consumers drill",
    ]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("billing-lambda (mapping") && out.contains("stays Disabled"),
        "{out}"
    );
    let lambda = aws_sdk_lambda::Client::new(&world.new_account);
    let mapping_state = || {
        let (lambda, mapping) = (lambda.clone(), mapping.clone());
        async move {
            lambda
                .get_event_source_mapping()
                .uuid(&mapping)
                .send()
                .await
                .unwrap()
                .state()
                .unwrap_or_default()
                .to_owned()
        }
    };
    let invoked: Arc<Mutex<Vec<Processed>>> = Arc::default();
    let lambda_runner = spawn_mapping(&world, &mapping, invoked.clone(), stop.clone());
    // The test traffic the first cutover's verification needs.
    KinesisSource::new(&world.new_account)
        .put_all(&world.source, &records(30, 5, 20))
        .await
        .unwrap();
    assert_eq!(
        wait_for_target(&world, 30, Duration::from_secs(30)).await,
        30
    );

    // The old environment's application reads the old stream from the start.
    let processed: Arc<Mutex<Vec<Processed>>> = Arc::default();
    let old_app_stop = Arc::new(AtomicBool::new(false));
    let old_app = spawn_worker(
        &world,
        &lease_table,
        world.target.clone(),
        "old-app-1",
        processed.clone(),
        old_app_stop.clone(),
    );
    let (produced, producing, producer) = spawn_producer(&world, &migration);
    let started = now_ms();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let v = verify(&world, &migration, started - 60_000, now_ms() - 1_000);
    assert_eq!(v["totals"]["missing"], 0, "{v}");
    let after_flip = |n: usize| {
        let produced = produced.clone();
        async move {
            let from = now_ms();
            let deadline = Instant::now() + Duration::from_secs(60);
            while produced
                .lock()
                .unwrap()
                .iter()
                .filter(|p| p.at_ms > from)
                .count()
                < n
                && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let (code, plan) = ctl(&["plan", "cutover"]);
    assert_eq!(code, 0, "{plan}");
    assert!(
        plan.contains(&format!(
            "consumer billing-lambda (mapping {mapping}): Disabled → Enabled"
        )) && plan.contains("pass consumers"),
        "{plan}"
    );
    assert_eq!(
        ctl(&["cutover", "--reason", "consumers drill: first cutover"]).0,
        0
    );
    assert_eq!(
        mapping_state().await,
        "Enabled",
        "the cutover switches the new side's consumer on"
    );
    after_flip(40).await;
    // Mid-drill: the application's checkpoints translated to the new stream.
    let snapshot = processed.lock().unwrap().clone();
    translation_holds(&world, &migration, &lease_table, &snapshot).await;
    assert_eq!(
        ctl(&["rollback", "--reason", "consumers drill: it looks wrong"]).0,
        0
    );
    assert_eq!(
        mapping_state().await,
        "Disabled",
        "a rollback switches it off again"
    );
    after_flip(40).await;
    assert_eq!(
        ctl(&["cutover", "--reason", "consumers drill: try again"]).0,
        0
    );
    assert_eq!(mapping_state().await, "Enabled");
    after_flip(40).await;
    assert_eq!(ctl(&["commit", "--reason", "consumers drill: done"]).0, 0);
    assert_eq!(
        mapping_state().await,
        "Enabled",
        "after the commit the new side keeps it"
    );
    let (code, status) = ctl(&["status"]);
    assert_eq!(code, 0, "{status}");
    assert!(
        status.contains("Lambda consumers (new streams)")
            && status.contains(&format!(
                "billing-lambda   mapping {mapping}  {function}  Enabled"
            ))
            && !status.contains("EXPECTED"),
        "{status}"
    );
    let (_, history) = ctl(&["history"]);
    assert_eq!(
        history.matches("consumer billing-lambda enabled").count(),
        2,
        "both cutovers record it: {history}"
    );
    assert_eq!(
        history.matches("consumer billing-lambda disabled").count(),
        1,
        "{history}"
    );
    after_flip(20).await;

    // The old application finishes the old stream (nothing more comes to it after commit).
    let old_count = drill_records(&world, &world.target).await.len();
    let deadline = Instant::now() + Duration::from_secs(30);
    while processed.lock().unwrap().len() < old_count && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Still running: the move refuses and changes nothing.
    let before = leases(&world, &lease_table).await;
    let (old_name, new_name) = (
        world.target.name().to_owned(),
        world.source.name().to_owned(),
    );
    let mv = |extra: &[&str]| {
        let mut args = vec![
            "consumers",
            "move",
            "--kcl-table",
            &lease_table,
            "--from",
            &old_name,
            "--to",
            &new_name,
            "--owner-wait",
            "3s",
        ];
        args.extend_from_slice(extra);
        ctl(&args)
    };
    let (code, out) = mv(&[]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("REFUSED: the application is still running") && out.contains("old-app-1"),
        "{out}"
    );
    let still: BTreeMap<String, String> = leases(&world, &lease_table)
        .await
        .into_iter()
        .map(|(k, (c, _))| (k, c))
        .collect();
    assert_eq!(
        still.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    old_app_stop.store(true, Ordering::SeqCst);
    old_app.await.unwrap();

    let (code, out) = mv(&["--dry-run"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Dry run: nothing changed"), "{out}");
    let (code, out) = mv(&[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("Moved: 2 leases"), "{out}");
    let moved = leases(&world, &lease_table).await;
    // Run again (someone unsure it went through): nothing is done twice.
    let (code, again) = mv(&[]);
    assert_eq!(code, 0, "{again}");
    assert!(again.contains("Already moved"), "{again}");
    assert_eq!(leases(&world, &lease_table).await, moved);
    assert_eq!(moved.len(), 2, "{moved:?}");

    // The application, now on the new stream, carries on from the translated positions.
    let new_app_stop = Arc::new(AtomicBool::new(false));
    let before_move = processed.lock().unwrap().len();
    let new_app = spawn_worker(
        &world,
        &lease_table,
        world.source.clone(),
        "new-app-1",
        processed.clone(),
        new_app_stop.clone(),
    );
    after_flip(40).await;
    producing.store(false, Ordering::SeqCst);
    producer.await.unwrap();
    let produced: Vec<Produced> = produced.lock().unwrap().clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    let wanted: HashSet<(String, u64)> = produced.iter().map(|p| (p.key.clone(), p.n)).collect();
    loop {
        let have: HashSet<(String, u64)> = processed
            .lock()
            .unwrap()
            .iter()
            .map(|p| (p.key.clone(), p.n))
            .collect();
        if wanted.is_subset(&have) || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The Lambda consumer too has read everything producers wrote to the new stream.
    let to_new: HashSet<(String, u64)> = produced
        .iter()
        .filter(|p| p.stream == world.source.to_string())
        .map(|p| (p.key.clone(), p.n))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let have: HashSet<(String, u64)> = invoked
            .lock()
            .unwrap()
            .iter()
            .map(|p| (p.key.clone(), p.n))
            .collect();
        if to_new.is_subset(&have) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    new_app_stop.store(true, Ordering::SeqCst);
    new_app.await.unwrap();
    stop.store(true, Ordering::SeqCst);
    replicator.await.unwrap();
    lambda_runner.await.unwrap();
    let invoked = invoked.lock().unwrap().clone();
    let (missed, duplicates, out_of_order) = judge_consumer(&invoked, &to_new);
    eprintln!(
        "Lambda consumer: {} records written to the new stream, {} processed, missed {missed}, \
         duplicates {duplicates}, out of order {out_of_order}",
        to_new.len(),
        invoked.len()
    );
    assert_eq!((missed, duplicates, out_of_order), (0, 0, 0));
    assert!(
        to_new.len() > 100,
        "{} records on the new stream",
        to_new.len()
    );

    let processed = processed.lock().unwrap().clone();
    let (missed, duplicates, out_of_order) = judge_consumer(&processed, &wanted);
    let on_new = processed[before_move..]
        .iter()
        .filter(|p| p.stream == world.source.to_string())
        .count();
    eprintln!(
        "KCL-style consumer: {} records produced, {} processed ({} on the old stream, {} on the \
         new after the move), missed {missed}, duplicates {duplicates}, out of order {out_of_order}",
        produced.len(),
        processed.len(),
        processed.len() - on_new,
        on_new
    );
    assert_eq!((missed, out_of_order), (0, 0));
    assert!(
        on_new >= 40,
        "the moved application read {on_new} records on the new stream"
    );
    // Moved after it had read the old stream to its end and replication had stopped: the
    // translation resumes right after the last replicated record, so nothing comes twice.
    assert_eq!(duplicates, 0, "processed twice: {duplicates}");
}

/// (missed, duplicates, out of order) of what a consumer processed against what it should
/// have: every wanted record, each once, each key's records first processed in order.
fn judge_consumer(
    processed: &[Processed],
    wanted: &HashSet<(String, u64)>,
) -> (usize, usize, usize) {
    let have: HashSet<(String, u64)> = processed.iter().map(|p| (p.key.clone(), p.n)).collect();
    let missed = wanted.difference(&have).count();
    let duplicates = processed.len() - have.len();
    let mut firsts: HashMap<&str, Vec<u64>> = HashMap::new();
    let mut first_seen: HashSet<(&str, u64)> = HashSet::new();
    for p in processed {
        if first_seen.insert((p.key.as_str(), p.n)) {
            firsts.entry(p.key.as_str()).or_default().push(p.n);
        }
    }
    let out_of_order = firsts
        .values()
        .map(|ns| ns.windows(2).filter(|w| w[1] < w[0]).count())
        .sum();
    (missed, duplicates, out_of_order)
}

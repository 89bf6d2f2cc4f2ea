//! The consumers of the consumers drill: a KCL-style application keeping its positions in a
//! lease table (KCL's schema), and a Lambda consumer run the way Lambda's event source mapping
//! runs it, under a mapping held by moto.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType,
};
use fanout::aws::source::{KinesisSource, StartPosition};
use fanout::model::StreamArn;
use fanout::ports::reader::ShardReader;
use fanout::seq::SequenceNumber;

use crate::support;
use crate::support::stack::World;

/// One record the application processed: from which stream and shard, at which sequence
/// number, and the drill record it held (key, number).
#[derive(Clone, Debug)]
pub(super) struct Processed {
    pub stream: String,
    pub shard: String,
    pub seq: SequenceNumber,
    pub key: String,
    pub n: u64,
}

pub(super) fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_owned())
}

pub(super) async fn create_lease_table(world: &World, name: &str) {
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
pub(super) async fn leases(
    sdk: &aws_config::SdkConfig,
    table: &str,
) -> BTreeMap<String, (String, i64)> {
    let out = aws_sdk_dynamodb::Client::new(sdk)
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
pub(super) struct Follower {
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
pub(super) fn spawn_worker(
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
        let have = leases(&sdk, &table).await;
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
            match have.get(shard).map(|(checkpoint, _)| checkpoint.as_str()) {
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
pub(super) fn spawn_mapping(
    world: &World,
    uuid: &str,
    processed: Arc<Mutex<Vec<Processed>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    spawn_mapping_on(
        world.new_account.clone(),
        world,
        &world.source,
        uuid,
        StartPosition::TrimHorizon,
        processed,
        stop,
    )
}

/// [`spawn_mapping`] for mapping `uuid` in the account `lambda` reaches, on `stream`, starting
/// at `start` (what the mapping was created with: moto keeps no `AT_TIMESTAMP` time, so the
/// test passes it).
pub(super) fn spawn_mapping_on(
    lambda: aws_config::SdkConfig,
    world: &World,
    stream: &StreamArn,
    uuid: &str,
    start: StartPosition,
    processed: Arc<Mutex<Vec<Processed>>>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    let (sdk, stream, uuid) = (world.new_account.clone(), stream.clone(), uuid.to_owned());
    tokio::spawn(async move {
        let lambda = aws_sdk_lambda::Client::new(&lambda);
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
                    follower = Some(Follower::new(&sdk, &stream, |_| Some(start.clone())).await);
                }
                let (read, _) = follower.as_mut().unwrap().poll().await;
                processed.lock().unwrap().extend(read);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// A Lambda function and its mapping on the new stream, created disabled (tests/lambda_consumer.py).
pub(super) fn lambda_consumer(world: &World, function: &str) -> Option<(String, String)> {
    let v = lambda_function(world, &world.source, function, &[])?;
    Some((
        v["mapping"].as_str().unwrap().to_owned(),
        v["function"].as_str().unwrap().to_owned(),
    ))
}

/// tests/lambda_consumer.py for a function reading `stream`, with its `extra` options
/// (`--role` for the old account, `--enabled`, `--no-mapping`); its JSON answer.
pub(super) fn lambda_function(
    world: &World,
    stream: &StreamArn,
    function: &str,
    extra: &[&str],
) -> Option<serde_json::Value> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::process::Command::new(root.join(".local/venv/bin/python"))
        .arg(root.join("tests/lambda_consumer.py"))
        .args([world.state_endpoint.as_str(), stream.name(), function])
        .args(extra)
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
        stream.to_string(),
        "moto's copy of the stream has its ARN"
    );
    Some(v)
}

/// Reads `stream` whole: per shard, (sequence number, key, number) of each drill record.
pub(super) async fn drill_records(
    world: &World,
    stream: &StreamArn,
) -> Vec<(String, SequenceNumber, String, u64)> {
    drill_records_arrived(world, stream)
        .await
        .into_iter()
        .map(|(r, _)| r)
        .collect()
}

/// A drill record on a stream: (shard, sequence number, key, number).
pub(super) type DrillRecord = (String, SequenceNumber, String, u64);

/// [`drill_records`], each with its arrival time in the stream.
pub(super) async fn drill_records_arrived(
    world: &World,
    stream: &StreamArn,
) -> Vec<(DrillRecord, Option<i64>)> {
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
                    (
                        shard,
                        r.seq.clone(),
                        parts[0].to_owned(),
                        parts[1].parse().unwrap(),
                    ),
                    r.arrival_ms,
                )
            })
        })
        .collect()
}

/// `fanoutctl positions translate` of a consumer of the old stream at `positions` (shard,
/// position) to the new stream; its JSON answer.
pub(super) fn translate_to_new<'a>(
    world: &World,
    migration: &str,
    positions: impl IntoIterator<Item = (&'a String, String)>,
) -> serde_json::Value {
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
    for (shard, at) in positions {
        args.push("--position".to_owned());
        args.push(format!("{shard}={at}"));
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, out) = support::fanoutctl(world, &[("FANOUT_MIGRATION", migration)], &args);
    assert_eq!(code, 0, "{out}");
    serde_json::from_str(&out).unwrap()
}

/// (missed, duplicates, out of order) of what a consumer processed against what it should
/// have: every wanted record, each once, each key's records first processed in order.
pub(super) fn judge_consumer(
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

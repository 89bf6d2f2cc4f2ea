//! A multi-stream KCL application (lease keys `<account>:<stream>:<creation epoch>:<shard>`,
//! KCL 3.x `entityType` tags) moved from the old stream to the new one on the emulators: the
//! new leases carry the new stream's identifier, the application's lease of a stream that is
//! not moving is left as it was, and nothing the old checkpoints had not passed is skipped.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;

use aws_sdk_dynamodb::types::AttributeValue;
use fanout::aws::positions::stream_created_s;
use fanout::aws::source::KinesisSource;

use super::super::drill::fanoutctl;
use super::super::*;
use super::apps::{create_lease_table, drill_records, leases, s};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_multi_stream_kcl_application_moves_with_the_new_streams_identifier() {
    let Some(world) = World::create_serialized(Backend::KinesisLocal, 2, 2).await else {
        return;
    };
    let migration = unique("multi");
    let table = unique("kcl-multi");
    create_lease_table(&world, &table).await;
    let ctl = |args: &[&str]| fanoutctl(&world, &migration, args);
    assert_eq!(ctl(&["start", "--reason", "multi-stream move"]).0, 0);
    let stop = Arc::new(AtomicBool::new(false));
    let replicator = spawn_replicator(&world, stop.clone());
    let data: Vec<(String, Vec<u8>)> = (0..80u64)
        .map(|i| {
            let key = format!("user-{}", i % 8);
            (key.clone(), format!("{key}|{}|drill", i / 8).into_bytes())
        })
        .collect();
    // In rounds, so that the position map has pairs along the way (one per batch at most
    // every 500 ms here).
    for (round, chunk) in data.chunks(10).enumerate() {
        KinesisSource::new(&world.new_account)
            .put_all(&world.source, chunk)
            .await
            .unwrap();
        let n = (round + 1) * 10;
        assert_eq!(wait_for_target(&world, n, Duration::from_secs(30)).await, n);
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    stop.store(true, Ordering::SeqCst);
    replicator.await.unwrap();

    // The application (stopped) had got half-way through each shard of the old stream; it
    // also reads another stream, which stays where it is.
    let old_records = drill_records(&world, &world.target).await;
    let ddb = aws_sdk_dynamodb::Client::new(&world.new_account);
    let old_id = format!(
        "{}:{}:{}",
        world.target.account(),
        world.target.name(),
        stream_created_s(&world.new_account, &world.target)
            .await
            .unwrap()
    );
    let mut checkpoints: BTreeMap<String, String> = BTreeMap::new();
    for shard in old_records
        .iter()
        .map(|r| r.0.clone())
        .collect::<HashSet<_>>()
    {
        let on: Vec<_> = old_records.iter().filter(|r| r.0 == shard).collect();
        let at = on[on.len() / 2].1.to_string();
        checkpoints.insert(shard.clone(), at.clone());
        put_lease(
            &ddb,
            &table,
            &format!("{old_id}:{shard}"),
            &old_id,
            &shard,
            &at,
        )
        .await;
    }
    let other = "123456789012:audit-events:1700000000";
    put_lease(
        &ddb,
        &table,
        &format!("{other}:shardId-000000000000"),
        other,
        "shardId-000000000000",
        "4959",
    )
    .await;

    let (code, out) = ctl(&[
        "consumers",
        "move",
        "--kcl-table",
        &table,
        "--from",
        world.target.name(),
        "--to",
        world.source.name(),
        "--owner-wait",
        "1s",
        "--reason",
        "multi-stream move",
    ]);
    assert_eq!(code, 0, "{out}");
    let new_id = format!(
        "{}:{}:{}",
        world.source.account(),
        world.source.name(),
        stream_created_s(&world.new_account, &world.source)
            .await
            .unwrap()
    );
    let after = leases(&world.new_account, &table).await;
    let moved: BTreeMap<String, String> = after
        .iter()
        .filter_map(|(k, (c, _))| {
            Some((k.strip_prefix(&format!("{new_id}:"))?.to_owned(), c.clone()))
        })
        .collect();
    assert_eq!(
        moved.len(),
        2,
        "a lease per shard of the new stream: {after:?}"
    );
    assert!(
        !after.keys().any(|k| k.starts_with(&old_id)),
        "the old stream's leases are dropped: {after:?}"
    );
    assert_eq!(
        after.get(&format!("{other}:shardId-000000000000")),
        Some(&("4959".to_owned(), 0)),
        "the other stream's lease is untouched"
    );
    // Each new lease names its stream the way KCL does.
    for key in after.keys().filter(|k| k.starts_with(&new_id)) {
        let item = ddb
            .get_item()
            .table_name(&table)
            .key("leaseKey", s(key))
            .send()
            .await
            .unwrap();
        let item = item.item().unwrap();
        assert_eq!(item.get("streamName"), Some(&s(&new_id)), "{key}");
        assert_eq!(item.get("entityType"), Some(&s("LEASE")), "{key}");
    }
    // Nothing unprocessed is skipped: every record past an old checkpoint is on the new
    // stream past the new checkpoint of its shard.
    let unseen: HashSet<(String, u64)> = old_records
        .iter()
        .filter(|r| r.1 > fanout::seq::SequenceNumber::parse(&checkpoints[&r.0]).unwrap())
        .map(|r| (r.2.clone(), r.3))
        .collect();
    let after_new: HashSet<(String, u64)> = drill_records(&world, &world.source)
        .await
        .into_iter()
        .filter(|r| match moved[&r.0].as_str() {
            "TRIM_HORIZON" => true,
            "SHARD_END" => false,
            c => r.1 > fanout::seq::SequenceNumber::parse(c).unwrap(),
        })
        .map(|r| (r.2, r.3))
        .collect();
    let skipped: Vec<_> = unseen.difference(&after_new).collect();
    assert!(
        skipped.is_empty(),
        "skipped though not processed: {skipped:?}"
    );
    eprintln!(
        "multi-stream move: {} records not yet processed, {} to read on the new stream",
        unseen.len(),
        after_new.len()
    );
    assert!(after_new.len() < 80, "the move skips what was processed");
}

/// A KCL 3.x multi-stream lease, held by nobody.
async fn put_lease(
    ddb: &aws_sdk_dynamodb::Client,
    table: &str,
    key: &str,
    stream: &str,
    shard: &str,
    checkpoint: &str,
) {
    ddb.put_item()
        .table_name(table)
        .item("leaseKey", s(key))
        .item("checkpoint", s(checkpoint))
        .item("checkpointSubSequenceNumber", AttributeValue::N("0".into()))
        .item("leaseCounter", AttributeValue::N("0".into()))
        .item("leaseOwner", s(""))
        .item("streamName", s(stream))
        .item("shardId", s(shard))
        .item("entityType", s("LEASE"))
        .send()
        .await
        .unwrap();
}

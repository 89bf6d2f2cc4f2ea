//! Who reads which shard: a lost lease cannot move the position, resharding while records
//! flow, SIGKILL at random moments, and two runners on one route handing over on SIGTERM.

use std::collections::HashMap;

use fanout::lease::Heartbeat;
use fanout::seq::SequenceNumber;

use super::*;

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

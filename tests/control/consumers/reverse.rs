//! `fanoutctl positions translate` over a forward and a reverse route at once: in the drill
//! with reverse replication, after the rollback (producers on the old stream, its originals
//! copied to the new stream), a consumer of the old stream part-way through is translated to
//! the new stream. The old stream holds the forward route's copies and the producers'
//! originals; the answer combines both routes' positions.

use std::collections::HashSet;

use fanout::seq::SequenceNumber;

use super::super::*;
use super::apps::{drill_records_arrived, translate_to_new, DrillRecord};

/// Checks the translation of a consumer that has read two thirds of each shard of the old
/// stream: every record it has not seen that the new stream holds is at or after the answer
/// on the new stream's shards. Returns (not seen and on the new stream, to read there, of
/// which seen already).
pub(crate) async fn translation_holds_both_ways(
    world: &World,
    migration: &str,
) -> (usize, usize, usize) {
    // The reverse replicator copies the producers' latest originals a moment later: until it
    // has, there may be nothing unseen on the new stream to check.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let found = translation_once(world, migration).await;
        if found.0 > 0 || Instant::now() > deadline {
            assert!(found.0 > 0, "the check had nothing to check");
            return found;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// One translation and its check (see [`translation_holds_both_ways`]).
async fn translation_once(world: &World, migration: &str) -> (usize, usize, usize) {
    let drill = |recs: Vec<(DrillRecord, Option<i64>)>| {
        recs.into_iter()
            .map(|((shard, seq, key, n), arrival)| (shard, seq, arrival, (key, n)))
            .collect::<Vec<_>>()
    };
    let old = drill(drill_records_arrived(world, &world.target).await);
    let mut positions: Vec<(String, SequenceNumber)> = Vec::new();
    let shards: HashSet<&String> = old.iter().map(|r| &r.0).collect();
    for shard in shards {
        let on: Vec<_> = old.iter().filter(|r| &r.0 == shard).collect();
        positions.push((shard.clone(), on[on.len() * 2 / 3].1.clone()));
    }
    let seen_through =
        |shard: &str, seq: &SequenceNumber| positions.iter().any(|(s, p)| s == shard && seq <= p);
    let seen: HashSet<(String, u64)> = old
        .iter()
        .filter(|r| seen_through(&r.0, &r.1))
        .map(|r| r.3.clone())
        .collect();
    let unseen: HashSet<(String, u64)> = old
        .iter()
        .filter(|r| !seen_through(&r.0, &r.1))
        .map(|r| r.3.clone())
        .filter(|k| !seen.contains(k))
        .collect();

    let answer = translate_to_new(
        world,
        migration,
        positions
            .iter()
            .map(|(shard, seq)| (shard, seq.to_string())),
    );
    assert_eq!(
        answer["routes"].as_array().map(Vec::len),
        Some(2),
        "the forward and the reverse route: {answer}"
    );
    let new = drill(drill_records_arrived(world, &world.source).await);
    let read_from = |shard: &str, seq: &SequenceNumber, arrival: Option<i64>| {
        let r = answer["resume"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["shard_id"] == shard)
            .unwrap_or_else(|| panic!("no answer for {shard}: {answer}"));
        match r["type"].as_str().unwrap() {
            "TRIM_HORIZON" => true,
            "SHARD_END" => false,
            "AFTER_SEQUENCE_NUMBER" => {
                seq > &SequenceNumber::parse(r["sequence_number"].as_str().unwrap()).unwrap()
            }
            "AT_TIMESTAMP" => {
                let at = chrono::DateTime::parse_from_rfc3339(r["timestamp"].as_str().unwrap())
                    .unwrap()
                    .timestamp_millis();
                arrival.expect("kinesis-local gives arrival times") >= at
            }
            other => panic!("unknown resume type {other}: {answer}"),
        }
    };
    let on_new: HashSet<(String, u64)> = new.iter().map(|r| r.3.clone()).collect();
    let will_read: Vec<(String, u64)> = new
        .iter()
        .filter(|r| read_from(&r.0, &r.1, r.2))
        .map(|r| r.3.clone())
        .collect();
    let read_set: HashSet<(String, u64)> = will_read.iter().cloned().collect();
    let missed: Vec<_> = unseen
        .iter()
        .filter(|k| on_new.contains(*k) && !read_set.contains(*k))
        .collect();
    assert!(
        missed.is_empty(),
        "not seen on the old stream, on the new stream, but before the translated position: \
         {missed:?}\n{answer}"
    );
    let unseen_on_new = unseen.iter().filter(|k| on_new.contains(*k)).count();
    let again = will_read.iter().filter(|k| seen.contains(*k)).count();
    (unseen_on_new, will_read.len(), again)
}

//! After a run: read the target stream back (every shard from TRIM_HORIZON, bounded in calls
//! and time) and compare it with the source records: lost, reordered, duplicated.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_kinesis::types::ShardIteratorType;
use fanout::model::SourceRecord;
use serde_json::{json, Value};
use tokio::time::Instant;

use crate::shim::{key_hash, ShardMap};

/// One target shard as read back: its hash range and its records' (partition key, data).
pub struct ShardRecords {
    pub range: (u128, u128),
    pub records: Vec<(String, Vec<u8>)>,
}

/// The target's open shards and their hash ranges (for shard loads and placement checks).
pub async fn shard_map(client: &aws_sdk_kinesis::Client, stream: &str) -> Result<ShardMap, String> {
    let out = client
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .map_err(|e| format!("ListShards {stream}: {e:?}"))?;
    let mut ranges = Vec::new();
    for s in out.shards() {
        if s.sequence_number_range()
            .and_then(|r| r.ending_sequence_number())
            .is_some()
        {
            continue;
        }
        let range = s
            .hash_key_range()
            .ok_or("a shard without a hash key range")?;
        let parse = |t: &str| {
            t.parse::<u128>()
                .map_err(|e| format!("hash key {t:?}: {e}"))
        };
        ranges.push((
            parse(range.starting_hash_key())?,
            parse(range.ending_hash_key())?,
            s.shard_id().to_owned(),
        ));
    }
    Ok(ShardMap::new(ranges))
}

/// Every record of every open shard of `stream`, in each shard's order. Bounded: at most
/// `max_calls` GetRecords calls in all, and `time_limit`.
pub async fn read_target(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    time_limit: Duration,
) -> Result<Vec<ShardRecords>, String> {
    const MAX_CALLS: usize = 5_000;
    let started = Instant::now();
    let map = shard_map(client, stream).await?;
    let mut shards = Vec::with_capacity(map.len());
    let mut calls = 0;
    for i in 0..map.len() {
        let id = map.id(i).to_owned();
        let mut iterator = client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(&id)
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .map_err(|e| format!("GetShardIterator {id}: {e:?}"))?
            .shard_iterator
            .ok_or("no shard iterator")?;
        let mut records = Vec::new();
        let mut empty_in_a_row = 0;
        loop {
            calls += 1;
            if calls > MAX_CALLS || started.elapsed() > time_limit {
                return Err(format!(
                    "reading {stream} back took more than {MAX_CALLS} GetRecords calls or {time_limit:?}"
                ));
            }
            let out = client
                .get_records()
                .shard_iterator(&iterator)
                .limit(10_000)
                .send()
                .await
                .map_err(|e| format!("GetRecords {id}: {e:?}"))?;
            let got = out.records().len();
            for r in out.records() {
                records.push((
                    r.partition_key().unwrap_or_default().to_owned(),
                    r.data().as_ref().to_vec(),
                ));
            }
            empty_in_a_row = if got == 0 { empty_in_a_row + 1 } else { 0 };
            let caught_up = out.millis_behind_latest() == Some(0) && got == 0;
            match out.next_shard_iterator {
                Some(next) if !caught_up && empty_in_a_row < 3 => iterator = next,
                _ => break,
            }
        }
        shards.push(ShardRecords {
            range: map.range(i),
            records,
        });
    }
    Ok(shards)
}

/// Which copy of a record the order promise is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Promise {
    /// strict, aggregated: per key, the first copies arrive in source order.
    FirstArrival,
    /// runs: per key, the last copies arrive in source order.
    LastArrival,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// User records read back (after deaggregation).
    pub read: usize,
    /// Kinesis records that were KPL aggregated records, and the user records in them.
    pub aggregated_records: usize,
    pub sub_records: usize,
    /// Aggregated records that start like one but could not be taken apart.
    pub undecodable: usize,
    /// Sub-records on a shard whose hash range excludes their key (the KCL drops them).
    pub misplaced: usize,
    /// Source records found at least once.
    pub found: usize,
    /// Handled source records not found.
    pub lost: usize,
    /// Records out of per-key order (per the promise). With the last-arrival promise (runs),
    /// only handled records count: the next invocation sends the others again.
    pub reordered: usize,
    /// Up to three of them, for the log.
    pub reorder_examples: Vec<String>,
    /// Copies beyond the first.
    pub duplicates: usize,
    /// Source records past the handled ones that were written anyway.
    pub written_past_handled: usize,
    /// Records in the target that are not source records (the warm-up record).
    pub foreign: usize,
}

impl Outcome {
    pub fn to_json(&self) -> Value {
        json!({
            "read": self.read,
            "aggregated_records": self.aggregated_records,
            "sub_records": self.sub_records,
            "undecodable": self.undecodable,
            "misplaced": self.misplaced,
            "found": self.found,
            "lost": self.lost,
            "reordered": self.reordered,
            "reorder_examples": self.reorder_examples,
            "duplicates": self.duplicates,
            "written_past_handled": self.written_past_handled,
            "foreign": self.foreign,
        })
    }
}

/// Compares what was read back with `sources` (every source record of the batches run, in
/// sequence order), of which the first `handled` are the ones the handler says it handled.
pub fn check(
    sources: &[&SourceRecord],
    handled: usize,
    shards: &[ShardRecords],
    promise: Promise,
) -> Outcome {
    let mut out = Outcome::default();
    // Record data is random, so it identifies a source record; the key must match too.
    let index: HashMap<&[u8], usize> = sources
        .iter()
        .enumerate()
        .map(|(i, r)| (r.data.as_slice(), i))
        .collect();
    let mut copies = vec![0u32; sources.len()];
    // Per key, source indices in arrival order (shard by shard: a key lives on one shard).
    let mut arrivals: HashMap<&str, Vec<usize>> = HashMap::new();
    let mut arrive = |key: &str, data: &[u8], out: &mut Outcome| {
        out.read += 1;
        match index.get(data) {
            Some(&i) if sources[i].partition_key.as_deref() == Some(key) => {
                copies[i] += 1;
                let key = sources[i].partition_key.as_deref().unwrap_or_default();
                arrivals.entry(key).or_default().push(i);
            }
            _ => out.foreign += 1,
        }
    };
    for shard in shards {
        for (key, data) in &shard.records {
            if !fanout::kpl::is_aggregated(data) {
                if data.starts_with(&fanout::kpl::MAGIC) {
                    // Starts like an aggregated record but fails its checksum: a plain record
                    // to every consumer. Counted, so a broken aggregator shows.
                    out.undecodable += 1;
                }
                arrive(key, data, &mut out);
                continue;
            }
            match fanout::kpl::deaggregate(data) {
                Ok(subs) => {
                    out.aggregated_records += 1;
                    out.sub_records += subs.len();
                    for sub in subs {
                        let hash = match &sub.explicit_hash_key {
                            Some(ehk) => ehk.parse::<u128>().ok(),
                            None => Some(key_hash(&sub.partition_key)),
                        };
                        if !hash.is_some_and(|h| shard.range.0 <= h && h <= shard.range.1) {
                            out.misplaced += 1;
                        }
                        arrive(&sub.partition_key, &sub.data, &mut out);
                    }
                }
                Err(_) => {
                    out.undecodable += 1;
                    arrive(key, data, &mut out);
                }
            }
        }
    }
    for (i, &n) in copies.iter().enumerate() {
        if n > 0 {
            out.found += 1;
            out.duplicates += n as usize - 1;
            if i >= handled {
                out.written_past_handled += 1;
            }
        } else if i < handled {
            out.lost += 1;
        }
    }
    for (key, list) in &arrivals {
        let list: Vec<usize> = match promise {
            Promise::FirstArrival => list.clone(),
            // A record at or past the first unhandled one is sent again by the next invocation,
            // whose copy will be its last: only the handled records' last copies are final.
            Promise::LastArrival => list.iter().copied().filter(|&i| i < handled).collect(),
        };
        let (bad, example) = out_of_order(&list, promise);
        out.reordered += bad;
        if let Some((record, after)) = example {
            if out.reorder_examples.len() < 3 {
                out.reorder_examples.push(format!(
                    "key {key}: record {record} (seq {}) after record {after} (seq {})",
                    sources[record].seq, sources[after].seq
                ));
            }
        }
    }
    out
}

/// How many records of one key's arrivals break the promise, and the first such record with
/// the record it should have come before (source indices).
fn out_of_order(arrivals: &[usize], promise: Promise) -> (usize, Option<(usize, usize)>) {
    let mut seen = std::collections::HashSet::new();
    let mut bad = 0;
    let mut example = None;
    match promise {
        Promise::FirstArrival => {
            let mut max: Option<usize> = None;
            for &i in arrivals {
                if seen.insert(i) {
                    match max {
                        Some(m) if i < m => {
                            bad += 1;
                            example.get_or_insert((i, m));
                        }
                        _ => max = Some(i),
                    }
                }
            }
        }
        Promise::LastArrival => {
            let mut min: Option<usize> = None;
            for &i in arrivals.iter().rev() {
                if seen.insert(i) {
                    match min {
                        // i's last copy arrived before m's, but i comes after m in the source.
                        Some(m) if i > m => {
                            bad += 1;
                            example.get_or_insert((m, i));
                        }
                        _ => min = Some(i),
                    }
                }
            }
        }
    }
    (bad, example)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fanout::seq::SequenceNumber;

    fn rec(i: usize, key: &str) -> SourceRecord {
        SourceRecord {
            seq: SequenceNumber::parse(&format!("{}", 1000 + i)).unwrap(),
            partition_key: Some(key.to_owned()),
            data: format!("data-{i}").into_bytes(),
            arrival_ms: None,
            defect: None,
        }
    }

    fn shard(records: &[(&str, usize)]) -> ShardRecords {
        ShardRecords {
            range: (0, u128::MAX),
            records: records
                .iter()
                .map(|(k, i)| ((*k).to_owned(), format!("data-{i}").into_bytes()))
                .collect(),
        }
    }

    #[test]
    fn lost_reordered_and_duplicates_per_promise() {
        let sources: Vec<SourceRecord> = (0..6)
            .map(|i| rec(i, if i % 2 == 0 { "a" } else { "b" }))
            .collect();
        let refs: Vec<&SourceRecord> = sources.iter().collect();
        // a: 0 2 4, b: 1 3 5. Read: a 0, a 2, a 0 (dup), a 4; b 3, b 1, b 3 (repair); 5 missing.
        let shards = [
            shard(&[("a", 0), ("a", 2), ("a", 0), ("a", 4), ("warm", 99)]),
            shard(&[("b", 3), ("b", 1), ("b", 3)]),
        ];
        let first = check(&refs, 5, &shards, Promise::FirstArrival);
        assert_eq!(first.lost, 0, "record 5 was not handled");
        assert_eq!(first.found, 5);
        assert_eq!(first.duplicates, 2);
        assert_eq!(first.foreign, 1);
        assert_eq!(first.reordered, 1, "b: 3 arrived before 1");
        let last = check(&refs, 6, &shards, Promise::LastArrival);
        assert_eq!(last.lost, 1);
        assert_eq!(last.reordered, 1, "a: last copies 2, 0, 4");
        let shards = [shard(&[("b", 1), ("b", 3), ("a", 0), ("a", 2)])];
        assert_eq!(
            check(&refs, 4, &shards, Promise::LastArrival),
            Outcome {
                read: 4,
                found: 4,
                ..Outcome::default()
            }
        );
    }

    #[test]
    fn aggregated_records_are_taken_apart_and_placement_checked() {
        let sources: Vec<SourceRecord> = (0..3).map(|i| rec(i, "k")).collect();
        let refs: Vec<&SourceRecord> = sources.iter().collect();
        let mut agg = fanout::kpl::Aggregator::new();
        for r in &sources {
            agg.add("k", None, &r.data);
        }
        let data = agg.finish();
        let h = key_hash("k");
        let on = |range| ShardRecords {
            range,
            records: vec![("k".to_owned(), data.clone())],
        };
        let good = check(&refs, 3, &[on((h, h))], Promise::FirstArrival);
        assert_eq!(
            (
                good.aggregated_records,
                good.sub_records,
                good.found,
                good.misplaced
            ),
            (1, 3, 3, 0)
        );
        let wrong = check(&refs, 3, &[on((h + 1, u128::MAX))], Promise::FirstArrival);
        assert_eq!(wrong.misplaced, 3);
    }
}

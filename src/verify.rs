//! Comparing a source stream with its replica: per partition key, records missing from the
//! target, duplicated, out of order (first arrivals compared with source order), and records
//! in the target that the source does not have. Records are matched by a digest of
//! (partition key, data), so payloads need not be kept twice.
//!
//! Records with identical key and data in the source are indistinguishable here; test data
//! and the demo make every payload unique.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

use crate::model::SourceRecord;
use crate::seq::SequenceNumber;

/// What the comparison found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    pub source_records: usize,
    pub target_records: usize,
    /// Source records absent from the target and not dead-lettered.
    pub missing: Vec<SequenceNumber>,
    /// Source records absent from the target because they were dead-lettered.
    pub dead_lettered: usize,
    /// Target records beyond the first copy of a source record.
    pub duplicates: usize,
    /// First arrivals that came after a later record of the same key.
    pub out_of_order: usize,
    /// Target records matching no source record.
    pub extra: usize,
    pub keys: usize,
}

impl Comparison {
    /// Nothing lost, nothing reordered, nothing foreign (duplicates are allowed: at-least-once).
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty() && self.out_of_order == 0 && self.extra == 0
    }
}

fn digest(key: &str, data: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    data.hash(&mut h);
    h.finish()
}

/// Compares. `source` and `target` are (shard id, record) pairs with each shard's records in
/// stream order; `dead_lettered` holds the source sequence numbers found in the dead-letter store.
pub fn compare(
    source: &[(String, SourceRecord)],
    target: &[(String, SourceRecord)],
    dead_lettered: &HashSet<SequenceNumber>,
) -> Comparison {
    // Position of each source record within its key, in source order.
    let mut position: HashMap<u64, (usize, usize)> = HashMap::with_capacity(source.len());
    let mut key_ids: HashMap<&str, usize> = HashMap::new();
    let mut per_key_count: Vec<usize> = Vec::new();
    for (i, (_, r)) in source.iter().enumerate() {
        let key = r.partition_key.as_deref().unwrap_or_default();
        let next = key_ids.len();
        let k = *key_ids.entry(key).or_insert(next);
        if k == per_key_count.len() {
            per_key_count.push(0);
        }
        position.insert(digest(key, &r.data), (i, per_key_count[k]));
        per_key_count[k] += 1;
    }
    let mut seen: HashSet<usize> = HashSet::with_capacity(source.len());
    let mut highest_per_key: HashMap<&str, usize> = HashMap::new();
    let mut c = Comparison {
        source_records: source.len(),
        target_records: target.len(),
        keys: key_ids.len(),
        ..Comparison::default()
    };
    for (_, r) in target {
        let key = r.partition_key.as_deref().unwrap_or_default();
        match position.get(&digest(key, &r.data)) {
            None => c.extra += 1,
            Some(&(i, pos)) => {
                if !seen.insert(i) {
                    c.duplicates += 1;
                    continue;
                }
                let hi = highest_per_key.entry(key).or_insert(pos);
                if pos < *hi {
                    c.out_of_order += 1;
                } else {
                    *hi = pos;
                }
            }
        }
    }
    for (i, (_, r)) in source.iter().enumerate() {
        if !seen.contains(&i) {
            if dead_lettered.contains(&r.seq) {
                c.dead_lettered += 1;
            } else {
                c.missing.push(r.seq.clone());
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, key: &str, data: &str) -> (String, SourceRecord) {
        (
            "shardId-000000000000".into(),
            SourceRecord {
                seq: SequenceNumber::parse(&seq.to_string()).unwrap(),
                partition_key: Some(key.into()),
                data: data.as_bytes().to_vec(),
                arrival_ms: None,
                defect: None,
            },
        )
    }

    #[test]
    fn catches_drops_swaps_duplicates_and_extras_and_passes_a_true_copy() {
        let src = vec![
            rec(1, "a", "a1"),
            rec(2, "b", "b1"),
            rec(3, "a", "a2"),
            rec(4, "a", "a3"),
        ];
        let none = HashSet::new();
        let copy = vec![
            rec(9, "b", "b1"),
            rec(10, "a", "a1"),
            rec(11, "a", "a2"),
            rec(12, "a", "a3"),
        ];
        assert!(compare(&src, &copy, &none).is_clean());

        let dropped = vec![rec(9, "a", "a1"), rec(10, "a", "a2"), rec(11, "a", "a3")];
        assert_eq!(compare(&src, &dropped, &none).missing.len(), 1);
        let dl: HashSet<SequenceNumber> = [SequenceNumber::parse("2").unwrap()].into();
        assert!(compare(&src, &dropped, &dl).is_clean());

        let swapped = vec![
            rec(9, "b", "b1"),
            rec(10, "a", "a2"),
            rec(11, "a", "a1"),
            rec(12, "a", "a3"),
        ];
        assert_eq!(compare(&src, &swapped, &none).out_of_order, 1);

        let duplicated = vec![
            rec(9, "b", "b1"),
            rec(10, "a", "a1"),
            rec(11, "a", "a1"),
            rec(12, "a", "a2"),
            rec(13, "a", "a3"),
        ];
        let c = compare(&src, &duplicated, &none);
        assert_eq!((c.duplicates, c.is_clean()), (1, true));

        let extra = vec![
            rec(9, "b", "b1"),
            rec(10, "a", "a1"),
            rec(11, "a", "a2"),
            rec(12, "a", "a3"),
            rec(13, "c", "zz"),
        ];
        assert_eq!(compare(&src, &extra, &none).extra, 1);
    }
}

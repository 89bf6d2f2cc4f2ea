//! Pure planning of the write path: how records are packed into PutRecords requests, which
//! records can never be written, and how long to back off. Which records may be sent now is
//! `replicate::schedule`'s.

use std::time::Duration;

use crate::model::{RecordDefect, SourceRecord};

/// Kinesis's limit on partition-key length, in Unicode scalar values.
pub const MAX_PARTITION_KEY_CHARS: usize = 256;

/// Bytes a record counts for against request and record limits: data plus partition key.
pub fn record_bytes(record: &SourceRecord) -> usize {
    record.data.len() + record.partition_key.as_ref().map_or(0, String::len)
}

/// Why a record is dead-lettered before any write: (error code, reason with the fix).
pub fn permanent_defect(
    record: &SourceRecord,
    max_record_bytes: usize,
) -> Option<(&'static str, String)> {
    if let Some(RecordDefect::Malformed(why)) = &record.defect {
        return Some((
            "MalformedRecord",
            format!("the event record could not be read ({why}); its raw JSON is kept as the data"),
        ));
    }
    let key = match record.partition_key.as_deref() {
        None | Some("") => {
            return Some((
                "MissingPartitionKey",
                "the record has no partition key; Kinesis needs one to write it. Redrive it with a key once the producer is fixed".to_owned(),
            ))
        }
        Some(k) => k,
    };
    if key.chars().count() > MAX_PARTITION_KEY_CHARS {
        return Some((
            "PartitionKeyTooLong",
            format!(
                "the partition key has {} characters; Kinesis accepts at most {MAX_PARTITION_KEY_CHARS}",
                key.chars().count()
            ),
        ));
    }
    let size = record_bytes(record);
    if size > max_record_bytes {
        return Some((
            "RecordTooLarge",
            format!(
                "the record is {size} bytes (data + partition key) and the target accepts at most {max_record_bytes}; \
                 raise the target stream's record size limit or shrink the record, then redrive it"
            ),
        ));
    }
    None
}

/// Packs `(index, bytes)` items, in the given order, into requests of at most `max_entries`
/// entries and `max_bytes` bytes. An item larger than `max_bytes` gets a request of its own
/// (callers dead-letter such records before planning).
pub fn pack_requests(
    items: &[(usize, usize)],
    max_entries: usize,
    max_bytes: usize,
) -> Vec<Vec<usize>> {
    let mut requests = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    let mut bytes = 0usize;
    for &(index, size) in items {
        if !current.is_empty() && (current.len() == max_entries || bytes + size > max_bytes) {
            requests.push(std::mem::take(&mut current));
            bytes = 0;
        }
        current.push(index);
        bytes += size;
    }
    if !current.is_empty() {
        requests.push(current);
    }
    requests
}

/// Exponential backoff with full jitter: a uniform draw in [0, min(max, base·2^attempt)].
/// `unit` is a uniform random number in [0, 1).
pub fn backoff(attempt: u32, base: Duration, max: Duration, unit: f64) -> Duration {
    let cap = base
        .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .min(max);
    cap.mul_f64(unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seq::SequenceNumber;

    fn rec(key: Option<&str>, len: usize) -> SourceRecord {
        SourceRecord {
            seq: SequenceNumber::parse("1").unwrap(),
            partition_key: key.map(str::to_owned),
            data: vec![b'x'; len],
            arrival_ms: None,
            defect: None,
        }
    }

    #[test]
    fn packing_respects_entry_and_byte_limits_in_order() {
        type Case = (Vec<(usize, usize)>, usize, usize, Vec<Vec<usize>>);
        let cases: Vec<Case> = vec![
            (vec![], 500, 100, vec![]),
            (
                vec![(0, 10), (1, 10), (2, 10)],
                2,
                100,
                vec![vec![0, 1], vec![2]],
            ),
            (
                vec![(0, 60), (1, 40), (2, 1)],
                500,
                100,
                vec![vec![0, 1], vec![2]],
            ),
            (vec![(0, 60), (1, 41)], 500, 100, vec![vec![0], vec![1]]),
            (vec![(0, 150), (1, 1)], 500, 100, vec![vec![0], vec![1]]),
            (vec![(3, 1), (7, 1), (9, 1)], 500, 100, vec![vec![3, 7, 9]]),
        ];
        for (items, max_entries, max_bytes, want) in cases {
            assert_eq!(
                pack_requests(&items, max_entries, max_bytes),
                want,
                "{items:?}"
            );
        }
    }

    #[test]
    fn full_batches_of_kinesis_limits() {
        let items: Vec<(usize, usize)> = (0..1234).map(|i| (i, 100)).collect();
        let reqs = pack_requests(&items, 500, 5 * 1024 * 1024);
        assert_eq!(
            reqs.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![500, 500, 234]
        );
        let big: Vec<(usize, usize)> = (0..12).map(|i| (i, 1024 * 1024)).collect();
        let reqs = pack_requests(&big, 500, 5 * 1024 * 1024);
        assert_eq!(reqs.iter().map(Vec::len).collect::<Vec<_>>(), vec![5, 5, 2]);
    }

    #[test]
    fn defects_are_found_before_any_write() {
        let cases: Vec<(SourceRecord, Option<&str>)> = vec![
            (rec(Some("k"), 10), None),
            (rec(None, 10), Some("MissingPartitionKey")),
            (rec(Some(""), 10), Some("MissingPartitionKey")),
            (rec(Some(&"é".repeat(256)), 1), None),
            (rec(Some(&"k".repeat(257)), 1), Some("PartitionKeyTooLong")),
            (rec(Some("k"), 999), None),
            (rec(Some("k"), 1000), Some("RecordTooLarge")),
            (
                SourceRecord {
                    defect: Some(RecordDefect::Malformed("bad base64".into())),
                    ..rec(Some("k"), 1)
                },
                Some("MalformedRecord"),
            ),
        ];
        for (record, want) in cases {
            assert_eq!(
                permanent_defect(&record, 1000).map(|d| d.0),
                want,
                "{record:?}"
            );
        }
    }

    #[test]
    fn backoff_grows_exponentially_and_is_capped() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        assert_eq!(backoff(0, base, max, 0.999_999).as_millis(), 99);
        assert_eq!(backoff(3, base, max, 0.5), Duration::from_millis(400));
        assert_eq!(backoff(10, base, max, 0.5), Duration::from_secs(1));
        assert_eq!(backoff(200, base, max, 1.0), max);
        assert_eq!(backoff(5, base, max, 0.0), Duration::ZERO);
    }
}

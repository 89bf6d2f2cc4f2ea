//! The shim's pure parts: token bucket, shard lookup, body rewriting, answer merging.

use std::borrow::Cow;

use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

const THROTTLED: &str = "ProvisionedThroughputExceededException";

/// A token bucket: capacity one second of `rate`, refilled continuously. Starts full.
#[derive(Clone, Debug)]
pub struct Bucket {
    rate: f64,
    tokens: f64,
    /// Seconds, on any monotonic clock.
    last: f64,
}

impl Bucket {
    pub fn full(rate: f64, now: f64) -> Bucket {
        Bucket {
            rate,
            tokens: rate,
            last: now,
        }
    }

    fn refill(&mut self, now: f64) {
        if now > self.last {
            self.tokens = (self.tokens + (now - self.last) * self.rate).min(self.rate);
            self.last = now;
        }
    }
}

/// One target shard's limits: records and bytes per second (either may be absent).
#[derive(Clone, Debug)]
pub struct ShardLimiter {
    records: Option<Bucket>,
    bytes: Option<Bucket>,
}

impl ShardLimiter {
    pub fn new(records_per_sec: f64, bytes_per_sec: f64, now: f64) -> ShardLimiter {
        ShardLimiter {
            records: (records_per_sec > 0.0).then(|| Bucket::full(records_per_sec, now)),
            bytes: (bytes_per_sec > 0.0).then(|| Bucket::full(bytes_per_sec, now)),
        }
    }

    /// Takes one record of `bytes` if both buckets allow it; otherwise takes nothing.
    pub fn try_take(&mut self, now: f64, bytes: f64) -> bool {
        if let Some(b) = &mut self.records {
            b.refill(now);
        }
        if let Some(b) = &mut self.bytes {
            b.refill(now);
        }
        let records_ok = self.records.as_ref().is_none_or(|b| b.tokens >= 1.0);
        let bytes_ok = self.bytes.as_ref().is_none_or(|b| b.tokens >= bytes);
        if !(records_ok && bytes_ok) {
            return false;
        }
        if let Some(b) = &mut self.records {
            b.tokens -= 1.0;
        }
        if let Some(b) = &mut self.bytes {
            b.tokens -= bytes;
        }
        true
    }
}

/// The MD5 of a partition key's UTF-8 bytes as a big-endian 128-bit integer: Kinesis's hash key.
pub fn key_hash(partition_key: &str) -> u128 {
    let digest = Md5::digest(partition_key.as_bytes());
    let bytes: [u8; 16] = digest
        .as_slice()
        .try_into()
        .expect("an MD5 digest is 16 bytes");
    u128::from_be_bytes(bytes)
}

/// The hash key Kinesis places an entry by: its explicit hash key, else the key's MD5.
pub fn entry_hash(partition_key: &str, explicit_hash_key: Option<&str>) -> Option<u128> {
    match explicit_hash_key {
        Some(k) => k.trim().parse::<u128>().ok(),
        None => Some(key_hash(partition_key)),
    }
}

/// The open shards of a stream, by hash range.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardMap {
    /// (starting hash key, ending hash key, shard id), sorted by start, not overlapping.
    ranges: Vec<(u128, u128, String)>,
}

impl ShardMap {
    pub fn new(mut ranges: Vec<(u128, u128, String)>) -> ShardMap {
        ranges.sort_by_key(|r| r.0);
        ShardMap { ranges }
    }

    /// From a ListShards answer or a DescribeStream's `StreamDescription`: the shards that are
    /// still open (no ending sequence number).
    pub fn from_shards_json(shards: &[Value]) -> Option<ShardMap> {
        let mut ranges = Vec::new();
        for s in shards {
            if s.pointer("/SequenceNumberRange/EndingSequenceNumber")
                .is_some_and(|v| !v.is_null())
            {
                continue;
            }
            let start = s
                .pointer("/HashKeyRange/StartingHashKey")?
                .as_str()?
                .parse()
                .ok()?;
            let end = s
                .pointer("/HashKeyRange/EndingHashKey")?
                .as_str()?
                .parse()
                .ok()?;
            ranges.push((start, end, s.get("ShardId")?.as_str()?.to_owned()));
        }
        (!ranges.is_empty()).then(|| ShardMap::new(ranges))
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    /// The index of the shard whose range holds `hash`.
    pub fn shard_of(&self, hash: u128) -> Option<usize> {
        let i = self
            .ranges
            .partition_point(|r| r.0 <= hash)
            .checked_sub(1)?;
        (hash <= self.ranges[i].1).then_some(i)
    }

    pub fn id(&self, index: usize) -> &str {
        &self.ranges[index].2
    }

    pub fn range(&self, index: usize) -> (u128, u128) {
        (self.ranges[index].0, self.ranges[index].1)
    }
}

/// Rewrites the first `"StreamARN":"arn:…:stream/NAME"` into `"StreamName":"NAME"`. The SDK
/// writes compact JSON, and inside a JSON string the quotes of that pattern would be escaped,
/// so the match cannot come from record data or a partition key.
pub fn rewrite_stream_arn(body: &[u8]) -> Option<Vec<u8>> {
    const PATTERN: &[u8] = br#""StreamARN":""#;
    // The SDK serialises StreamARN after Records: look near the end first.
    let tail = body.len().saturating_sub(512);
    let start = find(&body[tail..], PATTERN)
        .map(|i| i + tail)
        .or_else(|| find(body, PATTERN))?;
    let value_start = start + PATTERN.len();
    let value_len = body[value_start..].iter().position(|&b| b == b'"')?;
    let arn = std::str::from_utf8(&body[value_start..value_start + value_len]).ok()?;
    let name = arn.rsplit_once(":stream/")?.1;
    let mut out = Vec::with_capacity(body.len());
    out.extend_from_slice(&body[..start]);
    out.extend_from_slice(br#""StreamName":""#);
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&body[value_start + value_len..]);
    Some(out)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A PutRecords request body, entries borrowed from it where possible.
#[derive(Deserialize)]
pub struct PutRecordsBody<'a> {
    #[serde(rename = "Records", borrow)]
    pub records: Vec<Entry<'a>>,
    #[serde(rename = "StreamName", default)]
    pub stream_name: Option<String>,
    #[serde(rename = "StreamARN", default)]
    pub stream_arn: Option<String>,
}

#[derive(Deserialize, Serialize)]
pub struct Entry<'a> {
    #[serde(rename = "Data", borrow)]
    pub data: Cow<'a, str>,
    #[serde(rename = "PartitionKey", borrow)]
    pub partition_key: Cow<'a, str>,
    #[serde(
        rename = "ExplicitHashKey",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub explicit_hash_key: Option<String>,
}

impl PutRecordsBody<'_> {
    /// (stream name, account) from StreamName or StreamARN.
    pub fn stream(&self) -> Option<(String, String)> {
        if let Some(arn) = &self.stream_arn {
            let (head, name) = arn.rsplit_once(":stream/")?;
            let account = head.rsplit(':').next().unwrap_or_default();
            return Some((name.to_owned(), account.to_owned()));
        }
        self.stream_name
            .clone()
            .map(|n| (n, "123456789012".to_owned()))
    }
}

impl Entry<'_> {
    /// What a shard's byte limit counts: the decoded data plus the partition key.
    pub fn limit_bytes(&self) -> usize {
        base64_decoded_len(&self.data) + self.partition_key.len()
    }
}

/// The length of the bytes a padded base64 string decodes to.
pub fn base64_decoded_len(text: &str) -> usize {
    let b = text.as_bytes();
    let pad = b.iter().rev().take(2).take_while(|&&c| c == b'=').count();
    (b.len() / 4 * 3).saturating_sub(pad)
        + match b.len() % 4 {
            2 => 1,
            3 => 2,
            _ => 0,
        }
}

/// The body forwarded upstream: only the accepted entries, the stream by name.
pub fn forward_body(entries: &[&Entry<'_>], stream: &str) -> Vec<u8> {
    #[derive(Serialize)]
    struct Body<'e, 'a> {
        #[serde(rename = "Records")]
        records: &'e [&'e Entry<'a>],
        #[serde(rename = "StreamName")]
        stream_name: &'e str,
    }
    serde_json::to_vec(&Body {
        records: entries,
        stream_name: stream,
    })
    .expect("serialize")
}

/// What the shim decided for one entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Over its shard's limit.
    Throttled,
    /// Drawn by --fail-fraction.
    Failed,
}

/// The answer in the request's entry order: accepted entries take the upstream's results in
/// order, the others Kinesis's throttling error. `upstream` is the upstream's JSON answer to
/// the forwarded entries (None when nothing was forwarded).
pub fn merge_answer(
    verdicts: &[Verdict],
    shard_ids: &[&str],
    stream: &str,
    account: &str,
    upstream: Option<&Value>,
) -> Result<Value, String> {
    let empty = Vec::new();
    let upstream_records = match upstream {
        Some(v) => v
            .get("Records")
            .and_then(Value::as_array)
            .ok_or("the upstream's PutRecords answer has no Records")?,
        None => &empty,
    };
    let accepted = verdicts.iter().filter(|v| **v == Verdict::Accept).count();
    if upstream_records.len() != accepted {
        return Err(format!(
            "the upstream answered {} records for {accepted} entries",
            upstream_records.len()
        ));
    }
    let mut from_upstream = upstream_records.iter();
    let mut failed = 0u64;
    let mut records = Vec::with_capacity(verdicts.len());
    for (verdict, shard) in verdicts.iter().zip(shard_ids) {
        match verdict {
            Verdict::Accept => {
                let r = from_upstream.next().expect("counted above");
                if r.get("ErrorCode").is_some_and(|c| !c.is_null()) {
                    failed += 1;
                }
                records.push(r.clone());
            }
            Verdict::Throttled | Verdict::Failed => {
                failed += 1;
                records.push(json!({
                    "ErrorCode": THROTTLED,
                    "ErrorMessage": format!(
                        "Rate exceeded for shard {shard} in stream {stream} under account {account}."
                    ),
                }));
            }
        }
    }
    let mut answer = match upstream {
        Some(Value::Object(o)) => Value::Object(o.clone()),
        _ => json!({}),
    };
    answer["FailedRecordCount"] = json!(failed);
    answer["Records"] = Value::Array(records);
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shim_rewrites_only_the_stream_arn_member() {
        let body = br#"{"Records":[{"Data":"AA==","PartitionKey":"k\"StreamARN\":\"x"}],"StreamARN":"arn:aws:kinesis:us-east-1:123456789012:stream/bench-1"}"#;
        let out = rewrite_stream_arn(body).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"Records":[{"Data":"AA==","PartitionKey":"k\"StreamARN\":\"x"}],"StreamName":"bench-1"}"#
        );
        assert!(rewrite_stream_arn(br#"{"StreamName":"s"}"#).is_none());
    }

    #[test]
    fn a_bucket_holds_one_second_and_refills_continuously() {
        // 10 records/s, 100 bytes/s, starting full.
        let mut l = ShardLimiter::new(10.0, 100.0, 0.0);
        for _ in 0..10 {
            assert!(l.try_take(0.0, 5.0));
        }
        assert!(!l.try_take(0.0, 5.0), "the record bucket is empty");
        assert!(!l.try_take(0.05, 5.0), "half a record refilled");
        assert!(l.try_take(0.1, 5.0), "one record refilled after 0.1 s");
        // Bytes: 55 taken, 45 left, refilled at 100/s up to 100 at most.
        assert!(
            !l.try_take(10.0, 101.0),
            "never more than one second of bytes"
        );
        assert!(l.try_take(10.0, 100.0));
        assert!(!l.try_take(10.0, 1.0), "the byte bucket is empty");
        assert!(l.try_take(10.02, 1.0));
        // A refused entry takes nothing.
        let mut l = ShardLimiter::new(0.0, 100.0, 0.0);
        assert!(!l.try_take(0.0, 150.0));
        assert!(l.try_take(0.0, 100.0));
        // No limits: everything passes.
        let mut l = ShardLimiter::new(0.0, 0.0, 0.0);
        assert!((0..10_000).all(|_| l.try_take(0.0, 1e9)));
    }

    #[test]
    fn an_entry_goes_to_the_shard_whose_range_holds_its_hash() {
        // MD5("") = d41d8cd98f00b204e9800998ecf8427e.
        assert_eq!(key_hash(""), 0xd41d8cd98f00b204e9800998ecf8427e);
        assert_eq!(
            entry_hash("x", Some("42")),
            Some(42),
            "the explicit hash key wins"
        );
        assert_eq!(entry_hash("x", Some("not a number")), None);
        let half = u128::MAX / 2;
        let shards = json!([
            {"ShardId": "shardId-000000000001", "HashKeyRange": {"StartingHashKey": (half + 1).to_string(), "EndingHashKey": u128::MAX.to_string()}, "SequenceNumberRange": {"StartingSequenceNumber": "1"}},
            {"ShardId": "shardId-000000000000", "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": half.to_string()}, "SequenceNumberRange": {"StartingSequenceNumber": "1"}},
            {"ShardId": "shardId-closed", "HashKeyRange": {"StartingHashKey": "0", "EndingHashKey": u128::MAX.to_string()}, "SequenceNumberRange": {"StartingSequenceNumber": "0", "EndingSequenceNumber": "1"}},
        ]);
        let map = ShardMap::from_shards_json(shards.as_array().unwrap()).unwrap();
        assert_eq!(map.len(), 2, "the closed shard is left out");
        assert_eq!(map.id(map.shard_of(0).unwrap()), "shardId-000000000000");
        assert_eq!(map.id(map.shard_of(half).unwrap()), "shardId-000000000000");
        assert_eq!(
            map.id(map.shard_of(half + 1).unwrap()),
            "shardId-000000000001"
        );
        assert_eq!(
            map.id(map.shard_of(u128::MAX).unwrap()),
            "shardId-000000000001"
        );
        assert_eq!(
            map.id(map.shard_of(key_hash("")).unwrap()),
            "shardId-000000000001"
        );
        let gap = ShardMap::new(vec![(10, 20, "a".into())]);
        assert_eq!(gap.shard_of(9), None);
        assert_eq!(gap.shard_of(21), None);
    }

    #[test]
    fn failed_entries_are_not_forwarded_and_the_answer_keeps_the_request_order() {
        let body = br#"{"Records":[{"Data":"AAEC","PartitionKey":"a"},{"Data":"AAE=","PartitionKey":"bb","ExplicitHashKey":"7"},{"Data":"AA==","PartitionKey":"c"}],"StreamARN":"arn:aws:kinesis:us-east-1:222222222222:stream/s1"}"#;
        let request: PutRecordsBody = serde_json::from_slice(body).unwrap();
        assert_eq!(
            request.stream(),
            Some(("s1".to_owned(), "222222222222".to_owned()))
        );
        let sizes: Vec<usize> = request.records.iter().map(Entry::limit_bytes).collect();
        assert_eq!(sizes, [3 + 1, 2 + 2, 1 + 1]);
        let verdicts = [Verdict::Throttled, Verdict::Accept, Verdict::Failed];
        let accepted: Vec<&Entry> = request
            .records
            .iter()
            .zip(&verdicts)
            .filter(|(_, v)| **v == Verdict::Accept)
            .map(|(e, _)| e)
            .collect();
        assert_eq!(
            String::from_utf8(forward_body(&accepted, "s1")).unwrap(),
            r#"{"Records":[{"Data":"AAE=","PartitionKey":"bb","ExplicitHashKey":"7"}],"StreamName":"s1"}"#
        );
        let upstream = json!({"FailedRecordCount": 0, "Records": [{"SequenceNumber": "9", "ShardId": "shardId-000000000000"}]});
        let answer = merge_answer(
            &verdicts,
            &[
                "shardId-000000000003",
                "shardId-000000000000",
                "shardId-000000000001",
            ],
            "s1",
            "222222222222",
            Some(&upstream),
        )
        .unwrap();
        assert_eq!(answer["FailedRecordCount"], 2);
        let records = answer["Records"].as_array().unwrap();
        assert_eq!(records[0]["ErrorCode"], THROTTLED);
        assert_eq!(
            records[0]["ErrorMessage"],
            "Rate exceeded for shard shardId-000000000003 in stream s1 under account 222222222222."
        );
        assert_eq!(records[1]["SequenceNumber"], "9");
        assert_eq!(records[2]["ErrorCode"], THROTTLED);
        // Every entry failed: nothing went upstream.
        let all = merge_answer(
            &[Verdict::Failed],
            &["shardId-000000000000"],
            "s1",
            "1",
            None,
        )
        .unwrap();
        assert_eq!(all["FailedRecordCount"], 1);
        assert!(merge_answer(&[Verdict::Accept], &["x"], "s1", "1", None).is_err());
    }

    #[test]
    fn decoded_lengths_of_base64() {
        for n in 0..20usize {
            use base64::Engine;
            let text = base64::engine::general_purpose::STANDARD.encode(vec![7u8; n]);
            assert_eq!(base64_decoded_len(&text), n, "{text}");
        }
    }
}

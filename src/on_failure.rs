//! Batches Lambda's event source mapping gave up on: the objects it writes to an S3 on-failure
//! destination, under `aws/lambda/<mapping UUID>/<shard id>/YYYY/MM/DD/<time>-<uuid>` of the
//! state bucket (the Terraform modules point the mapping there).
//!
//! The mapping discards a batch only when its retries or the records' age run out (bounded
//! `maximum_retry_attempts` / `maximum_record_age_in_seconds`), or when the records expire
//! from the source while a route is held or failing. Those records were **not replicated**.
//! Each object holds the failure metadata (`KinesisBatchInfo`: shard, first and last sequence
//! number, arrival times) and, for an S3 destination, the invocation payload (the records
//! themselves). This module reads such an object and says what can be recovered from it;
//! `fanoutctl redrive --on-failure` turns the records it holds into dead letters and replays
//! them.

use serde::{Deserialize, Serialize};

use crate::event;
use crate::model::{Route, SourceRecord};

/// Where Lambda writes on-failure records in the bucket (fixed by the service).
pub const PREFIX: &str = "aws/lambda/";

/// The dead-letter error code of a record recovered from an on-failure object.
pub const ERROR_CODE: &str = "DiscardedByEventSourceMapping";

/// One discarded batch, as its on-failure object describes it.
#[derive(Clone, Debug, Serialize)]
pub struct DiscardedBatch {
    /// `s3://bucket/key` of the object.
    pub location: String,
    pub stream_arn: String,
    pub shard_id: String,
    pub start_sequence_number: String,
    pub end_sequence_number: String,
    pub first_arrival: Option<String>,
    pub last_arrival: Option<String>,
    pub batch_size: Option<u64>,
    /// Why Lambda gave up: `RetryAttemptsExhausted`, `RecordAgeExceeded`, ...
    pub condition: Option<String>,
    /// When Lambda wrote the object.
    pub discarded_at: Option<String>,
    /// How many records the object itself holds (0 without a payload).
    pub records_held: usize,
    /// Why the object holds no usable records, if it does not.
    pub no_records_because: Option<String>,
    #[serde(skip)]
    pub records: Vec<SourceRecord>,
}

#[derive(Deserialize)]
struct Raw {
    #[serde(rename = "requestContext")]
    request_context: Option<RawRequest>,
    #[serde(rename = "KinesisBatchInfo")]
    batch: Option<RawBatchInfo>,
    timestamp: Option<String>,
    payload: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RawRequest {
    condition: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawBatchInfo {
    shard_id: String,
    start_sequence_number: String,
    end_sequence_number: Option<String>,
    approximate_arrival_of_first_record: Option<String>,
    approximate_arrival_of_last_record: Option<String>,
    batch_size: Option<u64>,
    stream_arn: String,
}

/// Reads one on-failure object. An object that is not a Kinesis on-failure record (another
/// event source, or not JSON) is an error naming the object.
pub fn parse(location: &str, body: &[u8]) -> Result<DiscardedBatch, String> {
    let raw: Raw = serde_json::from_slice(body).map_err(|e| {
        format!("{location} is not an on-failure record Lambda writes (not the JSON expected: {e})")
    })?;
    let info = raw.batch.ok_or_else(|| {
        format!(
            "{location} has no KinesisBatchInfo: it is not the on-failure record of a Kinesis \
             event source mapping"
        )
    })?;
    let (records, no_records_because) = match raw.payload {
        None | Some(serde_json::Value::Null) => (
            Vec::new(),
            Some("the object holds the batch's positions only, not its records".to_owned()),
        ),
        Some(payload) => match payload_records(&payload) {
            Ok(batch) if batch.shard_id != info.shard_id => (
                Vec::new(),
                Some(format!(
                    "its payload's records are from shard {}, its metadata names {}",
                    batch.shard_id, info.shard_id
                )),
            ),
            Ok(batch) => (batch.records, None),
            Err(why) => (
                Vec::new(),
                Some(format!("its payload cannot be read: {why}")),
            ),
        },
    };
    Ok(DiscardedBatch {
        location: location.to_owned(),
        stream_arn: info.stream_arn,
        shard_id: info.shard_id,
        end_sequence_number: info
            .end_sequence_number
            .unwrap_or_else(|| info.start_sequence_number.clone()),
        start_sequence_number: info.start_sequence_number,
        first_arrival: info.approximate_arrival_of_first_record,
        last_arrival: info.approximate_arrival_of_last_record,
        batch_size: info.batch_size,
        condition: raw.request_context.and_then(|r| r.condition),
        discarded_at: raw.timestamp,
        records_held: records.len(),
        no_records_because,
        records,
    })
}

/// The payload is the invocation event, as a JSON string or as an object.
fn payload_records(payload: &serde_json::Value) -> Result<crate::model::SourceBatch, String> {
    let bytes = match payload {
        serde_json::Value::String(s) => s.as_bytes().to_vec(),
        other => serde_json::to_vec(other).map_err(|e| e.to_string())?,
    };
    event::parse_event(&bytes).map_err(|e| e.0)
}

/// The routes that replicate the batch's stream (a stream may feed several targets).
pub fn routes_for<'r>(batch: &DiscardedBatch, routes: &'r [Route]) -> Vec<&'r Route> {
    routes
        .iter()
        .filter(|r| r.source.to_string() == batch.stream_arn)
        .collect()
}

/// What a person can recover from the batch, and how.
pub fn recovery(batch: &DiscardedBatch) -> String {
    if batch.records_held > 0 {
        return format!(
            "it holds the {} records themselves: `fanoutctl redrive --on-failure` stores them \
             as dead letters of the stream's routes and replays them in sequence order (records \
             the replicator had already written past the failure point come again, and later \
             records of the same keys are already in the target)",
            batch.records_held
        );
    }
    let why = batch
        .no_records_because
        .as_deref()
        .unwrap_or("it holds no records");
    let window = match (&batch.first_arrival, &batch.last_arrival) {
        (Some(first), Some(last)) => format!(
            "`fanoutctl backfill --from {first} --until {last}` replays that window (every shard \
             of the source; records already written come again)"
        ),
        _ => "`fanoutctl backfill` over the time the records arrived replays them".to_owned(),
    };
    format!(
        "{why} (shard {}, sequence numbers {} to {}): if they arrived less than the source \
         stream's retention ago, {window}; past the retention they are gone from the source and \
         cannot be recovered by fanout",
        batch.shard_id, batch.start_sequence_number, batch.end_sequence_number
    )
}

/// The dead-letter reason of a record recovered from the batch.
pub fn reason(batch: &DiscardedBatch) -> String {
    format!(
        "Lambda's event source mapping gave up on this record's batch ({}) and wrote it to its \
         on-failure destination {}: it was not replicated. Redrive it",
        batch.condition.as_deref().unwrap_or("no condition given"),
        batch.location
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StreamArn;
    use crate::seq::SequenceNumber;

    const ARN: &str = "arn:aws:kinesis:us-east-1:111111111111:stream/orders";

    fn record(seq: u64) -> SourceRecord {
        SourceRecord {
            seq: SequenceNumber::parse(&seq.to_string()).unwrap(),
            partition_key: Some(format!("k{seq}")),
            data: format!("d{seq}").into_bytes(),
            arrival_ms: Some(1_700_000_000_000),
            defect: None,
        }
    }

    fn object(payload: Option<serde_json::Value>) -> Vec<u8> {
        let mut doc = serde_json::json!({
            "requestContext": {"requestId": "r", "functionArn": "arn:aws:lambda:us-east-1:111111111111:function:f",
                               "condition": "RetryAttemptsExhausted", "approximateInvokeCount": 3},
            "responseContext": {"statusCode": 200, "executedVersion": "$LATEST", "functionError": "Unhandled"},
            "version": "1.0",
            "timestamp": "2026-12-06T00:38:06.021Z",
            "KinesisBatchInfo": {
                "shardId": "shardId-000000000001", "startSequenceNumber": "11", "endSequenceNumber": "13",
                "approximateArrivalOfFirstRecord": "2026-12-05T00:38:04.835Z",
                "approximateArrivalOfLastRecord": "2026-12-05T00:38:05.580Z",
                "batchSize": 3, "streamArn": ARN
            }
        });
        if let Some(p) = payload {
            doc["payload"] = p;
        }
        serde_json::to_vec(&doc).unwrap()
    }

    fn payload() -> serde_json::Value {
        let arn = StreamArn::parse(ARN).unwrap();
        let records = [record(11), record(12), record(13)];
        serde_json::to_value(event::build_event(
            &arn,
            "shardId-000000000001",
            "us-east-1",
            &records,
        ))
        .unwrap()
    }

    #[test]
    fn an_object_with_its_payload_gives_back_the_records_as_a_string_or_an_object() {
        for p in [serde_json::Value::String(payload().to_string()), payload()] {
            let b = parse("s3://b/aws/lambda/x", &object(Some(p))).unwrap();
            assert_eq!(b.records_held, 3);
            assert_eq!(b.records, vec![record(11), record(12), record(13)]);
            assert_eq!(b.condition.as_deref(), Some("RetryAttemptsExhausted"));
            assert!(
                recovery(&b).contains("redrive --on-failure"),
                "{}",
                recovery(&b)
            );
        }
    }

    #[test]
    fn an_object_without_records_names_the_positions_and_the_backfill_window() {
        let b = parse("s3://b/aws/lambda/x", &object(None)).unwrap();
        assert_eq!(b.records_held, 0);
        let text = recovery(&b);
        assert!(text.contains("positions only"), "{text}");
        assert!(
            text.contains("shardId-000000000001") && text.contains("11 to 13"),
            "{text}"
        );
        assert!(
            text.contains(
                "fanoutctl backfill --from 2026-12-05T00:38:04.835Z --until 2026-12-05T00:38:05.580Z"
            ),
            "{text}"
        );
        assert!(text.contains("retention"), "{text}");
    }

    #[test]
    fn an_unreadable_payload_or_a_foreign_object_is_named() {
        let b = parse(
            "s3://b/aws/lambda/x",
            &object(Some(serde_json::json!("not an event"))),
        )
        .unwrap();
        assert_eq!(b.records_held, 0);
        assert!(b
            .no_records_because
            .unwrap()
            .contains("payload cannot be read"));
        let e = parse("s3://b/aws/lambda/y", b"{\"DDBStreamBatchInfo\":{}}").unwrap_err();
        assert!(
            e.contains("s3://b/aws/lambda/y") && e.contains("KinesisBatchInfo"),
            "{e}"
        );
        let e = parse("s3://b/aws/lambda/z", b"nope").unwrap_err();
        assert!(e.contains("s3://b/aws/lambda/z"), "{e}");
    }
}

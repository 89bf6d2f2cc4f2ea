//! Lambda's Kinesis events: read leniently into [`SourceBatch`]es, built for local runs,
//! and answered with `batchItemFailures`.
//!
//! Reading is lenient per record: a record whose fields cannot be read but whose sequence
//! number can becomes a defective record (dead-lettered with its raw JSON), so one bad record
//! never blocks a shard. Only an event that cannot be read at all is an error.

use aws_lambda_events::event::kinesis::{KinesisEvent, KinesisEventRecord};
use aws_lambda_events::event::streams::KinesisEventResponse;
use std::borrow::Cow;

use base64::Engine;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::model::{RecordDefect, SourceBatch, SourceRecord, StreamArn};
use crate::seq::SequenceNumber;

/// The event cannot be turned into a batch; the whole invocation fails and Lambda retries it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Malformed Kinesis event: {0}")]
pub struct EventError(pub String);

#[derive(Deserialize)]
struct RawEvent<'a> {
    #[serde(rename = "Records", borrow)]
    records: Vec<&'a RawValue>,
}

#[derive(Deserialize)]
struct RawRecord {
    #[serde(rename = "eventID", default)]
    event_id: Option<String>,
    #[serde(rename = "eventSourceARN", default)]
    event_source_arn: Option<String>,
    kinesis: RawKinesis,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawKinesis {
    sequence_number: String,
    #[serde(default)]
    partition_key: Option<String>,
    data: String,
    #[serde(default, deserialize_with = "seconds")]
    approximate_arrival_timestamp: Option<f64>,
}

/// Lambda sends epoch seconds as a number; some tools write them as a string.
fn seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum NumOrText {
        Num(f64),
        Text(String),
    }
    Ok(match Option::<NumOrText>::deserialize(d)? {
        Some(NumOrText::Num(n)) => Some(n),
        Some(NumOrText::Text(t)) => t.parse().ok(),
        None => None,
    })
}

/// Just enough of a record to dead-letter it when the rest cannot be read.
#[derive(Deserialize)]
struct SalvageRecord {
    #[serde(rename = "eventID", default)]
    event_id: Option<String>,
    #[serde(rename = "eventSourceARN", default)]
    event_source_arn: Option<String>,
    kinesis: SalvageKinesis,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SalvageKinesis {
    sequence_number: String,
    #[serde(default)]
    partition_key: Option<serde_json::Value>,
}

/// Reads a Lambda Kinesis event into one batch (the event source mapping sends one shard per
/// invocation). Records are returned in sequence order. `Ok(None)`: the event holds no
/// records (there is nothing to do, and nothing to retry).
pub fn read_event(payload: &[u8]) -> Result<Option<SourceBatch>, EventError> {
    if let Some(batch) = parse_well_formed(payload) {
        return Ok(Some(batch));
    }
    parse_leniently(payload)
}

/// [`read_event`] for callers that need records: an event without any is an error.
pub fn parse_event(payload: &[u8]) -> Result<SourceBatch, EventError> {
    read_event(payload)?.ok_or_else(|| EventError("the event has no records".to_owned()))
}

/// The event as Lambda sends it, borrowed from the payload where no escapes get in the way.
#[derive(Deserialize)]
struct FastEvent<'a> {
    #[serde(rename = "Records", borrow)]
    records: Vec<FastRecord<'a>>,
}

#[derive(Deserialize)]
struct FastRecord<'a> {
    #[serde(rename = "eventID", borrow)]
    event_id: Cow<'a, str>,
    #[serde(rename = "eventSourceARN", borrow)]
    event_source_arn: Cow<'a, str>,
    #[serde(borrow)]
    kinesis: FastKinesis<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FastKinesis<'a> {
    #[serde(borrow)]
    sequence_number: Cow<'a, str>,
    #[serde(borrow)]
    partition_key: Cow<'a, str>,
    #[serde(borrow)]
    data: Cow<'a, str>,
    #[serde(default, deserialize_with = "seconds")]
    approximate_arrival_timestamp: Option<f64>,
}

/// One pass over a well-formed event, the usual case. `None` on anything unusual (a missing
/// field, bad base64, mixed shards, …): the lenient reader then finds and explains it.
fn parse_well_formed(payload: &[u8]) -> Option<SourceBatch> {
    // Validating UTF-8 once up front is cheaper than serde_json doing it string by string.
    let text = std::str::from_utf8(payload).ok()?;
    let event: FastEvent<'_> = serde_json::from_str(text).ok()?;
    let first = event.records.first()?;
    let shard_id = first.event_id.split_once(':')?.0.to_owned();
    let arn = first.event_source_arn.clone();
    let mut records = Vec::with_capacity(event.records.len());
    for r in event.records {
        if r.event_source_arn != arn
            || r.event_id.split_once(':')?.0 != shard_id
            || r.kinesis.partition_key.is_empty()
        {
            return None;
        }
        records.push(SourceRecord {
            seq: SequenceNumber::parse(&r.kinesis.sequence_number).ok()?,
            partition_key: Some(r.kinesis.partition_key.into_owned()),
            data: base64::engine::general_purpose::STANDARD
                .decode(r.kinesis.data.as_bytes())
                .ok()?,
            arrival_ms: r
                .kinesis
                .approximate_arrival_timestamp
                .map(|s| (s * 1000.0).round() as i64),
            defect: None,
        });
    }
    if !records.windows(2).all(|w| w[0].seq < w[1].seq) {
        return None;
    }
    Some(SourceBatch {
        source: StreamArn::parse(&arn).ok()?,
        shard_id: shard_id.to_owned(),
        records,
    })
}

/// Reads record by record, so that one bad record becomes a defect instead of failing all.
fn parse_leniently(payload: &[u8]) -> Result<Option<SourceBatch>, EventError> {
    let raw: RawEvent<'_> = serde_json::from_slice(payload).map_err(|e| {
        EventError(format!(
            "{e}; expected a Kinesis event {{\"Records\": [...]}} as Lambda's event source mapping sends"
        ))
    })?;
    if raw.records.is_empty() {
        return Ok(None);
    }
    // (eventSourceARN as sent, shard id) of record 0; every other record must match it.
    let mut origin: Option<(String, String)> = None;
    let mut records = Vec::with_capacity(raw.records.len());
    for (i, value) in raw.records.iter().enumerate() {
        let (record, event_id, arn) = read_record(i, value)?;
        let arn = arn.ok_or_else(|| {
            EventError(format!(
                "record {i} (sequence number {}) has no eventSourceARN",
                record.seq
            ))
        })?;
        let shard_id = event_id.as_deref().and_then(|id| id.split_once(':').map(|(s, _)| s)).ok_or_else(|| {
            EventError(format!(
                "record {i} (sequence number {}) has no eventID of the form shardId-…:<sequence number>",
                record.seq
            ))
        })?;
        match &origin {
            None => origin = Some((arn, shard_id.to_owned())),
            Some((a, s)) if *a == arn && s == shard_id => {}
            Some((a, s)) => {
                return Err(EventError(format!(
                    "record {i} comes from {arn} {shard_id} but record 0 from {a} {s}; one invocation must hold one shard"
                )))
            }
        }
        records.push(record);
    }
    let (arn, shard_id) = origin.ok_or_else(|| EventError("the event has no records".into()))?;
    let source = StreamArn::parse(&arn).map_err(|e| EventError(format!("eventSourceARN: {e}")))?;
    if !records.windows(2).all(|w| w[0].seq < w[1].seq) {
        // Out of order: put them in order. Twice the same sequence number: say so, rather
        // than guess which of the two is the record.
        let mut order: Vec<usize> = (0..records.len()).collect();
        order.sort_by(|&a, &b| records[a].seq.cmp(&records[b].seq).then(a.cmp(&b)));
        if let Some(w) = order
            .windows(2)
            .find(|w| records[w[0]].seq == records[w[1]].seq)
        {
            return Err(EventError(format!(
                "records {} and {} of the event both have sequence number {} (shard {shard_id} of {arn}); \
                 an event source mapping never sends one record twice. Nothing was written; the \
                 batch is left for retry. Check what invoked the function with this event.",
                w[0], w[1], records[w[0]].seq
            )));
        }
        let mut slots: Vec<Option<SourceRecord>> = records.into_iter().map(Some).collect();
        records = order.iter().filter_map(|&i| slots[i].take()).collect();
    }
    Ok(Some(SourceBatch {
        source,
        shard_id,
        records,
    }))
}

type ReadRecord = (SourceRecord, Option<String>, Option<String>);

fn read_record(i: usize, value: &RawValue) -> Result<ReadRecord, EventError> {
    let text = value.get();
    let why = match serde_json::from_str::<RawRecord>(text) {
        Ok(r) => {
            let seq = SequenceNumber::parse(&r.kinesis.sequence_number)
                .map_err(|e| EventError(format!("record {i}: kinesis.sequenceNumber: {e}")))?;
            match base64::engine::general_purpose::STANDARD.decode(r.kinesis.data.as_bytes()) {
                Ok(data) => {
                    let record = SourceRecord {
                        seq,
                        partition_key: r.kinesis.partition_key,
                        data,
                        arrival_ms: r
                            .kinesis
                            .approximate_arrival_timestamp
                            .map(|s| (s * 1000.0).round() as i64),
                        defect: None,
                    };
                    return Ok((record, r.event_id, r.event_source_arn));
                }
                Err(e) => format!("kinesis.data is not base64: {e}"),
            }
        }
        Err(e) => e.to_string(),
    };
    // Salvage: keep the raw JSON so the record can be dead-lettered, if its position is known.
    let salvage: SalvageRecord = serde_json::from_str(text).map_err(|_| {
        EventError(format!(
            "record {i} cannot be read ({why}) and has no readable kinesis.sequenceNumber, so it cannot be dead-lettered or reported"
        ))
    })?;
    let seq = SequenceNumber::parse(&salvage.kinesis.sequence_number)
        .map_err(|e| EventError(format!("record {i}: kinesis.sequenceNumber: {e}")))?;
    let record = SourceRecord {
        seq,
        partition_key: salvage
            .kinesis
            .partition_key
            .and_then(|v| v.as_str().map(str::to_owned)),
        data: text.as_bytes().to_vec(),
        arrival_ms: None,
        defect: Some(RecordDefect::Malformed(why)),
    };
    Ok((record, salvage.event_id, salvage.event_source_arn))
}

/// Builds the event Lambda's event source mapping would send for these records.
pub fn build_event(
    source: &StreamArn,
    shard_id: &str,
    region: &str,
    records: &[SourceRecord],
) -> KinesisEvent {
    let mut event = KinesisEvent::default();
    event.records = records
        .iter()
        .map(|r| {
            let mut rec = KinesisEventRecord::default();
            rec.aws_region = Some(region.to_owned());
            rec.event_id = Some(format!("{shard_id}:{}", r.seq));
            rec.event_name = Some("aws:kinesis:record".to_owned());
            rec.event_source = Some("aws:kinesis".to_owned());
            rec.event_source_arn = Some(source.to_string());
            rec.event_version = Some("1.0".to_owned());
            rec.invoke_identity_arn = Some(format!(
                "arn:aws:iam::{}:role/fanout-replicator",
                source.account()
            ));
            rec.kinesis.approximate_arrival_timestamp.0 =
                chrono::DateTime::from_timestamp_millis(r.arrival_ms.unwrap_or(0))
                    .unwrap_or_default();
            *rec.kinesis.data = r.data.clone();
            rec.kinesis.partition_key = r.partition_key.clone().unwrap_or_default();
            rec.kinesis.sequence_number = r.seq.to_string();
            rec.kinesis.kinesis_schema_version = Some("1.0".to_owned());
            rec
        })
        .collect();
    event
}

/// The answer for Lambda: the first unhandled sequence number, or nothing.
pub fn response(first_unhandled: Option<&SequenceNumber>) -> KinesisEventResponse {
    let mut response = KinesisEventResponse::default();
    if let Some(seq) = first_unhandled {
        response.add_failure(seq.to_string());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../tests/fixtures/kinesis-event.json");

    #[test]
    fn reads_the_fixture_event_into_one_shard_batch() {
        let batch = parse_event(FIXTURE.as_bytes()).unwrap();
        assert_eq!(batch.shard_id, "shardId-000000000000");
        assert_eq!(batch.source.name(), "fanout-demo-source");
        assert_eq!(batch.records.len(), 3);
        assert_eq!(batch.records[0].data, b"Hello, this is a test.");
        assert_eq!(
            batch.records[0].partition_key.as_deref(),
            Some("customer-1")
        );
        assert!(batch.records.iter().all(|r| r.defect.is_none()));
    }

    #[test]
    fn built_events_round_trip_through_the_reader() {
        let batch = parse_event(FIXTURE.as_bytes()).unwrap();
        let event = build_event(&batch.source, &batch.shard_id, "us-east-1", &batch.records);
        let json = serde_json::to_vec(&event).unwrap();
        let again = parse_event(&json).unwrap();
        assert_eq!(again.records.len(), batch.records.len());
        for (a, b) in again.records.iter().zip(&batch.records) {
            assert_eq!(
                (&a.seq, &a.partition_key, &a.data),
                (&b.seq, &b.partition_key, &b.data)
            );
        }
    }

    #[test]
    fn a_bad_record_becomes_a_defect_but_a_bad_event_is_an_error() {
        let bad_data = FIXTURE.replacen("SGVsbG8sIHRoaXMgaXMgYSB0ZXN0Lg==", "%%%not-base64", 1);
        let batch = parse_event(bad_data.as_bytes()).unwrap();
        assert!(
            matches!(batch.records[0].defect, Some(RecordDefect::Malformed(ref w)) if w.contains("base64"))
        );
        assert!(String::from_utf8_lossy(&batch.records[0].data).contains("%%%not-base64"));

        let cases = [
            ("not json", "expected a Kinesis event"),
            ("{\"Records\": []}", "no records"),
            ("{\"records\": 5}", "missing field `Records`"),
        ];
        assert_eq!(read_event(b"{\"Records\": []}"), Ok(None), "nothing to do");
        for (payload, words) in cases {
            let e = parse_event(payload.as_bytes()).unwrap_err();
            assert!(e.to_string().contains(words), "{e}");
        }
        let no_seq = FIXTURE.replacen("\"sequenceNumber\"", "\"sequence\"", 1);
        assert!(parse_event(no_seq.as_bytes())
            .unwrap_err()
            .to_string()
            .contains("sequenceNumber"));
    }

    #[test]
    fn records_out_of_order_are_sorted_but_a_sequence_number_twice_is_an_error() {
        let batch = parse_event(FIXTURE.as_bytes()).unwrap();
        let seqs: Vec<String> = batch.records.iter().map(|r| r.seq.to_string()).collect();
        // The last two records swapped: read back in sequence order.
        let swapped = FIXTURE
            .replacen(&seqs[1], "SWAP", 2)
            .replacen(&seqs[2], &seqs[1], 2)
            .replacen("SWAP", &seqs[2], 2);
        let again = parse_event(swapped.as_bytes()).unwrap();
        let got: Vec<String> = again.records.iter().map(|r| r.seq.to_string()).collect();
        assert_eq!(got, seqs);
        assert_ne!(
            again.records[1].data, batch.records[1].data,
            "records moved with their data"
        );
        // Record 2 given record 0's sequence number: named, not collapsed.
        let twice = FIXTURE.replacen(&seqs[2], &seqs[0], 2);
        let e = parse_event(twice.as_bytes()).unwrap_err().to_string();
        assert!(
            e.contains("records 0 and 2") && e.contains(&seqs[0]) && e.contains("left for retry"),
            "{e}"
        );
    }

    #[test]
    fn the_fast_reader_agrees_with_the_lenient_one_and_leaves_oddities_to_it() {
        assert_eq!(
            parse_well_formed(FIXTURE.as_bytes()),
            parse_leniently(FIXTURE.as_bytes()).unwrap()
        );
        let odd = [
            FIXTURE.replacen("SGVsbG8sIHRoaXMgaXMgYSB0ZXN0Lg==", "%%%", 1),
            FIXTURE.replacen(
                "\"partitionKey\": \"customer-2\"",
                "\"partitionKey\": \"\"",
                1,
            ),
            FIXTURE.replacen("shardId-000000000000:", "shardId-000000000007:", 1),
        ];
        for payload in odd {
            assert_ne!(payload, FIXTURE);
            assert_eq!(parse_well_formed(payload.as_bytes()), None);
        }
    }

    #[test]
    fn response_reports_only_the_first_unhandled_sequence_number() {
        let seq = SequenceNumber::parse("49590338271490256608559692538361571095921575989136588898")
            .unwrap();
        let json = serde_json::to_value(response(Some(&seq))).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"batchItemFailures": [{"itemIdentifier": "49590338271490256608559692538361571095921575989136588898"}]})
        );
        assert_eq!(
            serde_json::to_value(response(None)).unwrap(),
            serde_json::json!({"batchItemFailures": []})
        );
    }
}

//! Reading Kinesis shards (for local runs and read-back checks) and writing records (for the
//! demo, tests and benchmarks). Streams are addressed by ARN, so one client reaches any account
//! its credentials (or the emulator) allow.

use aws_config::SdkConfig;
use aws_sdk_kinesis::primitives::{Blob, DateTime};
use aws_sdk_kinesis::types::{
    ChildShard, ConsumerStatus, PutRecordsRequestEntry, Record, ShardIteratorType,
    StartingPosition, SubscribeToShardEventStream,
};
use aws_sdk_kinesis::Client;

use super::classify_sdk_error;
use crate::model::{RequestError, SourceRecord, StreamArn};
use crate::seq::SequenceNumber;

pub use crate::model::ShardInfo;

use crate::ports::reader::ShardReader;
pub use crate::ports::reader::{FanOutEvent, Page, StartPosition};

#[derive(Clone)]
pub struct KinesisSource {
    client: Client,
}

impl KinesisSource {
    pub fn new(sdk: &SdkConfig) -> Self {
        KinesisSource {
            client: Client::new(sdk),
        }
    }

    /// Writes records with PutRecords (plain, no ordering guarantees beyond Kinesis's own):
    /// for producing test data. Retries failed entries until all are in. Returns the source
    /// (shard, sequence number) of each record, in input order.
    pub async fn put_all(
        &self,
        stream: &StreamArn,
        records: &[(String, Vec<u8>)],
    ) -> Result<Vec<(String, String)>, RequestError> {
        let mut out: Vec<(String, String)> = vec![Default::default(); records.len()];
        let mut pending: Vec<usize> = (0..records.len()).collect();
        let mut attempts = 0;
        while !pending.is_empty() {
            attempts += 1;
            let mut next = Vec::new();
            let mut start = 0;
            while start < pending.len() {
                let mut end = start;
                let mut bytes = 0;
                while end < pending.len() && end - start < 500 {
                    let (k, d) = &records[pending[end]];
                    if bytes + k.len() + d.len() > 4 * 1024 * 1024 && end > start {
                        break;
                    }
                    bytes += k.len() + d.len();
                    end += 1;
                }
                let chunk = &pending[start..end];
                let entries: Vec<PutRecordsRequestEntry> = chunk
                    .iter()
                    .filter_map(|&i| {
                        PutRecordsRequestEntry::builder()
                            .partition_key(&records[i].0)
                            .data(Blob::new(records[i].1.clone()))
                            .build()
                            .ok()
                    })
                    .collect();
                let res = self
                    .client
                    .put_records()
                    .stream_arn(stream.as_str())
                    .set_records(Some(entries))
                    .send()
                    .await
                    .map_err(|e| classify_sdk_error(&e))?;
                for (&i, r) in chunk.iter().zip(res.records()) {
                    match r.error_code() {
                        Some(_) => next.push(i),
                        None => {
                            out[i] = (
                                r.shard_id().unwrap_or_default().to_owned(),
                                r.sequence_number().unwrap_or_default().to_owned(),
                            )
                        }
                    }
                }
                start = end;
            }
            if !next.is_empty() && attempts > 20 {
                return Err(RequestError {
                    class: crate::model::FailureClass::Transient,
                    ambiguous: false,
                    code: "GaveUp".to_owned(),
                    message: format!("{} records still refused after 20 attempts", next.len()),
                });
            }
            pending = next;
        }
        Ok(out)
    }

    /// Reads every record of every shard from TRIM_HORIZON to the current end.
    /// Returns (shard id, record) pairs, each shard's records in order.
    pub async fn read_all(
        &self,
        stream: &StreamArn,
    ) -> Result<Vec<(String, SourceRecord)>, RequestError> {
        let mut all = Vec::new();
        for shard in self.list_shards(stream).await? {
            let mut it = self
                .shard_iterator(stream, &shard.shard_id, &StartPosition::TrimHorizon)
                .await?;
            loop {
                let page = self.get_records(stream, &it, 10_000).await?;
                let empty = page.records.is_empty();
                all.extend(
                    page.records
                        .into_iter()
                        .map(|r| (shard.shard_id.clone(), r)),
                );
                match page.next_iterator {
                    Some(next) if !(empty && page.millis_behind_latest.unwrap_or(0) == 0) => {
                        it = next
                    }
                    _ => break,
                }
            }
        }
        Ok(all)
    }
}

/// A record as the write path sees it. Records with unreadable sequence numbers are an error:
/// they cannot be positioned, so nothing after them could be checkpointed safely.
fn to_source_record(stream: &StreamArn, r: &Record) -> Result<SourceRecord, RequestError> {
    let seq = SequenceNumber::parse(r.sequence_number()).map_err(|e| RequestError {
        class: crate::model::FailureClass::Systemic,
        ambiguous: false,
        code: "BadSequenceNumber".to_owned(),
        message: format!("{stream}: {e}"),
    })?;
    Ok(SourceRecord {
        seq,
        partition_key: r
            .partition_key()
            .filter(|k| !k.is_empty())
            .map(str::to_owned),
        data: r.data().as_ref().to_vec(),
        arrival_ms: r
            .approximate_arrival_timestamp()
            .and_then(|t| t.to_millis().ok()),
        defect: None,
    })
}

fn to_shard_info(c: &ChildShard) -> ShardInfo {
    let parents = c.parent_shards();
    ShardInfo {
        shard_id: c.shard_id().to_owned(),
        parent: parents.first().cloned(),
        adjacent_parent: parents.get(1).cloned(),
        closed: false,
    }
}

/// An open SubscribeToShard stream (Kinesis ends each one after 5 minutes).
pub struct Subscription {
    stream: StreamArn,
    output: aws_sdk_kinesis::operation::subscribe_to_shard::SubscribeToShardOutput,
}

impl crate::ports::reader::Subscription for Subscription {
    /// The next event; `Ok(None)` when the subscription has ended (subscribe again).
    async fn next(&mut self) -> Result<Option<FanOutEvent>, RequestError> {
        loop {
            let event = self.output.event_stream.recv().await.map_err(|e| {
                use aws_sdk_kinesis::error::ProvideErrorMetadata;
                let (code, message) = match &e {
                    aws_sdk_kinesis::error::SdkError::ServiceError(se) => (
                        se.err().code().unwrap_or("Unknown").to_owned(),
                        se.err().message().unwrap_or_default().to_owned(),
                    ),
                    other => ("SubscriptionBroken".to_owned(), other.to_string()),
                };
                RequestError {
                    class: crate::errors::entry_class(&code),
                    ambiguous: false,
                    code,
                    message,
                }
            })?;
            match event {
                None => return Ok(None),
                Some(SubscribeToShardEventStream::SubscribeToShardEvent(ev)) => {
                    let records = ev
                        .records()
                        .iter()
                        .map(|r| to_source_record(&self.stream, r))
                        .collect::<Result<Vec<_>, _>>()?;
                    let continuation = match ev.continuation_sequence_number() {
                        "" => None,
                        c => Some(SequenceNumber::parse(c).map_err(|e| RequestError {
                            class: crate::model::FailureClass::Systemic,
                            ambiguous: false,
                            code: "BadSequenceNumber".to_owned(),
                            message: format!("{}: continuation {e}", self.stream),
                        })?),
                    };
                    return Ok(Some(FanOutEvent {
                        records,
                        continuation,
                        millis_behind_latest: ev.millis_behind_latest(),
                        child_shards: ev.child_shards().iter().map(to_shard_info).collect(),
                    }));
                }
                Some(_) => continue, // an event type this SDK does not know: skip it
            }
        }
    }
}

impl KinesisSource {
    /// Creates a provisioned stream and waits until it is ACTIVE: for local stacks, tests and
    /// benchmarks (Terraform creates streams in AWS).
    pub async fn create_stream(&self, name: &str, shards: i32) -> Result<StreamArn, RequestError> {
        self.client
            .create_stream()
            .stream_name(name)
            .shard_count(shards)
            .send()
            .await
            .map_err(|e| classify_sdk_error(&e))?;
        let summary = self
            .client
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await
            .map_err(|e| classify_sdk_error(&e))?;
        let arn = summary
            .stream_description_summary()
            .map(|s| s.stream_arn().to_owned())
            .unwrap_or_default();
        let stream = StreamArn::parse(&arn).map_err(|message| RequestError {
            class: crate::model::FailureClass::Systemic,
            ambiguous: false,
            code: "BadStreamArn".to_owned(),
            message,
        })?;
        self.wait_active(&stream).await?;
        Ok(stream)
    }

    /// Waits (up to 20 s) until the stream is ACTIVE, e.g. after creating or resharding it.
    pub async fn wait_active(&self, stream: &StreamArn) -> Result<(), RequestError> {
        for _ in 0..400 {
            let out = self
                .client
                .describe_stream_summary()
                .stream_arn(stream.as_str())
                .send()
                .await
                .map_err(|e| classify_sdk_error(&e))?;
            if out
                .stream_description_summary()
                .is_some_and(|s| *s.stream_status() == aws_sdk_kinesis::types::StreamStatus::Active)
            {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        Err(RequestError {
            class: crate::model::FailureClass::Transient,
            ambiguous: false,
            code: "StreamNotActive".to_owned(),
            message: format!("{stream} did not become ACTIVE within 20 s"),
        })
    }
}

impl crate::redrive::ShardLister for KinesisSource {
    async fn list_shards(
        &self,
        stream: &StreamArn,
    ) -> Result<Vec<crate::model::ShardInfo>, RequestError> {
        ShardReader::list_shards(self, stream).await
    }
}

impl ShardReader for KinesisSource {
    type Subscription = Subscription;

    async fn list_shards(&self, stream: &StreamArn) -> Result<Vec<ShardInfo>, RequestError> {
        let mut shards = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let req = match &token {
                Some(t) => self.client.list_shards().next_token(t),
                None => self.client.list_shards().stream_arn(stream.as_str()),
            };
            let out = req.send().await.map_err(|e| classify_sdk_error(&e))?;
            for s in out.shards() {
                shards.push(ShardInfo {
                    shard_id: s.shard_id().to_owned(),
                    parent: s.parent_shard_id().map(str::to_owned),
                    adjacent_parent: s.adjacent_parent_shard_id().map(str::to_owned),
                    closed: s
                        .sequence_number_range()
                        .and_then(|r| r.ending_sequence_number())
                        .is_some(),
                });
            }
            token = out.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(shards);
            }
        }
    }

    async fn shard_iterator(
        &self,
        stream: &StreamArn,
        shard_id: &str,
        start: &StartPosition,
    ) -> Result<String, RequestError> {
        let req = self
            .client
            .get_shard_iterator()
            .stream_arn(stream.as_str())
            .shard_id(shard_id);
        let req = match start {
            StartPosition::TrimHorizon => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
            StartPosition::Latest => req.shard_iterator_type(ShardIteratorType::Latest),
            StartPosition::AtTimestamp(ms) => req
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from_millis(*ms)),
            StartPosition::AtSequence(s) => req
                .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                .starting_sequence_number(s.as_str()),
            StartPosition::AfterSequence(s) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(s.as_str()),
        };
        let out = req.send().await.map_err(|e| classify_sdk_error(&e))?;
        out.shard_iterator()
            .map(str::to_owned)
            .ok_or_else(|| RequestError {
                class: crate::model::FailureClass::Systemic,
                ambiguous: false,
                code: "NoShardIterator".to_owned(),
                message: format!("GetShardIterator on {stream} {shard_id} returned no iterator"),
            })
    }

    async fn get_records(
        &self,
        stream: &StreamArn,
        iterator: &str,
        limit: i32,
    ) -> Result<Page, RequestError> {
        let out = self
            .client
            .get_records()
            .stream_arn(stream.as_str())
            .shard_iterator(iterator)
            .limit(limit)
            .send()
            .await
            .map_err(|e| classify_sdk_error(&e))?;
        let records = out
            .records()
            .iter()
            .map(|r| to_source_record(stream, r))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Page {
            records,
            next_iterator: out.next_shard_iterator().map(str::to_owned),
            millis_behind_latest: out.millis_behind_latest(),
            child_shards: out.child_shards().iter().map(to_shard_info).collect(),
        })
    }

    async fn ensure_consumer(
        &self,
        stream: &StreamArn,
        name: &str,
    ) -> Result<String, RequestError> {
        let described = self
            .client
            .describe_stream_consumer()
            .stream_arn(stream.as_str())
            .consumer_name(name)
            .send()
            .await;
        let mut arn = match described {
            Ok(out) => out
                .consumer_description()
                .map(|d| d.consumer_arn().to_owned()),
            Err(e) => {
                let err = classify_sdk_error(&e);
                if err.code != "ResourceNotFoundException" {
                    return Err(err);
                }
                None
            }
        };
        if arn.is_none() {
            let out = self
                .client
                .register_stream_consumer()
                .stream_arn(stream.as_str())
                .consumer_name(name)
                .send()
                .await
                .map_err(|e| classify_sdk_error(&e))?;
            arn = out.consumer().map(|c| c.consumer_arn().to_owned());
        }
        let arn = arn.ok_or_else(|| RequestError {
            class: crate::model::FailureClass::Systemic,
            ambiguous: false,
            code: "NoConsumer".to_owned(),
            message: format!("consumer {name} of {stream} has no ARN"),
        })?;
        for _ in 0..600 {
            let out = self
                .client
                .describe_stream_consumer()
                .consumer_arn(&arn)
                .send()
                .await
                .map_err(|e| classify_sdk_error(&e))?;
            if out
                .consumer_description()
                .is_some_and(|d| *d.consumer_status() == ConsumerStatus::Active)
            {
                return Ok(arn);
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        Err(RequestError {
            class: crate::model::FailureClass::Transient,
            ambiguous: false,
            code: "ConsumerNotActive".to_owned(),
            message: format!("consumer {name} of {stream} did not become ACTIVE within a minute"),
        })
    }

    async fn subscribe(
        &self,
        stream: &StreamArn,
        consumer_arn: &str,
        shard_id: &str,
        start: &StartPosition,
    ) -> Result<Subscription, RequestError> {
        let position = StartingPosition::builder();
        let position = match start {
            StartPosition::TrimHorizon => position.r#type(ShardIteratorType::TrimHorizon),
            StartPosition::Latest => position.r#type(ShardIteratorType::Latest),
            StartPosition::AtTimestamp(ms) => position
                .r#type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from_millis(*ms)),
            StartPosition::AtSequence(s) => position
                .r#type(ShardIteratorType::AtSequenceNumber)
                .sequence_number(s.as_str()),
            StartPosition::AfterSequence(s) => position
                .r#type(ShardIteratorType::AfterSequenceNumber)
                .sequence_number(s.as_str()),
        }
        .build()
        .map_err(|e| RequestError {
            class: crate::model::FailureClass::Systemic,
            ambiguous: false,
            code: "RequestNotBuilt".to_owned(),
            message: e.to_string(),
        })?;
        let out = self
            .client
            .subscribe_to_shard()
            .consumer_arn(consumer_arn)
            .shard_id(shard_id)
            .starting_position(position)
            .send()
            .await
            .map_err(|e| classify_sdk_error(&e))?;
        Ok(Subscription {
            stream: stream.clone(),
            output: out,
        })
    }
}

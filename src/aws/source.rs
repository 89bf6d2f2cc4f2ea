//! Reading Kinesis shards (for local runs and read-back checks) and writing records (for the
//! demo, tests and benchmarks). Streams are addressed by ARN, so one client reaches any account
//! its credentials (or the emulator) allow.

use aws_config::SdkConfig;
use aws_sdk_kinesis::primitives::{Blob, DateTime};
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType};
use aws_sdk_kinesis::Client;

use super::classify_sdk_error;
use crate::model::{RequestError, SourceRecord, StreamArn};
use crate::seq::SequenceNumber;

pub use crate::model::ShardInfo;

/// Where to start reading a shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StartPosition {
    TrimHorizon,
    Latest,
    /// Milliseconds since the epoch.
    AtTimestamp(i64),
    AtSequence(SequenceNumber),
    AfterSequence(SequenceNumber),
}

/// One GetRecords answer.
#[derive(Clone, Debug, Default)]
pub struct Page {
    pub records: Vec<SourceRecord>,
    /// `None`: the shard is closed and fully read.
    pub next_iterator: Option<String>,
    pub millis_behind_latest: Option<i64>,
    /// From GetRecords' `ChildShards` when the shard has ended (with their parents).
    pub child_shards: Vec<ShardInfo>,
}

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

    /// Every shard of the stream, open and closed, paging by hand (`NextToken` alone on later pages).
    pub async fn list_shards(&self, stream: &StreamArn) -> Result<Vec<ShardInfo>, RequestError> {
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

    pub async fn shard_iterator(
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

    /// One GetRecords call. Records with unreadable sequence numbers are an error: they cannot
    /// be positioned, so nothing after them could be checkpointed safely.
    pub async fn get_records(
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
        let mut records = Vec::with_capacity(out.records().len());
        for r in out.records() {
            let seq = SequenceNumber::parse(r.sequence_number()).map_err(|e| RequestError {
                class: crate::model::FailureClass::Systemic,
                ambiguous: false,
                code: "BadSequenceNumber".to_owned(),
                message: format!("{stream}: {e}"),
            })?;
            records.push(SourceRecord {
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
            });
        }
        Ok(Page {
            records,
            next_iterator: out.next_shard_iterator().map(str::to_owned),
            millis_behind_latest: out.millis_behind_latest(),
            child_shards: out
                .child_shards()
                .iter()
                .map(|c| {
                    let parents = c.parent_shards();
                    ShardInfo {
                        shard_id: c.shard_id().to_owned(),
                        parent: parents.first().cloned(),
                        adjacent_parent: parents.get(1).cloned(),
                        closed: false,
                    }
                })
                .collect(),
        })
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

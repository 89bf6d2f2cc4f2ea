//! Reading the position map ([`crate::positions`]): a route's checkpoints with their marks,
//! the position pairs the replicator recorded beside them, and a stream's shards.

use aws_config::SdkConfig;
use aws_sdk_dynamodb::Client;

use super::checkpoints::read_marks;
use super::table::{checkpoint_pk, num, positions_pk, query_pk, text, Item};
use crate::model::{RequestError, StoreError, StreamArn};
use crate::positions::{PositionPair, ShardPositions, StreamShard};
use crate::seq::SequenceNumber;

/// The position map in the state table.
pub struct PositionMap {
    client: Client,
    table: String,
}

impl PositionMap {
    pub fn new(sdk: &SdkConfig, table: &str) -> Self {
        PositionMap {
            client: Client::new(sdk),
            table: table.to_owned(),
        }
    }

    /// Every item under `pk`, oldest sort key first.
    async fn query(&self, pk: String) -> Result<Vec<Item>, StoreError> {
        query_pk(&self.client, &self.table, &pk).await
    }

    /// What the map knows of each source shard of `route` that has a checkpoint: its pairs
    /// (expired ones left out) and its checkpoint.
    pub async fn shard_positions(
        &self,
        route: &str,
        now_ms: i64,
    ) -> Result<Vec<ShardPositions>, StoreError> {
        let mut shards = Vec::new();
        for cp in self.query(checkpoint_pk(route)).await? {
            let Some(shard_id) = text(&cp, "sk").map(str::to_owned) else {
                continue;
            };
            let checkpoint = text(&cp, "last_seq")
                .and_then(|t| SequenceNumber::parse(t).ok())
                .map(|seq| {
                    (
                        seq,
                        read_marks(cp.get("target_marks")),
                        num(&cp, "updated_at_ms").unwrap_or(0),
                    )
                });
            let pairs = self
                .query(positions_pk(route, &shard_id))
                .await?
                .iter()
                .filter(|p| num(p, "expires_at").is_none_or(|e| e * 1000 > now_ms))
                .filter_map(|p| pair(route, &shard_id, p))
                .collect();
            shards.push(ShardPositions {
                shard_id,
                pairs,
                checkpoint,
            });
        }
        Ok(shards)
    }
}

fn pair(route: &str, shard_id: &str, item: &Item) -> Option<PositionPair> {
    let seq = |name: &str| SequenceNumber::parse(text(item, name)?).ok();
    Some(PositionPair {
        route: route.to_owned(),
        shard_id: shard_id.to_owned(),
        from: seq("from")?,
        to: seq("to")?,
        before: read_marks(item.get("before")),
        after: read_marks(item.get("after")),
        started_ms: num(item, "started_ms")?,
        at_ms: num(item, "at_ms")?,
        to_arrival_ms: num(item, "to_arrival_ms"),
    })
}

/// A stream's shards, open and closed, with parents, hash ranges and closed shards' ends.
pub async fn stream_shards(
    sdk: &SdkConfig,
    stream: &StreamArn,
) -> Result<Vec<StreamShard>, RequestError> {
    let client = aws_sdk_kinesis::Client::new(sdk);
    let mut shards = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let req = match &token {
            Some(t) => client.list_shards().next_token(t),
            None => client.list_shards().stream_arn(stream.as_str()),
        };
        let out = req
            .send()
            .await
            .map_err(|e| super::classify_sdk_error(&e))?;
        for sh in out.shards() {
            let range = sh.hash_key_range();
            shards.push(StreamShard {
                shard_id: sh.shard_id().to_owned(),
                parents: sh
                    .parent_shard_id()
                    .into_iter()
                    .chain(sh.adjacent_parent_shard_id())
                    .map(str::to_owned)
                    .collect(),
                starting_hash_key: range
                    .map(|r| r.starting_hash_key().to_owned())
                    .unwrap_or_default(),
                ending_hash_key: range
                    .map(|r| r.ending_hash_key().to_owned())
                    .unwrap_or_default(),
                ending: sh
                    .sequence_number_range()
                    .and_then(|r| r.ending_sequence_number())
                    .and_then(|e| SequenceNumber::parse(e).ok()),
            });
        }
        token = out.next_token().map(str::to_owned);
        if token.is_none() {
            return Ok(shards);
        }
    }
}

/// When a stream was created (epoch seconds): part of KCL's multi-stream identifier.
pub async fn stream_created_s(sdk: &SdkConfig, stream: &StreamArn) -> Result<i64, RequestError> {
    let out = aws_sdk_kinesis::Client::new(sdk)
        .describe_stream_summary()
        .stream_arn(stream.as_str())
        .send()
        .await
        .map_err(|e| super::classify_sdk_error(&e))?;
    Ok(out
        .stream_description_summary()
        .map(|d| d.stream_creation_timestamp().secs())
        .unwrap_or(0))
}

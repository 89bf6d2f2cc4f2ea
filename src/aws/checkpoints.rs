//! Checkpoints in DynamoDB: one item per (route, source shard), keyed
//! `pk = "checkpoint#<route>"`, `sk = <shard id>`. The sequence number is a fixed-width
//! zero-padded string so the forward-only condition can compare it as text (real DynamoDB
//! rejects numbers over 38 digits; Kinesis uses 56).

use std::collections::HashMap;

use aws_config::SdkConfig;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;

use super::store_error;
use super::table::{
    checkpoint_pk, n, positions_pk, read_mode, s, write_heartbeat, POSITION_RETENTION_SECS,
};
use crate::control::machine::RouteMode;
use crate::model::{AdvanceOutcome, Checkpoint, CheckpointAdvance, HandledBeyond, StoreError};
use crate::ports::{CheckpointStore, ShardHeartbeat};
use crate::positions::{Marks, PositionPair};
use crate::seq::SequenceNumber;

pub struct DynamoCheckpoints {
    client: Client,
    table: String,
    /// Appended to route names: keeps a backfill's checkpoints apart from the live route's.
    namespace: String,
}

impl DynamoCheckpoints {
    pub fn new(sdk: &SdkConfig, table: &str) -> Self {
        DynamoCheckpoints {
            client: Client::new(sdk),
            table: table.to_owned(),
            namespace: String::new(),
        }
    }

    /// Checkpoints kept under `<route><namespace>` instead of `<route>`.
    pub fn in_namespace(mut self, namespace: &str) -> Self {
        self.namespace = namespace.to_owned();
        self
    }

    fn pk(&self, route: &str) -> String {
        checkpoint_pk(&format!("{route}{}", self.namespace))
    }
}

impl CheckpointStore for DynamoCheckpoints {
    async fn load(&self, route: &str, shard_id: &str) -> Result<Option<Checkpoint>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(self.pk(route)))
            .key("sk", s(shard_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_error(&e))?;
        let Some(item) = out.item() else {
            return Ok(None);
        };
        let text = item
            .get("last_seq")
            .and_then(|v| v.as_s().ok())
            .ok_or_else(|| StoreError {
                code: "CorruptCheckpoint".to_owned(),
                message: format!(
                    "checkpoint of {route} {shard_id} in {} has no string last_seq",
                    self.table
                ),
            })?;
        let last_seq = SequenceNumber::parse(text).map_err(|e| StoreError {
            code: "CorruptCheckpoint".to_owned(),
            message: format!("checkpoint of {route} {shard_id} in {}: {e}", self.table),
        })?;
        let updated_at_ms = item
            .get("updated_at_ms")
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        // What was handled past the first unhandled record; unreadable means none (the retry
        // then writes those records again, counted as possible duplicates).
        let beyond = (|| {
            let seq = |name: &str| {
                item.get(name)
                    .and_then(|v| v.as_s().ok())
                    .and_then(|t| SequenceNumber::parse(t).ok())
            };
            Some(HandledBeyond {
                anchor: seq("beyond_anchor")?,
                end: seq("beyond_end")?,
                len: item.get("beyond_len")?.as_n().ok()?.parse().ok()?,
                bits: item.get("beyond_bits")?.as_b().ok()?.as_ref().to_vec(),
            })
        })();
        Ok(Some(Checkpoint {
            last_seq,
            updated_at_ms,
            beyond,
            marks: read_marks(item.get("target_marks")),
        }))
    }

    async fn advance(&self, a: &CheckpointAdvance) -> Result<AdvanceOutcome, StoreError> {
        let mut values: HashMap<String, AttributeValue> = HashMap::from([
            (":seq".to_owned(), s(a.last_seq.to_padded())),
            (":route".to_owned(), s(&a.route)),
            (":src".to_owned(), s(&a.source_arn)),
            (":dst".to_owned(), s(&a.target_arn)),
            (
                ":written".to_owned(),
                AttributeValue::N(a.written.to_string()),
            ),
            (
                ":dead".to_owned(),
                AttributeValue::N(a.dead_lettered.to_string()),
            ),
            (":ms".to_owned(), AttributeValue::N(a.now_ms.to_string())),
            (
                ":at".to_owned(),
                s(chrono::DateTime::from_timestamp_millis(a.now_ms)
                    .unwrap_or_default()
                    .to_rfc3339()),
            ),
        ]);
        let mut update =
            "SET last_seq = :seq, route = :route, source_arn = :src, target_arn = :dst, \
                          updated_at_ms = :ms, updated_at = :at"
                .to_owned();
        if !a.marks.is_empty() {
            update.push_str(", target_marks = :marks");
            values.insert(":marks".to_owned(), marks_value(&a.marks));
        }
        if let Some(b) = &a.beyond {
            update.push_str(
                    ", beyond_anchor = :banchor, beyond_end = :bend, beyond_len = :blen, beyond_bits = :bbits",
                );
            values.insert(":banchor".to_owned(), s(b.anchor.to_padded()));
            values.insert(":bend".to_owned(), s(b.end.to_padded()));
            values.insert(":blen".to_owned(), AttributeValue::N(b.len.to_string()));
            values.insert(
                ":bbits".to_owned(),
                AttributeValue::B(aws_sdk_dynamodb::primitives::Blob::new(b.bits.clone())),
            );
        }
        update.push_str(" ADD records_written :written, records_dead_lettered :dead");
        if a.beyond.is_none() {
            update.push_str(" REMOVE beyond_anchor, beyond_end, beyond_len, beyond_bits");
        }
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(self.pk(&a.route)))
            .key("sk", s(&a.shard_id))
            .update_expression(update)
            // Forward only; the same position again when only what was handled past it grew.
            .condition_expression("attribute_not_exists(last_seq) OR last_seq <= :seq")
            .set_expression_attribute_values(Some(values))
            .send()
            .await;
        match result {
            Ok(_) => Ok(AdvanceOutcome::Moved),
            Err(SdkError::ServiceError(e))
                if matches!(e.err(), UpdateItemError::ConditionalCheckFailedException(_)) =>
            {
                Ok(AdvanceOutcome::AlreadyFurther)
            }
            Err(e) => Err(store_error(&e)),
        }
    }

    async fn mode(&self, route: &str) -> Result<RouteMode, StoreError> {
        read_mode(&self.client, &self.table, route).await
    }

    async fn record_position(&self, pair: &PositionPair) -> Result<(), StoreError> {
        let route = format!("{}{}", pair.route, self.namespace);
        let mut item = HashMap::from([
            ("pk".to_owned(), s(positions_pk(&route, &pair.shard_id))),
            ("sk".to_owned(), s(pair.to.to_padded())),
            ("from".to_owned(), s(pair.from.as_str())),
            ("to".to_owned(), s(pair.to.as_str())),
            ("before".to_owned(), marks_value(&pair.before)),
            ("after".to_owned(), marks_value(&pair.after)),
            ("started_ms".to_owned(), n(pair.started_ms)),
            ("at_ms".to_owned(), n(pair.at_ms)),
            (
                "expires_at".to_owned(),
                n(pair.at_ms / 1000 + POSITION_RETENTION_SECS),
            ),
        ]);
        if let Some(ms) = pair.to_arrival_ms {
            item.insert("to_arrival_ms".to_owned(), n(ms));
        }
        self.client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| store_error(&e))?;
        Ok(())
    }

    async fn heartbeat(&self, heartbeat: &ShardHeartbeat) -> Result<(), StoreError> {
        let mut hb = heartbeat.clone();
        hb.route = format!("{}{}", hb.route, self.namespace);
        write_heartbeat(&self.client, &self.table, &hb).await
    }
}

/// Marks as a DynamoDB map: target shard → sequence number (plain digits).
pub(crate) fn marks_value(marks: &Marks) -> AttributeValue {
    AttributeValue::M(
        marks
            .iter()
            .map(|(shard, seq)| (shard.clone(), s(seq.as_str())))
            .collect(),
    )
}

/// Marks from a DynamoDB map; entries that are not sequence numbers are left out.
pub(crate) fn read_marks(value: Option<&AttributeValue>) -> Marks {
    value
        .and_then(|v| v.as_m().ok())
        .map(|m| {
            m.iter()
                .filter_map(|(shard, v)| {
                    let seq = SequenceNumber::parse(v.as_s().ok()?).ok()?;
                    Some((shard.clone(), seq))
                })
                .collect()
        })
        .unwrap_or_default()
}

//! A KCL application's lease table ([`crate::kcl`]): read every lease, write the destination
//! stream's leases, delete the source stream's, each conditional on the lease counter seen.

use std::collections::HashMap;

use aws_config::SdkConfig;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;

use super::store_error;
use super::table::{n, num, s, text, Item};
use crate::kcl::{KclLease, MoveMarker, NewLease};
use crate::model::StoreError;

pub struct KclTable {
    client: Client,
    table: String,
}

impl KclTable {
    pub fn new(sdk: &SdkConfig, table: &str) -> Self {
        KclTable {
            client: Client::new(sdk),
            table: table.to_owned(),
        }
    }

    pub fn name(&self) -> &str {
        &self.table
    }

    /// Every lease in the table (consistent reads).
    pub async fn leases(&self) -> Result<Vec<KclLease>, StoreError> {
        let mut leases = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| store_error(&e))?;
            for item in out.items() {
                // KCL 3.x may keep other entities (its coordinator state, worker metrics) in
                // the lease table, tagged with `entityType`; leases are untagged or `LEASE`.
                let lease = text(item, "entityType").is_none_or(|t| t == "LEASE");
                let Some(key) = text(item, "leaseKey").filter(|_| lease) else {
                    continue;
                };
                let (stream, shard_id) = KclLease::split_key(key);
                leases.push(KclLease {
                    key: key.to_owned(),
                    stream,
                    shard_id,
                    checkpoint: text(item, "checkpoint")
                        .unwrap_or("TRIM_HORIZON")
                        .to_owned(),
                    sub_sequence: num(item, "checkpointSubSequenceNumber").unwrap_or(0),
                    counter: num(item, "leaseCounter").unwrap_or(0),
                    owner: text(item, "leaseOwner")
                        .filter(|o| !o.is_empty())
                        .map(str::to_owned),
                    tagged: text(item, "entityType").is_some(),
                    moved: text(item, "fanoutMovedFrom").and_then(|m| serde_json::from_str(m).ok()),
                });
            }
            match out.last_evaluated_key() {
                Some(key) if !key.is_empty() => start = Some(key.clone()),
                _ => return Ok(leases),
            }
        }
    }

    /// Writes `lease`, unowned, counter 0: only if no lease has its key, or the one there
    /// still has `counter` (nobody took it since it was read). `tagged`: the table's leases
    /// carry `entityType = LEASE` (KCL 3.x), so this one does too.
    pub async fn put(
        &self,
        lease: &NewLease,
        counter: Option<i64>,
        tagged: bool,
        marker: &MoveMarker,
    ) -> Result<(), StoreError> {
        let mut item: Item = HashMap::from([
            ("leaseKey".to_owned(), s(&lease.key)),
            ("checkpoint".to_owned(), s(&lease.checkpoint)),
            ("checkpointSubSequenceNumber".to_owned(), n(0)),
            ("leaseCounter".to_owned(), n(0)),
            ("ownerSwitchesSinceCheckpoint".to_owned(), n(0)),
            ("startingHashKey".to_owned(), s(&lease.starting_hash_key)),
            ("endingHashKey".to_owned(), s(&lease.ending_hash_key)),
        ]);
        if tagged {
            item.insert("entityType".to_owned(), s("LEASE"));
        }
        item.insert(
            "fanoutMovedFrom".to_owned(),
            s(serde_json::to_string(marker).expect("a marker serializes")),
        );
        if !lease.parents.is_empty() {
            item.insert(
                "parentShardId".to_owned(),
                AttributeValue::Ss(lease.parents.clone()),
            );
        }
        if let Some(stream) = &lease.stream {
            item.insert("streamName".to_owned(), s(stream));
            item.insert("shardId".to_owned(), s(&lease.shard_id));
        }
        let mut req = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item));
        req = match counter {
            Some(c) => req
                .condition_expression("attribute_not_exists(leaseKey) OR leaseCounter = :c")
                .expression_attribute_values(":c", n(c)),
            None => req.condition_expression("attribute_not_exists(leaseKey)"),
        };
        req.send().await.map_err(|e| store_error(&e))?;
        Ok(())
    }

    /// Deletes `lease` if its counter is still the one read.
    pub async fn delete(&self, lease: &KclLease) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.table)
            .key("leaseKey", s(&lease.key))
            .condition_expression("attribute_not_exists(leaseKey) OR leaseCounter = :c")
            .expression_attribute_values(":c", n(lease.counter))
            .send()
            .await
            .map_err(|e| store_error(&e))?;
        Ok(())
    }
}

//! Shard leases in the state table (see [`crate::lease`] for the rules).
//!
//! Items:
//! - lease: `pk = "lease#<name>"`, `sk = <shard id>`; `owner` (absent when free), `counter`
//!   (the fencing token), `expires_at_ms`, `position` ("" | padded sequence number |
//!   "SHARD_END"), `heartbeat_ms`, `millis_behind`, `caught_up`, `updated_at`.
//! - history: `pk = "lease-history#<name>"`, `sk = "<shard id>#<counter, 20 digits>"`; one
//!   item per epoch: `owner`, `acquired_at_ms`, `from_position`, `last_position`,
//!   `checkpoints`, `last_checkpoint_ms`, `released_at_ms`.
//!
//! Taking a lease and opening its epoch is one transaction; so is every checkpoint (lease
//! position + epoch progress) and every release. All three are conditional on the counter.

use std::collections::HashMap;

use aws_config::SdkConfig;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};
use aws_sdk_dynamodb::Client;

use super::store_error;
use crate::lease::{Epoch, Heartbeat, Lease, LeaseRecord, LeaseStore, Position};
use crate::model::StoreError;

pub fn lease_pk(name: &str) -> String {
    format!("lease#{name}")
}

pub fn history_pk(name: &str) -> String {
    format!("lease-history#{name}")
}

fn history_sk(shard_id: &str, counter: u64) -> String {
    format!("{shard_id}#{counter:020}")
}

#[derive(Clone)]
pub struct DynamoLeases {
    client: Client,
    table: String,
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339()
}

fn built(e: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError {
        code: "RequestNotBuilt".to_owned(),
        message: e.to_string(),
    }
}

type Item = HashMap<String, AttributeValue>;

fn get_s<'a>(item: &'a Item, k: &str) -> Option<&'a str> {
    item.get(k).and_then(|v| v.as_s().ok()).map(String::as_str)
}

fn get_n(item: &Item, k: &str) -> Option<i64> {
    item.get(k)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

fn corrupt(what: &str, e: String) -> StoreError {
    StoreError {
        code: "CorruptLease".to_owned(),
        message: format!("{what}: {e}"),
    }
}

fn record_from(item: &Item) -> Result<LeaseRecord, StoreError> {
    let shard_id = get_s(item, "sk").unwrap_or_default().to_owned();
    Ok(LeaseRecord {
        position: Position::from_stored(get_s(item, "position").unwrap_or_default())
            .map_err(|e| corrupt(&shard_id, e))?,
        owner: get_s(item, "owner").map(str::to_owned),
        counter: get_n(item, "counter").unwrap_or(0) as u64,
        expires_at_ms: get_n(item, "expires_at_ms").unwrap_or(0),
        heartbeat_ms: get_n(item, "heartbeat_ms").unwrap_or(0),
        millis_behind: get_n(item, "millis_behind"),
        caught_up: item
            .get("caught_up")
            .and_then(|v| v.as_bool().ok())
            .copied()
            .unwrap_or(false),
        shard_id,
    })
}

fn epoch_from(item: &Item) -> Result<Epoch, StoreError> {
    let sk = get_s(item, "sk").unwrap_or_default();
    let (shard_id, counter) = sk
        .rsplit_once('#')
        .ok_or_else(|| corrupt(sk, "history key without #counter".to_owned()))?;
    let pos = |k: &str| {
        Position::from_stored(get_s(item, k).unwrap_or_default()).map_err(|e| corrupt(sk, e))
    };
    Ok(Epoch {
        shard_id: shard_id.to_owned(),
        counter: counter
            .parse()
            .map_err(|_| corrupt(sk, "bad counter".to_owned()))?,
        owner: get_s(item, "owner").unwrap_or_default().to_owned(),
        acquired_at_ms: get_n(item, "acquired_at_ms").unwrap_or(0),
        from: pos("from_position")?,
        last: pos("last_position")?,
        checkpoints: get_n(item, "checkpoints").unwrap_or(0) as u64,
        last_checkpoint_ms: get_n(item, "last_checkpoint_ms"),
        released_at_ms: get_n(item, "released_at_ms"),
    })
}

/// Did a transaction fail only because a condition did not hold?
fn condition_failed(
    e: &SdkError<TransactWriteItemsError, aws_smithy_runtime_api::http::Response>,
) -> bool {
    match e {
        SdkError::ServiceError(se) => match se.err() {
            TransactWriteItemsError::TransactionCanceledException(t) => t
                .cancellation_reasons()
                .iter()
                .any(|r| r.code() == Some("ConditionalCheckFailed")),
            _ => false,
        },
        _ => false,
    }
}

impl DynamoLeases {
    pub fn new(sdk: &SdkConfig, table: &str) -> Self {
        DynamoLeases {
            client: Client::new(sdk),
            table: table.to_owned(),
        }
    }

    async fn query_all(&self, pk: String) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(&pk))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| store_error(&e))?;
            items.extend(out.items().iter().cloned());
            match out.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok(items),
            }
        }
    }

    fn lease_update(&self, lease: &Lease) -> aws_sdk_dynamodb::types::builders::UpdateBuilder {
        Update::builder()
            .table_name(&self.table)
            .key("pk", s(lease_pk(&lease.name)))
            .key("sk", s(&lease.shard_id))
            .condition_expression("#owner = :me AND #counter = :c")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#counter", "counter")
            .expression_attribute_values(":me", s(&lease.owner))
            .expression_attribute_values(":c", n(lease.counter))
    }

    fn history_update(&self, lease: &Lease) -> aws_sdk_dynamodb::types::builders::UpdateBuilder {
        Update::builder()
            .table_name(&self.table)
            .key("pk", s(history_pk(&lease.name)))
            .key("sk", s(history_sk(&lease.shard_id, lease.counter)))
    }

    async fn transact(&self, items: Vec<TransactWriteItem>) -> Result<bool, StoreError> {
        match self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if condition_failed(&e) => Ok(false),
            Err(e) => Err(store_error(&e)),
        }
    }
}

impl LeaseStore for DynamoLeases {
    async fn list(&self, name: &str) -> Result<Vec<LeaseRecord>, StoreError> {
        self.query_all(lease_pk(name))
            .await?
            .iter()
            .map(record_from)
            .collect()
    }

    async fn acquire(
        &self,
        name: &str,
        shard_id: &str,
        owner: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<Option<(Lease, Position)>, StoreError> {
        let current = self
            .client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(lease_pk(name)))
            .key("sk", s(shard_id))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_error(&e))?;
        let (seen, position) = match current.item() {
            Some(item) => {
                let r = record_from(item)?;
                if !r.claimable(now_ms) {
                    return Ok(None);
                }
                (Some(r.counter), r.position)
            }
            None => (None, Position::Start),
        };
        let counter = seen.unwrap_or(0) + 1;
        let mut update = Update::builder()
            .table_name(&self.table)
            .key("pk", s(lease_pk(name)))
            .key("sk", s(shard_id))
            .update_expression(
                "SET #owner = :me, #counter = :next, expires_at_ms = :exp, heartbeat_ms = :now, \
                 #position = :pos, caught_up = :f, updated_at = :at",
            )
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#counter", "counter")
            .expression_attribute_names("#position", "position")
            .expression_attribute_values(":me", s(owner))
            .expression_attribute_values(":next", n(counter))
            .expression_attribute_values(":exp", n(now_ms + ttl_ms))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":pos", s(position.to_stored()))
            .expression_attribute_values(":f", AttributeValue::Bool(false))
            .expression_attribute_values(":at", s(rfc3339(now_ms)));
        update = match seen {
            None => update.condition_expression("attribute_not_exists(pk)"),
            Some(c) => update
                .condition_expression(
                    "#counter = :seen AND (attribute_not_exists(#owner) OR expires_at_ms < :now)",
                )
                .expression_attribute_values(":seen", n(c)),
        };
        let history = Put::builder()
            .table_name(&self.table)
            .item("pk", s(history_pk(name)))
            .item("sk", s(history_sk(shard_id, counter)))
            .item("owner", s(owner))
            .item("acquired_at_ms", n(now_ms))
            .item("acquired_at", s(rfc3339(now_ms)))
            .item("from_position", s(position.to_stored()))
            .item("last_position", s(position.to_stored()))
            .item("checkpoints", n(0))
            .condition_expression("attribute_not_exists(pk)");
        let items = vec![
            TransactWriteItem::builder()
                .update(update.build().map_err(built)?)
                .build(),
            TransactWriteItem::builder()
                .put(history.build().map_err(built)?)
                .build(),
        ];
        Ok(self.transact(items).await?.then(|| {
            (
                Lease {
                    name: name.to_owned(),
                    shard_id: shard_id.to_owned(),
                    owner: owner.to_owned(),
                    counter,
                },
                position,
            )
        }))
    }

    async fn renew(
        &self,
        lease: &Lease,
        heartbeat: Heartbeat,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(lease_pk(&lease.name)))
            .key("sk", s(&lease.shard_id))
            .condition_expression("#owner = :me AND #counter = :c")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#counter", "counter")
            .expression_attribute_values(":me", s(&lease.owner))
            .expression_attribute_values(":c", n(lease.counter))
            .expression_attribute_values(":exp", n(now_ms + ttl_ms))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":cu", AttributeValue::Bool(heartbeat.caught_up))
            .expression_attribute_values(":at", s(rfc3339(now_ms)));
        let mut set =
            "SET expires_at_ms = :exp, heartbeat_ms = :now, caught_up = :cu, updated_at = :at"
                .to_owned();
        if let Some(b) = heartbeat.millis_behind {
            set.push_str(", millis_behind = :mb");
            req = req.expression_attribute_values(":mb", n(b));
        }
        match req.update_expression(set).send().await {
            Ok(_) => Ok(true),
            Err(SdkError::ServiceError(e))
                if matches!(e.err(), UpdateItemError::ConditionalCheckFailedException(_)) =>
            {
                Ok(false)
            }
            Err(e) => Err(store_error(&e)),
        }
    }

    async fn checkpoint(
        &self,
        lease: &Lease,
        position: &Position,
        heartbeat: Heartbeat,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let mut set = "SET #position = :pos, expires_at_ms = :exp, heartbeat_ms = :now, \
                       caught_up = :cu, updated_at = :at"
            .to_owned();
        if heartbeat.millis_behind.is_some() {
            set.push_str(", millis_behind = :mb");
        }
        let mut update = self
            .lease_update(lease)
            .update_expression(set)
            .expression_attribute_names("#position", "position")
            .expression_attribute_values(":pos", s(position.to_stored()))
            .expression_attribute_values(":exp", n(now_ms + ttl_ms))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":cu", AttributeValue::Bool(heartbeat.caught_up))
            .expression_attribute_values(":at", s(rfc3339(now_ms)));
        if let Some(b) = heartbeat.millis_behind {
            update = update.expression_attribute_values(":mb", n(b));
        }
        let history = self
            .history_update(lease)
            .update_expression(
                "SET last_position = :pos, last_checkpoint_ms = :now ADD checkpoints :one",
            )
            .expression_attribute_values(":pos", s(position.to_stored()))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":one", n(1));
        self.transact(vec![
            TransactWriteItem::builder()
                .update(update.build().map_err(built)?)
                .build(),
            TransactWriteItem::builder()
                .update(history.build().map_err(built)?)
                .build(),
        ])
        .await
    }

    async fn release(&self, lease: &Lease, now_ms: i64) -> Result<bool, StoreError> {
        let update = self
            .lease_update(lease)
            .update_expression(
                "REMOVE #owner SET expires_at_ms = :zero, caught_up = :f, updated_at = :at",
            )
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":f", AttributeValue::Bool(false))
            .expression_attribute_values(":at", s(rfc3339(now_ms)));
        let history = self
            .history_update(lease)
            .update_expression("SET released_at_ms = :now")
            .expression_attribute_values(":now", n(now_ms));
        self.transact(vec![
            TransactWriteItem::builder()
                .update(update.build().map_err(built)?)
                .build(),
            TransactWriteItem::builder()
                .update(history.build().map_err(built)?)
                .build(),
        ])
        .await
    }

    async fn history(&self, name: &str) -> Result<Vec<Epoch>, StoreError> {
        self.query_all(history_pk(name))
            .await?
            .iter()
            .map(epoch_from)
            .collect()
    }
}

/// Leases in the state table, or in memory when there is no table.
pub enum Leases {
    Memory(crate::lease::MemoryLeases),
    Dynamo(DynamoLeases),
}

impl LeaseStore for Leases {
    async fn list(&self, name: &str) -> Result<Vec<LeaseRecord>, StoreError> {
        match self {
            Leases::Memory(m) => m.list(name).await,
            Leases::Dynamo(d) => d.list(name).await,
        }
    }

    async fn acquire(
        &self,
        name: &str,
        shard_id: &str,
        owner: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<Option<(Lease, Position)>, StoreError> {
        match self {
            Leases::Memory(m) => m.acquire(name, shard_id, owner, ttl_ms, now_ms).await,
            Leases::Dynamo(d) => d.acquire(name, shard_id, owner, ttl_ms, now_ms).await,
        }
    }

    async fn renew(
        &self,
        lease: &Lease,
        heartbeat: Heartbeat,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        match self {
            Leases::Memory(m) => m.renew(lease, heartbeat, ttl_ms, now_ms).await,
            Leases::Dynamo(d) => d.renew(lease, heartbeat, ttl_ms, now_ms).await,
        }
    }

    async fn checkpoint(
        &self,
        lease: &Lease,
        position: &Position,
        heartbeat: Heartbeat,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        match self {
            Leases::Memory(m) => {
                m.checkpoint(lease, position, heartbeat, ttl_ms, now_ms)
                    .await
            }
            Leases::Dynamo(d) => {
                d.checkpoint(lease, position, heartbeat, ttl_ms, now_ms)
                    .await
            }
        }
    }

    async fn release(&self, lease: &Lease, now_ms: i64) -> Result<bool, StoreError> {
        match self {
            Leases::Memory(m) => m.release(lease, now_ms).await,
            Leases::Dynamo(d) => d.release(lease, now_ms).await,
        }
    }

    async fn history(&self, name: &str) -> Result<Vec<Epoch>, StoreError> {
        match self {
            Leases::Memory(m) => m.history(name).await,
            Leases::Dynamo(d) => d.history(name).await,
        }
    }
}

//! Shard leases in the state table (see [`crate::lease`] for the rules).
//!
//! Items:
//! - lease: `pk = "lease#<name>"`, `sk = <shard id>`; `owner` (absent when free), `counter`
//!   (the fencing token), `expires_at_ms`, `position` ("" | padded sequence number |
//!   "SHARD_END"), heartbeat fields (`heartbeat_ms`, `millis_behind`, `caught_up`), and the
//!   current tenure (`epoch_owner`, `acquired_at_ms`, `from_position`, `checkpoints`,
//!   `last_checkpoint_ms`, `released_at_ms`).
//! - history: `pk = "lease-history#<name>"`, `sk = "<shard id>#<counter, 20 digits>"`; one
//!   item per tenure ("epoch"): `owner`, `acquired_at_ms`, `from_position`, and once it is
//!   over, `last_position`, `checkpoints`, `last_checkpoint_ms`, `released_at_ms`.
//!
//! Every lease write is ONE conditional UpdateItem on the lease item (no transactions: moto
//! rolls a failed transaction back by restoring a copy of the whole table, which undoes other
//! writers' concurrent updates). The history is derived from lease items: a tenure's final
//! figures are copied into its history item when it is released, or by whoever takes the
//! lease over; [`LeaseStore::history`] fills the current tenure in from the lease item.

use std::collections::HashMap;

use aws_config::SdkConfig;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use aws_sdk_dynamodb::Client;

use super::store_error;
use super::table::{heartbeat_pk, lease_history_pk as history_pk, lease_pk, n, query_pk, s};
use crate::lease::{Epoch, Heartbeat, Lease, LeaseRecord, LeaseStore, Position};
use crate::model::StoreError;

fn history_sk(shard_id: &str, counter: u64) -> String {
    format!("{shard_id}#{counter:020}")
}

#[derive(Clone)]
pub struct DynamoLeases {
    client: Client,
    table: String,
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339()
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
    let from = pos("from_position")?;
    Ok(Epoch {
        shard_id: shard_id.to_owned(),
        counter: counter
            .parse()
            .map_err(|_| corrupt(sk, "bad counter".to_owned()))?,
        owner: get_s(item, "owner").unwrap_or_default().to_owned(),
        acquired_at_ms: get_n(item, "acquired_at_ms").unwrap_or(0),
        last: if item.contains_key("last_position") {
            pos("last_position")?
        } else {
            from.clone()
        },
        from,
        checkpoints: get_n(item, "checkpoints").unwrap_or(0) as u64,
        last_checkpoint_ms: get_n(item, "last_checkpoint_ms"),
        released_at_ms: get_n(item, "released_at_ms"),
    })
}

/// The tenure a lease item describes (`None` for a lease never taken).
fn epoch_of_lease(item: &Item) -> Result<Option<Epoch>, StoreError> {
    let shard_id = get_s(item, "sk").unwrap_or_default().to_owned();
    let counter = get_n(item, "counter").unwrap_or(0);
    if counter == 0 {
        return Ok(None);
    }
    let pos = |k: &str| {
        Position::from_stored(get_s(item, k).unwrap_or_default()).map_err(|e| corrupt(&shard_id, e))
    };
    Ok(Some(Epoch {
        counter: counter as u64,
        owner: get_s(item, "epoch_owner").unwrap_or_default().to_owned(),
        acquired_at_ms: get_n(item, "acquired_at_ms").unwrap_or(0),
        from: pos("from_position")?,
        last: pos("position")?,
        checkpoints: get_n(item, "checkpoints").unwrap_or(0) as u64,
        last_checkpoint_ms: get_n(item, "last_checkpoint_ms"),
        released_at_ms: get_n(item, "released_at_ms"),
        shard_id,
    }))
}

fn is_condition_failure(
    e: &SdkError<UpdateItemError, aws_smithy_runtime_api::http::Response>,
) -> bool {
    matches!(e, SdkError::ServiceError(se) if matches!(se.err(), UpdateItemError::ConditionalCheckFailedException(_)))
}

impl DynamoLeases {
    pub fn new(sdk: &SdkConfig, table: &str) -> Self {
        DynamoLeases {
            client: Client::new(sdk),
            table: table.to_owned(),
        }
    }

    async fn query_all(&self, pk: String) -> Result<Vec<Item>, StoreError> {
        query_pk(&self.client, &self.table, &pk).await
    }

    /// A fenced update of a held lease: `Ok(false)` when the lease is no longer ours.
    /// The shard heartbeat the controller reads (`heartbeat#<lease name>`, see
    /// [`super::control`]): the runner proves an idle shard alive with it. Best effort: a
    /// failure is a warning, the lease is what matters here.
    async fn shard_heartbeat(&self, lease: &Lease, heartbeat: Heartbeat, now_ms: i64) {
        let mut values = vec![
            (":now", n(now_ms)),
            (":by", s(format!("runner:{}", lease.owner))),
            (":cu", AttributeValue::Bool(heartbeat.caught_up)),
        ];
        let mut set = "SET at_ms = :now, #by = :by, caught_up = :cu".to_owned();
        if let Some(b) = heartbeat.millis_behind {
            set.push_str(", millis_behind = :mb");
            values.push((":mb", n(b)));
        }
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(heartbeat_pk(&lease.name)))
            .key("sk", s(&lease.shard_id))
            .update_expression(set)
            .expression_attribute_names("#by", "by")
            .set_expression_attribute_values(Some(
                values.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            ))
            .send()
            .await;
        if let Err(e) = result {
            tracing::warn!(lease = %lease.name, shard = %lease.shard_id, error = %super::store_error(&e), "Shard heartbeat not written.");
        }
    }

    async fn fenced(
        &self,
        lease: &Lease,
        update: &str,
        values: Vec<(&str, AttributeValue)>,
        return_new: bool,
    ) -> Result<Option<Item>, StoreError> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(lease_pk(&lease.name)))
            .key("sk", s(&lease.shard_id))
            .update_expression(update)
            .condition_expression("#owner = :me AND #counter = :c")
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_names("#counter", "counter")
            .expression_attribute_values(":me", s(&lease.owner))
            .expression_attribute_values(":c", n(lease.counter));
        if update.contains("#position") {
            req = req.expression_attribute_names("#position", "position");
        }
        for (k, v) in values {
            req = req.expression_attribute_values(k, v);
        }
        if return_new {
            req = req.return_values(ReturnValue::AllNew);
        }
        match req.send().await {
            Ok(out) => Ok(Some(out.attributes().cloned().unwrap_or_default())),
            Err(e) if is_condition_failure(&e) => Ok(None),
            Err(e) => Err(store_error(&e)),
        }
    }

    /// Writes a tenure's history item from its lease item: when it ends (release), or when
    /// the next owner takes over (whatever the previous owner managed to write before it died).
    async fn close_epoch(&self, name: &str, item: &Item) -> Result<(), StoreError> {
        let Some(epoch) = epoch_of_lease(item)? else {
            return Ok(());
        };
        let mut set = vec![
            "#owner = :owner",
            "acquired_at_ms = :acq",
            "from_position = :from",
            "last_position = :pos",
            "checkpoints = :cps",
        ];
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(history_pk(name)))
            .key("sk", s(history_sk(&epoch.shard_id, epoch.counter)))
            .expression_attribute_names("#owner", "owner")
            .expression_attribute_values(":owner", s(&epoch.owner))
            .expression_attribute_values(":acq", n(epoch.acquired_at_ms))
            .expression_attribute_values(":from", s(epoch.from.to_stored()))
            .expression_attribute_values(":pos", s(epoch.last.to_stored()))
            .expression_attribute_values(":cps", n(epoch.checkpoints));
        if let Some(ms) = epoch.last_checkpoint_ms {
            set.push("last_checkpoint_ms = :lc");
            req = req.expression_attribute_values(":lc", n(ms));
        }
        if let Some(ms) = epoch.released_at_ms {
            set.push("released_at_ms = :rel");
            req = req.expression_attribute_values(":rel", n(ms));
        }
        // Positions only move forward within a tenure (and "" < digits < "SHARD_END" as
        // text), so an older snapshot arriving late never overwrites a newer one.
        match req
            .update_expression(format!("SET {}", set.join(", ")))
            .condition_expression("attribute_not_exists(last_position) OR last_position <= :pos")
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if is_condition_failure(&e) => Ok(()),
            Err(e) => Err(store_error(&e)),
        }
    }

    fn heartbeat_values(
        heartbeat: Heartbeat,
        ttl_ms: i64,
        now_ms: i64,
    ) -> (String, Vec<(&'static str, AttributeValue)>) {
        let mut set =
            "expires_at_ms = :exp, heartbeat_ms = :now, caught_up = :cu, updated_at = :at"
                .to_owned();
        let mut values = vec![
            (":exp", n(now_ms + ttl_ms)),
            (":now", n(now_ms)),
            (":cu", AttributeValue::Bool(heartbeat.caught_up)),
            (":at", s(rfc3339(now_ms))),
        ];
        if let Some(b) = heartbeat.millis_behind {
            set.push_str(", millis_behind = :mb");
            values.push((":mb", n(b)));
        }
        (set, values)
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
        let previous = current.item().cloned();
        let (seen, position) = match &previous {
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
        // Close the previous tenure's history first, from a snapshot the condition below
        // proves current: whoever wins, no crash after this point can lose that tenure's end.
        if let Some(item) = &previous {
            self.close_epoch(name, item).await?;
        }
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(lease_pk(name)))
            .key("sk", s(shard_id))
            .update_expression(
                "SET #owner = :me, epoch_owner = :me, #counter = :next, expires_at_ms = :exp, \
                 heartbeat_ms = :now, acquired_at_ms = :now, #position = :pos, \
                 from_position = :pos, caught_up = :f, checkpoints = :zero, updated_at = :at \
                 REMOVE last_checkpoint_ms, released_at_ms",
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
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":at", s(rfc3339(now_ms)));
        req = match seen {
            None => req.condition_expression("attribute_not_exists(pk)"),
            Some(c) => req
                .condition_expression(
                    "#counter = :seen AND #position = :pos AND \
                     (attribute_not_exists(#owner) OR expires_at_ms < :now)",
                )
                .expression_attribute_values(":seen", n(c)),
        };
        match req.send().await {
            Ok(_) => {}
            Err(e) if is_condition_failure(&e) => return Ok(None),
            Err(e) => return Err(store_error(&e)),
        }
        // The lease is ours: open our tenure's history (the lease item carries it too).
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(history_pk(name)))
            .item("sk", s(history_sk(shard_id, counter)))
            .item("owner", s(owner))
            .item("acquired_at_ms", n(now_ms))
            .item("acquired_at", s(rfc3339(now_ms)))
            .item("from_position", s(position.to_stored()))
            .send()
            .await
            .map_err(|e| store_error(&e))?;
        Ok(Some((
            Lease {
                name: name.to_owned(),
                shard_id: shard_id.to_owned(),
                owner: owner.to_owned(),
                counter,
            },
            position,
        )))
    }

    async fn renew(
        &self,
        lease: &Lease,
        heartbeat: Heartbeat,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let (set, values) = Self::heartbeat_values(heartbeat, ttl_ms, now_ms);
        let held = self
            .fenced(lease, &format!("SET {set}"), values, false)
            .await?
            .is_some();
        if held {
            self.shard_heartbeat(lease, heartbeat, now_ms).await;
        }
        Ok(held)
    }

    async fn checkpoint(
        &self,
        lease: &Lease,
        position: &Position,
        heartbeat: Heartbeat,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let (set, mut values) = Self::heartbeat_values(heartbeat, ttl_ms, now_ms);
        values.push((":pos", s(position.to_stored())));
        values.push((":one", n(1)));
        let held = self
            .fenced(
                lease,
                &format!(
                    "SET #position = :pos, last_checkpoint_ms = :now, {set} ADD checkpoints :one"
                ),
                values,
                false,
            )
            .await?
            .is_some();
        if held {
            self.shard_heartbeat(lease, heartbeat, now_ms).await;
        }
        Ok(held)
    }

    async fn release(&self, lease: &Lease, now_ms: i64) -> Result<bool, StoreError> {
        let item = self
            .fenced(
                lease,
                "REMOVE #owner SET expires_at_ms = :zero, caught_up = :f, released_at_ms = :now, \
                 updated_at = :at",
                vec![
                    (":zero", n(0)),
                    (":f", AttributeValue::Bool(false)),
                    (":now", n(now_ms)),
                    (":at", s(rfc3339(now_ms))),
                ],
                true,
            )
            .await?;
        match item {
            Some(item) => {
                self.close_epoch(&lease.name, &item).await?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn history(&self, name: &str) -> Result<Vec<Epoch>, StoreError> {
        let mut epochs: Vec<Epoch> = self
            .query_all(history_pk(name))
            .await?
            .iter()
            .map(epoch_from)
            .collect::<Result<_, _>>()?;
        // The tenure under way (or one whose owner died before its history was written):
        // its figures live in the lease item, which wins.
        for item in self.query_all(lease_pk(name)).await? {
            if let Some(current) = epoch_of_lease(&item)? {
                epochs
                    .retain(|e| !(e.shard_id == current.shard_id && e.counter == current.counter));
                epochs.push(current);
            }
        }
        epochs.sort_by(|a, b| (&a.shard_id, a.counter).cmp(&(&b.shard_id, b.counter)));
        Ok(epochs)
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

//! The state table: one DynamoDB table (string `pk` hash key, string `sk` range key). Every
//! kind of item it holds, and so every key prefix, is named here; the adapters that read and
//! write the items (checkpoints, control, leases, verifications) build their keys with these.
//!
//! | item | pk | sk | written by |
//! |---|---|---|---|
//! | checkpoint of a route's shard | `checkpoint#<route>` | `<shard id>` | replicator, local runner |
//! | replication mode of a route | `mode#<route>` | `mode` | controller |
//! | shard heartbeat | `heartbeat#<route>` | `<shard id>` | replicator, local runner |
//! | migration state (`version` guards every change) | `migration#<name>` | `state` | controller |
//! | history (append-only, one per command attempt) | `history#<name>` | `<ms, 16 digits>#<id>` | controller |
//! | dead-letter acknowledgement | `dlq-ack#<migration>` | `<dead-letter key>` | controller |
//! | lease of a shard (local runner) | `lease#<name>` | `<shard id>` | local runner |
//! | lease history (one per tenure) | `lease-history#<name>` | `<shard id>#<counter, 20 digits>` | local runner |
//! | verification of a route | `verification#<route>` | `<finished ms, 16 digits>` | fanoutctl verify |
//! | position pair of a route's shard (`expires_at`: DynamoDB TTL) | `positions#<route>#<shard id>` | `<source sequence number, padded>` | replicator, local runner |

use aws_config::SdkConfig;
use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_dynamodb::Client;

use super::store_error;
use crate::control::machine::RouteMode;
use crate::model::StoreError;
use crate::ports::ShardHeartbeat;

/// A string attribute.
pub fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

/// A number attribute.
pub fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

// --- Keys ---------------------------------------------------------------------------------------

/// A route's checkpoints (one item per source shard).
pub fn checkpoint_pk(route: &str) -> String {
    format!("checkpoint#{route}")
}

/// A migration's state item.
pub fn state_pk(migration: &str) -> String {
    format!("migration#{migration}")
}

/// A migration's history.
pub fn history_pk(migration: &str) -> String {
    format!("history#{migration}")
}

/// A route's replication mode.
pub fn mode_pk(route: &str) -> String {
    format!("mode#{route}")
}

/// A route's shard heartbeats.
pub fn heartbeat_pk(route: &str) -> String {
    format!("heartbeat#{route}")
}

/// A migration's dead-letter acknowledgements.
pub fn ack_pk(migration: &str) -> String {
    format!("dlq-ack#{migration}")
}

/// A local runner's leases (`name`: the route, or a backfill window's namespace).
pub fn lease_pk(name: &str) -> String {
    format!("lease#{name}")
}

/// The tenures of a runner's leases.
pub fn lease_history_pk(name: &str) -> String {
    format!("lease-history#{name}")
}

/// A route's verifications.
pub fn verification_pk(route: &str) -> String {
    format!("verification#{route}")
}

/// The position pairs of one source shard of a route.
pub fn positions_pk(route: &str, shard_id: &str) -> String {
    format!("positions#{route}#{shard_id}")
}

/// How long a position pair is kept (DynamoDB TTL on `expires_at`, epoch seconds; readers
/// also skip expired pairs themselves, as TTL deletes late).
pub const POSITION_RETENTION_SECS: i64 = 3 * 24 * 3600;

// --- Items both the replicator and the controller use ------------------------------------------

pub(crate) fn corrupt(what: String) -> StoreError {
    StoreError {
        code: "CorruptItem".to_owned(),
        message: what,
    }
}

pub(crate) type Item = std::collections::HashMap<String, AttributeValue>;

pub(crate) fn text<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map(String::as_str)
}

pub(crate) fn num(item: &Item, name: &str) -> Option<i64> {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
}

/// A route's mode item (mode, version and the migration that set it), read consistently.
pub async fn mode_item(
    client: &Client,
    table: &str,
    route: &str,
) -> Result<Option<Item>, StoreError> {
    let out = client
        .get_item()
        .table_name(table)
        .key("pk", s(mode_pk(route)))
        .key("sk", s("mode"))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| store_error(&e))?;
    Ok(out.item)
}

/// Reads a route's replication mode (the replicator's side). No item: forward.
pub async fn read_mode(client: &Client, table: &str, route: &str) -> Result<RouteMode, StoreError> {
    let Some(item) = mode_item(client, table, route).await? else {
        return Ok(RouteMode::FORWARD);
    };
    let item = &item;
    let mode = text(item, "mode")
        .unwrap_or_default()
        .parse()
        .map_err(|e| corrupt(format!("mode of route {route} in {table}: {e}")))?;
    Ok(RouteMode {
        mode,
        since_ms: num(item, "since_ms"),
    })
}

/// Writes a shard heartbeat (the replicator's and the runner's side).
pub async fn write_heartbeat(
    client: &Client,
    table: &str,
    hb: &ShardHeartbeat,
) -> Result<(), StoreError> {
    let mut req = client
        .put_item()
        .table_name(table)
        .item("pk", s(heartbeat_pk(&hb.route)))
        .item("sk", s(&hb.shard_id))
        .item("at_ms", n(hb.now_ms))
        .item("records", n(hb.records))
        .item("mode", s(hb.mode.as_str()))
        .item("by", s(&hb.by));
    if let Some(seq) = &hb.last_seq {
        req = req.item("last_seq", s(seq.to_padded()));
    }
    if let Some(ms) = hb.millis_behind {
        req = req.item("millis_behind", n(ms));
    }
    if let Some(ms) = hb.newest_arrival_ms {
        req = req.item("newest_arrival_ms", n(ms));
    }
    req.send().await.map_err(|e| store_error(&e))?;
    Ok(())
}

// --- The table itself ----------------------------------------------------------------------------

/// Creates the state table (string `pk` hash key, string `sk` range key, on-demand): for
/// local stacks and tests; Terraform creates it in AWS.
pub async fn create_table(sdk: &SdkConfig, table: &str) -> Result<(), StoreError> {
    use aws_sdk_dynamodb::types::{
        AttributeDefinition, BillingMode, KeySchemaElement, KeyType, ScalarAttributeType,
    };
    let attr = |n: &str| {
        AttributeDefinition::builder()
            .attribute_name(n)
            .attribute_type(ScalarAttributeType::S)
            .build()
    };
    let key = |n: &str, t: KeyType| {
        KeySchemaElement::builder()
            .attribute_name(n)
            .key_type(t)
            .build()
    };
    let built = |e: aws_sdk_dynamodb::error::BuildError| StoreError {
        code: "RequestNotBuilt".to_owned(),
        message: e.to_string(),
    };
    Client::new(sdk)
        .create_table()
        .table_name(table)
        .billing_mode(BillingMode::PayPerRequest)
        .attribute_definitions(attr("pk").map_err(built)?)
        .attribute_definitions(attr("sk").map_err(built)?)
        .key_schema(key("pk", KeyType::Hash).map_err(built)?)
        .key_schema(key("sk", KeyType::Range).map_err(built)?)
        .send()
        .await
        .map_err(|e| store_error(&e))?;
    Ok(())
}

/// Every item under `pk`, oldest sort key first (consistent reads, every page).
pub(crate) async fn query_pk(
    client: &Client,
    table: &str,
    pk: &str,
) -> Result<Vec<Item>, StoreError> {
    let mut items = Vec::new();
    let mut start: Option<Item> = None;
    loop {
        let out = client
            .query()
            .table_name(table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(pk))
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

//! The controller's items in the state table (migration state, history, route modes,
//! heartbeats, dead-letter acknowledgements; their keys are in [`super::table`]), and the
//! facts its guards need from Kinesis.

use std::collections::{BTreeMap, HashSet};

use aws_config::SdkConfig;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::put_item::PutItemError;
use aws_sdk_dynamodb::Client;

use super::capacity::CapacityOptions;
use super::dead_letters::S3DeadLetters;
use super::routing::S3Routing;
use super::source::{KinesisSource, StartPosition};
use super::table::{
    ack_pk, checkpoint_pk, corrupt, heartbeat_pk, history_pk, mode_item, mode_pk, n, num,
    read_mode, s, state_pk, text, Item,
};
use super::{endpoint_of, store_error, with_service, SERVICES};
use crate::capacity::{ConfiguredRoute, RouteCapacity};
use crate::control::guards::{ShardLag, StreamFacts};
use crate::control::machine::RouteMode;
use crate::control::record::{HistoryEntry, Migration, StoredState};
use crate::model::{StoreError, StreamArn};
use crate::ports::control::{ControlStore, MappingFacts};
use crate::ports::reader::ShardReader;
use crate::routing::RoutingDocument;
use crate::seq::SequenceNumber;

/// A stored heartbeat.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeartbeatItem {
    pub shard_id: String,
    pub at_ms: i64,
    pub mode: String,
    pub by: String,
    pub records: u64,
    pub millis_behind: Option<i64>,
}

pub use crate::ports::control::Write;

/// A conditional `PutItem`'s result: done, lost (the condition failed), or an error.
fn conditional<T>(
    result: Result<
        T,
        SdkError<PutItemError, aws_smithy_runtime_api::client::orchestrator::HttpResponse>,
    >,
) -> Result<Write, StoreError> {
    match result {
        Ok(_) => Ok(Write::Done),
        Err(SdkError::ServiceError(e))
            if matches!(e.err(), PutItemError::ConditionalCheckFailedException(_)) =>
        {
            Ok(Write::Lost)
        }
        Err(e) => Err(store_error(&e)),
    }
}

/// The controller's access to the state table and to the streams it guards.
#[derive(Clone)]
pub struct AwsControl {
    ddb: Client,
    table: String,
    /// Reads the new account's streams (forward routes' sources).
    new_kinesis: KinesisSource,
    /// Reads the old account's streams (reverse routes' sources).
    old_kinesis: KinesisSource,
    sdk: SdkConfig,
    old_sdk: SdkConfig,
    /// The new account's event source mappings (Lambda consumers of the new streams).
    mappings: super::lambda::Mappings,
    /// The old account's (Lambda consumers of the old streams).
    old_mappings: super::lambda::Mappings,
}

impl AwsControl {
    /// `old_account` reads the old account's streams; pass the same configuration as
    /// `sdk` when the caller can describe them directly.
    pub fn new(sdk: &SdkConfig, old_account: &SdkConfig, table: &str) -> Self {
        AwsControl {
            ddb: Client::new(sdk),
            table: table.to_owned(),
            new_kinesis: KinesisSource::new(sdk),
            old_kinesis: KinesisSource::new(old_account),
            sdk: sdk.clone(),
            old_sdk: old_account.clone(),
            mappings: super::lambda::Mappings::new(sdk),
            old_mappings: super::lambda::Mappings::new(old_account),
        }
    }

    /// Reaches the old account's event source mappings with `old_lambda` (by default the
    /// configuration that reads the old streams).
    pub fn with_old_lambda(mut self, old_lambda: &SdkConfig) -> Self {
        self.old_mappings = super::lambda::Mappings::new(old_lambda);
        self
    }

    fn lambda(&self, old: bool) -> &super::lambda::Mappings {
        if old {
            &self.old_mappings
        } else {
            &self.mappings
        }
    }

    pub fn sdk(&self) -> &SdkConfig {
        &self.sdk
    }

    async fn query(
        &self,
        pk: &str,
        newest_first: bool,
        limit: Option<usize>,
    ) -> Result<Vec<Item>, StoreError> {
        let mut items = Vec::new();
        let mut start: Option<Item> = None;
        loop {
            let mut req = self
                .ddb
                .query()
                .table_name(&self.table)
                .key_condition_expression("pk = :pk")
                .expression_attribute_values(":pk", s(pk))
                .scan_index_forward(!newest_first)
                .consistent_read(true)
                .set_exclusive_start_key(start.take());
            if let Some(l) = limit {
                req = req.limit((l - items.len().min(l)).max(1) as i32);
            }
            let out = req.send().await.map_err(|e| store_error(&e))?;
            items.extend(out.items().iter().cloned());
            if limit.is_some_and(|l| items.len() >= l) {
                items.truncate(limit.unwrap_or(usize::MAX));
                return Ok(items);
            }
            match out.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => return Ok(items),
            }
        }
    }

    /// Every heartbeat of a route, by shard.
    pub async fn heartbeats(
        &self,
        route: &str,
    ) -> Result<BTreeMap<String, HeartbeatItem>, StoreError> {
        let items = self.query(&heartbeat_pk(route), false, None).await?;
        Ok(items
            .iter()
            .filter_map(|i| {
                Some(HeartbeatItem {
                    shard_id: text(i, "sk")?.to_owned(),
                    at_ms: num(i, "at_ms")?,
                    mode: text(i, "mode").unwrap_or("?").to_owned(),
                    by: text(i, "by").unwrap_or("?").to_owned(),
                    records: num(i, "records").unwrap_or(0).max(0) as u64,
                    millis_behind: num(i, "millis_behind"),
                })
            })
            .map(|h| (h.shard_id.clone(), h))
            .collect())
    }

    /// When each checkpoint of a route was last written: shard → ms.
    async fn checkpoint_times(&self, route: &str) -> Result<BTreeMap<String, i64>, StoreError> {
        let items = self.query(&checkpoint_pk(route), false, None).await?;
        Ok(items
            .iter()
            .filter_map(|i| Some((text(i, "sk")?.to_owned(), num(i, "updated_at_ms")?)))
            .collect())
    }

    /// Every checkpoint of a route: shard → last handled sequence number.
    pub async fn checkpoints(
        &self,
        route: &str,
    ) -> Result<BTreeMap<String, SequenceNumber>, StoreError> {
        let items = self.query(&checkpoint_pk(route), false, None).await?;
        let mut out = BTreeMap::new();
        for i in &items {
            if let (Some(shard), Some(seq)) = (text(i, "sk"), text(i, "last_seq")) {
                let seq = SequenceNumber::parse(seq)
                    .map_err(|e| corrupt(format!("checkpoint of {route} {shard}: {e}")))?;
                out.insert(shard.to_owned(), seq);
            }
        }
        Ok(out)
    }
}

impl ControlStore for AwsControl {
    async fn mappings(
        &self,
        old: bool,
        function: &str,
        stream: &str,
    ) -> Result<Vec<MappingFacts>, StoreError> {
        self.lambda(old).list(function, stream).await
    }

    async fn mapping(&self, old: bool, uuid: &str) -> Result<Option<MappingFacts>, StoreError> {
        self.lambda(old).get(uuid).await
    }

    async fn enable_mapping(
        &self,
        old: bool,
        uuid: &str,
        enabled: bool,
    ) -> Result<MappingFacts, StoreError> {
        self.lambda(old).enable(uuid, enabled).await
    }

    async fn create_mapping(
        &self,
        function: &str,
        stream: &str,
        start_ms: Option<i64>,
    ) -> Result<MappingFacts, StoreError> {
        self.mappings.create(function, stream, start_ms).await
    }

    async fn route_positions(
        &self,
        route: &str,
    ) -> Result<Vec<crate::positions::ShardPositions>, StoreError> {
        super::positions::PositionMap::new(&self.sdk, &self.table)
            .shard_positions(route, crate::time::now_ms())
            .await
    }

    async fn stream_shards(
        &self,
        stream: &str,
    ) -> Result<Vec<crate::positions::StreamShard>, StoreError> {
        let arn = StreamArn::parse(stream).map_err(|e| StoreError {
            code: "BadStream".to_owned(),
            message: e.to_string(),
        })?;
        super::positions::stream_shards(&self.sdk, &arn)
            .await
            .map_err(|e| StoreError {
                code: e.code,
                message: e.message,
            })
    }

    fn table(&self) -> &str {
        &self.table
    }

    /// Adds the endpoint (and region) to an error of a service that did not answer, could not
    /// be reached or has no such resource; a missing state table is named with them.
    fn locate(&self, mut e: StoreError) -> StoreError {
        let placed = matches!(
            e.code.as_str(),
            "Timeout"
                | "NetworkError"
                | "UnreadableResponse"
                | "CredentialsUnavailable"
                | "ResourceNotFoundException"
                | "NoSuchBucket"
        );
        let Some((name, id)) = SERVICES
            .iter()
            .find(|(name, _)| placed && e.message.starts_with(name))
        else {
            return e;
        };
        let endpoint = endpoint_of(&self.sdk, id);
        e.message = if *name == "DynamoDB" && e.code == "ResourceNotFoundException" {
            format!(
                "DynamoDB table {} was not found at {endpoint}: check --table (FANOUT_TABLE) and \
                 the region (AWS_REGION, AWS_PROFILE) ({})",
                self.table, e.message
            )
        } else {
            format!("{} [{name} endpoint {endpoint}]", e.message)
        };
        e
    }

    async fn migrations(&self) -> Result<Vec<String>, StoreError> {
        let mut names = Vec::new();
        let mut start: Option<Item> = None;
        // Enough for any real table's migrations; a scan of a huge table stops here.
        for _ in 0..20 {
            let out = self
                .ddb
                .scan()
                .table_name(&self.table)
                .filter_expression("sk = :state AND begins_with(pk, :migration)")
                .expression_attribute_values(":state", s("state"))
                .expression_attribute_values(":migration", s(state_pk("")))
                .projection_expression("pk")
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| store_error(&e))?;
            names.extend(out.items().iter().filter_map(|i| {
                text(i, "pk").and_then(|pk| pk.strip_prefix(&state_pk("")).map(str::to_owned))
            }));
            match out.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => break,
            }
        }
        names.sort();
        Ok(names)
    }

    async fn load(&self, migration: &str) -> Result<Option<StoredState>, StoreError> {
        let out = self
            .ddb
            .get_item()
            .table_name(&self.table)
            .key("pk", s(state_pk(migration)))
            .key("sk", s("state"))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_error(&e))?;
        let Some(item) = out.item() else {
            return Ok(None);
        };
        let doc = text(item, "doc")
            .ok_or_else(|| corrupt(format!("state of {migration} in {} has no doc", self.table)))?;
        let state: StoredState = serde_json::from_str(doc)
            .map_err(|e| corrupt(format!("state of {migration} in {}: {e}", self.table)))?;
        Ok(Some(state))
    }

    async fn write_state(
        &self,
        expected: Option<u64>,
        next: &StoredState,
    ) -> Result<Write, StoreError> {
        let doc = serde_json::to_string(next).map_err(|e| corrupt(e.to_string()))?;
        let req = self
            .ddb
            .put_item()
            .table_name(&self.table)
            .item("pk", s(state_pk(&next.migration.name)))
            .item("sk", s("state"))
            .item("version", n(next.version))
            .item("state", s(next.state.as_str()))
            .item("updated_at_ms", n(next.updated_at_ms))
            .item("updated_by", s(&next.updated_by))
            .item("doc", s(doc));
        let req = match expected {
            None => req.condition_expression("attribute_not_exists(pk)"),
            Some(v) => req
                .condition_expression("version = :v")
                .expression_attribute_values(":v", n(v)),
        };
        conditional(req.send().await)
    }

    async fn append_history(
        &self,
        migration: &str,
        entry: &HistoryEntry,
    ) -> Result<(), StoreError> {
        let doc = serde_json::to_string(entry).map_err(|e| corrupt(e.to_string()))?;
        self.ddb
            .put_item()
            .table_name(&self.table)
            .item("pk", s(history_pk(migration)))
            .item("sk", s(format!("{:016}#{}", entry.at_ms, entry.id)))
            .item("command", s(&entry.command))
            .item("outcome", s(entry.outcome.as_str()))
            .item("actor", s(&entry.actor))
            .item("doc", s(doc))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await
            .map_err(|e| store_error(&e))?;
        Ok(())
    }

    async fn history(
        &self,
        migration: &str,
        last: Option<usize>,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        let items = self
            .query(&history_pk(migration), last.is_some(), last)
            .await?;
        let mut out = items
            .iter()
            .map(|item| {
                let doc = text(item, "doc").unwrap_or_default();
                serde_json::from_str::<HistoryEntry>(doc)
                    .map_err(|e| corrupt(format!("history of {migration}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by(|a, b| (a.at_ms, &a.id).cmp(&(b.at_ms, &b.id)));
        Ok(out)
    }

    async fn set_mode(
        &self,
        route: &str,
        mode: RouteMode,
        version: u64,
        migration: &str,
        actor: &str,
        now_ms: i64,
    ) -> Result<Write, StoreError> {
        let mut req = self.ddb.put_item();
        if let Some(since) = mode.since_ms {
            req = req.item("since_ms", n(since));
        }
        let mode = mode.mode;
        let result = req
            .table_name(&self.table)
            .item("pk", s(mode_pk(route)))
            .item("sk", s("mode"))
            .item("mode", s(mode.as_str()))
            .item("version", n(version))
            .item("migration", s(migration))
            .item("updated_by", s(actor))
            .item("updated_at_ms", n(now_ms))
            // A later step of the same migration wins; another migration's item (one that was
            // committed: `start` refuses routes a live migration holds) is replaced.
            .condition_expression("attribute_not_exists(pk) OR migration <> :m OR version <= :v")
            .expression_attribute_values(":v", n(version))
            .expression_attribute_values(":m", s(migration))
            .send()
            .await;
        conditional(result)
    }

    async fn mode(&self, route: &str) -> Result<RouteMode, StoreError> {
        read_mode(&self.ddb, &self.table, route).await
    }

    async fn mode_owner(&self, route: &str) -> Result<Option<String>, StoreError> {
        let item = mode_item(&self.ddb, &self.table, route).await?;
        Ok(item
            .as_ref()
            .and_then(|item| text(item, "migration"))
            .map(str::to_owned))
    }

    async fn lag(
        &self,
        route: &str,
        source: &StreamArn,
        since_ms: Option<i64>,
        old_side: bool,
        now_ms: i64,
    ) -> Result<Vec<ShardLag>, StoreError> {
        let kinesis = if old_side {
            &self.old_kinesis
        } else {
            &self.new_kinesis
        };
        let to_store = |e: crate::model::RequestError| StoreError {
            message: with_service("Kinesis", &e.code, format!("{source}: {}", e.message)),
            code: e.code,
        };
        let checkpoints = self.checkpoints(route).await?;
        let stamps = self.checkpoint_times(route).await?;
        let heartbeats = self.heartbeats(route).await?;
        let shards = kinesis.list_shards(source).await.map_err(to_store)?;
        let mut out = Vec::with_capacity(shards.len());
        for shard in shards {
            let checkpoint = checkpoints.get(&shard.shard_id);
            // A checkpoint written before `since_ms` belongs to an earlier run of the route.
            let current = checkpoint.filter(|_| {
                since_ms
                    .is_none_or(|since| stamps.get(&shard.shard_id).is_some_and(|at| *at >= since))
            });
            let start = match (current, since_ms) {
                (Some(seq), _) => StartPosition::AfterSequence(seq.clone()),
                (None, Some(since)) => StartPosition::AtTimestamp(since),
                (None, None) => StartPosition::TrimHorizon,
            };
            let mut iterator = Some(
                kinesis
                    .shard_iterator(source, &shard.shard_id, &start)
                    .await
                    .map_err(to_store)?,
            );
            let mut first_arrival = None;
            // An empty page does not prove the shard is drained while MillisBehindLatest
            // says more is there: follow a few pages.
            for _ in 0..5 {
                let Some(it) = iterator.take() else { break };
                let page = kinesis
                    .get_records(source, &it, 1)
                    .await
                    .map_err(to_store)?;
                if let Some(r) = page.records.first() {
                    first_arrival = Some(r.arrival_ms.unwrap_or(now_ms));
                    break;
                }
                if page.millis_behind_latest.unwrap_or(0) == 0 {
                    break;
                }
                iterator = page.next_iterator;
            }
            let hb = heartbeats.get(&shard.shard_id);
            out.push(ShardLag {
                route: route.to_owned(),
                shard_id: shard.shard_id.clone(),
                lag_ms: first_arrival.map(|a| (now_ms - a).max(0)).unwrap_or(0),
                pending: first_arrival.is_some(),
                first_pending_arrival_ms: first_arrival,
                heartbeat_age_ms: hb.map(|h| (now_ms - h.at_ms).max(0)),
                heartbeat_mode: hb.map(|h| h.mode.clone()),
                checkpoint: checkpoint.map(|c| c.as_str().to_owned()),
            });
        }
        Ok(out)
    }

    async fn stream_facts(&self, stream: &str, old_side: bool) -> StreamFacts {
        let sdk = if old_side { &self.old_sdk } else { &self.sdk };
        let client = aws_sdk_kinesis::Client::new(sdk);
        let missing = |status: String| StreamFacts {
            arn: stream.to_owned(),
            status,
            max_record_kib: None,
            encryption: "NONE".to_owned(),
            retention_hours: 0,
            capacity_mode: "?".to_owned(),
        };
        match client
            .describe_stream_summary()
            .stream_arn(stream)
            .send()
            .await
        {
            Ok(out) => match out.stream_description_summary() {
                Some(d) => StreamFacts {
                    arn: stream.to_owned(),
                    status: d.stream_status().as_str().to_owned(),
                    max_record_kib: d.max_record_size_in_kib().filter(|k| *k > 0),
                    encryption: d
                        .encryption_type()
                        .map(|e| e.as_str().to_owned())
                        .unwrap_or_else(|| "NONE".to_owned()),
                    retention_hours: d.retention_period_hours(),
                    capacity_mode: d
                        .stream_mode_details()
                        .map(|m| m.stream_mode().as_str().to_owned())
                        .unwrap_or_else(|| "PROVISIONED".to_owned()),
                },
                None => missing("NoDescription".to_owned()),
            },
            Err(e) => missing(super::classify_sdk_error(&e).code),
        }
    }

    async fn acknowledge(
        &self,
        migration: &str,
        keys: &[String],
        actor: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        for key in keys {
            self.ddb
                .put_item()
                .table_name(&self.table)
                .item("pk", s(ack_pk(migration)))
                .item("sk", s(key))
                .item("actor", s(actor))
                .item("reason", s(reason))
                .item("at_ms", n(now_ms))
                .send()
                .await
                .map_err(|e| store_error(&e))?;
        }
        Ok(())
    }

    async fn acknowledged(&self, migration: &str) -> Result<HashSet<String>, StoreError> {
        let items = self.query(&ack_pk(migration), false, None).await?;
        Ok(items
            .iter()
            .filter_map(|i| text(i, "sk").map(str::to_owned))
            .collect())
    }

    async fn latest_verification(
        &self,
        route: &str,
    ) -> Result<Option<super::verifications::VerificationRecord>, StoreError> {
        super::verifications::latest(&self.sdk, &self.table, route).await
    }

    async fn dead_letter_keys(
        &self,
        migration: &Migration,
        route: &str,
    ) -> Result<Vec<String>, StoreError> {
        S3DeadLetters::new(&self.sdk, &migration.bucket, &migration.dead_letter_prefix)
            .list_keys(Some(route))
            .await
    }

    async fn discarded_batch_keys(&self, migration: &Migration) -> Result<Vec<String>, StoreError> {
        let letters =
            S3DeadLetters::new(&self.sdk, &migration.bucket, &migration.dead_letter_prefix);
        Ok(letters
            .list_on_failure()
            .await?
            .into_iter()
            .map(|(key, _)| key)
            .collect())
    }

    async fn publish_routing(
        &self,
        migration: &Migration,
        doc: &RoutingDocument,
    ) -> Result<(), StoreError> {
        S3Routing::new(&self.sdk, &migration.bucket, &migration.routing_key)
            .publish(doc)
            .await
    }

    async fn fetch_routing(
        &self,
        migration: &Migration,
    ) -> Result<Option<RoutingDocument>, StoreError> {
        use crate::routing::RoutingSource;
        S3Routing::new(&self.sdk, &migration.bucket, &migration.routing_key)
            .fetch()
            .await
    }

    async fn measure_capacity(
        &self,
        route: &ConfiguredRoute,
        opts: &CapacityOptions,
        now_ms: i64,
    ) -> Result<RouteCapacity, String> {
        super::capacity::measure_route(&self.sdk, route, opts, now_ms).await
    }
}

//! An in-memory [`ControlStore`] for the controller's unit tests: the state item with its
//! conditional writes, the history, route modes, published routing documents, and scripted
//! shard lags and races.

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use crate::capacity::{ConfiguredRoute, RouteCapacity};
use crate::control::guards::{ShardLag, StreamFacts};
use crate::control::machine::RouteMode;
use crate::control::record::{HistoryEntry, Migration, StoredState};
use crate::model::{StoreError, StreamArn};
use crate::ports::control::{CapacityOptions, ControlStore, Write};
use crate::routing::RoutingDocument;
use crate::verify::VerificationRecord;

/// How a scripted shard looks to the controller.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shard {
    /// Nothing waiting.
    Idle,
    /// Records from `since_ms` on wait, and the replicator is working on them.
    Behind { since_ms: i64 },
    /// Records from `since_ms` on wait, and no replicator reported for a minute.
    Stuck { since_ms: i64 },
}

#[derive(Default)]
pub struct MemoryControl {
    /// The state item of each migration, by name.
    pub states: Mutex<BTreeMap<String, StoredState>>,
    pub history: Mutex<Vec<HistoryEntry>>,
    /// Each route's mode, with the version and the migration that set it.
    pub modes: Mutex<BTreeMap<String, (RouteMode, u64, String)>>,
    /// Every routing document published, in order.
    pub published: Mutex<Vec<RoutingDocument>>,
    /// What each lag call sees, call by call; the last entry repeats.
    pub shard: Mutex<Vec<Shard>>,
    pub lag_calls: Mutex<usize>,
    /// Before this state write (1 = the first), someone else writes the state item first.
    pub race_before_write: Mutex<Option<usize>>,
    pub writes: Mutex<usize>,
    /// Lambda's event source mappings, by UUID: the new account's, and the old account's.
    pub mappings: Mutex<BTreeMap<String, crate::ports::control::MappingFacts>>,
    pub old_mappings: Mutex<BTreeMap<String, crate::ports::control::MappingFacts>>,
    /// Each mapping created: (function, stream, AT_TIMESTAMP start or trim horizon).
    pub created: Mutex<Vec<(String, String, Option<i64>)>>,
    /// The position map, by route.
    pub positions: Mutex<BTreeMap<String, Vec<crate::positions::ShardPositions>>>,
    /// Disabling a mapping leaves it `Disabling` (Lambda that does not settle).
    pub disabling_sticks: Mutex<bool>,
    /// The shards of every new stream.
    pub stream_shards: Mutex<Vec<crate::positions::StreamShard>>,
}

impl MemoryControl {
    pub fn new(st: StoredState) -> Self {
        let m = MemoryControl::default();
        m.states
            .lock()
            .unwrap()
            .insert(st.migration.name.clone(), st);
        *m.shard.lock().unwrap() = vec![Shard::Idle];
        m
    }

    /// The state item of the tests' migration, `orders-move`.
    pub fn stored(&self) -> StoredState {
        self.stored_of("orders-move").unwrap()
    }

    pub fn stored_of(&self, migration: &str) -> Option<StoredState> {
        self.states.lock().unwrap().get(migration).cloned()
    }

    pub fn history(&self) -> Vec<HistoryEntry> {
        self.history.lock().unwrap().clone()
    }

    /// (active stream, mode) of the first stream in each published document.
    pub fn routing(&self) -> Vec<(String, String)> {
        self.published
            .lock()
            .unwrap()
            .iter()
            .map(|d| {
                let s = d.streams.values().next().unwrap();
                (s.active.clone(), format!("{:?}", s.mode).to_lowercase())
            })
            .collect()
    }

    pub fn mode_of(&self, route: &str) -> Option<RouteMode> {
        self.modes.lock().unwrap().get(route).map(|(m, _, _)| *m)
    }
}

impl ControlStore for MemoryControl {
    fn table(&self) -> &str {
        "memory"
    }

    async fn mappings(
        &self,
        old: bool,
        function: &str,
        stream: &str,
    ) -> Result<Vec<crate::ports::control::MappingFacts>, StoreError> {
        let all = if old {
            &self.old_mappings
        } else {
            &self.mappings
        };
        Ok(all
            .lock()
            .unwrap()
            .values()
            .filter(|m| m.stream == stream && m.function_arn.ends_with(function))
            .cloned()
            .collect())
    }

    async fn mapping(
        &self,
        old: bool,
        uuid: &str,
    ) -> Result<Option<crate::ports::control::MappingFacts>, StoreError> {
        let all = if old {
            &self.old_mappings
        } else {
            &self.mappings
        };
        Ok(all.lock().unwrap().get(uuid).cloned())
    }

    async fn enable_mapping(
        &self,
        old: bool,
        uuid: &str,
        enabled: bool,
    ) -> Result<crate::ports::control::MappingFacts, StoreError> {
        let all = if old {
            &self.old_mappings
        } else {
            &self.mappings
        };
        let mut all = all.lock().unwrap();
        let m = all.get_mut(uuid).ok_or_else(|| StoreError {
            code: "ResourceNotFoundException".into(),
            message: format!("no mapping {uuid}"),
        })?;
        m.state = match (enabled, *self.disabling_sticks.lock().unwrap()) {
            (true, _) => "Enabled",
            (false, false) => "Disabled",
            (false, true) => "Disabling",
        }
        .to_owned();
        m.last_modified_ms = Some(crate::time::now_ms() / 1000 * 1000);
        Ok(m.clone())
    }

    async fn create_mapping(
        &self,
        function: &str,
        stream: &str,
        start_ms: Option<i64>,
    ) -> Result<crate::ports::control::MappingFacts, StoreError> {
        let mut created = self.created.lock().unwrap();
        created.push((function.to_owned(), stream.to_owned(), start_ms));
        let m = crate::ports::control::MappingFacts {
            uuid: format!("created-{}", created.len()),
            function_arn: format!("arn:aws:lambda:us-east-1:123456789012:function:{function}"),
            stream: stream.to_owned(),
            state: "Creating".to_owned(),
            last_modified_ms: None,
        };
        self.mappings
            .lock()
            .unwrap()
            .insert(m.uuid.clone(), m.clone());
        Ok(m)
    }

    async fn route_positions(
        &self,
        route: &str,
    ) -> Result<Vec<crate::positions::ShardPositions>, StoreError> {
        Ok(self
            .positions
            .lock()
            .unwrap()
            .get(route)
            .cloned()
            .unwrap_or_default())
    }

    async fn stream_shards(
        &self,
        _stream: &str,
    ) -> Result<Vec<crate::positions::StreamShard>, StoreError> {
        Ok(self.stream_shards.lock().unwrap().clone())
    }

    async fn load(&self, migration: &str) -> Result<Option<StoredState>, StoreError> {
        Ok(self.stored_of(migration))
    }

    async fn migrations(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.states.lock().unwrap().keys().cloned().collect())
    }

    async fn write_state(
        &self,
        expected: Option<u64>,
        next: &StoredState,
    ) -> Result<Write, StoreError> {
        let n = {
            let mut w = self.writes.lock().unwrap();
            *w += 1;
            *w
        };
        let mut states = self.states.lock().unwrap();
        let name = &next.migration.name;
        if *self.race_before_write.lock().unwrap() == Some(n) {
            if let Some(st) = states.get_mut(name) {
                st.version += 1;
                st.updated_by = "someone-else".into();
            }
        }
        if states.get(name).map(|s| s.version) != expected {
            return Ok(Write::Lost);
        }
        states.insert(name.clone(), next.clone());
        Ok(Write::Done)
    }

    async fn append_history(&self, _m: &str, entry: &HistoryEntry) -> Result<(), StoreError> {
        self.history.lock().unwrap().push(entry.clone());
        Ok(())
    }

    async fn history(
        &self,
        _m: &str,
        last: Option<usize>,
    ) -> Result<Vec<HistoryEntry>, StoreError> {
        let h = self.history();
        let skip = last.map_or(0, |n| h.len().saturating_sub(n));
        Ok(h.into_iter().skip(skip).collect())
    }

    async fn set_mode(
        &self,
        route: &str,
        mode: RouteMode,
        version: u64,
        migration: &str,
        _actor: &str,
        _now_ms: i64,
    ) -> Result<Write, StoreError> {
        let mut modes = self.modes.lock().unwrap();
        if modes
            .get(route)
            .is_some_and(|(_, v, m)| m == migration && *v > version)
        {
            return Ok(Write::Lost);
        }
        modes.insert(route.to_owned(), (mode, version, migration.to_owned()));
        Ok(Write::Done)
    }

    async fn mode(&self, route: &str) -> Result<RouteMode, StoreError> {
        Ok(self.mode_of(route).unwrap_or(RouteMode::FORWARD))
    }

    async fn mode_owner(&self, route: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .modes
            .lock()
            .unwrap()
            .get(route)
            .map(|(_, _, m)| m.clone()))
    }

    async fn lag(
        &self,
        route: &str,
        _source: &StreamArn,
        _since_ms: Option<i64>,
        _old_side: bool,
        now_ms: i64,
    ) -> Result<Vec<ShardLag>, StoreError> {
        let shard = {
            let mut calls = self.lag_calls.lock().unwrap();
            let script = self.shard.lock().unwrap();
            let s = script[(*calls).min(script.len() - 1)];
            *calls += 1;
            s
        };
        let (lag_ms, first, heartbeat_age_ms) = match shard {
            Shard::Idle => (0, None, 100),
            Shard::Behind { since_ms } => (now_ms - since_ms, Some(since_ms), 100),
            Shard::Stuck { since_ms } => (now_ms - since_ms, Some(since_ms), 60_000),
        };
        Ok(vec![ShardLag {
            route: route.to_owned(),
            shard_id: "shardId-000000000000".into(),
            lag_ms,
            pending: first.is_some(),
            first_pending_arrival_ms: first,
            heartbeat_age_ms: Some(heartbeat_age_ms),
            heartbeat_mode: Some("forward".into()),
            checkpoint: None,
        }])
    }

    async fn stream_facts(&self, stream: &str, _old_side: bool) -> StreamFacts {
        StreamFacts {
            arn: stream.to_owned(),
            status: "ACTIVE".into(),
            max_record_kib: Some(1024),
            encryption: "NONE".into(),
            retention_hours: 24,
            capacity_mode: "PROVISIONED".into(),
        }
    }

    async fn acknowledge(
        &self,
        _m: &str,
        _keys: &[String],
        _actor: &str,
        _reason: &str,
        _now_ms: i64,
    ) -> Result<(), StoreError> {
        Ok(())
    }

    async fn acknowledged(&self, _m: &str) -> Result<HashSet<String>, StoreError> {
        Ok(HashSet::new())
    }

    async fn latest_verification(
        &self,
        _route: &str,
    ) -> Result<Option<VerificationRecord>, StoreError> {
        Ok(None)
    }

    async fn dead_letter_keys(&self, _m: &Migration, _r: &str) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    async fn discarded_batch_keys(&self, _m: &Migration) -> Result<Vec<String>, StoreError> {
        Ok(Vec::new())
    }

    async fn publish_routing(
        &self,
        _m: &Migration,
        doc: &RoutingDocument,
    ) -> Result<(), StoreError> {
        self.published.lock().unwrap().push(doc.clone());
        Ok(())
    }

    async fn fetch_routing(&self, _m: &Migration) -> Result<Option<RoutingDocument>, StoreError> {
        Ok(self.published.lock().unwrap().last().cloned())
    }

    async fn measure_capacity(
        &self,
        route: &ConfiguredRoute,
        _opts: &CapacityOptions,
        _now_ms: i64,
    ) -> Result<RouteCapacity, String> {
        Err(format!("{}: not measured in unit tests", route.route.name))
    }
}

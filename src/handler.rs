//! The replicator's handler: Kinesis event bytes in, `batchItemFailures` out. The Lambda crate
//! and local runs (`fanoutctl replicate`, the demo, tests) all call this one function.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use aws_lambda_events::event::streams::KinesisEventResponse;

use crate::control::machine::{Mode, RouteMode};
use crate::event::{self, EventError};
use crate::metrics;
use crate::model::SourceBatch;
use crate::ports::{CheckpointStore, DeadLetterStore, ShardHeartbeat, TargetWriter};
use crate::replicate::{BatchReport, Replicator};

/// Longest wait for the replication mode or a heartbeat write: the state table being slow
/// must not eat the invocation's time.
const STATE_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// What to do with the metrics of each batch.
#[derive(Debug)]
pub enum MetricsOutput {
    /// Print EMF lines to stdout (Lambda).
    Stdout,
    /// Append EMF lines to a file (local runs with `--metrics FILE`).
    File(std::sync::Mutex<std::fs::File>),
    /// Keep them to the caller (local runs aggregate the reports instead).
    None,
}

/// The handler with its clients, built once per process.
pub struct Handler<W, C, D> {
    replicator: Replicator<W, C, D>,
    namespace: String,
    metrics: MetricsOutput,
    /// How long a route's replication mode is kept before it is read again.
    mode_ttl: Duration,
    modes: Mutex<HashMap<String, (Instant, RouteMode)>>,
    /// Who the heartbeats say wrote them.
    heartbeat_by: String,
}

impl<W: TargetWriter, C: CheckpointStore, D: DeadLetterStore> Handler<W, C, D> {
    pub fn new(
        replicator: Replicator<W, C, D>,
        namespace: impl Into<String>,
        metrics: MetricsOutput,
    ) -> Self {
        Handler {
            replicator,
            namespace: namespace.into(),
            metrics,
            mode_ttl: Duration::from_secs(5),
            modes: Mutex::new(HashMap::new()),
            heartbeat_by: "lambda".to_owned(),
        }
    }

    /// Keeps each route's replication mode for `ttl` before reading it again.
    pub fn with_mode_cache(mut self, ttl: Duration) -> Self {
        self.mode_ttl = ttl;
        self
    }

    /// Names the writer of this handler's heartbeats (`runner:<owner>` for local runs).
    pub fn with_heartbeat_by(mut self, by: impl Into<String>) -> Self {
        self.heartbeat_by = by.into();
        self.replicator = self.replicator.with_heartbeat_by(self.heartbeat_by.clone());
        self
    }

    /// The replication mode of `route`, from the cache when it is fresh. When the state table
    /// cannot be read and nothing is cached, the route is held (nothing is lost: the batch is
    /// retried).
    pub async fn mode(&self, route: &str, deadline: Instant) -> RouteMode {
        let now = Instant::now();
        let cached = self.modes.lock().unwrap().get(route).copied();
        if let Some((at, mode)) = cached {
            if now.duration_since(at) < self.mode_ttl {
                return mode;
            }
        }
        let budget = self.state_budget(deadline);
        let read = tokio::time::timeout(budget, self.replicator.checkpoints().mode(route));
        let timed_out = || crate::model::StoreError {
            code: "Timeout".to_owned(),
            message: format!("no answer within {} ms", budget.as_millis()),
        };
        let mode = match read.await.unwrap_or_else(|_| Err(timed_out())) {
            Ok(m) => m,
            Err(e) => {
                let fallback = cached.map(|(_, m)| m).unwrap_or(RouteMode {
                    mode: Mode::Hold,
                    since_ms: None,
                });
                tracing::warn!(
                    route,
                    error = %e,
                    "Cannot read the replication mode of {route}; using {} until it can be read. \
                     Check the function's access to the state table.",
                    fallback.mode
                );
                fallback
            }
        };
        let before = cached.map(|(_, m)| m).unwrap_or(RouteMode::FORWARD);
        if before != mode {
            // A flip: the position map gets a pair at the next batch of each shard.
            self.replicator.force_positions(route);
            let since = mode
                .since_ms
                .map(|ms| {
                    format!(
                        "; records that arrived before {} are the other direction's copies and are skipped",
                        chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default().to_rfc3339()
                    )
                })
                .unwrap_or_default();
            tracing::info!(
                route,
                mode = mode.mode.as_str(),
                "Route {route} is in mode {}{}{since}.",
                mode.mode,
                match mode.mode {
                    Mode::Forward => "",
                    Mode::Hold => ": records wait in the source stream until it is forward again",
                    Mode::Stopped =>
                        ": replication is off in this migration state; records stay in the source \
                         stream (disable this event source mapping)",
                }
            );
        }
        self.modes
            .lock()
            .unwrap()
            .insert(route.to_owned(), (now, mode));
        mode
    }

    /// How long a state-table read or heartbeat may take: at most [`STATE_READ_TIMEOUT`], and
    /// never into the time kept free before the deadline.
    fn state_budget(&self, deadline: Instant) -> Duration {
        deadline
            .saturating_duration_since(Instant::now())
            .saturating_sub(self.replicator.limits().deadline_margin)
            .min(STATE_READ_TIMEOUT)
    }

    /// Writes a heartbeat for every route of a batch that was not replicated (the route is held
    /// or stopped); a failure is a warning, never a failed batch.
    async fn heartbeat(
        &self,
        batch: &SourceBatch,
        report: &BatchReport,
        mode: Mode,
        deadline: Instant,
    ) {
        let handled = batch
            .records
            .iter()
            .take_while(|r| Some(&r.seq) != report.first_unhandled.as_ref());
        let last_seq = handled.clone().last().map(|r| r.seq.clone());
        let newest_arrival_ms = handled.filter_map(|r| r.arrival_ms).max();
        let now_ms = chrono::Utc::now().timestamp_millis();
        for route in self
            .replicator
            .routes()
            .iter()
            .filter(|r| r.source == batch.source)
        {
            let hb = ShardHeartbeat {
                route: route.name.clone(),
                shard_id: batch.shard_id.clone(),
                last_seq: last_seq.clone(),
                millis_behind: None,
                newest_arrival_ms,
                records: batch.records.len() as u64,
                mode,
                by: self.heartbeat_by.clone(),
                now_ms,
            };
            let budget = self.state_budget(deadline);
            let write = tokio::time::timeout(budget, self.replicator.checkpoints().heartbeat(&hb));
            match write.await {
                Ok(Ok(())) => self
                    .replicator
                    .heartbeat_written(&route.name, &batch.shard_id, mode),
                Ok(Err(e)) => {
                    tracing::warn!(route = %route.name, shard = %batch.shard_id, error = %e, "Heartbeat not written.")
                }
                Err(_) => {
                    tracing::debug!(route = %route.name, shard = %batch.shard_id, "Heartbeat not written: no answer within {} ms.", budget.as_millis())
                }
            }
        }
    }

    pub fn replicator(&self) -> &Replicator<W, C, D> {
        &self.replicator
    }

    /// Handles one invocation. An event that cannot be read at all is an error, not logged here
    /// (the caller reports it once; Lambda retries the whole batch, nothing is lost); an event
    /// without records is answered at once. A source with no route stops the shard at its
    /// first record with one ERROR line.
    pub async fn handle(
        &self,
        payload: &[u8],
        deadline: Instant,
    ) -> Result<(KinesisEventResponse, BatchReport), EventError> {
        let batch = match event::read_event(payload) {
            Ok(Some(b)) => b,
            Ok(None) => {
                tracing::info!("The event holds no records; nothing to replicate.");
                return Ok((event::response(None), BatchReport::default()));
            }
            // Not logged here: the caller reports it once (the Lambda runtime logs the
            // invocation error; the local runner stops the shard with the message).
            Err(e) => return Err(e),
        };
        if !self
            .replicator
            .routes()
            .iter()
            .any(|r| r.source == batch.source)
        {
            tracing::error!(
                source = %batch.source,
                shard = %batch.shard_id,
                "No route replicates {}; the shard stops at its first record. Add it to FANOUT_ROUTES \
                 or remove this event source mapping.",
                batch.source
            );
            let report = BatchReport {
                source: batch.source.to_string(),
                shard_id: batch.shard_id.clone(),
                first_unhandled: Some(batch.records[0].seq.clone()),
                held: Some(format!(
                    "no route replicates {}: add it to FANOUT_ROUTES",
                    batch.source
                )),
                ..BatchReport::default()
            };
            return Ok((event::response(report.first_unhandled.as_ref()), report));
        }
        let mut blocked = None;
        let mut since_ms: Option<i64> = None;
        for route in self
            .replicator
            .routes()
            .iter()
            .filter(|r| r.source == batch.source)
        {
            let mode = self.mode(&route.name, deadline).await;
            if mode.mode != Mode::Forward {
                blocked = Some((mode.mode, route.name.clone()));
                break;
            }
            since_ms = since_ms.max(mode.since_ms);
        }
        if let Some((mode, route)) = blocked {
            let report = BatchReport {
                source: batch.source.to_string(),
                shard_id: batch.shard_id.clone(),
                first_unhandled: Some(batch.records[0].seq.clone()),
                held: Some(format!(
                    "route {route} is {}: its records wait in the stream (`fanoutctl status` says why; `fanoutctl resume` when it should go on)",
                    mode.as_str()
                )),
                ..BatchReport::default()
            };
            tracing::debug!(shard = %batch.shard_id, mode = mode.as_str(), "Batch not replicated: the route is not forward.");
            self.heartbeat(&batch, &report, mode, deadline).await;
            return Ok((event::response(report.first_unhandled.as_ref()), report));
        }
        // Records from before the route's start are the other direction's copies: skip them.
        let batch = match since_ms {
            Some(since)
                if batch
                    .records
                    .iter()
                    .any(|r| r.arrival_ms.is_some_and(|a| a < since)) =>
            {
                let skipped = batch
                    .records
                    .iter()
                    .filter(|r| r.arrival_ms.is_some_and(|a| a < since))
                    .count();
                tracing::debug!(shard = %batch.shard_id, skipped, "Records from before the route's start skipped.");
                let mut kept = batch.clone();
                kept.records
                    .retain(|r| r.arrival_ms.is_none_or(|a| a >= since));
                if kept.records.is_empty() {
                    let report = BatchReport {
                        source: batch.source.to_string(),
                        shard_id: batch.shard_id.clone(),
                        ..BatchReport::default()
                    };
                    return Ok((event::response(None), report));
                }
                kept
            }
            _ => batch,
        };
        // The replicator writes each route's heartbeat with its checkpoint.
        let report = self.replicator.replicate(&batch, deadline).await;
        if !matches!(self.metrics, MetricsOutput::None) {
            let lines = metrics::emf_lines(
                &report,
                &self.namespace,
                chrono::Utc::now().timestamp_millis(),
            );
            match &self.metrics {
                MetricsOutput::File(file) => {
                    use std::io::Write;
                    let mut f = file
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    if let Err(e) = lines.iter().try_for_each(|line| writeln!(f, "{line}")) {
                        tracing::warn!(error = %e, "Cannot write the metrics file; metrics of this batch are lost (replication goes on).");
                    }
                }
                _ => lines.iter().for_each(|line| println!("{line}")),
            }
        }
        tracing::debug!(
            source = %report.source,
            shard = %report.shard_id,
            records = batch.records.len(),
            duration_ms = report.duration.as_millis() as u64,
            first_unhandled = ?report.first_unhandled,
            "Batch handled."
        );
        Ok((event::response(report.first_unhandled.as_ref()), report))
    }
}

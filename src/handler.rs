//! The replicator's handler: Kinesis event bytes in, `batchItemFailures` out. The Lambda crate
//! and local runs (`fanoutctl replicate`, the demo, tests) all call this one function.

use tokio::time::Instant;

use aws_lambda_events::event::streams::KinesisEventResponse;

use crate::event::{self, EventError};
use crate::metrics;
use crate::ports::{CheckpointStore, DeadLetterStore, TargetWriter};
use crate::replicate::{BatchReport, Replicator};

/// What to do with the metrics of each batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricsOutput {
    /// Print EMF lines to stdout (Lambda).
    Stdout,
    /// Keep them to the caller (local runs aggregate the reports instead).
    None,
}

/// The handler with its clients, built once per process.
pub struct Handler<W, C, D> {
    replicator: Replicator<W, C, D>,
    namespace: String,
    metrics: MetricsOutput,
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
        }
    }

    pub fn replicator(&self) -> &Replicator<W, C, D> {
        &self.replicator
    }

    /// Handles one invocation. An event that cannot be read at all is an error (Lambda retries
    /// the whole batch; nothing is lost). A source with no route stops the shard at its first
    /// record with one ERROR line.
    pub async fn handle(
        &self,
        payload: &[u8],
        deadline: Instant,
    ) -> Result<(KinesisEventResponse, BatchReport), EventError> {
        let batch = match event::parse_event(payload) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(
                    error = %e,
                    "Cannot read the invocation's event; it is left in the stream for retry. \
                     Check that the function is triggered by a Kinesis event source mapping."
                );
                return Err(e);
            }
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
                ..BatchReport::default()
            };
            return Ok((event::response(report.first_unhandled.as_ref()), report));
        }
        let report = self.replicator.replicate(&batch, deadline).await;
        if self.metrics == MetricsOutput::Stdout {
            for line in metrics::emf_lines(
                &report,
                &self.namespace,
                chrono::Utc::now().timestamp_millis(),
            ) {
                println!("{line}");
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

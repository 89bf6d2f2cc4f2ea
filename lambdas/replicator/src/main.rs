//! The replicator Lambda: reads its configuration and builds its clients once, then hands each
//! Kinesis batch to the library's handler and answers with `batchItemFailures`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fanout::aws::{build_handler, load_sdk_config, AwsHandler};
use fanout::config::ReplicatorConfig;
use fanout::handler::MetricsOutput;
use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::value::RawValue;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FANOUT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_current_span(false)
        .without_time()
        .init();
    let config = ReplicatorConfig::from_env().inspect_err(|e| tracing::error!("{e}"))?;
    let sdk = load_sdk_config().await;
    let handler: &'static AwsHandler = Box::leak(Box::new(
        build_handler(&config, &sdk, MetricsOutput::Stdout).await,
    ));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Box<RawValue>>| {
        handle(handler, event)
    }))
    .await
}

/// Converts Lambda's wall-clock deadline into a monotonic one and calls the handler.
async fn handle(
    handler: &AwsHandler,
    event: LambdaEvent<Box<RawValue>>,
) -> Result<serde_json::Value, Error> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let left = Duration::from_millis(event.context.deadline.saturating_sub(now_ms));
    let deadline = tokio::time::Instant::now() + left;
    let (response, _) = handler
        .handle(event.payload.get().as_bytes(), deadline)
        .await?;
    Ok(serde_json::to_value(response)?)
}

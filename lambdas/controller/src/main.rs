//! The controller Lambda: takes a migration command as JSON (the same [`Request`] `fanoutctl`
//! builds, e.g. `{"command":"cutover","migration":"orders","reason":"CHG-1234"}`), runs it
//! with the library's `execute` and answers with the report `fanoutctl --output json` prints.
//!
//! Environment: `FANOUT_TABLE` (state table), `FANOUT_MIGRATION` (default migration),
//! `FANOUT_ROUTES` and `FANOUT_DEAD_LETTER_BUCKET`/`_PREFIX` (for `start`),
//! `FANOUT_WRITER_ROLE_ARN`/`FANOUT_WRITER_EXTERNAL_ID` (to describe the old streams).
//! The identity recorded is the function's role; a caller may add `on_behalf_of`.

use std::time::Duration;

use fanout::aws::control::AwsControl;
use fanout::aws::load_sdk_config;
use fanout::aws::verifications::{caller_identity, old_account_config};
use fanout::config::ReplicatorConfig;
use fanout::control::commands::{execute, streams_from_routes, CommandName, Context, Request};
use lambda_runtime::{service_fn, Error, LambdaEvent};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    fanout::cli::init_lambda_tracing();
    let table = std::env::var("FANOUT_TABLE")
        .map_err(|_| "FANOUT_TABLE is not set; set it to the state table's name")?;
    let sdk = load_sdk_config().await;
    let old = old_account_config(&sdk).await;
    let actor = caller_identity(&sdk).await.map_err(|e| {
        format!(
            "STS GetCallerIdentity failed (the controller records every change with an \
             identity): {}",
            e.message
        )
    })?;
    let ctx: &'static Context<AwsControl> = Box::leak(Box::new(Context {
        control: AwsControl::new(&sdk, &old, &table),
        actor,
        poll: Duration::from_millis(500),
    }));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Request>| async move {
        let mut req = event.payload;
        if req.migration.is_empty() {
            req.migration = std::env::var("FANOUT_MIGRATION").unwrap_or_default();
        }
        if req.command == CommandName::Start && req.streams.is_empty() {
            let config = ReplicatorConfig::from_env()?;
            req.streams = streams_from_routes(&config);
            req.bucket.get_or_insert(config.dead_letter_bucket.clone());
            req.dead_letter_prefix
                .get_or_insert(config.dead_letter_prefix.clone());
            if let Some(settings) = req.settings.as_mut() {
                settings
                    .mode_cache_ms
                    .get_or_insert(config.mode_cache.as_millis() as i64);
            }
        }
        let report = execute(ctx, &req).await;
        tracing::info!(
            command = %report.command,
            migration = %report.migration,
            outcome = report.outcome.as_str(),
            "{}",
            report.message
        );
        Ok::<_, Error>(serde_json::to_value(&report)?)
    }))
    .await
}

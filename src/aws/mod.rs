//! SDK adapters: the only place AWS SDK types appear. Each adapter implements a port from
//! [`crate::ports`] and classifies SDK errors into [`FailureClass`]es exactly once, here.
//!
//! - [`target`]: PutRecords to a route's target stream by ARN, with assumed-role credentials.
//! - [`checkpoints`]: DynamoDB checkpoints, advanced with a forward-only condition.
//! - [`dead_letters`]: S3 dead letters, one JSON envelope per record.
//! - [`source`]: reading shards (for local runs and read-back checks) and writing test data.
//! - [`control`]: the controller's items (state, history, modes, heartbeats, acknowledgements).
//! - [`verifications`]: `fanoutctl verify` results in the state table (store, latest).
//! - [`routing`]: the routing document in S3 (publish, and read as a routing source).
//! - [`capacity`]: what a capacity check reads (source and target windows, the target's
//!   round trip and shard count).

/// DynamoDB attribute values, written the same way everywhere.
pub mod capacity;
pub mod checkpoints;
pub mod control;
pub mod dead_letters;
pub mod leases;
pub mod routing;
pub mod source;
pub mod table;
pub mod target;
pub mod verifications;

use std::time::Duration;

use aws_config::{BehaviorVersion, SdkConfig};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;

use crate::config::ReplicatorConfig;
use crate::handler::{Handler, MetricsOutput};
use crate::model::{FailureClass, RequestError, StoreError};
use crate::replicate::Replicator;

/// The replicator wired to AWS.
pub type AwsReplicator =
    Replicator<target::KinesisTarget, checkpoints::DynamoCheckpoints, dead_letters::S3DeadLetters>;
/// The handler wired to AWS.
pub type AwsHandler =
    Handler<target::KinesisTarget, checkpoints::DynamoCheckpoints, dead_letters::S3DeadLetters>;

/// Loads the SDK configuration the usual way (environment, profile, instance role).
/// `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_<SERVICE>` point it at local emulators.
pub async fn load_sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

/// Builds the handler and its clients once, at cold start.
pub async fn build_handler(
    config: &ReplicatorConfig,
    sdk: &SdkConfig,
    metrics: MetricsOutput,
) -> AwsHandler {
    build_handler_in(config, sdk, metrics, "").await
}

/// [`build_handler`] with checkpoints kept under `<route><namespace>` (a backfill's own).
pub async fn build_handler_in(
    config: &ReplicatorConfig,
    sdk: &SdkConfig,
    metrics: MetricsOutput,
    checkpoint_namespace: &str,
) -> AwsHandler {
    let writer = target::KinesisTarget::new(sdk, &config.routes, &config.limits).await;
    let checkpoints =
        checkpoints::DynamoCheckpoints::new(sdk, &config.table).in_namespace(checkpoint_namespace);
    let dead_letters = dead_letters::S3DeadLetters::new(
        sdk,
        &config.dead_letter_bucket,
        &config.dead_letter_prefix,
    );
    let replicator = Replicator::new(
        writer,
        checkpoints,
        dead_letters,
        config.routes.clone(),
        config.limits.clone(),
    );
    Handler::new(replicator, config.metrics_namespace.clone(), metrics)
        .with_mode_cache(config.mode_cache)
}

/// Sends Kinesis calls to one endpoint and every other service (DynamoDB, S3, STS) to
/// another: how local runs reach kinesis-local (or a proxy) and moto at once.
#[derive(Debug, Clone)]
pub struct LocalEndpoints {
    pub kinesis: String,
    pub other: String,
}

impl aws_types::service_config::LoadServiceConfig for LocalEndpoints {
    fn load_config(&self, key: aws_types::service_config::ServiceConfigKey<'_>) -> Option<String> {
        if key.env() != "AWS_ENDPOINT_URL" {
            return None;
        }
        Some(if key.service_id().eq_ignore_ascii_case("kinesis") {
            self.kinesis.clone()
        } else {
            self.other.clone()
        })
    }
}

/// An SDK configuration for the local stack, as the account whose 12-digit id is
/// `access_key_id` (kinesis-local picks the account from it), in us-east-1.
pub async fn local_sdk_config(endpoints: LocalEndpoints, access_key_id: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_credential_types::Credentials::new(
            access_key_id,
            "local",
            None,
            None,
            "fanout-local",
        ))
        .load()
        .await
        .to_builder()
        .service_config(endpoints)
        .build()
}

/// True when an endpoint override is in force for `service` (local emulators): S3 then needs
/// path-style addressing.
pub fn endpoint_overridden(sdk: &SdkConfig, service_id: &str) -> bool {
    let key = aws_types::service_config::ServiceConfigKey::builder()
        .service_id(service_id)
        .env("AWS_ENDPOINT_URL")
        .profile("endpoint_url")
        .build();
    sdk.endpoint_url().is_some()
        || key.is_ok_and(|key| {
            sdk.service_config()
                .and_then(|c| c.load_config(key))
                .is_some()
        })
}

/// Classifies an SDK error of any operation. Service errors use the modeled code; server
/// errors (5xx) and transport errors after the request may have reached the service are
/// marked ambiguous.
pub fn classify_sdk_error<E>(err: &SdkError<E, HttpResponse>) -> RequestError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let detail = || {
        let mut s = String::new();
        let mut src: Option<&dyn std::error::Error> = Some(err);
        while let Some(e) = src {
            if !s.is_empty() {
                s.push_str(": ");
            }
            s.push_str(&e.to_string());
            src = e.source();
        }
        s
    };
    match err {
        SdkError::ServiceError(se) => {
            let e = se.err();
            let code = e.code().unwrap_or("Unknown").to_owned();
            let message = e.message().unwrap_or_default().to_owned();
            let class = crate::errors::call_class(&code, se.raw().status().is_server_error());
            RequestError {
                class,
                // A server error answers a request that reached the service: it may have been
                // applied (a PutRecords whose records were stored), so a resend may duplicate.
                ambiguous: se.raw().status().is_server_error(),
                code,
                message,
            }
        }
        SdkError::TimeoutError(_) => RequestError {
            class: FailureClass::Transient,
            ambiguous: true,
            code: "Timeout".to_owned(),
            message: detail(),
        },
        SdkError::DispatchFailure(d) => {
            let message = detail();
            if d.is_user() || message.contains("credentials") || message.contains("AssumeRole") {
                RequestError {
                    class: FailureClass::Systemic,
                    ambiguous: false,
                    code: "CredentialsUnavailable".to_owned(),
                    message,
                }
            } else {
                RequestError {
                    class: FailureClass::Transient,
                    // A request that never got a connection was not sent: not ambiguous.
                    ambiguous: (d.is_timeout() || d.is_io()) && !never_connected(err),
                    code: "NetworkError".to_owned(),
                    message,
                }
            }
        }
        SdkError::ResponseError(_) => RequestError {
            class: FailureClass::Transient,
            ambiguous: true,
            code: "UnreadableResponse".to_owned(),
            message: detail(),
        },
        SdkError::ConstructionFailure(_) => {
            let message = detail();
            let code = if message.contains("credential") || message.contains("identity") {
                "CredentialsUnavailable"
            } else {
                "RequestNotBuilt"
            };
            RequestError {
                class: FailureClass::Systemic,
                ambiguous: false,
                code: code.to_owned(),
                message,
            }
        }
        _ => RequestError {
            class: FailureClass::Transient,
            ambiguous: true,
            code: "Unknown".to_owned(),
            message: detail(),
        },
    }
}

/// Whether the HTTP client failed while connecting (refused, unreachable, DNS, TLS set-up):
/// then nothing of the request reached the service.
fn never_connected(err: &(dyn std::error::Error + 'static)) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = src {
        if let Some(h) = e.downcast_ref::<hyper_util::client::legacy::Error>() {
            return h.is_connect();
        }
        src = e.source();
    }
    false
}

/// A store (DynamoDB, S3) error with its code.
pub fn store_error<E>(err: &SdkError<E, HttpResponse>) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let e = classify_sdk_error(err);
    StoreError {
        code: e.code,
        message: e.message,
    }
}

/// Connect timeout for every client: a dead endpoint must fail fast, not eat the deadline.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

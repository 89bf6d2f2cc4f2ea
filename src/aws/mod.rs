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
pub mod kcl;
pub mod lambda;
pub mod leases;
pub mod positions;
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
use aws_smithy_types::timeout::TimeoutConfig;

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

/// Loads the SDK configuration the usual way (environment, profile, instance role), with
/// [`call_timeouts`]. `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_<SERVICE>` point it at local
/// emulators.
pub async fn load_sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(call_timeouts())
        .load()
        .await
}

/// The longest one AWS call may take, retries included: `FANOUT_AWS_TIMEOUT` (e.g. `20s`,
/// `2500ms`), 20 s if unset or unreadable. AWS answers in milliseconds; an endpoint that
/// accepts connections and never answers must not hold a command (or a flip) forever.
pub fn call_timeout() -> Duration {
    std::env::var("FANOUT_AWS_TIMEOUT")
        .ok()
        .and_then(|v| crate::verify::parse_duration(&v).ok())
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_CALL_TIMEOUT)
}

/// See [`call_timeout`].
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(20);

/// Every client's timeouts: connect within [`CONNECT_TIMEOUT`], each attempt within half of
/// [`call_timeout`] (so a retry fits), the whole call within it. Streaming answers (an
/// enhanced fan-out subscription, an S3 body) are bounded only until their first bytes.
pub fn call_timeouts() -> TimeoutConfig {
    let total = call_timeout();
    TimeoutConfig::builder()
        .connect_timeout(CONNECT_TIMEOUT.min(total / 2))
        .operation_attempt_timeout(total / 2)
        .operation_timeout(total)
        .build()
}

/// Where `service_id` (`dynamodb`, `kinesis`, `s3`, `sts`) calls go with `sdk`: the
/// endpoint override, or the service's regional AWS endpoint. For messages.
pub fn endpoint_of(sdk: &SdkConfig, service_id: &str) -> String {
    let region = sdk
        .region()
        .map(|r| r.to_string())
        .unwrap_or_else(|| "(no region: set AWS_REGION)".to_owned());
    match endpoint_override(sdk, service_id) {
        Some(url) => format!("{url} (region {region})"),
        None => format!("https://{service_id}.{region}.amazonaws.com"),
    }
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
    )
    .with_position_every(config.position_every);
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
        .timeout_config(call_timeouts())
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
    endpoint_override(sdk, service_id).is_some()
}

/// The endpoint override for `service_id`, if one is in force.
fn endpoint_override(sdk: &SdkConfig, service_id: &str) -> Option<String> {
    let key = aws_types::service_config::ServiceConfigKey::builder()
        .service_id(service_id)
        .env("AWS_ENDPOINT_URL")
        .profile("endpoint_url")
        .build()
        .ok()?;
    sdk.service_config()
        .and_then(|c| c.load_config(key))
        .or_else(|| sdk.endpoint_url().map(str::to_owned))
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
        message: with_service(service_of::<E>(), &e.code, e.message),
        code: e.code,
    }
}

/// The service an SDK error type belongs to (`aws_sdk_dynamodb::…` → `DynamoDB`).
fn service_of<E>() -> &'static str {
    let t = std::any::type_name::<E>();
    [
        ("aws_sdk_dynamodb", "DynamoDB"),
        ("aws_sdk_kinesis", "Kinesis"),
        ("aws_sdk_s3", "S3"),
        ("aws_sdk_sts", "STS"),
        ("aws_sdk_lambda", "Lambda"),
    ]
    .into_iter()
    .find(|(krate, _)| t.starts_with(krate))
    .map_or("AWS", |(_, name)| name)
}

/// `message` of a failed call to `service`, saying which service when that is what a person
/// needs (it did not answer, could not be reached, or has no such resource). Messages that
/// start with a service's name can then be placed ([`SERVICES`]).
pub fn with_service(service: &str, code: &str, message: String) -> String {
    match code {
        "Timeout" => format!(
            "{service} did not answer within {} s: {message}",
            call_timeout().as_secs_f64()
        ),
        "NetworkError" => format!("{service} could not be reached: {message}"),
        "UnreadableResponse" => {
            format!("{service} sent an answer that could not be read: {message}")
        }
        "CredentialsUnavailable" => {
            format!("{service}: no usable AWS credentials ({message}); check AWS_PROFILE or run `aws sso login`")
        }
        "ResourceNotFoundException" | "NoSuchBucket" | "NoSuchKey" => {
            format!("{service}: {message}")
        }
        _ => message,
    }
}

/// Service names as [`with_service`] writes them, with the endpoint id each one has.
pub const SERVICES: [(&str, &str); 5] = [
    ("DynamoDB", "dynamodb"),
    ("Kinesis", "kinesis"),
    ("S3", "s3"),
    ("STS", "sts"),
    ("Lambda", "lambda"),
];

/// Connect timeout for every client: a dead endpoint must fail fast, not eat the deadline.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

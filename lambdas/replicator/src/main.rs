//! The replicator Lambda: reads its configuration and builds its clients once, then hands each
//! Kinesis batch to the library's handler and answers with `batchItemFailures`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fanout::aws::{build_handler, load_sdk_config, AwsHandler};
use fanout::config::ReplicatorConfig;
use fanout::handler::MetricsOutput;
use lambda_runtime::{service_fn, Diagnostic, Error, LambdaEvent};
use serde_json::value::RawValue;

// One thread: Lambda hands the function one event at a time, and the handler's concurrency is
// I/O (a few PutRecords in flight), which one thread serves without cross-thread wake-ups
// (measured: about 10% less CPU per batch; BENCHMARKS.md).
#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    fanout::cli::init_lambda_tracing();
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

/// A failed invocation. Lambda's runtime logs it as the invocation's one ERROR line (this
/// type's `Debug`: the message and the fix) and reports `error_type` as the `errorType`.
struct InvocationError {
    error_type: &'static str,
    error_message: String,
}

impl std::fmt::Debug for InvocationError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.error_type, self.error_message)
    }
}

impl From<InvocationError> for Diagnostic {
    fn from(e: InvocationError) -> Diagnostic {
        Diagnostic {
            error_type: e.error_type.to_owned(),
            error_message: e.error_message,
        }
    }
}

/// Converts Lambda's wall-clock deadline into a monotonic one and calls the handler. An event
/// it cannot read fails the invocation with `errorType` `InvalidEvent` (the batch stays in the
/// stream for the mapping to retry).
async fn handle(
    handler: &AwsHandler,
    event: LambdaEvent<Box<RawValue>>,
) -> Result<serde_json::Value, InvocationError> {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let left = time_left(event.context.deadline, now_ms);
    tracing::debug!(
        time_left_ms = left.as_millis() as u64,
        "Invocation received."
    );
    let deadline = tokio::time::Instant::now() + left;
    let (response, _) = handler
        .handle(event.payload.get().as_bytes(), deadline)
        .await
        .map_err(|e| InvocationError {
            error_type: "InvalidEvent",
            error_message: format!(
                "cannot read the invocation's event ({e}); it is left in the stream for retry. \
                 Check that the function is triggered by a Kinesis event source mapping"
            ),
        })?;
    serde_json::to_value(response).map_err(|e| InvocationError {
        error_type: "InternalError",
        error_message: format!("cannot encode the batch response: {e}"),
    })
}

/// Time left before the invocation's deadline. Lambda sends the deadline as epoch
/// milliseconds; `cargo lambda watch` sends the function timeout itself (e.g. 600000), which
/// no real deadline can be (it would be in 1970), so such a value is taken as a duration.
fn time_left(deadline_ms: u64, now_ms: u64) -> Duration {
    const YEAR_2001_MS: u64 = 978_307_200_000;
    if deadline_ms < YEAR_2001_MS {
        Duration::from_millis(deadline_ms)
    } else {
        Duration::from_millis(deadline_ms.saturating_sub(now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_config::{BehaviorVersion, Region};
    use aws_credential_types::Credentials;
    use lambda_runtime::Context;

    const FIXTURE: &str = include_str!("../../../tests/fixtures/kinesis-event.json");
    const FIRST_SEQ: &str = "49590338271490256608559692538361571095921575989136588898";

    /// A handler whose AWS endpoints refuse connections: nothing here reaches AWS.
    async fn offline_handler(source: &str) -> &'static AwsHandler {
        let vars = [
            (
                "FANOUT_ROUTES",
                format!(
                    r#"[{{"source":"{source}","target":"arn:aws:kinesis:us-east-1:222222222222:stream/old"}}]"#
                ),
            ),
            ("FANOUT_TABLE", "t".to_owned()),
            ("FANOUT_DEAD_LETTER_BUCKET", "b".to_owned()),
        ];
        let config = ReplicatorConfig::from_lookup(|k| {
            vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone())
        })
        .unwrap();
        let sdk = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("a", "b", None, None, "test"))
            .endpoint_url("http://127.0.0.1:9")
            .load()
            .await;
        Box::leak(Box::new(
            build_handler(&config, &sdk, MetricsOutput::None).await,
        ))
    }

    fn invocation(payload: &str, deadline_in: Duration) -> LambdaEvent<Box<RawValue>> {
        let mut context = Context::default();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        context.deadline = now + deadline_in.as_millis() as u64;
        LambdaEvent::new(RawValue::from_string(payload.to_owned()).unwrap(), context)
    }

    #[tokio::test]
    async fn an_empty_event_succeeds_and_a_bad_one_fails_as_invalid_event() {
        let handler = offline_handler("arn:aws:kinesis:us-east-1:123456789012:stream/other").await;
        let out = handle(
            handler,
            invocation(r#"{"Records": []}"#, Duration::from_secs(30)),
        )
        .await
        .unwrap();
        assert_eq!(out, serde_json::json!({"batchItemFailures": []}));
        let e = handle(handler, invocation("[1, 2]", Duration::from_secs(30)))
            .await
            .unwrap_err();
        assert_eq!(e.error_type, "InvalidEvent");
        assert!(
            e.error_message.contains("expected a Kinesis event"),
            "{}",
            e.error_message
        );
    }

    #[tokio::test]
    async fn a_source_without_a_route_reports_its_first_record() {
        let handler = offline_handler("arn:aws:kinesis:us-east-1:123456789012:stream/other").await;
        let out = handle(handler, invocation(FIXTURE, Duration::from_secs(30)))
            .await
            .unwrap();
        assert_eq!(
            out,
            serde_json::json!({"batchItemFailures": [{"itemIdentifier": FIRST_SEQ}]})
        );
    }

    #[tokio::test]
    async fn an_unreachable_checkpoint_table_near_the_deadline_reports_the_first_record_in_time() {
        let handler =
            offline_handler("arn:aws:kinesis:us-east-1:123456789012:stream/fanout-demo-source")
                .await;
        let started = std::time::Instant::now();
        let out = handle(handler, invocation(FIXTURE, Duration::from_millis(1500)))
            .await
            .unwrap();
        assert_eq!(
            out,
            serde_json::json!({"batchItemFailures": [{"itemIdentifier": FIRST_SEQ}]})
        );
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "answered before the deadline"
        );
    }

    #[test]
    fn deadlines_are_epoch_milliseconds_or_a_local_emulator_timeout() {
        let now = 1_795_324_737_055;
        assert_eq!(time_left(now + 2_500, now), Duration::from_millis(2_500));
        assert_eq!(time_left(now - 10, now), Duration::ZERO);
        assert_eq!(time_left(600_000, now), Duration::from_secs(600));
    }

    #[tokio::test]
    async fn a_malformed_event_is_an_invocation_error() {
        let handler =
            offline_handler("arn:aws:kinesis:us-east-1:123456789012:stream/fanout-demo-source")
                .await;
        let err = handle(
            handler,
            invocation(r#"{"hello":"world"}"#, Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
        assert_eq!(err.error_type, "InvalidEvent");
        assert!(
            err.error_message.contains("Malformed Kinesis event"),
            "{}",
            err.error_message
        );
    }
}

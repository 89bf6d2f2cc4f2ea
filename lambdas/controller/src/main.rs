//! The controller Lambda: takes a migration command as JSON (the same [`Request`] `fanoutctl`
//! builds, e.g. `{"command":"cutover","migration":"orders","reason":"CHG-1234"}`), runs it
//! with the library's `execute` and answers with the report `fanoutctl --output json` prints.
//!
//! Environment: `FANOUT_TABLE` (state table), `FANOUT_MIGRATION` (default migration),
//! `FANOUT_ROUTES` and `FANOUT_DEAD_LETTER_BUCKET`/`_PREFIX` (for `start`),
//! `FANOUT_WRITER_ROLE_ARN`/`FANOUT_WRITER_EXTERNAL_ID` (to describe the old streams).
//!
//! Two ways in. A direct invoke (`aws lambda invoke`, a chat-ops bot) runs as the function's
//! role: that identity is recorded, a caller may add `on_behalf_of`, and a two-person
//! migration's flips are refused there (nobody can tell who asked). Through the function URL
//! (IAM auth) the body is the same JSON and the caller's IAM identity, which AWS signs for,
//! is the one recorded: requests and approvals work there; the answer is an HTTP response
//! whose body is the report.

use std::time::Duration;

use fanout::aws::control::AwsControl;
use fanout::aws::load_sdk_config;
use fanout::aws::verifications::{caller_identity, old_account_config, old_lambda_config};
use fanout::config::ReplicatorConfig;
use fanout::control::commands::{
    execute, specs_from_json, streams_from_routes, CommandName, Context, Request,
};
use lambda_runtime::{service_fn, Error, LambdaEvent};
use serde_json::{json, Value};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    fanout::cli::init_lambda_tracing();
    let table = std::env::var("FANOUT_TABLE")
        .map_err(|_| "FANOUT_TABLE is not set; set it to the state table's name")?;
    let sdk = load_sdk_config().await;
    let old = old_account_config(&sdk).await;
    let old_lambda = old_lambda_config(&sdk, &old).await;
    let actor = caller_identity(&sdk).await.map_err(|e| {
        format!(
            "STS GetCallerIdentity failed (the controller records every change with an \
             identity): {}",
            e.message
        )
    })?;
    let ctx: &'static Context<AwsControl> = Box::leak(Box::new(Context {
        control: AwsControl::new(&sdk, &old, &table).with_old_lambda(&old_lambda),
        actor,
        poll: Duration::from_millis(500),
        caller_known: false,
    }));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| async move {
        let (mut req, caller) = match parse_call(event.payload)? {
            Call::Direct(req) => (req, None),
            Call::Url { request, caller } => (request, Some(caller)),
        };
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
            if let (true, Ok(json)) = (req.consumers.is_empty(), std::env::var("FANOUT_CONSUMERS"))
            {
                req.consumers = specs_from_json(&json)?;
            }
        }
        let report = match &caller {
            None => execute(ctx, &req).await,
            Some(caller) => {
                let as_caller = Context {
                    control: ctx.control.clone(),
                    actor: caller.clone(),
                    poll: ctx.poll,
                    caller_known: true,
                };
                execute(&as_caller, &req).await
            }
        };
        tracing::info!(
            command = %report.command,
            migration = %report.migration,
            outcome = report.outcome.as_str(),
            caller = caller.as_deref().unwrap_or("(direct invoke)"),
            "{}",
            report.message
        );
        let body = serde_json::to_value(&report)?;
        Ok::<_, Error>(match caller {
            None => body,
            Some(_) => json!({
                "statusCode": if report.exit_code() == 0 { 200 } else { 409 },
                "headers": {"content-type": "application/json"},
                "body": body.to_string(),
            }),
        })
    }))
    .await
}

/// How a command reached the function.
#[derive(Debug, PartialEq)]
enum Call {
    /// A direct invoke: the payload is the command.
    Direct(Request),
    /// Through the function URL: the body is the command, and `caller` the IAM identity
    /// that signed the request.
    Url { request: Request, caller: String },
}

/// Reads an invocation's payload: a command, or a function URL request carrying one.
fn parse_call(payload: Value) -> Result<Call, String> {
    let Some(context) = payload.get("requestContext") else {
        return serde_json::from_value(payload)
            .map(Call::Direct)
            .map_err(|e| format!("the payload is not a command: {e}"));
    };
    let caller = context
        .pointer("/authorizer/iam/userArn")
        .and_then(Value::as_str)
        .filter(|arn| !arn.is_empty())
        .ok_or(
            "a function URL request without an IAM caller: the URL must use AuthType AWS_IAM \
             (terraform/modules/controller does), and the request be signed (SigV4)",
        )?;
    let body = payload.get("body").and_then(Value::as_str).unwrap_or("");
    let body = if payload.get("isBase64Encoded") == Some(&Value::Bool(true)) {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(body)
            .map_err(|e| format!("the request body is not base64: {e}"))?;
        String::from_utf8(bytes).map_err(|e| format!("the request body is not UTF-8: {e}"))?
    } else {
        body.to_owned()
    };
    let request = serde_json::from_str(&body).map_err(|e| {
        format!(
            "the request body is not a command ({e}); send JSON like \
             {{\"command\":\"status\",\"migration\":\"orders\"}}"
        )
    })?;
    Ok(Call::Url {
        request,
        caller: caller.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_function_url_request_carries_its_command_and_its_signed_caller() {
        let direct = parse_call(json!({"command": "status", "migration": "m"})).unwrap();
        assert!(matches!(direct, Call::Direct(r) if r.migration == "m"));

        let url = json!({
            "requestContext": {"authorizer": {"iam": {"userArn": "arn:aws:iam::1:user/alice"}},
                               "http": {"method": "POST"}},
            "body": "{\"command\":\"cutover\",\"migration\":\"m\",\"reason\":\"r\"}",
            "isBase64Encoded": false
        });
        match parse_call(url).unwrap() {
            Call::Url { request, caller } => {
                assert_eq!(request.command, CommandName::Cutover);
                assert_eq!(caller, "arn:aws:iam::1:user/alice");
            }
            other => panic!("{other:?}"),
        }
        let encoded = json!({
            "requestContext": {"authorizer": {"iam": {"userArn": "arn:aws:iam::1:user/bob"}}},
            "body": "eyJjb21tYW5kIjoic3RhdHVzIn0=",
            "isBase64Encoded": true
        });
        assert!(
            matches!(parse_call(encoded).unwrap(), Call::Url { caller, .. } if caller.ends_with("bob"))
        );

        // No IAM caller (a URL with AuthType NONE): refused, saying why.
        let anonymous = json!({"requestContext": {"http": {}}, "body": "{}"});
        assert!(parse_call(anonymous).unwrap_err().contains("AWS_IAM"));
        let bad = json!({"requestContext": {"authorizer": {"iam": {"userArn": "arn:x"}}},
                         "body": "{\"command\":\"cutover\",\"forse\":true}"});
        assert!(parse_call(bad).unwrap_err().contains("forse"));
    }
}

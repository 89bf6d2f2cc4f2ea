//! The controller Lambda binary, run as Lambda runs it: against a Lambda Runtime API (a small
//! fake here, on 127.0.0.1) with the local stack behind it. Commands go in as JSON payloads
//! and the reports come back as the function's responses; a payload the controller cannot
//! read is an invocation error that names the problem.

#[path = "../../../tests/support/stack.rs"]
#[allow(dead_code)]
mod stack;

#[path = "../../../tests/support/runtime_api.rs"]
mod runtime_api;

use std::process::{Child, Command, Stdio};

use runtime_api::{Answer, Runtime};
use serde_json::{json, Value};
use stack::{unique, Backend, World};

const BIN: &str = env!("CARGO_BIN_EXE_controller");

fn response(answer: Answer) -> Value {
    match answer {
        Answer::Response(v) => v,
        Answer::Error(e) => panic!("invocation error: {e}"),
    }
}

struct Function(Child);

impl Function {
    /// The controller binary serving `runtime`, for `migration` over `world`.
    fn start(world: &World, runtime: &Runtime, migration: &str) -> Function {
        Function(
            Command::new(BIN)
                .envs(world.process_env())
                .env_remove("AWS_PROFILE")
                .env("FANOUT_MIGRATION", migration)
                .env("FANOUT_LOG", "warn")
                .env("AWS_LAMBDA_RUNTIME_API", &runtime.address)
                .env("AWS_LAMBDA_FUNCTION_NAME", "controller")
                .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "256")
                .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
                .env("AWS_LAMBDA_LOG_STREAM_NAME", "test")
                .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/controller")
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start the controller binary"),
        )
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_lambda_runs_the_same_commands_from_json_payloads() {
    let Some(world) = World::create_serialized(Backend::KinesisLocal, 1, 1).await else {
        return;
    };
    let runtime = Runtime::start("controller").await;
    let migration = unique("lambda");
    let _function = Function::start(&world, &runtime, &migration);

    // `start` without streams takes them from FANOUT_ROUTES, like fanoutctl.
    let r = response(
        runtime
            .invoke(json!({"command": "start", "reason": "from the Lambda",
                           "settings": {"settle_ms": 200, "mode_cache_ms": 100,
                                        "drain_timeout_ms": 10000}}))
            .await,
    );
    assert_eq!(
        (r["outcome"].as_str(), r["state"].as_str()),
        (Some("applied"), Some("replicating")),
        "{r}"
    );
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains(&format!("s3://{}/routing/{migration}.json", world.bucket)),
        "{r}"
    );

    // A dry run: nothing verified yet, so the verification guard refuses.
    let r = response(
        runtime
            .invoke(json!({"command": "cutover", "dry_run": true}))
            .await,
    );
    assert_eq!(r["outcome"], "refused_by_guard", "{r}");
    let failed: Vec<&str> = r["guards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|g| g["passed"] == false)
        .map(|g| g["name"].as_str().unwrap())
        .collect();
    assert_eq!(failed, ["verification"], "{r}");

    let r = response(
        runtime
            .invoke(
                json!({"command": "cutover", "force": true, "reason": "lambda test",
                           "on_behalf_of": "chatops:@alice"}),
            )
            .await,
    );
    assert_eq!(
        (
            r["outcome"].as_str(),
            r["state"].as_str(),
            r["version"].as_u64()
        ),
        (Some("applied"), Some("cutover"), Some(3)),
        "{r}"
    );

    let r = response(runtime.invoke(json!({"command": "history"})).await);
    let history = r["history"].as_array().unwrap();
    assert_eq!(history.len(), 2, "{r}");
    assert_eq!(history[1]["command"], "cutover");
    assert_eq!(history[1]["forced"], true);
    assert!(
        history[1]["actor"]
            .as_str()
            .unwrap()
            .starts_with("arn:aws:"),
        "{r}"
    );
    assert!(
        history[1]["detail"]
            .as_str()
            .unwrap()
            .contains("on behalf of chatops:@alice"),
        "{r}"
    );

    // A payload it cannot read: an invocation error naming the field.
    match runtime
        .invoke(json!({"command": "cutover", "forse": true}))
        .await
    {
        Answer::Error(e) => assert!(e.to_string().contains("forse"), "{e}"),
        Answer::Response(r) => panic!("expected an invocation error, got {r}"),
    }
    // And it keeps serving.
    let r = response(runtime.invoke(json!({"command": "status"})).await);
    assert_eq!(r["status"]["state"], "cutover", "{r}");
}

/// A function URL request (IAM auth) as Lambda passes it: `caller` signed it.
fn through_url(caller: &str, command: Value) -> Value {
    json!({
        "version": "2.0",
        "rawPath": "/",
        "requestContext": {
            "authorizer": {"iam": {"userArn": caller, "accountId": "123456789012"}},
            "http": {"method": "POST", "path": "/"},
            "timeEpoch": 0
        },
        "body": command.to_string(),
        "isBase64Encoded": false
    })
}

/// The report in a function URL answer.
fn url_report(answer: Answer) -> (u64, Value) {
    let r = response(answer);
    let body = serde_json::from_str(r["body"].as_str().expect("an HTTP answer")).unwrap();
    (r["statusCode"].as_u64().unwrap(), body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_person_flips_through_the_lambda_need_the_function_url_and_two_people() {
    let Some(world) = World::create_serialized(Backend::KinesisLocal, 1, 1).await else {
        return;
    };
    let runtime = Runtime::start("controller").await;
    let migration = unique("lambda-two");
    let _function = Function::start(&world, &runtime, &migration);
    let r = response(
        runtime
            .invoke(json!({"command": "start", "reason": "two people",
                           "settings": {"settle_ms": 200, "mode_cache_ms": 100,
                                        "drain_timeout_ms": 10000, "two_person": true}}))
            .await,
    );
    assert_eq!(r["outcome"], "applied", "{r}");
    let cutover = json!({"command": "cutover", "force": true, "reason": "CHG-9"});

    // A direct invoke cannot tell who asks: refused, with the command to run instead.
    let r = response(runtime.invoke(cutover.clone()).await);
    assert_eq!(r["outcome"], "not_allowed", "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains(&format!("fanoutctl cutover --migration {migration}")),
        "{r}"
    );

    // Through the URL: alice asks; alice again, as her IAM user, is still alice.
    let alice = "arn:aws:sts::123456789012:assumed-role/oncall/alice";
    let (code, r) = url_report(runtime.invoke(through_url(alice, cutover.clone())).await);
    assert_eq!(
        (code, r["outcome"].as_str()),
        (409, Some("awaiting_approval")),
        "{r}"
    );
    let (_, r) = url_report(
        runtime
            .invoke(through_url(
                "arn:aws:iam::123456789012:user/alice",
                cutover.clone(),
            ))
            .await,
    );
    assert_eq!(r["outcome"], "awaiting_approval", "{r}");
    // Bob approves: the cutover is done, recorded with both people.
    let bob = "arn:aws:sts::123456789012:assumed-role/oncall/bob";
    let (code, r) = url_report(runtime.invoke(through_url(bob, cutover)).await);
    assert_eq!((code, r["outcome"].as_str()), (200, Some("applied")), "{r}");
    assert!(
        r["message"]
            .as_str()
            .unwrap()
            .contains(&format!("requested by {alice}, approved by {bob}")),
        "{r}"
    );
}

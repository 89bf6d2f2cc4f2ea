//! The controller Lambda binary, run as Lambda runs it: against a Lambda Runtime API (a small
//! fake here, on 127.0.0.1) with the local stack behind it. Commands go in as JSON payloads
//! and the reports come back as the function's responses; a payload the controller cannot
//! read is an invocation error that names the problem.

#[path = "../../../tests/support/stack.rs"]
#[allow(dead_code)]
mod stack;

use std::collections::HashMap;
use std::convert::Infallible;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use stack::{unique, Backend, World};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

const BIN: &str = env!("CARGO_BIN_EXE_controller");

/// What the function answered to one invocation.
#[derive(Debug)]
enum Answer {
    Response(Value),
    Error(Value),
}

/// A fake Lambda Runtime API: `invoke` queues an event and waits for the function's answer.
struct Runtime {
    address: String,
    events: mpsc::UnboundedSender<(Value, oneshot::Sender<Answer>)>,
}

impl Runtime {
    async fn start() -> Runtime {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (events, queue) = mpsc::unbounded_channel::<(Value, oneshot::Sender<Answer>)>();
        let queue = Arc::new(tokio::sync::Mutex::new(queue));
        let waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Answer>>>> = Arc::default();
        tokio::spawn(async move {
            let mut next_id = 0u64;
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (queue, waiting) = (queue.clone(), waiting.clone());
                let ids = next_id;
                next_id += 1_000_000;
                tokio::spawn(async move {
                    let counter = Arc::new(std::sync::atomic::AtomicU64::new(ids));
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (queue, waiting, counter) =
                            (queue.clone(), waiting.clone(), counter.clone());
                        async move {
                            let path = req.uri().path().to_owned();
                            let body = req.into_body().collect().await.unwrap().to_bytes();
                            if path.ends_with("/runtime/invocation/next") {
                                let (event, reply) = queue.lock().await.recv().await.unwrap();
                                let id = format!(
                                    "req-{}",
                                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
                                );
                                waiting.lock().unwrap().insert(id.clone(), reply);
                                let deadline = chrono::Utc::now().timestamp_millis() + 60_000;
                                let mut response =
                                    Response::new(Full::new(Bytes::from(event.to_string())));
                                let h = response.headers_mut();
                                h.insert("lambda-runtime-aws-request-id", id.parse().unwrap());
                                h.insert(
                                    "lambda-runtime-deadline-ms",
                                    deadline.to_string().parse().unwrap(),
                                );
                                h.insert(
                                    "lambda-runtime-invoked-function-arn",
                                    "arn:aws:lambda:us-east-1:123456789012:function:controller"
                                        .parse()
                                        .unwrap(),
                                );
                                return Ok::<_, Infallible>(response);
                            }
                            let parsed: Value =
                                serde_json::from_slice(&body).unwrap_or(Value::Null);
                            let parts: Vec<&str> = path.split('/').collect();
                            // /2018-06-01/runtime/invocation/<id>/response|error
                            if parts.len() == 6 && parts[3] == "invocation" {
                                if let Some(reply) = waiting.lock().unwrap().remove(parts[4]) {
                                    let answer = if parts[5] == "response" {
                                        Answer::Response(parsed)
                                    } else {
                                        Answer::Error(parsed)
                                    };
                                    let _ = reply.send(answer);
                                }
                            } else {
                                eprintln!("runtime API: {path}: {parsed}");
                            }
                            let mut response = Response::new(Full::new(Bytes::from("{}")));
                            *response.status_mut() = hyper::StatusCode::ACCEPTED;
                            Ok(response)
                        }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Runtime { address, events }
    }

    async fn invoke(&self, event: Value) -> Answer {
        let (reply, answer) = oneshot::channel();
        self.events.send((event, reply)).unwrap();
        tokio::time::timeout(Duration::from_secs(60), answer)
            .await
            .expect("the function answered within 60 s")
            .unwrap()
    }
}

fn response(answer: Answer) -> Value {
    match answer {
        Answer::Response(v) => v,
        Answer::Error(e) => panic!("invocation error: {e}"),
    }
}

struct Function(Child);

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
    let runtime = Runtime::start().await;
    let migration = unique("lambda");
    let _function = Function(
        Command::new(BIN)
            .envs(world.process_env())
            .env_remove("AWS_PROFILE")
            .env("FANOUT_MIGRATION", &migration)
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
    );

    // `start` without streams takes them from FANOUT_ROUTES, like fanoutctl.
    let r = response(
        runtime
            .invoke(json!({"command": "start", "reason": "from the Lambda",
                           "settings": {"settle_ms": 200, "drain_timeout_ms": 10000}}))
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

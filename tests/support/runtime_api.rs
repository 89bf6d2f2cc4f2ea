//! A fake Lambda Runtime API on 127.0.0.1, for running a Lambda binary as Lambda runs it:
//! `invoke` hands the function an event and waits for its response or its error. Included by
//! the Lambda crates' tests with `#[path]`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

/// What the function answered to one invocation.
#[derive(Debug)]
pub enum Answer {
    Response(Value),
    Error(Value),
}

/// A fake Lambda Runtime API: `invoke` queues an event and waits for the function's answer.
pub struct Runtime {
    pub address: String,
    events: mpsc::UnboundedSender<(Value, oneshot::Sender<Answer>)>,
}

impl Runtime {
    /// `function` names the function in the invoked-function ARN it hands out.
    pub async fn start(function: &str) -> Runtime {
        let function_arn = format!("arn:aws:lambda:us-east-1:123456789012:function:{function}");
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let (events, queue) = mpsc::unbounded_channel::<(Value, oneshot::Sender<Answer>)>();
        let queue = Arc::new(tokio::sync::Mutex::new(queue));
        let waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Answer>>>> = Arc::default();
        tokio::spawn(async move {
            let mut next_id = 0u64;
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                let (queue, waiting, function_arn) =
                    (queue.clone(), waiting.clone(), function_arn.clone());
                let ids = next_id;
                next_id += 1_000_000;
                tokio::spawn(async move {
                    let counter = Arc::new(std::sync::atomic::AtomicU64::new(ids));
                    let service = service_fn(move |req: Request<Incoming>| {
                        let (queue, waiting, counter, function_arn) = (
                            queue.clone(),
                            waiting.clone(),
                            counter.clone(),
                            function_arn.clone(),
                        );
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
                                    function_arn.parse().unwrap(),
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

    pub async fn invoke(&self, event: Value) -> Answer {
        let (reply, answer) = oneshot::channel();
        self.events.send((event, reply)).unwrap();
        tokio::time::timeout(Duration::from_secs(60), answer)
            .await
            .expect("the function answered within 60 s")
            .unwrap()
    }
}
